"""MkDocs hook: render parts of pages from the code at build time, so they cannot drift.

* ``<!-- settings: SECTION -->`` becomes a table of that section's fields (``log``,
  ``http``, ...; ``top`` for the top-level fields), and ``<!-- settings: all -->`` one
  heading and table per section. Types, defaults and bounds come from the pydantic
  models in ``chassis.config``, the meaning from each field's docstring.
* ``<!-- exception-tree -->`` becomes the tree drawn in the docstring of
  ``chassis.exceptions``.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import griffe
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

SRC = Path(__file__).resolve().parents[2] / "src"


def _load_config() -> types.ModuleType:
    """Import ``chassis/config.py`` under a private package name.

    Only the configuration module (and what it imports) runs, not ``chassis/__init__``,
    so the tables build even while another module of the package is being edited.
    """
    package = types.ModuleType("_chassis_docs")
    package.__path__ = [str(SRC / "chassis")]
    sys.modules.setdefault("_chassis_docs", package)
    return importlib.import_module("_chassis_docs.config")


config = _load_config()

_MARKER = re.compile(r"^<!--\s*settings:\s*([a-z_]+)\s*-->\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc):`~?([^`]+)`")

# Which module implements each section; a section whose module is absent is marked.
_MODULES = {
    "log": "logging",
    "http": "http",
    "health": "health",
    "metrics": "metrics",
    "tracing": "tracing",
    "discovery": "discovery",
    "client": "client",
    "ratelimit": "ratelimit",
    "events": "events",
    "database": "db",
}

_module_docs: griffe.Module | None = None


def _docs() -> griffe.Module:
    global _module_docs
    if _module_docs is None:
        loaded = griffe.load("chassis.config", search_paths=[str(SRC)])
        assert isinstance(loaded, griffe.Module)
        _module_docs = loaded
    return _module_docs


def _markdown(text: str) -> str:
    """reST inline markup of a docstring, as Markdown on one line."""
    text = _ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    text = text.replace("``", "`")
    return " ".join(text.split()).replace("|", "\\|")


def _meaning(cls: type[BaseModel], field: str) -> str:
    try:
        member = _docs()[cls.__name__].members[field]
    except KeyError:
        return ""
    docstring = member.docstring
    return _markdown(docstring.value) if docstring is not None else ""


def _type_name(annotation: Any) -> str:
    if annotation is SecretStr:
        return "secret string"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "JSON object"
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if annotation is type(None):
        return "none"
    if annotation is bool:
        return "bool"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(metadata: list[Any]) -> str:
    parts = []
    for item in metadata:
        if isinstance(item, Ge):
            parts.append(f"≥ {item.ge}")
        elif isinstance(item, Gt):
            parts.append(f"> {item.gt}")
        elif isinstance(item, Le):
            parts.append(f"≤ {item.le}")
        elif isinstance(item, Lt):
            parts.append(f"< {item.lt}")
    return ", ".join(parts)


def _default(info: Any) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, tuple | list | dict):
        return f"`{json.dumps(value, separators=(',', ':'))}`"
    return f"`{value}`"


def _table(cls: type[BaseModel], loc: tuple[str, ...]) -> str:
    rows = [
        "| Environment variable | Type | Default | Meaning |",
        "|---|---|---|---|",
    ]
    for name, info in cls.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue  # a section: rendered on its own
        type_name = _type_name(annotation)
        bounds = _bounds(list(info.metadata))
        if bounds:
            type_name = f"{type_name} ({bounds})"
        env = config.env_var_name((*loc, name))
        rows.append(f"| `{env}` | {type_name} | {_default(info)} | {_meaning(cls, name)} |")
    return "\n".join(rows)


def _sections() -> dict[str, type[BaseModel]]:
    found = {}
    for name, info in config.ChassisSettings.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found[name] = annotation
    return found


def _implemented(section: str) -> bool:
    module = _MODULES.get(section)
    if module is None:
        return True
    base = SRC / "chassis" / module
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _section_block(name: str, cls: type[BaseModel]) -> str:
    title = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    title = _markdown(title.split(":", 1)[-1].strip().rstrip(".")) or name
    lines = [f"### `{name}`: {title}", ""]
    if not _implemented(name):
        lines += [
            '!!! note "Not used yet"',
            "    These settings are read and validated, but the capability that uses",
            "    them is still being built.",
            "",
        ]
    lines.append(_table(cls, (name,)))
    return "\n".join(lines)


def _render(match: re.Match[str]) -> str:
    which = match.group(1)
    sections = _sections()
    if which == "top":
        return _table(config.ChassisSettings, ())
    if which == "all":
        blocks = ["### Top level", "", _table(config.ChassisSettings, ())]
        blocks += [_section_block(n, c) for n, c in sections.items()]
        return "\n\n".join(blocks)
    if which not in sections:
        raise ValueError(f"settings marker names an unknown section {which!r}")
    return _table(sections[which], (which,))


_TREE_MARKER = re.compile(r"^<!--\s*exception-tree\s*-->\s*$", re.MULTILINE)


def _exception_tree() -> str:
    """The indented block after the first ``::`` of ``chassis.exceptions``' docstring."""
    source = (SRC / "chassis" / "exceptions.py").read_text(encoding="utf-8")
    docstring = ast.get_docstring(ast.parse(source)) or ""
    lines = docstring.splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith("::")) + 1
    block: list[str] = []
    for line in lines[start:]:
        if line.strip() and not line.startswith(" "):
            break
        block.append(line)
    text = "\n".join(block).strip("\n")
    indent = min(len(ln) - len(ln.lstrip()) for ln in text.splitlines() if ln.strip())
    text = "\n".join(ln[indent:] for ln in text.splitlines())
    return "```text\n" + text.replace("``", "") + "\n```"


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace every marker in a page with what it stands for."""
    markdown = _MARKER.sub(_render, markdown)
    return _TREE_MARKER.sub(lambda _: _exception_tree(), markdown)
