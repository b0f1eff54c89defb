"""``Discovery``: the capability that registers this service and resolves others.

With a :class:`~chassis.Service` it is ``service.discovery``::

    instances = await service.discovery.resolve("market-data")

The back end comes from ``CHASSIS_DISCOVERY__BACKEND``: ``static`` (the default, no
network) or ``consul``. Its lifecycle, all in one cleanup context:

1. startup: the registry is built from the settings (for Consul: an HTTP session
   and, on the service's health, a non-critical ``consul`` readiness check);
2. listening (:meth:`Discovery.on_listening`, called by the service once the
   socket is bound, so the real port is known): the instance registers itself. If
   the agent cannot be reached, startup goes on and registration is retried in the
   background with back-off;
3. draining (:meth:`Discovery.on_draining`, called right after readiness starts
   failing): the instance deregisters, so peers stop resolving it while it still
   serves what is in flight;
4. cleanup: deregistration if it has not happened, watches stopped, session closed.

Why the ``consul`` readiness check is not critical: a critical check would take
*every* instance out of rotation whenever the local agent or the Consul cluster
has a problem, turning a discovery outage into a full outage. Lookups keep working
from the cache meanwhile, so the probe answers 200 ``degraded`` and names the
problem instead.

On a bare application, call the two hooks yourself::

    discovery = Discovery(service_name="orders", version="1.0.0")
    discovery.setup(app)
    ...  # after the site has started:
    await discovery.on_listening("10.0.0.5", 8080)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from chassis.config import ChassisSettings, DiscoverySettings
from chassis.discovery.base import DiscoveryError, Instance, Registration, Registry
from chassis.discovery.consul import ConsulRegistry
from chassis.discovery.static import StaticRegistry
from chassis.exceptions import LifecycleError
from chassis.health import Health

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["DISCOVERY_KEY", "Discovery"]

log = logging.getLogger("chassis.discovery")

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


class Discovery:
    """Registration of this instance and lookups of others, over a :class:`Registry`.

    Args:
        service_name: the name this instance registers under.
        version: stamped on the registration's ``meta``.
        settings: discovery settings; when omitted, the service's settings (or the
            defaults) are used at startup.
        registry: a ready-made back end to use instead of building one from the
            settings; the caller keeps ownership (it is not closed here).
        health: where the back end's readiness check is added (non-critical).
        metrics_registry: where the back end's metrics are registered.
    """

    def __init__(
        self,
        *,
        service_name: str = "",
        version: str = "0.0.0",
        settings: DiscoverySettings | None = None,
        registry: Registry | None = None,
        health: Health | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.service_name = service_name
        self.version = version
        self._explicit_settings = settings
        self.settings = settings or DiscoverySettings()
        self._given = registry
        self._registry: Registry | None = None
        self._health = health
        self.metrics_registry = metrics_registry
        self.registration: Registration | None = None
        """What this instance registered (set once it is listening)."""
        self._withdrawn = False
        self._retry: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Discovery {self.service_name or '(unnamed)'} {self.settings.backend}>"

    # -- lookups ------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        """The back end in use.

        Raises:
            LifecycleError: the application is not running.
        """
        if self._registry is None:
            raise LifecycleError("discovery is not running: start the service first")
        return self._registry

    async def resolve(self, service: str) -> list[Instance]:
        """The healthy instances of ``service`` (see :meth:`Registry.resolve`).

        Raises:
            DiscoveryError: the back end is unreachable and nothing is cached.
            LifecycleError: the application is not running.
        """
        return await self.registry.resolve(service)

    def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        """The healthy instances of ``service`` now and after every change."""
        return self.registry.watch(service)

    def snapshot(self) -> dict[str, Any]:
        """This instance's registration and the back end's cache (``None`` while stopped)."""
        registration = self.registration
        registered = None
        if registration is not None:
            registered = {
                "id": registration.id,
                "address": registration.address,
                "port": registration.port,
                "state": (
                    "withdrawn"
                    if self._withdrawn
                    else (
                        "retrying"
                        if self._retry is not None and not self._retry.done()
                        else "registered"
                    )
                ),
            }
        registry = self._registry
        describe = getattr(registry, "snapshot", None)
        cache: dict[str, Any] | None = describe() if describe is not None else None
        return {
            "backend": self.settings.backend,
            "self_register": self.settings.self_register,
            "registration": registered,
            "cache": cache,
        }

    # -- lifecycle hooks ----------------------------------------------------------
    async def on_listening(self, host: str, port: int) -> None:
        """Register this instance, reachable at ``host:port`` (or the advertise address).

        A failure does not fail startup: it is logged and retried in the background
        with exponential back-off and jitter until it succeeds or the service drains.

        Raises:
            LifecycleError: no ``service_name`` to register under, or not running.
        """
        if not self.settings.self_register:
            return
        registry = self.registry
        if not self.service_name:
            raise LifecycleError("Discovery needs a service_name to register this instance")
        address = self.settings.advertise_address or _advertised(host)
        registration = Registration(
            service=self.service_name,
            id=_instance_id(self.service_name, address, port),
            address=address,
            port=port,
            version=self.version,
            tags=self.settings.tags,
        )
        self.registration = registration
        try:
            await registry.register(registration)
        except DiscoveryError as exc:
            log.warning(
                "could not register %s (%s); retrying in the background",
                registration.id,
                exc,
                extra={"event": "discovery_register_failed", "instance_id": registration.id},
            )
            self._retry = asyncio.get_running_loop().create_task(
                self._keep_registering(registry, registration),
                name="chassis-discovery-register",
            )

    async def on_draining(self) -> None:
        """Deregister this instance; called right after readiness starts failing.

        Never raises: a failure is logged, and the back end's own health checking
        (``DeregisterCriticalServiceAfter`` for Consul) removes the instance later.
        """
        await self._withdraw()

    async def _keep_registering(self, registry: Registry, registration: Registration) -> None:
        import backoff

        delays = backoff.expo(
            base=2,
            factor=self.settings.watch_backoff_initial_seconds,
            max_value=self.settings.watch_backoff_max_seconds,
        )
        next(delays)  # prime the generator
        while True:
            await asyncio.sleep(backoff.full_jitter(next(delays)))
            try:
                await registry.register(registration)
            except DiscoveryError as exc:
                log.debug("registration of %s failed again (%s)", registration.id, exc)
            else:
                return

    async def _withdraw(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
            self._retry = None
        # Deregister after any attempt, even a failed one: it may have reached the
        # agent. Unknown ids are ignored by the back ends.
        if self._withdrawn or self.registration is None or self._registry is None:
            return
        self._withdrawn = True
        try:
            await self._registry.deregister(self.registration)
        except DiscoveryError as exc:
            log.warning(
                "could not deregister %s (%s); the back end's checks will remove it",
                self.registration.id,
                exc,
                extra={"event": "discovery_deregister_failed"},
            )

    # -- wiring -------------------------------------------------------------------
    def configure(self, settings: ChassisSettings) -> None:
        """Adopt a service's discovery settings unless explicit ones were given."""
        if self._explicit_settings is None:
            self.settings = settings.discovery

    def setup(self, app: web.Application) -> None:
        """Add one cleanup context (the back end's whole lifetime) to ``app``."""
        app.cleanup_ctx.append(self._lifespan)
        app[DISCOVERY_KEY] = self

    def _build(self) -> Registry:
        if self.settings.backend == "consul":
            return ConsulRegistry.from_settings(
                self.settings, metrics_registry=self.metrics_registry
            )
        return StaticRegistry.from_settings(self.settings)

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        owned = self._given is None
        registry = self._given if self._given is not None else self._build()
        self._registry = registry
        check_name: str | None = None
        ping = getattr(registry, "ping", None)
        if self._health is not None and ping is not None:
            name = "consul" if isinstance(registry, ConsulRegistry) else "discovery"
            if name not in self._health.checks:
                self._health.add_check(name, ping, critical=False)
                check_name = name
        try:
            yield
        finally:
            try:
                await self._withdraw()
            finally:
                if check_name is not None and self._health is not None:
                    self._health.checks.pop(check_name, None)
                self._registry = None
                if owned:
                    await registry.aclose()


def _advertised(host: str) -> str:
    """The address peers use: the bound host, or the host name for a wildcard bind."""
    return socket.gethostname() if host in _WILDCARD_HOSTS else host


def _instance_id(service: str, address: str, port: int) -> str:
    """A unique instance id, ``<service>-<address>-<port>-<random>``."""
    return _ID_UNSAFE.sub("-", f"{service}-{address}-{port}-{secrets.token_hex(4)}")


DISCOVERY_KEY = web.AppKey("chassis.discovery", Discovery)
"""The application's :class:`Discovery`: ``request.app[DISCOVERY_KEY]``."""
