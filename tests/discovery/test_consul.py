"""ConsulRegistry and the Discovery capability against Consul, over real loopback sockets.

Runs against ConsulStandIn, or a real agent when CHASSIS_TEST_CONSUL_ADDR is set
(see conftest.py and docs/discovery.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from chassis import RunningService, Service
from chassis.discovery import ConsulRegistry, DiscoveryError, Registration

from .conftest import (
    CHECK_INTERVAL_SECONDS,
    WATCH_WAIT_SECONDS,
    ConsulTarget,
    consul_service,
    discovery_of,
    eventually,
)


def metric(registry: CollectorRegistry, name: str, service: str) -> float:
    return registry.get_sample_value(name, {"service": service}) or 0.0


@contextlib.asynccontextmanager
async def resolver(consul: ConsulTarget, **options: float) -> AsyncIterator[ConsulRegistry]:
    """A second party looking services up, with its own metrics."""
    settings: dict[str, float] = {
        "watch_wait_seconds": WATCH_WAIT_SECONDS,
        "request_timeout_seconds": 2.0,
    }
    settings.update(options)
    registry = ConsulRegistry(
        addr=consul.url,
        token=consul.token,
        metrics_registry=CollectorRegistry(),
        **settings,  # type: ignore[arg-type]
    )
    try:
        yield registry
    finally:
        await registry.aclose()


async def test_registration_round_trip(consul: ConsulTarget) -> None:
    name = consul.unique("orders")
    me = Registration(
        service=name,
        id=f"{name}-1",
        address="127.0.0.1",
        port=4567,
        version="2.0.1",
        tags=("blue", "v2"),
        meta={"zone": "a"},
    )
    async with resolver(consul) as registry:
        await registry.register(me)
        service = (await consul.services())[me.id]
        assert service["Service"] == name
        assert service["Address"] == "127.0.0.1"
        assert service["Port"] == 4567
        assert service["Tags"] == ["blue", "v2"]
        assert service["Meta"] == {"zone": "a", "version": "2.0.1"}
        [check] = [c for c in (await consul.checks()).values() if c["ServiceID"] == me.id]
        assert check["Type"] == "http"
        assert check["Interval"] == "10s"
        assert check["Status"] in {"critical", "passing"}  # nothing listens: never passing
        assert check["Status"] == "critical"

        await registry.deregister(me)
        assert me.id not in await consul.services()
        assert not [c for c in (await consul.checks()).values() if c["ServiceID"] == me.id]
        await registry.deregister(me)  # unknown ids are ignored


async def test_blocking_query_returns_promptly_on_change_and_waits_otherwise(
    consul: ConsulTarget,
) -> None:
    name = consul.unique("blocking")
    path = f"/v1/health/service/{name}"
    _, headers = await consul.get(path)
    index = int(headers["X-Consul-Index"])
    assert index >= 1

    # Nothing changes: the query holds for about `wait` (Consul adds up to wait/16).
    started = time.monotonic()
    body, headers = await consul.get(path, index=str(index), wait="1s")
    held = time.monotonic() - started
    assert body == []
    assert int(headers["X-Consul-Index"]) == index
    assert 0.9 <= held < 10

    # A change ends a long wait at once.
    blocked = asyncio.ensure_future(consul.get(path, index=str(index), wait="30s"))
    await asyncio.sleep(0.3)
    assert not blocked.done()
    started = time.monotonic()
    status = await consul.put(
        "/v1/agent/service/register",
        {"Name": name, "ID": f"{name}-1", "Port": 1, "Check": {"TTL": "30s"}},
    )
    assert status == 200
    body, headers = await asyncio.wait_for(blocked, 20)
    assert time.monotonic() - started < 10
    assert int(headers["X-Consul-Index"]) > index
    assert [entry["Service"]["ID"] for entry in body] == [f"{name}-1"]
    # The check starts critical, so ?passing leaves the instance out.
    passing, _ = await consul.get(path, passing="1")
    assert passing == []


async def test_registered_service_becomes_passing_through_the_real_http_check(
    consul: ConsulTarget,
) -> None:
    service = consul_service(consul, "orders")
    async with service.running("127.0.0.1", 0) as running, resolver(consul) as registry:
        registration = discovery_of(service).registration
        assert registration is not None
        assert registration.port == running.port
        assert registration.id.startswith(f"{service.name}-127.0.0.1-{running.port}-")

        async def resolved() -> bool:
            return [i.id for i in await registry.resolve(service.name)] == [registration.id]

        await eventually(resolved)
        [instance] = await registry.resolve(service.name)
        assert instance.url == running.url
        assert instance.meta["version"] == "1.2.3"
        check = next(c for c in (await consul.checks()).values() if c["ServiceID"] == instance.id)
        assert check["Status"] == "passing"
        assert check["Output"].startswith(f"HTTP GET {running.url}/health/ready: 200")


async def test_an_instance_failing_its_check_drops_out_within_an_interval_and_a_watch_cycle(
    consul: ConsulTarget,
) -> None:
    service = consul_service(consul, "flaky")
    healthy = True

    async def flag() -> bool:
        return healthy

    service.health.add_check("flag", flag)
    async with service.running("127.0.0.1", 0), resolver(consul) as registry:

        async def present() -> bool:
            return len(await registry.resolve(service.name)) == 1

        async def gone() -> bool:
            return await registry.resolve(service.name) == []

        await eventually(present)
        healthy = False
        took = await eventually(gone)
        # One check interval for the agent to notice, one watch cycle to hear of it.
        assert took < CHECK_INTERVAL_SECONDS + WATCH_WAIT_SECONDS + 2.0
        healthy = True
        await eventually(present)


@pytest.mark.standin_only(reason="stops and restarts the agent")
async def test_lookups_survive_an_outage_from_the_stale_cache_and_the_watch_backs_off(
    consul: ConsulTarget,
) -> None:
    assert consul.standin is not None
    service = consul_service(consul, "market-data")
    async with service.running("127.0.0.1", 0), resolver(consul) as registry:
        metrics = registry.metrics_registry

        async def present() -> bool:
            return len(await registry.resolve(service.name)) == 1

        await eventually(present)
        before = await registry.resolve(service.name)
        assert metric(metrics, "chassis_discovery_cache_age_seconds", service.name) == 0

        await consul.standin.stop()
        outage_seconds = 4.0
        deadline = time.monotonic() + outage_seconds
        lookups = 0
        while time.monotonic() < deadline:
            assert await registry.resolve(service.name) == before
            lookups += 1
            await asyncio.sleep(0.05)

        errors = metric(metrics, "chassis_discovery_watch_errors_total", service.name)
        stale = metric(metrics, "chassis_discovery_stale_lookups_total", service.name)
        age = metric(metrics, "chassis_discovery_cache_age_seconds", service.name)
        # Backed off: a handful of attempts in four seconds, not hundreds.
        assert 1 <= errors <= 10
        assert stale >= lookups - 5  # lookups right after the stop may predate the first error
        assert age > 1.0

        await consul.standin.start()

        async def fresh() -> bool:
            return metric(metrics, "chassis_discovery_cache_age_seconds", service.name) == 0

        await eventually(fresh, timeout=40)  # the back-off may be mid-step
        stale_after = metric(metrics, "chassis_discovery_stale_lookups_total", service.name)
        await registry.resolve(service.name)
        assert metric(metrics, "chassis_discovery_stale_lookups_total", service.name) == stale_after


async def test_resolving_with_nothing_cached_while_consul_is_down_raises() -> None:
    registry = ConsulRegistry(
        addr="http://127.0.0.1:9", request_timeout_seconds=1, watch_backoff_initial_seconds=0.05
    )
    try:
        with pytest.raises(DiscoveryError, match="nothing is cached") as caught:
            await registry.resolve("ghost")
        assert caught.value.service == "ghost"
        assert isinstance(caught.value, ConnectionError)
    finally:
        await registry.aclose()
    await registry.aclose()  # idempotent


@pytest.mark.parametrize(
    ("addr", "shown"),
    [
        ("http://bank:consul-pw-SECRET@127.0.0.1:9", "http://127.0.0.1:9"),
        ("http://:consul-pw-SECRET@127.0.0.1:9/", "http://127.0.0.1:9/"),
        ("http://bank:consul%40pw-SECRET@[::1]:9", "http://[::1]:9"),
        ("http://127.0.0.1:9", "http://127.0.0.1:9"),
    ],
)
async def test_the_snapshot_shows_the_agent_address_without_credentials(
    addr: str, shown: str
) -> None:
    registry = ConsulRegistry(addr=addr, metrics_registry=CollectorRegistry())
    try:
        snapshot = registry.snapshot()
    finally:
        await registry.aclose()
    assert snapshot["addr"] == shown
    assert "SECRET" not in repr(snapshot)


async def _serve_until(service: Service, stop: asyncio.Event, box: list[RunningService]) -> None:
    async with service.running("127.0.0.1", 0) as running:
        box.append(running)
        await stop.wait()


async def test_leaving_running_deregisters_before_the_drain_ends(consul: ConsulTarget) -> None:
    service = consul_service(consul, "drainer", health={"drain_delay_seconds": 3})
    stop = asyncio.Event()
    box: list[RunningService] = []
    server = asyncio.create_task(_serve_until(service, stop, box))
    registration = None

    async def registered() -> bool:
        nonlocal registration
        registration = discovery_of(service).registration
        return registration is not None and registration.id in await consul.services()

    await eventually(registered)
    assert registration is not None
    stop.set()

    async def deregistered() -> bool:
        return registration.id not in await consul.services()

    await eventually(deregistered, timeout=2.5)
    # Still in the drain delay: not finished, and still accepting connections.
    assert not server.done()
    async with aiohttp.ClientSession() as http:
        async with http.get(box[0].url + "/health/live") as resp:
            assert resp.status == 200
        async with http.get(box[0].url + "/health/ready") as resp:
            assert resp.status == 503
    await asyncio.wait_for(server, 20)


async def test_sigterm_deregisters_before_the_drain_ends(consul: ConsulTarget) -> None:
    service = consul_service(consul, "sigterm", health={"drain_delay_seconds": 3})
    server = asyncio.create_task(service.serve("127.0.0.1", 0))
    registration = None

    async def registered() -> bool:
        nonlocal registration
        registration = discovery_of(service).registration
        return registration is not None and registration.id in await consul.services()

    try:
        await eventually(registered)
        assert registration is not None
        os.kill(os.getpid(), signal.SIGTERM)  # handled by serve()'s loop signal handler

        async def deregistered() -> bool:
            return registration.id not in await consul.services()

        await eventually(deregistered, timeout=2.5)
        assert not server.done()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{registration.port}/health/ready") as resp,
        ):
            assert resp.status == 503
        await asyncio.wait_for(server, 20)
    finally:
        if not server.done():
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server


async def test_ttl_check_goes_critical_when_not_refreshed(consul: ConsulTarget) -> None:
    name = consul.unique("ttl")
    service_id = f"{name}-1"
    status = await consul.put(
        "/v1/agent/service/register",
        {"Name": name, "ID": service_id, "Address": "127.0.0.1", "Port": 1, "Check": {"TTL": "2s"}},
    )
    assert status == 200
    check_id = f"service:{service_id}"
    async with resolver(consul) as registry:
        assert (await consul.checks())[check_id]["Status"] == "critical"
        assert await registry.resolve(name) == []

        assert await consul.put(f"/v1/agent/check/pass/{check_id}", note="alive") == 200
        check = (await consul.checks())[check_id]
        assert (check["Status"], check["Output"]) == ("passing", "alive")

        async def present() -> bool:
            return [i.id for i in await registry.resolve(name)] == [service_id]

        await eventually(present)

        async def expired() -> bool:
            return (await consul.checks())[check_id]["Status"] == "critical"

        took = await eventually(expired, timeout=15)
        assert took > 1.0  # not before the TTL
        assert (await consul.checks())[check_id]["Output"].startswith("TTL expired")

        async def gone() -> bool:
            return await registry.resolve(name) == []

        await eventually(gone)

        assert await consul.put(f"/v1/agent/check/warn/{check_id}") == 200
        assert (await consul.checks())[check_id]["Status"] == "warning"
        await eventually(gone)  # ?passing excludes warnings too


@pytest.mark.standin_only(
    reason="a real agent reaps every 30 s and only after at least one minute critical"
)
async def test_instances_critical_longer_than_deregister_after_are_reaped(
    consul: ConsulTarget,
) -> None:
    name = consul.unique("reaped")
    status = await consul.put(
        "/v1/agent/service/register",
        {
            "Name": name,
            "ID": f"{name}-1",
            "Port": 1,
            "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "1s"},
        },
    )
    assert status == 200
    kept = await consul.put(
        "/v1/agent/service/register",
        {"Name": name, "ID": f"{name}-2", "Port": 2, "Check": {"TTL": "30s"}},
    )
    assert kept == 200

    async def reaped() -> bool:
        return f"{name}-1" not in await consul.services()

    took = await eventually(reaped, timeout=15)
    assert took > 0.8  # not before DeregisterCriticalServiceAfter
    assert f"{name}-2" in await consul.services()  # critical, but without a deadline


async def test_maintenance_mode_takes_an_instance_out_of_lookups(consul: ConsulTarget) -> None:
    service = consul_service(consul, "maint")
    async with service.running("127.0.0.1", 0), resolver(consul) as registry:
        registration = discovery_of(service).registration
        assert registration is not None

        async def present() -> bool:
            return len(await registry.resolve(service.name)) == 1

        async def gone() -> bool:
            return await registry.resolve(service.name) == []

        await eventually(present)
        await registry.maintenance(registration, enabled=True, reason="moving racks")
        await eventually(gone)
        check = (await consul.checks())[f"_service_maintenance:{registration.id}"]
        assert check["Status"] == "critical"
        assert check["Notes"] == "moving racks"
        assert check["Name"] == "Service Maintenance Mode"
        assert registration.id in await consul.services()  # still registered

        await registry.maintenance(registration, enabled=False)
        await eventually(present)
        assert f"_service_maintenance:{registration.id}" not in await consul.checks()


async def test_watch_yields_current_instances_and_changes(consul: ConsulTarget) -> None:
    name = consul.unique("watched")

    async def register(n: int) -> None:
        body = {"Name": name, "ID": f"{name}-{n}", "Port": n, "Check": {"TTL": "60s"}}
        assert await consul.put("/v1/agent/service/register", body) == 200
        assert await consul.put(f"/v1/agent/check/pass/service:{name}-{n}") == 200

    await register(1)
    async with resolver(consul) as registry:
        watch = registry.watch(name)
        seen: list[list[int]] = []

        async def collect() -> None:
            async for instances in watch:
                seen.append([i.port for i in instances])

        collector = asyncio.create_task(collect())

        async def saw(ports: list[int]) -> bool:
            return bool(seen) and seen[-1] == ports

        await eventually(lambda: saw([1]))
        await register(2)
        await eventually(lambda: saw([1, 2]))
        await registry.aclose()
        await asyncio.wait_for(collector, 10)  # closing ends the watch
    assert seen[0] == [1]


@pytest.mark.standin_only(reason="stops the agent")
async def test_an_unreachable_agent_degrades_readiness_without_failing_it(
    consul: ConsulTarget,
) -> None:
    assert consul.standin is not None
    service = consul_service(consul, "degraded")
    async with service.running("127.0.0.1", 0) as running, aiohttp.ClientSession() as http:
        async with http.get(running.url + "/health/ready") as resp:
            assert resp.status == 200
            body = await resp.json()
            assert body["checks"]["consul"] == {**body["checks"]["consul"], "status": "pass"}
        await consul.standin.stop()
        async with http.get(running.url + "/health/ready") as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["status"] == "degraded"
        assert body["checks"]["consul"]["status"] == "fail"
        assert body["checks"]["consul"]["critical"] is False
        await consul.standin.start()


@pytest.mark.standin_only(reason="starts the service while the agent is down")
async def test_registration_is_retried_when_the_agent_is_down_at_startup(
    consul: ConsulTarget,
) -> None:
    assert consul.standin is not None
    await consul.standin.stop()
    service = consul_service(consul, "patient", watch_backoff_initial_seconds=0.1)
    async with service.running("127.0.0.1", 0):  # starting does not wait for Consul
        registration = discovery_of(service).registration
        assert registration is not None
        await asyncio.sleep(0.5)
        await consul.standin.start()

        async def registered() -> bool:
            return registration.id in await consul.services()

        await eventually(registered, timeout=30)
    assert consul.standin.service_ids() == []  # and deregistered on the way out
