"""``chassis new`` and the service template it ships.

The names and options are checked before anything is written; an existing project is
kept unless ``--force``; the plain ``cookiecutter`` command renders the same project;
and a generated project installs next to this chassis, passes its own tests, and
serves its probes until SIGTERM.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import site
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cookiecutter.exceptions import FailedHookException
from cookiecutter.main import cookiecutter

import chassis
from chassis.cli import TEMPLATE_DIR, main

NAME = "shop-api"
PACKAGE = "shop_api"
EXPECTED_FILES = {
    ".dockerignore",
    ".env.example",
    ".github/workflows/ci.yml",
    ".gitignore",
    "Dockerfile",
    "README.md",
    "k8s/deployment.yaml",
    "k8s/service.yaml",
    "noxfile.py",
    "pyproject.toml",
    f"src/{PACKAGE}/__init__.py",
    f"src/{PACKAGE}/app.py",
    f"src/{PACKAGE}/settings.py",
    "tests/conftest.py",
    "tests/test_app.py",
}


@pytest.fixture(autouse=True)
def _cookiecutter_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cookiecutter records replays under ``~``; keep them in the test's folder."""
    config = tmp_path / "cookiecutterrc.yaml"
    config.write_text(
        f"cookiecutters_dir: {tmp_path / 'cookiecutter' / 'templates'}\n"
        f"replay_dir: {tmp_path / 'cookiecutter' / 'replay'}\n"
    )
    monkeypatch.setenv("COOKIECUTTER_CONFIG", str(config))


def files_of(project: Path) -> dict[str, bytes]:
    return {
        path.relative_to(project).as_posix(): path.read_bytes()
        for path in sorted(project.rglob("*"))
        if path.is_file()
    }


def generate(out: Path, *args: str) -> int:
    return main(["new", NAME, "--output-dir", str(out), "--no-input", *args])


def test_new_fills_every_file_of_the_template(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert generate(out) == 0
    files = files_of(out / NAME)
    assert set(files) == EXPECTED_FILES
    for name, content in files.items():
        assert b"cookiecutter" not in content, f"{name} holds an unrendered variable"
        if name.endswith(".py"):
            compile(content, name, "exec")
    # Copied without rendering: GitHub's own expressions survive.
    assert b"${{ matrix.python-version }}" in files[".github/workflows/ci.yml"]
    pyproject = files["pyproject.toml"].decode()
    assert f'dependencies = ["aiochassis>={chassis.__version__}"]' in pyproject
    assert 'SERVICE_NAME = "shop-api"' in files[f"src/{PACKAGE}/app.py"].decode()


def test_manifests_probe_the_chassis_endpoints(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert generate(out) == 0
    project = out / NAME
    deployment, service = (
        yaml.safe_load((project / "k8s" / name).read_text())
        for name in ("deployment.yaml", "service.yaml")
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    probes = {
        kind: container[f"{kind}Probe"]["httpGet"]["path"]
        for kind in ("startup", "liveness", "readiness")
    }
    assert probes == {
        "startup": "/health/startup",
        "liveness": "/health/live",
        "readiness": "/health/ready",
    }
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    dockerfile = (project / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", dockerfile, re.MULTILINE)
    assert "/health/live" in dockerfile.split("HEALTHCHECK", 1)[1]


def test_template_requires_the_current_chassis_version() -> None:
    variables = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())
    # The plain cookiecutter command uses this default: bump it with the version.
    assert variables["_chassis_version"] == chassis.__version__


def test_plain_cookiecutter_command_renders_the_same_project(tmp_path: Path) -> None:
    assert generate(tmp_path / "chassis") == 0
    plain = tmp_path / "plain"
    command = ["cookiecutter", str(TEMPLATE_DIR), "--no-input", "-o", str(plain)]
    proc = subprocess.run(
        [sys.executable, "-m", *command, f"service_name={NAME}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert files_of(plain / NAME) == files_of(tmp_path / "chassis" / NAME)


def test_cookiecutter_api_renders_the_template_with_other_names(tmp_path: Path) -> None:
    project = cookiecutter(
        str(TEMPLATE_DIR),
        no_input=True,
        output_dir=str(tmp_path / "out"),
        extra_context={"service_name": "ledger_v2", "project_slug": "ledger-service"},
    )
    assert Path(project) == tmp_path / "out" / "ledger-service"
    app = (Path(project) / "src" / "ledger_service" / "app.py").read_text()
    assert 'SERVICE_NAME = "ledger_v2"' in app
    test_app = (Path(project) / "tests" / "test_app.py").read_text()
    assert 'LOOKUPS = "ledger_v2_item_lookups_total"' in test_app
    deployment = yaml.safe_load((Path(project) / "k8s" / "deployment.yaml").read_text())
    assert deployment["metadata"]["name"] == "ledger-v2"  # Kubernetes names take no '_'


def test_bytecode_caches_in_the_installed_template_are_not_copied(tmp_path: Path) -> None:
    # pip compiles the template's plain-Python files where the package is installed.
    template = tmp_path / "template"
    shutil.copytree(TEMPLATE_DIR, template)
    for folder in (template / "{{cookiecutter.project_slug}}", template / "hooks"):
        (folder / "__pycache__").mkdir(exist_ok=True)
        (folder / "__pycache__" / "noxfile.cpython-311.pyc").write_bytes(b"\x00")
    project = Path(cookiecutter(str(template), no_input=True, output_dir=str(tmp_path / "out")))
    assert (project / "noxfile.py").is_file()
    assert list(project.rglob("__pycache__")) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Orders", "invalid service name 'Orders'"),
        ("1orders", "invalid service name"),
        ("-orders", "invalid service name"),
        ("my service", "invalid service name"),
        ("orders!", "invalid service name"),
        ("o" * 64, "invalid service name"),
        ("class", "is a Python keyword"),
        ("json", "would shadow the standard library's module"),
        ("chassis", "would shadow a package the service imports"),
    ],
)
def test_invalid_names_are_refused_before_anything_is_written(
    name: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["new", "--output-dir", str(out), "--no-input", "--", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chassis: ")
    assert message in err
    assert "Traceback" not in err
    assert not out.exists()
    # The template's own hook applies the same rules to the plain cookiecutter command.
    with pytest.raises(FailedHookException):
        cookiecutter(
            str(TEMPLATE_DIR),
            no_input=True,
            output_dir=str(out),
            extra_context={"service_name": name},
        )
    assert not out.exists() or not any(out.iterdir())


def test_existing_directory_is_kept_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / NAME
    project.mkdir()
    (project / "README.md").write_text("mine")
    assert generate(tmp_path) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert files_of(project) == {"README.md": b"mine"}


def test_force_writes_the_template_into_an_existing_directory(tmp_path: Path) -> None:
    project = tmp_path / NAME
    project.mkdir()
    (project / "README.md").write_text("mine")
    (project / "NOTES.txt").write_text("kept")
    assert generate(tmp_path, "--force") == 0
    files = files_of(project)
    assert set(files) == EXPECTED_FILES | {"NOTES.txt"}
    assert files["NOTES.txt"] == b"kept"
    assert files["README.md"].startswith(f"# {NAME}\n".encode())


def test_options_answer_the_template_questions(tmp_path: Path) -> None:
    options = {
        "project_slug": "shop-service",
        "description": 'Sells "things"',
        "author": "Ada",
        "version": "2.0.0",
        "python_version": "3.11",
    }
    args = [arg for key, value in options.items() for arg in ("--option", f"{key}={value}")]
    assert generate(tmp_path, *args) == 0
    project = tmp_path / "shop-service"
    pyproject = (project / "pyproject.toml").read_text()
    assert 'name = "shop-service"' in pyproject
    assert r'description = "Sells \"things\""' in pyproject
    assert 'authors = [{ name = "Ada" }]' in pyproject
    assert '__version__ = "2.0.0"' in (project / "src/shop_service/__init__.py").read_text()
    assert "FROM python:3.11-slim" in (project / "Dockerfile").read_text()
    assert 'SERVICE_NAME = "shop-api"' in (project / "src/shop_service/app.py").read_text()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("colour", "--option takes KEY=VALUE"),
        ("colour=red", "unknown option 'colour'"),
        ("_chassis_version=0.0.1", "unknown option '_chassis_version'"),
        ("python_version=2.7", "option python_version must be one of"),
        ("service_name=other", "the service name is NAME"),
        ("project_slug=Shop", "invalid project_slug 'Shop'"),
        ("project_slug=json", "would shadow the standard library's module"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(
    option: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert generate(out, "--option", option) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_template_extra_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for module in ("cookiecutter", "cookiecutter.main", "cookiecutter.exceptions"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    assert generate(tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "pip install 'aiochassis[template]'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


# -- a generated project, end to end -----------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the variables that would steer the child processes."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CHASSIS_", "OTEL_", "PYTEST_", "PYTHON", "VIRTUAL_ENV"))
    }
    return {**env, **extra}


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=90, check=False
    )
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def venv_with_this_chassis(path: Path) -> tuple[Path, list[str]]:
    """A virtual environment that sees this interpreter's packages (this chassis, pytest).

    ``venv --system-site-packages`` would see the base interpreter's packages instead
    when the tests themselves run in a virtual environment (as under nox). Returns the
    environment's interpreter and a pip command installing into it, without running
    ensurepip (slow): this environment's pip, or the wheel that ensurepip would install.
    """
    run([sys.executable, "-m", "venv", "--without-pip", str(path)], path.parent, clean_env())
    python = path / ("Scripts" if os.name == "nt" else "bin") / "python"
    purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        path.parent,
        clean_env(),
    ).stdout.strip()
    parents = "".join(f"site.addsitedir({d!r}); " for d in site.getsitepackages())
    (Path(purelib) / "_parent_env.pth").write_text(f"import site; {parents}\n")
    if importlib.util.find_spec("pip") is not None:
        return python, [str(python), "-m", "pip"]
    import ensurepip

    wheels = sorted((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"))
    assert wheels, "no pip here, nor a pip wheel bundled with ensurepip"
    return python, [str(python), str(wheels[-1] / "pip")]


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening, kept meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def get(url: str) -> tuple[int, dict[str, object]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, json.loads(response.read())


@pytest.mark.slow
def test_generated_service_installs_passes_its_tests_and_serves(tmp_path: Path) -> None:
    # Generated by the command, without a terminal: no prompt, no --no-input needed.
    proc = subprocess.run(
        [sys.executable, "-m", "chassis", "new", NAME, "--output-dir", str(tmp_path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    project = tmp_path / NAME

    python, pip = venv_with_this_chassis(tmp_path / "venv")
    install = [*pip, "install", "-q", "--disable-pip-version-check", "--no-deps"]
    if importlib.util.find_spec("hatchling") is not None:  # build offline with it
        install += ["--no-index", "--no-build-isolation"]
    run([*install, str(project)], tmp_path, clean_env())

    tests = run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], project, clean_env())
    assert re.search(r"^\d+ passed in ", tests.stdout, re.MULTILINE), tests.stdout  # only passed

    # Run it as the example environment file says, outside the project directory.
    workdir = tmp_path / "run"
    workdir.mkdir()
    shutil.copy(project / ".env.example", workdir / ".env")
    with refusing_port() as port:
        inventory = json.dumps({"inventory": [f"http://127.0.0.1:{port}"]})
        env = clean_env(CHASSIS_LOG__FORMAT="json", CHASSIS_DISCOVERY__STATIC=inventory)
        serve_until_sigterm(python, project, workdir, env)


def serve_until_sigterm(python: Path, project: Path, workdir: Path, env: dict[str, str]) -> None:
    """``chassis run`` the project, check it over HTTP, SIGTERM it: it exits 0."""
    with subprocess.Popen(
        [str(python), "-m", "chassis", "run", f"{PACKAGE}.app:create_service", "--port", "0"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as server:
        assert server.stdout is not None
        stdout = server.stdout
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in stdout])
        reader.start()
        try:
            url = wait_until_listening(server, lines)
            check_running_service(url, project, python, workdir)
            server.send_signal(signal.SIGTERM)
            assert server.wait(30) == 0
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(10)
            reader.join(10)  # the output ends with the process, before Popen closes it


def wait_until_listening(server: subprocess.Popen[str], lines: queue.Queue[str]) -> str:
    """The URL of the server's ``listening`` log line, read within 30 seconds."""
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while '"event": "listening"' not in (seen[-1] if seen else ""):
        assert time.monotonic() < deadline, "".join(seen)
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            assert server.poll() is None, "".join(seen)
    return str(json.loads(seen[-1])["url"])


def check_running_service(url: str, project: Path, python: Path, workdir: Path) -> None:
    status, ready = get(url + "/health/ready")
    assert (status, ready["status"]) == (200, "degraded")  # the inventory is not there
    status, item = get(url + "/items/apple")
    assert (status, item["degraded"]) == (200, True)  # answered by the fallback
    deployment = yaml.safe_load((project / "k8s" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert get(url + container[probe]["httpGet"]["path"])[0] == 200

    # The image's HEALTHCHECK command, run against this process.
    dockerfile = (project / "Dockerfile").read_text()
    healthcheck = re.search(r"^HEALTHCHECK .*\\\n\s+CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert healthcheck is not None
    argv = json.loads(healthcheck.group(1))
    assert argv[0] == "python"
    port = url.rsplit(":", 1)[1]
    run([str(python), *argv[1:]], workdir, clean_env(CHASSIS_HTTP__PORT=port))
