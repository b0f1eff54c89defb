"""The installed package: complete, current, and importable one module at a time.

Under nox the package is installed from a freshly built wheel, so these tests catch a
module or ``py.typed`` that the wheel leaves out, and a stale install that no longer
matches ``src/``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import chassis

from .conftest import REPO

SOURCE_DIR = REPO / "src" / "chassis"
INSTALLED_DIR = Path(chassis.__file__).resolve().parent


def _package_files(root: Path) -> set[str]:
    """Paths, relative to ``root``, of every file the package ships."""
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def _module_names(root: Path) -> list[str]:
    """Dotted names of every module and subpackage under ``root``."""
    names = []
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts or path.relative_to(root).parts[0] == "templates":
            continue  # templates are data (Jinja, not Python) until rendered
        parts = ["chassis", *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def _fresh_python(code: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter, outside the checkout, with warnings as errors."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
    )


def test_installed_package_has_every_source_file_unchanged() -> None:
    assert SOURCE_DIR.is_dir(), f"tests expect the checkout's sources at {SOURCE_DIR}"
    sources = _package_files(SOURCE_DIR)
    assert "py.typed" in sources
    missing = sorted(sources - _package_files(INSTALLED_DIR))
    assert not missing, f"installed package at {INSTALLED_DIR} lacks {missing}"
    stale = sorted(
        name
        for name in sources
        if (SOURCE_DIR / name).read_bytes() != (INSTALLED_DIR / name).read_bytes()
    )
    assert not stale, f"installed package at {INSTALLED_DIR} is older than src/: {stale}"


@pytest.mark.skipif(
    "NOX_CURRENT_SESSION" not in os.environ, reason="only nox installs from a built wheel"
)
def test_nox_tests_the_built_wheel_not_the_source_tree() -> None:
    assert SOURCE_DIR.resolve() != INSTALLED_DIR
    assert INSTALLED_DIR.parent.name == "site-packages"


MODULES = [name for name in _module_names(INSTALLED_DIR) if name != "chassis.__main__"]

# One interpreter loads the heavy third-party libraries once, then forks a child per
# module: each child starts with no ``chassis`` module loaded and imports just one,
# with warnings as errors. A traceback goes to ``<out>/<module>.err``.
_IMPORT_EACH = """
import importlib, json, os, subprocess, sys, traceback
out, modules = sys.argv[1], sys.argv[2:]
shared = ("asyncio", "aiohttp.web", "pydantic", "pydantic_settings")
for name in shared if hasattr(os, "fork") else ():
    importlib.import_module(name)
codes = {}
for module in modules:
    err = os.path.join(out, module + ".err")
    if not hasattr(os, "fork"):
        with open(err, "w") as stream:
            codes[module] = subprocess.call(
                [sys.executable, "-W", "error", "-c", "import " + module], stderr=stream
            )
        continue
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            assert "chassis" not in sys.modules, "a chassis module was loaded before the fork"
            importlib.import_module(module)
        except BaseException:
            with open(err, "w") as stream:
                traceback.print_exc(file=stream)
            code = 1
        os._exit(code)
    codes[module] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(codes))
"""


@pytest.fixture(scope="module")
def import_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each module's traceback when imported alone ("" when it imports cleanly)."""
    out = tmp_path_factory.mktemp("imports")
    proc = _fresh_python(_IMPORT_EACH, out, str(out), *MODULES)
    assert proc.returncode == 0, proc.stderr
    errors = {}
    for module, code in json.loads(proc.stdout).items():
        err = out / f"{module}.err"
        traceback = err.read_text() if err.exists() else ""
        errors[module] = "" if code == 0 else traceback or f"exit code {code}"
    return errors


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_module_imports_on_its_own(module: str, import_errors: dict[str, str]) -> None:
    assert import_errors[module] == ""


def _optional_modules() -> dict[str, set[str]]:
    """Module names shipped by each installed distribution named in an extra."""
    found: dict[str, set[str]] = {}
    for line in importlib.metadata.requires("aiochassis") or []:
        requirement = Requirement(line)
        if requirement.marker is None or "extra" not in str(requirement.marker):
            continue
        try:
            files = importlib.metadata.files(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        modules = {
            ".".join(file.with_suffix("").parts).removesuffix(".__init__")
            for file in files
            if file.suffix == ".py" and ".." not in file.parts and file.parts[0] != "bin"
        }
        if modules:
            found[requirement.name] = modules
    return found


@pytest.mark.slow
def test_importing_chassis_imports_no_optional_dependency(tmp_path: Path) -> None:
    optional = _optional_modules()
    if not optional:
        pytest.skip("no distribution from an extra is installed")
    proc = _fresh_python(
        "import sys, chassis, json; print(json.dumps(list(sys.modules)))", tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout))
    pulled_in = {name: sorted(mods & loaded) for name, mods in optional.items() if mods & loaded}
    assert not pulled_in, f"`import chassis` imports optional dependencies: {pulled_in}"
