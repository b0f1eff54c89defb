"""The ``chassis`` command: targets, --version, exit codes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import chassis
from chassis.cli import TargetError, load_target, main

from .conftest import REPO

CONSOLE_SCRIPT = Path(sys.executable).parent / "chassis"


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"aiochassis {chassis.__version__}"


def test_console_script_and_module_agree() -> None:
    assert CONSOLE_SCRIPT.exists(), "the console script is installed next to the interpreter"
    for cmd in ([str(CONSOLE_SCRIPT)], [sys.executable, "-m", "chassis"]):
        proc = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0
        assert proc.stdout.strip() == f"aiochassis {chassis.__version__}"


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "run" in capsys.readouterr().err


def test_load_target_from_file_and_from_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = load_target(str(REPO / "examples/hello/app.py") + ":service")
    assert service.name == "hello"

    pkg = tmp_path / "shop"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "api.py").write_text(
        "from chassis import Service\n"
        "def make():\n    return Service('shop')\n"
        "service = Service('shop-static')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_target("shop.api:service").name == "shop-static"
    assert load_target("shop.api:make").name == "shop"  # a factory is called


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no-colon", "invalid target"),
        ("examples/hello/app.py:nothing", "has no attribute"),
        ("examples/hello/missing.py:service", "no such file"),
        ("no_such_module_xyz:service", "cannot import"),
        ("os:sep", "not a chassis Service"),
    ],
)
def test_bad_targets_exit_2_with_one_line(
    target: str, message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(TargetError, match=message):
        load_target(target)
    assert main(["run", target]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chassis: ")
    assert "Traceback" not in err


def test_out_of_range_port_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "examples/hello/app.py:service", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _chassis_run(
    target: str, cwd: Path, out: Path, first_path: str, **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], str, bytes]]:
    """``chassis run target`` on a free port until ``first_path`` answers 200; yields the
    process, its base URL and that first answer. Killed at the end if still running."""
    port = _free_port()
    environ = {**os.environ, "CHASSIS_HEALTH__DRAIN_DELAY_SECONDS": "0", **env}
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "run", target, "--port", str(port)],
            cwd=cwd,
            env=environ,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + first_path, timeout=5) as resp:
                    assert resp.status == 200
                    first = resp.read()
                    break
            except OSError:
                assert time.monotonic() < deadline, out.read_text()
                assert proc.poll() is None, out.read_text()
                time.sleep(0.1)
        yield proc, base, first
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
def test_chassis_run_serves_hello_and_the_three_probes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with _chassis_run("examples/hello/app.py:service", REPO, out, "/health/startup") as (
        proc,
        base,
        _,
    ):
        for path in ("/hello?name=Ada", "/health/live", "/health/ready"):
            with urllib.request.urlopen(base + path, timeout=5) as resp:
                assert resp.status == 200
                body = resp.read()
        with urllib.request.urlopen(base + "/hello?name=Ada", timeout=5) as resp:
            assert resp.read() == b'{"message": "hello, Ada"}'
        assert b"pass" in body
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


LOOP_APP = """
import asyncio

from aiohttp import web

from chassis import Service

service = Service("loops")


@service.get("/loop")
async def loop(request: web.Request) -> web.Response:
    kind = type(asyncio.get_running_loop())
    return web.json_response({"loop": f"{kind.__module__}.{kind.__qualname__}"})
"""


@pytest.mark.slow
@pytest.mark.parametrize(("event_loop", "module"), [("asyncio", "asyncio."), ("uvloop", "uvloop.")])
def test_chassis_run_serves_on_the_configured_event_loop(
    tmp_path: Path, event_loop: str, module: str
) -> None:
    (tmp_path / "loops.py").write_text(LOOP_APP)
    out = tmp_path / "out"
    loop = {"CHASSIS_RUNTIME__EVENT_LOOP": event_loop}
    with _chassis_run("loops.py:service", tmp_path, out, "/loop", **loop) as (proc, _, body):
        assert f'"loop": "{module}' in body.decode()
        proc.send_signal(signal.SIGTERM)  # the signal handlers work on either loop
        assert proc.wait(30) == 0
    assert "stopped" in out.read_text()


def test_uvloop_asked_for_but_missing_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    monkeypatch.setenv("CHASSIS_RUNTIME__EVENT_LOOP", "uvloop")
    monkeypatch.chdir(REPO)
    assert main(["run", "examples/hello/app.py:service"]) == 2
    err = capsys.readouterr().err
    assert "CHASSIS_RUNTIME__EVENT_LOOP" in err and "aiochassis[uvloop]" in err
    assert "Traceback" not in err


def test_an_unknown_event_loop_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHASSIS_RUNTIME__EVENT_LOOP", "tokio")
    monkeypatch.chdir(REPO)
    assert main(["run", "examples/hello/app.py:service"]) == 2
    assert "CHASSIS_RUNTIME__EVENT_LOOP" in capsys.readouterr().err
