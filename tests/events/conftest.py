"""Fixtures of the events tests: the back ends the contract suite runs against.

``events_env`` is parametrised over :data:`BACKENDS`, a map of back-end name to a
factory. A factory takes the pytest request and yields an :class:`EventsEnv`: it
builds services wired to that back end and answers what only the back end knows.
The in-memory back end is always there; another back end adds its factory here,
next to the ``memory`` one (starting its server through ``request.getfixturevalue``
so that its tests fail or skip the way its server fixture decides).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chassis import ChassisSettings, Service
from chassis.events import DeadLetter, InMemoryBroker

from .rabbitmq_server import RabbitMQServer, rabbitmq_broker  # noqa: F401 (a fixture)

_names = itertools.count(1)

# Quick retries, no drain delay: every test finishes in well under a second or two.
EVENTS_TEST_SETTINGS: dict[str, Any] = {
    "retry_initial_seconds": 0.01,
    "retry_max_seconds": 0.05,
    "stop_timeout_seconds": 5.0,
    "outbox_poll_interval_seconds": 0.2,
}


class EventsEnv:
    """Services wired to one back end, for the contract suite.

    Subclasses override :meth:`events_settings` and :meth:`attach`.
    """

    name = "base"

    def unique(self, prefix: str) -> str:
        """A service name unused by earlier tests (durable brokers keep their queues)."""
        return unique_name(prefix)

    def events_settings(self, **overrides: Any) -> dict[str, Any]:
        return {**EVENTS_TEST_SETTINGS, **overrides}

    def attach(self, service: Service) -> None:
        """Connect ``service`` to this back end (beyond its settings)."""

    def service(self, name: str, **events: Any) -> Service:
        """A service named ``name`` on this back end; ``events`` override events settings."""
        settings = ChassisSettings(
            health={"drain_delay_seconds": 0, "lag_probe_interval_seconds": 0.05},
            events=self.events_settings(**events),
        )
        service = Service(name, version="1.0.0", settings=settings)
        self.attach(service)
        return service

    def environ(self) -> dict[str, str]:
        """``CHASSIS_EVENTS__*`` variables that put a subprocess on this back end."""
        return {}

    async def dead_letters(self, service: Service) -> list[DeadLetter]:
        """The dead letters of ``service``'s queue (the service must be running)."""
        return await service.events.dead_letters()


class MemoryEnv(EventsEnv):
    name = "memory"

    def __init__(self) -> None:
        self.broker = InMemoryBroker()

    def attach(self, service: Service) -> None:
        service.events.broker = self.broker


def memory_env(request: pytest.FixtureRequest) -> Iterator[EventsEnv]:
    yield MemoryEnv()


class RabbitMQEnv(EventsEnv):
    name = "rabbitmq"

    def __init__(self, server: RabbitMQServer) -> None:
        self.server = server

    def events_settings(self, **overrides: Any) -> dict[str, Any]:
        rabbitmq = {
            "backend": "rabbitmq",
            "url": self.server.url,
            "reconnect_initial_seconds": 0.1,
            "reconnect_max_seconds": 1.0,
        }
        return super().events_settings(**{**rabbitmq, **overrides})

    def environ(self) -> dict[str, str]:
        return {"CHASSIS_EVENTS__BACKEND": "rabbitmq", "CHASSIS_EVENTS__URL": self.server.url}


def rabbitmq_env(request: pytest.FixtureRequest) -> Iterator[EventsEnv]:
    server: RabbitMQServer = request.getfixturevalue("rabbitmq_broker")
    server.start()  # a no-op unless a test left it stopped
    yield RabbitMQEnv(server)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Iterator[EventsEnv]]] = {
    "memory": memory_env,
    "rabbitmq": rabbitmq_env,
}


@pytest.fixture(params=list(BACKENDS))
def events_env(request: pytest.FixtureRequest) -> Iterator[EventsEnv]:
    """Each contract test runs once per back end in :data:`BACKENDS`."""
    yield from BACKENDS[request.param](request)


@pytest.fixture
def broker() -> InMemoryBroker:
    """A broker of the test's own (never the process default)."""
    return InMemoryBroker()


async def eventually(
    condition: Callable[[], bool], *, timeout: float = 20.0, what: str = "condition"
) -> None:
    """Wait until ``condition()`` holds, checking every 10 ms, for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.01)


def unique_name(prefix: str) -> str:
    """``prefix`` plus a counter: a name no other test of this run uses."""
    return f"{prefix}-{next(_names)}"
