"""The docs' structure: how-to pages share their headings; every public name is in the reference.

The strict ``mkdocs build`` (CI's docs session) checks links and the nav; these tests
check what it cannot: the headings each how-to page must have, and that no public
module or name is missing from the API reference.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SRC = ROOT / "src"

# The headings of every how-to page, in this order; "Object vs decorator" only where relevant.
HOWTO_HEADINGS = ("Enable", "Configure", "Object vs decorator", "Metrics it emits", "Testing")
OPTIONAL_HEADINGS = {"Object vs decorator"}

_FENCE = re.compile(r"^\s*(```|~~~)")
_DIRECTIVE = re.compile(r"^::: *([\w.]+)\s*$")


class _NavLoader(yaml.SafeLoader):
    """Reads mkdocs.yml, whose ``!!python/name:`` tags need no import to be skipped."""


_NavLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def _nav() -> list[Any]:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_NavLoader)
    nav: list[Any] = config["nav"]
    return nav


def _section(title: str) -> list[str]:
    """The page paths listed under a top-level nav section."""
    for entry in _nav():
        if isinstance(entry, dict) and title in entry:
            return [_page(item) for item in entry[title]]
    raise AssertionError(f"mkdocs.yml has no nav section {title!r}")


def _page(item: Any) -> str:
    if isinstance(item, str):
        return item
    ((_, path),) = item.items()
    assert isinstance(path, str), f"nested nav sections are not expected: {item!r}"
    return path


def _h2_headings(markdown: str) -> list[str]:
    """The ``##`` headings of a page, outside code blocks."""
    headings = []
    in_fence = False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and line.startswith("## "):
            headings.append(line[3:].strip())
    return headings


def _missing_or_misordered(headings: list[str]) -> list[str]:
    """Problems with a page's headings, as readable strings; empty when it conforms."""
    problems = []
    positions = []
    for name in HOWTO_HEADINGS:
        if name in headings:
            positions.append(headings.index(name))
        elif name not in OPTIONAL_HEADINGS:
            problems.append(f"no '## {name}'")
    if positions != sorted(positions):
        problems.append(f"headings out of order: {headings}")
    return problems


def test_howto_headings_check_accepts_a_conforming_page_and_names_what_is_missing() -> None:
    page = "## Enable\n```\n## Testing\n```\n## Configure\n## Metrics it emits\n"
    assert _missing_or_misordered(_h2_headings(page)) == ["no '## Testing'"]
    conforming = ["Enable", "Configure", "Every setting", "Metrics it emits", "Testing", "More"]
    assert _missing_or_misordered(conforming) == []
    assert _missing_or_misordered(["Configure", "Enable", "Metrics it emits", "Testing"])


@pytest.mark.parametrize("page", _section("How-to"))
def test_every_howto_page_has_the_common_headings_in_order(page: str) -> None:
    headings = _h2_headings((DOCS / page).read_text(encoding="utf-8"))
    assert _missing_or_misordered(headings) == [], f"docs/{page}"


# --- API reference --------------------------------------------------------------------


def _public_modules() -> list[str]:
    """Dotted names of every public module of the package (no ``_`` part, no template)."""
    found = []
    for path in sorted((SRC / "chassis").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if "templates" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") for part in parts):
            continue
        found.append(".".join(parts))
    return found


def _module_path(module: str) -> Path:
    base = SRC.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _dunder_all(module: str) -> list[str]:
    """A module's ``__all__``, read without importing it (optional extras need not be installed)."""
    tree = ast.parse(_module_path(module).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return [str(name) for name in ast.literal_eval(value)]
    return []


def _directives() -> dict[str, set[str] | None]:
    """Every ``::: module`` of docs/reference: its ``members`` list, or None for all of them."""
    return {module: members for module, (members, _) in _directive_pages().items()}


def _directive_pages() -> dict[str, tuple[set[str] | None, str]]:
    """Every ``::: module`` of docs/reference: its ``members`` (None: all) and its page."""
    found: dict[str, tuple[set[str] | None, str]] = {}
    for page in sorted((DOCS / "reference").glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            match = _DIRECTIVE.match(line)
            if match is None:
                continue
            block = []
            for option in lines[i + 1 :]:
                if option and not option[0].isspace():
                    break
                block.append(option)
            options = (yaml.safe_load(textwrap.dedent("\n".join(block))) or {}).get("options")
            listed = (options or {}).get("members")
            members = None if listed is None else {str(m) for m in listed}
            previous, _ = found.get(match.group(1), (set(), ""))
            merged = None if members is None or previous is None else previous | members
            found[match.group(1)] = (merged, f"reference/{page.name}")
    return found


def test_public_modules_are_found() -> None:
    modules = _public_modules()
    assert {"chassis", "chassis.service", "chassis.events.rabbitmq", "chassis.db"} <= set(modules)
    assert "chassis.testing" in modules
    assert not [m for m in modules if "templates" in m or "._" in m]


@pytest.mark.parametrize(
    "module", [m for m in _public_modules() if m.count(".") == 1], ids=lambda m: m
)
def test_every_public_module_has_a_reference_page_in_the_nav(module: str) -> None:
    pages = _directive_pages()
    assert module in pages, f"no '::: {module}' in any docs/reference/*.md page"
    members, page = pages[module]
    assert page in _section("API reference"), f"docs/{page} is not in the mkdocs.yml nav"
    if members is not None:  # the directive lists its members: it must list every public one
        unlisted = [name for name in _dunder_all(module) if name not in members]
        assert unlisted == [], f"'::: {module}' in docs/{page} leaves out {unlisted}"


@pytest.mark.parametrize(
    "module", [m for m in _public_modules() if m.count(".") == 2], ids=lambda m: m
)
def test_every_public_name_of_a_submodule_is_in_the_reference(module: str) -> None:
    """A submodule's names are documented by its package (re-exported) or by its own directive."""
    package = module.rsplit(".", 1)[0]
    re_exported = set(_dunder_all(package))
    directives = _directives()
    own = directives.get(module, set())
    undocumented = [
        name
        for name in _dunder_all(module)
        if name not in re_exported and own is not None and name not in own
    ]
    assert undocumented == [], (
        f"{module} exports {undocumented}, which {package} does not re-export: list them "
        f"under '::: {module}' (options: members: [...]) in docs/reference/"
    )
