"""chassis.metrics against the real tools: Prometheus scraping a running service, and promtool.

Needs the ``prometheus`` and ``promtool`` binaries (Debian package ``prometheus``):
without them these tests skip, or fail when the ``CI`` variable is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpClient

from chassis import ChassisSettings, Service

pytestmark = pytest.mark.slow

OK, FAILED, MISSING = 7, 3, 4  # requests answered 200, 500 and 404


def binary(name: str) -> str:
    """The path of ``name``; skip without it, or fail when running in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package 'prometheus')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_service() -> Service:
    settings = ChassisSettings(
        log={"access_log": False},
        health={"drain_delay_seconds": 0},
        tracing={"enabled": False},
    )
    service = Service("scraped", version="2.0.0", settings=settings)

    @service.get("/ok")
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    @service.get("/fail")
    async def fail(request: web.Request) -> web.Response:
        raise RuntimeError("deliberate failure")

    return service


@contextlib.asynccontextmanager
async def prometheus(tmp_path: Path, target: str) -> AsyncIterator[str]:
    """A Prometheus server scraping ``target`` every second; yields its base URL."""
    executable = binary("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: chassis\n"
        "    metrics_path: /metrics\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    address = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "prometheus.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        executable,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address={address}",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    url = f"http://{address}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:
                assert process.returncode is None, _tail(tmp_path / "prometheus.log")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/-/ready") as response:
                        if response.status == 200:
                            break
                assert time.monotonic() < deadline, "Prometheus was not ready in 30 s"
                await asyncio.sleep(0.1)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except (TimeoutError, asyncio.TimeoutError):
                process.kill()
                await process.wait()
        log.close()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


async def query(session: aiohttp.ClientSession, url: str, promql: str) -> dict[str, float]:
    """Run an instant query; the result keyed by the ``status_code`` label (or ``""``)."""
    async with session.get(f"{url}/api/v1/query", params={"query": promql}) as response:
        body: dict[str, Any] = await response.json()
    assert body["status"] == "success", body
    return {
        r["metric"].get("status_code", ""): float(r["value"][1]) for r in body["data"]["result"]
    }


async def test_prometheus_counts_exactly_the_requests_sent(tmp_path: Path) -> None:
    service = make_service()
    async with (
        service.running(host="127.0.0.1", port=0) as running,
        prometheus(tmp_path, f"127.0.0.1:{running.port}") as url,
        aiohttp.ClientSession() as session,
    ):
        for path, times, status in (
            ("/ok", OK, 200),
            ("/fail", FAILED, 500),
            ("/nope", MISSING, 404),
        ):
            for _ in range(times):
                async with session.get(running.url + path) as response:
                    assert response.status == status

        requests = 'http_server_request_duration_seconds_count{job="chassis"}'
        by_status = f"sum by (status_code) ({requests})"
        expected = {"200": OK, "500": FAILED, "404": MISSING}
        deadline = time.monotonic() + 60
        while (seen := await query(session, url, by_status)) != expected:
            assert time.monotonic() < deadline, f"Prometheus saw {seen}, not {expected}"
            await asyncio.sleep(0.25)

        errors = 'http_server_request_duration_seconds_count{job="chassis",status_code=~"5.."}'
        assert await query(session, url, f"sum({requests})") == {"": OK + FAILED + MISSING}
        assert await query(session, url, f"sum({errors})") == {"": FAILED}
        assert await query(session, url, 'up{job="chassis"}') == {"": 1}
        info = 'chassis_service_info{service="scraped",version="2.0.0"}'
        assert await query(session, url, info) == {"": 1}


async def test_promtool_finds_nothing_to_lint_in_the_metrics(
    aiohttp_client: AiohttpClient,
) -> None:
    promtool = binary("promtool")
    service = make_service()
    sold = service.metrics.counter("sold_total", "Shares sold.", labels=("side",))
    sold.labels("buy").inc()

    @service.metrics.timed("sell")
    @service.metrics.counted("sell")
    async def sell() -> None:
        await asyncio.sleep(0)

    await sell()
    client = await aiohttp_client(service.app)
    for path in ("/ok", "/fail", "/nope"):
        await client.get(path)
    await client.post("/ok", data=b"body")
    exposition = await (await client.get("/metrics")).read()

    process = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(exposition), 60)

    assert b"http_server_request_duration_seconds_bucket" in exposition
    assert b"scraped_sell_duration_seconds" in exposition
    assert (process.returncode, out, err) == (0, b"", b"")
