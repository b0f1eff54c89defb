"""Fixtures for the discovery tests: a Consul to talk to, and consul-backed services.

The integration tests run against :class:`chassis.testing.ConsulStandIn` by default
and against a real agent when ``CHASSIS_TEST_CONSUL_ADDR`` is set (with
``CHASSIS_TEST_CONSUL_TOKEN`` when it has ACLs). Tests that need the stand-in's
knobs (stop/start, short reaping) carry ``@pytest.mark.standin_only(reason=...)``
and are skipped, with that reason, in real-agent mode only.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from chassis import ChassisSettings, Service
from chassis.discovery import Discovery
from chassis.testing import ConsulStandIn

# Read at import: the autouse _clean_env fixture removes CHASSIS_* variables per test.
REAL_CONSUL_ADDR = os.environ.get("CHASSIS_TEST_CONSUL_ADDR") or None
REAL_CONSUL_TOKEN = os.environ.get("CHASSIS_TEST_CONSUL_TOKEN") or None

CHECK_INTERVAL_SECONDS = 1.0  # Consul's minimum; shorter intervals are raised to it
WATCH_WAIT_SECONDS = 2.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "standin_only(reason): needs ConsulStandIn's knobs; skipped against a real agent",
    )


@dataclass
class ConsulTarget:
    """Where the tests' Consul is, and the stand-in when it is one."""

    url: str
    token: str | None
    standin: ConsulStandIn | None
    names: list[str] = field(default_factory=list)

    def unique(self, name: str) -> str:
        """A service name no other test (or earlier run against a real agent) uses."""
        unique = f"{name}-{uuid.uuid4().hex[:8]}"
        self.names.append(unique)
        return unique

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Consul-Token": self.token} if self.token else {}

    async def get(self, path: str, **params: str) -> tuple[Any, aiohttp.typedefs.LooseHeaders]:
        async with (
            aiohttp.ClientSession(headers=self.headers) as http,
            http.get(self.url + path, params=params) as resp,
        ):
            resp.raise_for_status()
            return await resp.json(), resp.headers

    async def put(self, path: str, body: Any = None, **params: str) -> int:
        async with (
            aiohttp.ClientSession(headers=self.headers) as http,
            http.put(self.url + path, json=body, params=params) as resp,
        ):
            return resp.status

    async def services(self) -> dict[str, Any]:
        """``/v1/agent/services``: id -> service."""
        services, _ = await self.get("/v1/agent/services")
        return dict(services)

    async def checks(self) -> dict[str, Any]:
        """``/v1/agent/checks``: id -> check."""
        checks, _ = await self.get("/v1/agent/checks")
        return dict(checks)


@pytest.fixture
async def consul(request: pytest.FixtureRequest) -> AsyncIterator[ConsulTarget]:
    marker = request.node.get_closest_marker("standin_only")
    if REAL_CONSUL_ADDR is not None:
        if marker is not None:
            pytest.skip(f"real Consul agent: {marker.kwargs['reason']}")
        target = ConsulTarget(REAL_CONSUL_ADDR.rstrip("/"), REAL_CONSUL_TOKEN, None)
        try:
            yield target
        finally:
            await _forget(target)
        return
    async with ConsulStandIn(
        check_reap_interval_seconds=0.2, check_deregister_interval_min_seconds=0
    ) as standin:
        yield ConsulTarget(standin.url, None, standin)


async def _forget(target: ConsulTarget) -> None:
    """Deregister what a test left on a real agent."""
    services = await target.services()
    for service_id, service in services.items():
        if service.get("Service") in target.names:
            await target.put(f"/v1/agent/service/deregister/{service_id}")


def consul_settings(consul: ConsulTarget, **discovery: Any) -> ChassisSettings:
    """Quick service settings with discovery through ``consul``."""
    options: dict[str, Any] = {
        "backend": "consul",
        "consul_addr": consul.url,
        "consul_token": consul.token,
        "check_interval_seconds": CHECK_INTERVAL_SECONDS,
        "check_timeout_seconds": 1.0,
        "watch_wait_seconds": WATCH_WAIT_SECONDS,
        "request_timeout_seconds": 2.0,
    }
    options.update(discovery)
    health = {"drain_delay_seconds": 0, "lag_probe_interval_seconds": 0.05}
    health.update(options.pop("health", {}))
    return ChassisSettings(health=health, discovery=options)


def discovery_of(service: Service) -> Discovery:
    """``service.discovery``, installing one on services built before it was wired in."""
    existing = getattr(service, "discovery", None)
    if isinstance(existing, Discovery):
        return existing
    discovery = Discovery(
        service_name=service.name,
        version=service.version,
        health=service.health,
        metrics_registry=service.metrics.registry,
    )
    service.install(discovery)
    service.discovery = discovery  # type: ignore[attr-defined]
    return discovery


def consul_service(consul: ConsulTarget, name: str, **discovery: Any) -> Service:
    """A service named ``name`` (made unique) that registers with ``consul``."""
    service = Service(
        consul.unique(name), version="1.2.3", settings=consul_settings(consul, **discovery)
    )
    discovery_of(service)
    return service


async def eventually(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float = 20.0, interval: float = 0.05
) -> float:
    """Poll ``predicate`` until it holds; return the seconds it took. Fails after ``timeout``."""
    started = time.monotonic()
    while True:
        if await predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
