"""Probes, checks (critical vs degraded, timeouts, concurrency) and event-loop lag."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from chassis import Health, HealthSettings, Service


async def test_probes_pass_with_no_checks(
    aiohttp_client: AiohttpClient, make_service: Callable[..., Service]
) -> None:
    client = await aiohttp_client(make_service().app)
    for probe in ("live", "ready", "startup"):
        resp = await client.get(f"/health/{probe}")
        assert resp.status == 200, probe
        body = await resp.json()
        assert body["status"] == "pass"
        assert resp.headers["Cache-Control"] == "no-store"
    live = await (await client.get("/health/live")).json()
    assert live["checks"]["chassis:live"]["status"] == "pass"
    assert (await client.get("/health/other")).status == 404


async def test_failing_critical_check_gives_503_and_noncritical_gives_degraded(
    aiohttp_client: AiohttpClient, make_service: Callable[..., Service]
) -> None:
    service = make_service()
    state = {"db": True, "cache": True}

    async def db() -> bool:
        return state["db"]

    @service.health.check("cache", critical=False)
    async def cache() -> None:
        if not state["cache"]:
            raise ConnectionError("cache unreachable")

    service.health.add_check("db", db)
    client = await aiohttp_client(service.app)

    resp = await client.get("/health/ready")
    assert (resp.status, (await resp.json())["status"]) == (200, "pass")

    state["cache"] = False
    resp = await client.get("/health/ready")
    body = await resp.json()
    assert (resp.status, body["status"]) == (200, "degraded")
    assert body["checks"]["cache"] == {
        "status": "fail",
        "critical": False,
        "duration_ms": body["checks"]["cache"]["duration_ms"],
        "error": "ConnectionError: cache unreachable",
    }
    assert body["checks"]["db"]["status"] == "pass"

    state["db"] = False
    resp = await client.get("/health/ready")
    body = await resp.json()
    assert (resp.status, body["status"]) == (503, "fail")
    assert body["checks"]["db"]["error"] == "check returned False"
    # Readiness checks don't touch liveness.
    assert (await client.get("/health/live")).status == 200


async def test_each_check_has_its_own_timeout() -> None:
    health = Health(HealthSettings(check_timeout_seconds=5))
    health.started = True

    async def hangs() -> None:
        await asyncio.sleep(60)

    async def quick() -> None:
        return None

    health.add_check("hangs", hangs, timeout_seconds=0.05)
    health.add_check("quick", quick)
    report = await asyncio.wait_for(health.report("ready"), 10)
    assert report.status == "fail"
    assert report.checks["hangs"]["error"] == "timed out after 0.05s"
    assert report.checks["quick"]["status"] == "pass"


async def test_checks_run_concurrently() -> None:
    health = Health(HealthSettings(check_timeout_seconds=5))
    health.started = True
    first_running = asyncio.Event()

    async def first() -> None:
        first_running.set()
        await asyncio.sleep(0.05)

    async def second() -> None:
        # Would time out if checks ran one after another.
        await asyncio.wait_for(first_running.wait(), 2)

    health.add_check("second", second)
    health.add_check("first", first)
    report = await health.report("ready")
    assert report.status == "pass", report.checks


async def test_checks_are_attached_to_the_probes_they_name() -> None:
    health = Health()
    health.started = True
    calls: list[str] = []

    async def migrations() -> None:
        calls.append("migrations")

    async def deadlock_detector() -> None:
        calls.append("deadlock")

    health.add_check("migrations", migrations, probes=["startup"])
    health.add_check("deadlock", deadlock_detector, probes=["live"])
    assert set((await health.report("startup")).checks) == {"migrations"}
    assert set((await health.report("ready")).checks) == set()
    assert set((await health.report("live")).checks) == {"deadlock", "chassis:live"}
    assert calls == ["migrations", "deadlock"]


def test_check_registration_errors() -> None:
    health = Health()

    async def ok() -> None:
        return None

    health.add_check("a", ok)
    with pytest.raises(ValueError, match="already registered"):
        health.add_check("a", ok)
    with pytest.raises(ValueError, match="unknown probe"):
        health.add_check("b", ok, probes=["sometimes"])  # type: ignore[list-item]


async def test_ready_and_startup_fail_before_startup_and_ready_fails_while_draining() -> None:
    health = Health()
    assert (await health.report("startup")).status == "fail"
    assert (await health.report("ready")).status == "fail"
    health.started = True
    assert (await health.report("ready")).status == "pass"
    health.draining = True
    report = await health.report("ready")
    assert report.status == "fail"
    assert report.checks["chassis:ready"]["error"] == "draining"
    assert (await health.report("live")).status == "pass"  # draining is not dead


async def test_liveness_fails_while_the_event_loop_lags_and_recovers(
    aiohttp_client: AiohttpClient,
) -> None:
    health = Health(HealthSettings(max_event_loop_lag_seconds=0.1, lag_probe_interval_seconds=0.02))
    app = web.Application()
    health.setup(app)
    client = await aiohttp_client(app)
    assert (await client.get("/health/live")).status == 200

    time.sleep(0.5)  # block the loop, as a CPU-bound handler would
    resp = await client.get("/health/live")
    body: dict[str, Any] = await resp.json()
    assert resp.status == 503
    assert "event loop lag" in body["checks"]["chassis:live"]["error"]
    assert health.lag.max_lag_seconds >= 0.3

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (await client.get("/health/live")).status == 200:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("liveness did not recover")
