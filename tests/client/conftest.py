"""Fixtures of the client tests: fault-injecting upstreams on loopback, clients over them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from chassis._faulty_upstream import FaultyUpstream
from chassis.client import ServiceClient
from chassis.config import ClientSettings
from chassis.discovery.static import StaticRegistry

UPSTREAM = "market-data"

# Short back-off steps keep the tests quick; every test states the settings it relies on.
FAST_BACKOFF = {"backoff_base_seconds": 0.005, "backoff_max_seconds": 0.02}


@pytest.fixture
async def upstream() -> AsyncIterator[FaultyUpstream]:
    """One well-behaved upstream instance on a loopback port."""
    async with FaultyUpstream(name=UPSTREAM) as up:
        yield up


@pytest.fixture
async def make_upstream() -> AsyncIterator[Callable[..., Any]]:
    """Start more upstream instances: ``await make_upstream(latency_seconds=0.2)``."""
    started: list[FaultyUpstream] = []

    async def make(**knobs: Any) -> FaultyUpstream:
        up = FaultyUpstream(name=UPSTREAM, **knobs)
        await up.start()
        started.append(up)
        return up

    yield make
    for up in started:
        await up.aclose()


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., ServiceClient]]:
    """A client of ``market-data`` over static discovery of the given upstreams; closed after."""
    made: list[ServiceClient] = []

    def make(*upstreams: FaultyUpstream, **kwargs: Any) -> ServiceClient:
        settings = {**FAST_BACKOFF}
        for key in list(kwargs):
            if key in ClientSettings.model_fields:
                settings[key] = kwargs.pop(key)
        registry = StaticRegistry({UPSTREAM: [up.url for up in upstreams]})
        client = ServiceClient(
            UPSTREAM, registry=registry, settings=ClientSettings(**settings), **kwargs
        )
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()
