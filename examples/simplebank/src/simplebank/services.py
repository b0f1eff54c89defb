"""Every SimpleBank service, and running them together in one process.

Each service module has a ``create(*, settings=None, database=None)`` factory (also
the target of ``chassis run simplebank.<module>:create``). :func:`build` makes them
all for one process, with a static discovery map and a SQLite file each under one
directory; :func:`run_services` also picks the ports and serves them::

    async with Exchange() as exchange, run_services(tmp, urls={"exchange": exchange.url}) as bank:
        bank.urls["orders"]          # http://127.0.0.1:<port>
        await bank.settle()          # wait until no event is queued or in flight
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from chassis import ChassisSettings, Service
from chassis.events import InMemoryBroker

from .common import BankSettings, bank_settings_from

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["SERVICES", "Bank", "build", "free_ports", "run_services"]

SERVICES: dict[str, str] = {
    "accounts": "simplebank.accounts:create",
    "orders": "simplebank.orders:create",
    "market": "simplebank.market:create",
    "fees": "simplebank.fees:create",
    "customers": "simplebank.customers:create",
    "market-data": "simplebank.market_data:create",
    "holdings": "simplebank.holdings:create",
    "strategies": "simplebank.strategies:create",
    "notifications": "simplebank.notifications:create",
    "gateway": "simplebank.gateway:create",
}
"""Service name -> ``module:factory`` of every SimpleBank service (started in this order)."""


def _factory(name: str) -> Callable[..., Service]:
    module_name, _, attr = SERVICES[name].partition(":")
    factory: Callable[..., Service] = getattr(importlib.import_module(module_name), attr)
    return factory


def _settings_for(
    name: str, base: BankSettings, data_dir: Path, urls: Mapping[str, str]
) -> BankSettings:
    static = {service: [url] for service, url in urls.items()}
    return base.model_copy(
        update={
            "discovery": base.discovery.model_copy(update={"backend": "static", "static": static}),
            "database": base.database.model_copy(update={"path": str(data_dir / f"{name}.db")}),
        }
    )


def build(
    data_dir: str | Path,
    urls: Mapping[str, str],
    *,
    names: Iterable[str] | None = None,
    settings: ChassisSettings | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Service]:
    """Build the services ``names`` (all by default) for one process.

    Args:
        data_dir: where each service keeps its SQLite file (``<name>.db``).
        urls: service name -> base URL of every service and upstream (``exchange``),
            used as each service's static discovery map.
        names: the services to build.
        settings: the base settings (defaults read from the environment); discovery
            and database path are set per service. Without a token secret
            (``CHASSIS_AUTH__TOKEN_SECRET``) one is generated for this process.
        options: extra keyword arguments of a service's factory, by name.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    base = bank_settings_from(settings) if settings is not None else BankSettings()
    if base.auth.token_secret is None:
        auth = base.auth.model_copy(update={"token_secret": SecretStr(secrets.token_urlsafe(32))})
        base = base.model_copy(update={"auth": auth})
    services = []
    for name in names if names is not None else SERVICES:
        kwargs = dict((options or {}).get(name, {}))
        service = _factory(name)(settings=_settings_for(name, base, data_dir, urls), **kwargs)
        services.append(service)
    return services


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free right now on ``host`` (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Bank:
    """The services of one :func:`run_services` block."""

    urls: dict[str, str]
    """Service name -> base URL (upstreams such as ``exchange`` included)."""
    services: dict[str, Service] = field(default_factory=dict)

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until no service has an event queued, in flight or in its outbox.

        Sagas hop between services, so this waits until every service is idle in the
        same round.

        Raises:
            TimeoutError: still busy after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        services = list(self.services.values())
        while True:
            for service in services:
                left = give_up - loop.time()
                if left <= 0:
                    raise TimeoutError(f"SimpleBank still busy after {timeout:g} s")
                await service.events.drained(timeout=left)
            if all(service.events.is_idle() for service in services):
                return


@contextlib.asynccontextmanager
async def run_services(
    data_dir: str | Path,
    *,
    names: Iterable[str] | None = None,
    urls: Mapping[str, str] | None = None,
    settings: ChassisSettings | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    host: str = "127.0.0.1",
    broker: InMemoryBroker | None = None,
    ports: Mapping[str, int] | None = None,
    span_exporter: SpanExporter | None = None,
) -> AsyncIterator[Bank]:
    """Serve the services ``names`` on free loopback ports for the ``async with`` block.

    ``urls`` adds upstreams that are not SimpleBank services (the ``exchange``);
    ``broker`` is the in-memory broker they share (the process' default if none);
    ``ports`` pins the port of some services (``{"gateway": 8080}``);
    ``span_exporter`` receives the spans of every service (an in-memory exporter in
    tests; tracing itself is on or off as ``settings`` say).
    """
    chosen = list(names if names is not None else SERVICES)
    fixed = dict(ports or {})
    free = iter(free_ports(len([n for n in chosen if not fixed.get(n)]), host))
    port_of = {name: fixed.get(name) or next(free) for name in chosen}
    all_urls = dict(urls or {})
    all_urls.update({name: f"http://{host}:{port_of[name]}" for name in chosen})
    services = build(data_dir, all_urls, names=chosen, settings=settings, options=options)
    if broker is not None:
        for service in services:
            service.events.broker = broker
    if span_exporter is not None:
        for service in services:
            service.tracing.exporter = span_exporter
    bank = Bank(urls=all_urls, services={s.name: s for s in services})
    async with contextlib.AsyncExitStack() as stack:
        for service in services:
            await stack.enter_async_context(service.running(host, port_of[service.name]))
        yield bank
