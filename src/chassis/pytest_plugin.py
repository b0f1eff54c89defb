"""The chassis' pytest plugin: the test kit of :mod:`chassis.testing` as fixtures.

Installing the chassis registers it (entry point ``pytest11``), so the fixtures
are there in every test without a ``conftest.py`` line:

* ``chassis_service``: a :class:`~chassis.testing.ServiceLauncher`;
  ``live = await chassis_service(create_service)`` serves a service on a free
  loopback port, and ``live.client`` talks to it;
* ``chassis_upstream``: a :class:`~chassis.testing.Launcher` of
  :class:`~chassis.testing.FaultyUpstream`: ``up = await chassis_upstream(name="inventory")``;
* ``chassis_consul``: a :class:`~chassis.testing.Launcher` of
  :class:`~chassis.testing.ConsulStandIn`: ``consul = await chassis_consul()``;
* ``chassis_broker``: the :class:`~chassis.testing.RecordingBroker` the services of
  ``chassis_service`` share: ``await chassis_broker.wait_for("orders", "order_placed")``;
* ``chassis_logs``: a :class:`~chassis.testing.LogCapture` of the test's log records
  (``INFO`` and up), as the chassis writes them in JSON.

Whatever a fixture started is closed when the test ends (services drained). The
async fixtures need pytest-asyncio, in either mode, with the default
function-scoped event loop. Loading the plugin starts nothing, and the test kit is
imported only when a fixture is first used. Disable it with ``-p no:chassis``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from chassis.testing import (
        ConsulStandIn,
        FaultyUpstream,
        Launcher,
        LogCapture,
        RecordingBroker,
        ServiceLauncher,
    )

__all__ = [
    "chassis_broker",
    "chassis_consul",
    "chassis_logs",
    "chassis_service",
    "chassis_upstream",
]

async_fixture: Callable[..., Any]
try:  # marks the fixtures as pytest-asyncio's in strict mode too
    from pytest_asyncio import fixture as async_fixture
except ImportError:  # pragma: no cover - then only another async plugin can run them
    async_fixture = pytest.fixture


@pytest.fixture
def chassis_broker() -> RecordingBroker:
    """The in-memory broker of the test's services; it records what they publish."""
    from chassis.testing import RecordingBroker

    return RecordingBroker()


@async_fixture
async def chassis_service(chassis_broker: RecordingBroker) -> AsyncIterator[ServiceLauncher]:
    """Serve services on free loopback ports: ``live = await chassis_service(create_service)``."""
    from chassis.testing import ServiceLauncher

    launcher = ServiceLauncher(broker=chassis_broker)
    try:
        yield launcher
    finally:
        await launcher.aclose()


@async_fixture
async def chassis_upstream() -> AsyncIterator[Launcher[FaultyUpstream]]:
    """Start fault-injecting upstreams: ``up = await chassis_upstream(error_every=2)``."""
    from chassis.testing import FaultyUpstream, Launcher

    launcher = Launcher(FaultyUpstream)
    try:
        yield launcher
    finally:
        await launcher.aclose()


@async_fixture
async def chassis_consul() -> AsyncIterator[Launcher[ConsulStandIn]]:
    """Start Consul stand-ins: ``consul = await chassis_consul(token="s3cret")``."""
    from chassis.testing import ConsulStandIn, Launcher

    launcher = Launcher(ConsulStandIn)
    try:
        yield launcher
    finally:
        await launcher.aclose()


@pytest.fixture
def chassis_logs() -> Iterator[LogCapture]:
    """The JSON log records of the test, ``INFO`` and up: ``chassis_logs.find(event="access")``."""
    from chassis.testing import capture_logs

    with capture_logs() as logs:
        yield logs
