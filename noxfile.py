"""Development sessions: ``nox -l`` lists them, ``nox -s ci`` runs everything CI runs.

Every session installs what it needs into its own virtual environment (uv when it is
installed, virtualenv otherwise). Test sessions install the package from a freshly
built wheel, never from the source tree, so a file the wheel leaves out fails a test.
A Python version that is not installed is skipped, on CI too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nox
from packaging.requirements import Requirement

nox.needs_version = ">=2025.10.14"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = False
nox.options.download_python = "never"
nox.options.sessions = ["lint", "typing", "tests"]

ROOT = Path(__file__).resolve().parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
DEPENDENCIES: list[str] = PYPROJECT["project"]["dependencies"]
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]
# Every extra but the tool chain: the tests cover the optional back ends too.
RUNTIME_EXTRAS = sorted(name for name in EXTRAS if name != "dev")
TEST_TOOLS = (
    "pytest",
    "pytest-asyncio",
    "pytest-aiohttp",
    "pytest-timeout",
    "hatchling",
    "hypothesis",
    "playwright",
)
DOCS_TOOLS = ("mkdocs", "mkdocs-material", "mkdocstrings", "ruff")  # ruff formats signatures


def dev(*names: str) -> list[str]:
    """The ``dev`` extra's requirement for each of ``names``: versions live in pyproject."""
    by_name = {Requirement(line).name: line for line in EXTRAS["dev"]}
    return [by_name[name] for name in names]


def runtime_requirements() -> list[str]:
    """The package's own dependencies plus those of every runtime extra."""
    return DEPENDENCIES + [line for extra in RUNTIME_EXTRAS for line in EXTRAS[extra]]


def build_wheel(session: nox.Session) -> Path:
    """Build a wheel of the checkout into the session's empty temporary folder."""
    out = Path(session.create_tmp()) / "wheel"
    shutil.rmtree(out, ignore_errors=True)
    if session.venv_backend == "uv":
        session.run("uv", "build", "--wheel", "--out-dir", str(out), str(ROOT), silent=True)
    else:
        session.install(*dev("build"))
        session.run("python", "-m", "build", "--wheel", "--outdir", str(out), str(ROOT))
    (wheel,) = out.glob("aiochassis-*.whl")
    return wheel


def run_pytest(session: nox.Session) -> None:
    """Run the suite against the installed package; posargs go to pytest."""
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite on each supported Python, against the built wheel."""
    wheel = build_wheel(session)
    session.install(f"{wheel}[{','.join(RUNTIME_EXTRAS)}]", *dev(*TEST_TOOLS))
    run_pytest(session)


def lowest_python() -> str:
    """3.10, the oldest supported Python, when installed; else the one running nox."""
    exe = shutil.which("python3.10")
    if exe and subprocess.run([exe, "-c", ""], capture_output=True, check=False).returncode == 0:
        return "3.10"
    return f"{sys.version_info.major}.{sys.version_info.minor}"


@nox.session(python=lowest_python())
def tests_lowest(session: nox.Session) -> None:
    """The test suite with every direct dependency at its declared lower bound."""
    if session.venv_backend != "uv":
        session.error("tests_lowest needs uv (`pip install uv`) for --resolution lowest-direct")
    wheel = build_wheel(session)
    session.install("--resolution", "lowest-direct", *runtime_requirements(), *dev(*TEST_TOOLS))
    session.install("--no-deps", str(wheel))
    session.run("uv", "pip", "list")
    run_pytest(session)


SIMPLEBANK = ROOT / "examples" / "simplebank"


@nox.session
def simplebank(session: nox.Session) -> None:
    """The SimpleBank example's tests and types, on the built chassis wheel."""
    wheel = build_wheel(session)
    session.install(f"{wheel}[{','.join(RUNTIME_EXTRAS)}]", *dev(*TEST_TOOLS, "mypy"))
    session.install(f"{SIMPLEBANK}[test]")
    session.run("mypy", "--strict", str(SIMPLEBANK / "src"))
    session.chdir(SIMPLEBANK)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def chaos(session: nox.Session) -> None:
    """SimpleBank's chaos suite in its full form (needs rabbitmq-server); prints its table."""
    wheel = build_wheel(session)
    session.install(f"{wheel}[{','.join(RUNTIME_EXTRAS)}]", *dev(*TEST_TOOLS))
    session.install(f"{SIMPLEBANK}[test]")
    session.chdir(SIMPLEBANK)
    env = {"SIMPLEBANK_CHAOS_FULL": "1"}
    session.run(
        "python", "-m", "pytest", "tests/chaos", "-p", "no:cacheprovider", *session.posargs, env=env
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint rules and formatting, checked, never rewritten."""
    session.install(*dev("ruff"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict over src/ (settings in pyproject)."""
    # pytest and pytest-asyncio: the pytest plugin (chassis.pytest_plugin) is typed against them.
    session.install(*runtime_requirements(), *dev("mypy", "pytest", "pytest-asyncio"))
    session.run("mypy", "--strict", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, built with warnings as errors."""
    session.install("-e", ".", *dev(*DOCS_TOOLS))
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", str(Path(session.create_tmp()) / "site")
    )


@nox.session
def build(session: nox.Session) -> None:
    """sdist and wheel into dist/, checked by twine and against src/."""
    uv = session.venv_backend == "uv"
    session.install(*dev("build", "twine"), *(["uv"] if uv else []))
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    installer = ["--installer", "uv"] if uv else []
    session.run("python", "-m", "build", *installer, "--outdir", str(dist), str(ROOT))
    artifacts = sorted(str(path) for path in dist.iterdir())
    session.run("twine", "check", "--strict", *artifacts)
    check_wheel_contents(session, dist)


def check_wheel_contents(session: nox.Session, dist: Path) -> None:
    """The wheel holds exactly the package's source files, ``py.typed`` included."""
    source = ROOT / "src"
    expected = {
        path.relative_to(source).as_posix()
        for path in (source / "chassis").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if ".dist-info/" not in name}
    problems = []
    if "chassis/py.typed" not in shipped:
        problems.append("chassis/py.typed is missing")
    if missing := sorted(expected - shipped):
        problems.append(f"missing from the wheel: {missing}")
    if extra := sorted(shipped - expected):
        problems.append(f"not from src/chassis: {extra}")
    if problems:
        session.error(f"{wheel.name}: " + "; ".join(problems))
    session.log(f"{wheel.name}: {len(shipped)} files, matching src/chassis")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmarks: HTTP overhead (needs ``wrk``) and SimpleBank sagas end to end.

    ``nox -s bench`` runs both; ``nox -s bench -- http ARGS`` or ``-- saga ARGS`` runs
    one, with ARGS going to benchmarks/http_bench.py or benchmarks/saga_bench.py.
    Arguments without a name go to http_bench.py (as before the saga benchmark).
    """
    wheel = build_wheel(session)
    session.install(f"{wheel}[rabbitmq,uvloop]")  # uvloop: saga_bench.py --event-loop uvloop
    which, *args = session.posargs or ["all"]
    if which not in ("all", "http", "saga"):
        which, args = "http", list(session.posargs)
    if which in ("all", "http"):
        session.run("python", "benchmarks/http_bench.py", *args)
    if which in ("all", "saga"):
        session.install(str(SIMPLEBANK))  # its aiochassis requirement is the wheel above
        session.run("python", "benchmarks/saga_bench.py", *args)


@nox.session(python=False)
def ci(session: nox.Session) -> None:
    """Everything CI runs: lint, typing, docs, build, tests on each Python, tests_lowest,
    and the SimpleBank example.

    The sessions are queued after this one and all run; nox exits non-zero if any
    fails. Posargs go to pytest only.
    """
    for name in ("lint", "typing", "build", "docs"):
        session.notify(name, posargs=[])
    for python in PYTHONS:
        session.notify(f"tests-{python}")
    session.notify("tests_lowest")
    session.notify("simplebank")
