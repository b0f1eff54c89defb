"""``Clients``: the capability that gives a service its :class:`ServiceClient` objects.

One shared aiohttp session (one connection pool) serves every upstream; it is
opened by the capability's cleanup context at startup and closed at shutdown,
after the clients, which then refuse further calls with
:class:`~chassis.exceptions.ClientClosed`. With a :class:`~chassis.Service` it is
``service.clients`` and ``service.client(name)``; on a bare application::

    clients = Clients(registry=StaticRegistry({"market-data": [url]}))
    clients.setup(app)
    market = clients.get("market-data")          # usable once the app has started
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from opentelemetry import trace
from pydantic import ValidationError

from chassis.config import ChassisSettings, ClientSettings
from chassis.exceptions import ClientClosed

from .client import Resolver, ServiceClient, new_session
from .telemetry import ClientMetrics

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["CLIENTS_KEY", "Clients"]


class Clients:
    """Makes and owns the clients of a service's upstreams, over one shared session.

    Args:
        registry: resolves upstream names (a discovery back end, or the service's
            :class:`~chassis.discovery.Discovery`).
        settings: client settings; when omitted, the service's (or the defaults)
            are used at startup.
        metrics: a :class:`~chassis.client.ClientMetrics`, or the registry to
            register one on; by default clients record but export nothing.
        tracer: the tracer of client spans; by default the current service's.
    """

    def __init__(
        self,
        *,
        registry: Resolver | None = None,
        settings: ClientSettings | None = None,
        metrics: ClientMetrics | CollectorRegistry | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.registry = registry
        self._explicit_settings = settings
        self.settings = settings or ClientSettings()
        # Given a registry, the collector is registered at startup, and only when the
        # service's metrics are enabled (CHASSIS_METRICS__ENABLED=false exports nothing).
        self._export_to: CollectorRegistry | None = None
        if metrics is not None and not isinstance(metrics, ClientMetrics):
            self._export_to = metrics
            metrics = ClientMetrics(None)
        self.metrics = metrics
        self.tracer = tracer
        self._clients: dict[str, tuple[dict[str, Any], ServiceClient]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<Clients {sorted(self._clients)}>"

    def get(self, name: str, **overrides: Any) -> ServiceClient:
        """The client of upstream ``name``, made on first call.

        ``overrides`` replace fields of the client settings for this upstream
        (``timeout_seconds=1.0``, ``max_attempts=1``, ...). Asking again with other
        overrides is an error.

        Raises:
            ValueError: an override is not a valid client setting, or differs from
                the one the client was made with.
            ClientClosed: the service has shut down.
        """
        if self._closed:
            raise ClientClosed(f"the clients of this service are closed; cannot make {name!r}")
        known = self._clients.get(name)
        if known is not None:
            made_with, client = known
            if overrides and overrides != made_with:
                raise ValueError(
                    f"the client of {name!r} exists with settings {made_with}; "
                    f"cannot make it again with {overrides}"
                )
            return client
        client = ServiceClient(
            name,
            registry=self.registry,
            settings=self._settings_for(overrides),
            metrics=self.metrics,
            tracer=self.tracer,
        )
        client._managed = True
        if self._session is not None:
            client._use_session(self._session)
        self._clients[name] = (dict(overrides), client)
        return client

    def snapshot(self) -> list[dict[str, Any]]:
        """Every client's :meth:`ServiceClient.snapshot`, by upstream name."""
        return [client.snapshot() for _, (_, client) in sorted(self._clients.items())]

    def _settings_for(self, overrides: dict[str, Any]) -> ClientSettings:
        if not overrides:
            return self.settings
        try:
            return ClientSettings.model_validate({**self.settings.model_dump(), **overrides})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            raise ValueError(f"invalid client settings: {problems}") from None

    def configure(self, settings: ChassisSettings) -> None:
        """Adopt a service's client settings unless explicit ones were given."""
        if self._explicit_settings is None:
            self.settings = settings.client
            for overrides, client in self._clients.values():
                client.configure(self._settings_for(overrides))
        if not settings.metrics.enabled:
            self._export_to = None

    def setup(self, app: web.Application) -> None:
        """Add the cleanup context that owns the shared session."""
        app.cleanup_ctx.append(self._lifespan)
        app[CLIENTS_KEY] = self

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        if self._export_to is not None and self.metrics is not None:
            self._export_to.register(self.metrics)
            self._export_to = None
        session = self._session = new_session()
        for _, client in self._clients.values():
            client._use_session(session)
        try:
            yield
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close every client, then the shared session. Idempotent."""
        self._closed = True
        for _, client in list(self._clients.values()):
            await client.aclose()
        session, self._session = self._session, None
        if session is not None:
            await session.close()


CLIENTS_KEY = web.AppKey("chassis.clients", Clients)
"""The :class:`Clients` of an application: ``request.app[CLIENTS_KEY]``."""
