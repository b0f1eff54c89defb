"""Service: routes, running(), lifespans, and the graceful shutdown sequence."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp import web

from chassis import SERVICE_KEY, SETTINGS_KEY, ConfigError, LifecycleError, Service
from chassis.config import RuntimeSettings
from chassis.service import run_on_event_loop

from .conftest import REPO, quick_settings


def test_service_names_are_validated() -> None:
    for bad in ("", "Orders", "1st", "has space", "x" * 64):
        with pytest.raises(ValueError, match="invalid service name"):
            Service(bad)
    assert Service("market-data").name == "market-data"


async def test_route_decorators_and_typed_state(make_service: Callable[..., Service]) -> None:
    service = make_service("crud")
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.method)
        assert request.app[SERVICE_KEY] is service
        assert request.app[SETTINGS_KEY] is service.settings
        return web.Response(text=request.method)

    for method in ("get", "post", "put", "patch", "delete"):
        assert getattr(service, method)("/thing")(handler) is handler

    async with service.running("127.0.0.1", 0) as running, aiohttp.ClientSession() as http:
        assert running.url == f"http://127.0.0.1:{running.port}"
        assert running.port > 0
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
            async with http.request(method, running.url + "/thing") as resp:
                assert resp.status == 200, method
    assert seen == ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


async def test_a_service_runs_once(make_service: Callable[..., Service]) -> None:
    service = make_service()
    async with service.running("127.0.0.1", 0):
        pass
    with pytest.raises(LifecycleError, match="already been started"):
        async with service.running("127.0.0.1", 0):
            pass


async def test_two_services_run_side_by_side_in_one_process(
    make_service: Callable[..., Service],
) -> None:
    a, b = make_service("alpha"), make_service("beta")
    for svc in (a, b):

        @svc.get("/whoami")
        async def whoami(request: web.Request) -> web.Response:
            return web.Response(text=request.app[SERVICE_KEY].name)

    async with (
        a.running("127.0.0.1", 0) as ra,
        b.running("127.0.0.1", 0) as rb,
        aiohttp.ClientSession() as http,
    ):
        assert ra.port != rb.port
        for running, name in ((ra, "alpha"), (rb, "beta")):
            async with http.get(running.url + "/whoami") as resp:
                assert await resp.text() == name


async def test_a_port_in_use_fails_at_once_without_a_drain(
    make_service: Callable[..., Service], logs: Any
) -> None:
    service = make_service(health={"drain_delay_seconds": 30})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serving = service.running("127.0.0.1", port)
        with pytest.raises(OSError, match=r"(?i)address already in use"):
            await serving.__aenter__()
    assert not service.health.draining
    events = [r.get("event") for r in logs.records]
    assert "draining" not in events
    assert "stopped" in events  # startup was undone


async def test_lifespans_start_in_order_and_stop_in_reverse(
    make_service: Callable[..., Service],
) -> None:
    service = make_service()
    events: list[str] = []

    @service.lifespan
    async def database(app: web.Application) -> AsyncIterator[None]:
        events.append("db open")
        yield
        events.append("db close")

    @service.lifespan
    async def broker(app: web.Application) -> AsyncIterator[None]:
        events.append("broker open")
        yield
        events.append("broker close")

    async with service.running("127.0.0.1", 0):
        assert service.health.started
        events.append("serving")
    assert events == ["db open", "broker open", "serving", "broker close", "db close"]


async def test_drain_sequence_in_process(make_service: Callable[..., Service]) -> None:
    """Readiness fails at once, the listener stays open for the delay, in-flight finishes,
    cleanups run after the last request."""
    service = make_service(health={"drain_delay_seconds": 0.6, "shutdown_timeout_seconds": 20})
    release = asyncio.Event()
    entered = asyncio.Event()
    events: list[str] = []

    @service.get("/slow")
    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        events.append("slow done")
        return web.Response(text="done")

    @service.lifespan
    async def resource(app: web.Application) -> AsyncIterator[None]:
        yield
        events.append("cleanup")

    stop = asyncio.Event()
    port_box: list[int] = []

    async def serve() -> None:
        async with service.running("127.0.0.1", 0) as running:
            port_box.append(running.port)
            await stop.wait()
            events.append("drain begins")

    server = asyncio.create_task(serve())
    async with aiohttp.ClientSession() as http:
        while not port_box:
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{port_box[0]}"
        slow_request = asyncio.create_task(http.get(url + "/slow"))
        await asyncio.wait_for(entered.wait(), 10)

        stop.set()
        await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as fresh:  # new connection during the delay
            async with fresh.get(url + "/health/ready") as resp:
                assert resp.status == 503
                assert (await resp.json())["checks"]["chassis:ready"]["error"] == "draining"
            async with fresh.get(url + "/health/live") as resp:
                assert resp.status == 200

        # After the delay the listener is closed while the slow request is still held.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _accepts(port_box[0]):
            await asyncio.sleep(0.05)
        assert not _accepts(port_box[0])
        assert "slow done" not in events

        release.set()
        resp = await asyncio.wait_for(slow_request, 10)
        assert resp.status == 200
        assert await resp.text() == "done"
        resp.release()
    await asyncio.wait_for(server, 20)
    assert events == ["drain begins", "slow done", "cleanup"]


async def test_shutdown_timeout_bounds_a_stuck_request(
    make_service: Callable[..., Service],
) -> None:
    service = make_service(health={"drain_delay_seconds": 0, "shutdown_timeout_seconds": 0.3})
    entered = asyncio.Event()

    @service.get("/stuck")
    async def stuck(request: web.Request) -> web.Response:
        entered.set()
        await asyncio.sleep(3600)
        return web.Response()

    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with service.running("127.0.0.1", 0) as running:
            request = asyncio.create_task(http.get(running.url + "/stuck"))
            await asyncio.wait_for(entered.wait(), 10)
        assert time.monotonic() - started < 30
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(request, 10)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
async def test_sigterm_drains_a_real_process_and_exits_zero(tmp_path: Path) -> None:
    """The example as a real subprocess: slow requests in flight all get 200 after SIGTERM."""
    port = _free_port()
    env = {
        **os.environ,
        "CHASSIS_HEALTH__DRAIN_DELAY_SECONDS": "1",
        "CHASSIS_HEALTH__SHUTDOWN_TIMEOUT_SECONDS": "20",
        "CHASSIS_LOG__LEVEL": "INFO",
    }
    stdout_path, stderr_path = tmp_path / "stdout", tmp_path / "stderr"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chassis", "run", "examples/hello/app.py:service",
             "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await _wait_ready(http, url, proc, stderr_path)
            slow = [
                asyncio.create_task(_fetch(http, f"{url}/slow?seconds=4&n={i}")) for i in range(5)
            ]
            await asyncio.sleep(0.5)  # let them arrive
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.1)

            async with aiohttp.ClientSession() as fresh:
                status, _ = await _fetch(fresh, url + "/health/ready")
                assert status == 503  # readiness flips at once
                status, body = await _fetch(fresh, url + "/hello")
                assert status == 200  # still serving during the drain delay
                assert json.loads(body) == {"message": "hello, world"}

            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _accepts(port):
                await asyncio.sleep(0.05)
            assert not _accepts(port)  # listener closed after the delay ...
            assert not all(task.done() for task in slow)  # ... while requests are in flight

            results = await asyncio.wait_for(asyncio.gather(*slow), 30)
            assert [status for status, _ in results] == [200] * 5
        returncode = await asyncio.wait_for(asyncio.to_thread(proc.wait), 30)
        assert returncode == 0
        out = stdout_path.read_text()
        events = [json.loads(line).get("event") for line in out.splitlines() if line.strip()]
        order = [e for e in events if e in {"signal", "draining", "stopped", "drained"}]
        assert order == ["signal", "draining", "stopped", "drained"]
        slow_lines = [json.loads(line) for line in out.splitlines() if '"route": "/slow"' in line]
        assert len(slow_lines) == 5
        assert {line["status"] for line in slow_lines} == {200}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def _fetch(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=30)) as resp:
        return resp.status, await resp.text()


async def _wait_ready(
    http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[Any], stderr: Path
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"service exited early ({proc.returncode}): {stderr.read_text()}")
        try:
            status, _ = await _fetch(http, url + "/health/ready")
            if status == 200:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    pytest.fail("service did not become ready")


def test_quick_settings_helper_has_no_drain_delay() -> None:
    assert quick_settings().health.drain_delay_seconds == 0


@pytest.mark.parametrize(
    ("runtime", "tuned"),
    [({"gc_threshold": 4321}, True), ({"gc_freeze": False, "gc_threshold": 0}, False)],
)
async def test_serve_tunes_the_collector_while_serving_and_restores_it(
    runtime: dict[str, Any], tuned: bool
) -> None:
    import gc

    service = Service("gc", settings=quick_settings(runtime=runtime))

    @service.get("/gc")
    async def collector(request: web.Request) -> web.Response:
        return web.json_response(
            {"threshold": list(gc.get_threshold()), "frozen": gc.get_freeze_count()}
        )

    before = gc.get_threshold()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = asyncio.create_task(service.serve("127.0.0.1", port))
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 15
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/gc") as resp:
                        seen = await resp.json()
                        break
                except aiohttp.ClientConnectionError:
                    assert time.monotonic() < deadline, "the service never answered"
                    await asyncio.sleep(0.05)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # serve() handles it on the loop, then drains
        await asyncio.wait_for(server, 30)
    if tuned:
        assert seen["threshold"] == [4321, *before[1:]] and seen["frozen"] > 1000
    else:
        assert seen["threshold"] == list(before) and seen["frozen"] == 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


async def _loop_kind(answer: int) -> tuple[str, int]:
    return type(asyncio.get_running_loop()).__module__, answer


@pytest.mark.parametrize(("event_loop", "module"), [("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_run_on_event_loop_runs_on_the_named_loop_and_returns_the_result(
    event_loop: Literal["asyncio", "uvloop"], module: str
) -> None:
    seen = run_on_event_loop(_loop_kind(42), RuntimeSettings(event_loop=event_loop))
    assert seen[0].split(".")[0] == module and seen[1] == 42


def test_run_on_event_loop_reads_the_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHASSIS_RUNTIME__EVENT_LOOP", "uvloop")
    assert run_on_event_loop(_loop_kind(1))[0].startswith("uvloop")


def test_run_on_event_loop_without_uvloop_names_the_variable_and_closes_the_coroutine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    main = _loop_kind(1)
    with pytest.raises(ConfigError) as caught:
        run_on_event_loop(main, RuntimeSettings(event_loop="uvloop"))
    assert caught.value.errors[0][0] == "CHASSIS_RUNTIME__EVENT_LOOP"
    assert "aiochassis[uvloop]" in str(caught.value)
    assert main.cr_frame is None  # closed: never run, and no "never awaited" warning
