"""Griffe extension: turn the reST inline markup of chassis docstrings into Markdown.

The docstrings use Sphinx roles (``:class:`~chassis.Service```) and ``::`` before
literal blocks. mkdocstrings renders Markdown, so at load time this extension
rewrites each role as an autorefs link when its target is a public object shown in
the API reference, and as inline code otherwise, and ends ``::`` paragraphs with a
single colon (the indented block after it is already a Markdown code block).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# Modules that have a page in the API reference; links to anything else would dangle.
DOCUMENTED = (
    "chassis.cli",
    "chassis.client",
    "chassis.config",
    "chassis.discovery",
    "chassis.exceptions",
    "chassis.health",
    "chassis.http",
    "chassis.logging",
    "chassis.metrics",
    "chassis.ratelimit",
    "chassis.service",
    "chassis.testing",
    "chassis.tracing",
)

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`<]+?)`")
_LITERAL = re.compile(r"(\S)::(\n\s*\n)")


class RestRoles(griffe.Extension):
    """Rewrite reST roles and ``::`` in every docstring of a loaded package."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "chassis":
            return
        collection = loader.modules_collection
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = _convert(obj, obj.docstring.value, collection)


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found.extend(_walk(member))  # type: ignore[arg-type]
    return found


def _target(obj: griffe.Object, name: str, collection: Any) -> str | None:
    """The canonical path of ``name`` as seen from ``obj``, if it has a reference page."""
    path: str | None = None
    if name.startswith("chassis"):
        path = name
    else:
        try:
            path = obj.resolve(name.split(".")[0])
        except Exception:
            return None
        rest = name.split(".")[1:]
        if rest:
            path = ".".join([path, *rest])
    try:
        found = collection.get_member(path)
    except Exception:
        return None
    try:
        while found.is_alias:
            found = found.target
    except Exception:
        return None
    canonical = str(found.path)
    if not any(canonical == m or canonical.startswith(m + ".") for m in DOCUMENTED):
        return None
    if any(part.startswith("_") for part in canonical.split(".")):
        return None
    return canonical


def _convert(obj: griffe.Object, text: str, collection: Any) -> str:
    def role(match: re.Match[str]) -> str:
        short, name = match.group(1) == "~", match.group(2).strip()
        shown = name.rsplit(".", 1)[-1] if short else name
        path = _target(obj, name, collection)
        return f"[`{shown}`][{path}]" if path else f"`{shown}`"

    text = _ROLE.sub(role, text)
    return _LITERAL.sub(r"\1:\2", text)
