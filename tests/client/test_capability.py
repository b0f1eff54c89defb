"""Clients: one shared session per application, opened at startup and closed at shutdown."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from chassis import Service
from chassis._faulty_upstream import FaultyUpstream
from chassis.client import ClientMetrics, Clients
from chassis.config import ClientSettings
from chassis.exceptions import ClientClosed, LifecycleError

from .conftest import UPSTREAM


async def test_clients_share_one_session_from_startup_to_shutdown(
    upstream: FaultyUpstream, make_service: Callable[..., Service]
) -> None:
    service = make_service(
        client={"timeout_seconds": 2.5}, discovery={"static": {UPSTREAM: [upstream.url]}}
    )
    clients = service.clients
    market = service.client(UPSTREAM)
    with pytest.raises(LifecycleError, match="not started"):
        await market.get("/prices/VTI")

    async with service.running(port=0):
        assert clients.get(UPSTREAM) is market
        assert market.settings.timeout_seconds == 2.5  # the service's settings, at startup
        assert (await market.get("/prices/VTI")).status == 200
        other = clients.get("other", max_attempts=1)
        assert other._session is market._session
        assert other.settings.max_attempts == 1
        assert other.settings.timeout_seconds == 2.5
        value = service.metrics.registry.get_sample_value(
            "http_client_request_duration_seconds_count",
            {"upstream": UPSTREAM, "method": "GET", "status_code": "200"},
        )
        assert value == 1

    assert market.closed
    with pytest.raises(ClientClosed):
        await market.get("/prices/VTI")
    with pytest.raises(ClientClosed):
        clients.get("late")


def test_overrides_are_validated_and_fixed_per_name() -> None:
    clients = Clients(settings=ClientSettings())
    clients.get("a", max_attempts=2)
    assert clients.get("a").settings.max_attempts == 2
    with pytest.raises(ValueError, match="exists with settings"):
        clients.get("a", max_attempts=3)
    with pytest.raises(ValueError, match="max_attempts"):
        clients.get("b", max_attempts=0)


def test_one_client_metrics_per_registry() -> None:
    registry = CollectorRegistry()
    ClientMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        ClientMetrics(registry)
