"""``Service``: one aiohttp application and its whole lifecycle.

A ``Service`` wraps (never subclasses) a :class:`aiohttp.web.Application`. It
installs the chassis capabilities, each through ``setup(app)`` with one
``cleanup_ctx`` entry, and runs the application::

    service = Service("hello", version="1.0.0")

    @service.get("/hello")
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    service.run()                      # blocks; SIGTERM/SIGINT drain it

Settings are read when the service starts, not when it is built, so importing a
module that defines a service has no side effects.

Graceful shutdown, in this order:

1. SIGTERM (or SIGINT) arrives: readiness answers 503 at once;
2. the service waits ``health.drain_delay_seconds`` so load balancers and
   discovery stop routing to it (a second signal cuts the wait short);
3. the listener closes: no new connections;
4. in-flight requests get up to ``health.shutdown_timeout_seconds`` to finish;
5. capability cleanups run in reverse order of setup;
6. :meth:`Service.run` returns and ``chassis run`` exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiohttp import web

from .client import Clients, DeadlinePropagation, ServiceClient
from .config import ChassisSettings, RuntimeSettings, env_var_name, load_settings
from .db import Database
from .discovery.capability import Discovery
from .events import Events
from .exceptions import ConfigError, LifecycleError
from .health import Health
from .http import RequestPipeline
from .introspection import Introspection
from .logging import LogContext, bind_log_context, configure_logging
from .metrics import Metrics
from .ratelimit import RateLimiter
from .tracing import Tracing

__all__ = [
    "SERVICE_KEY",
    "SETTINGS_KEY",
    "Capability",
    "RunningService",
    "Service",
    "run_on_event_loop",
]

log = logging.getLogger("chassis.service")

HandlerT = TypeVar("HandlerT", bound=Callable[[web.Request], Awaitable[web.StreamResponse]])
LifespanT = TypeVar("LifespanT", bound=Callable[[web.Application], AsyncIterator[None]])
T = TypeVar("T")

_NAME_OK = re.compile(r"[a-z][a-z0-9_-]{0,62}").fullmatch


class Capability(Protocol):
    """What the chassis plugs into an application: routes, middleware, one cleanup context.

    A capability may also define ``configure(settings: ChassisSettings)``; the service
    calls it at startup, before any cleanup context of a capability is entered.
    Two optional async hooks follow the socket: ``on_listening(host, port)`` once it
    is bound (the real port is known; an error aborts startup), and ``on_draining()``
    right after readiness starts failing (it runs during the drain delay; an error
    is logged and the drain goes on).
    Each ``setup`` inserts its middleware at the front of the chain, so a capability
    installed later wraps the ones installed before it.
    """

    def setup(self, app: web.Application) -> None:
        """Install into ``app``."""


@dataclass(frozen=True, slots=True)
class RunningService:
    """A service listening on a socket, as yielded by :meth:`Service.running`."""

    service: Service
    host: str
    port: int

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:51234``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class Service:
    """A microservice: an aiohttp application plus the chassis' capabilities.

    Args:
        name: lower-case service name (``orders``, ``market-data``); used in logs,
            metrics and discovery.
        version: the service's version, stamped on logs and metadata.
        settings: a :class:`~chassis.config.ChassisSettings` instance, or a subclass
            to be read from the environment at startup (the default).
        middlewares: extra aiohttp middlewares, run inside the chassis' own.
    """

    def __init__(
        self,
        name: str,
        *,
        version: str = "0.0.0",
        settings: ChassisSettings | type[ChassisSettings] | None = None,
        middlewares: Iterable[Any] = (),
    ) -> None:
        if not _NAME_OK(name):
            raise ValueError(
                f"invalid service name {name!r}: use 1-63 characters of a-z, 0-9, '-' and '_', "
                "starting with a letter"
            )
        self.name = name
        self.version = version
        if isinstance(settings, ChassisSettings):
            self._settings: ChassisSettings | None = settings
            self._settings_cls: type[ChassisSettings] = type(settings)
        else:
            self._settings = None
            self._settings_cls = settings or ChassisSettings
        self.app = web.Application(middlewares=list(middlewares))
        self.app[SERVICE_KEY] = self
        self.capabilities: list[Capability] = []
        self._interrupt: asyncio.Event | None = None

        # The service's own context comes first: it reads the settings before any
        # capability starts, and is cleaned up last.
        self.app.cleanup_ctx.append(self._lifespan)
        # Each install() puts its middleware outermost, so the chain runs
        # tracing -> metrics -> pipeline -> ratelimit -> deadlines -> yours -> handler:
        # refused requests are still traced, measured, logged and given a request id.
        self.health = Health()
        self.metrics = Metrics(service_name=name, version=version, lag_monitor=self.health.lag)
        self.ratelimit = RateLimiter(
            service_name=name, registry=self.metrics.registry, lag_monitor=self.health.lag
        )
        self.pipeline = RequestPipeline(service=name, version=version)
        self.tracing = Tracing(service_name=name, service_version=version)
        self.discovery = Discovery(
            service_name=name,
            version=version,
            health=self.health,
            metrics_registry=self.metrics.registry,
        )
        self.deadlines = DeadlinePropagation()
        self.clients = Clients(registry=self.discovery, metrics=self.metrics.registry)
        self.events = Events(
            service_name=name,
            registry=self.metrics.registry,
            tracing=self.tracing,
            health=self.health,
        )
        self.introspection = Introspection(
            service_name=name,
            version=version,
            health=self.health,
            metrics=self.metrics,
            ratelimit=self.ratelimit,
            tracing=self.tracing,
            discovery=self.discovery,
            clients=self.clients,
            events=self.events,
        )
        self._database: Database | None = None
        self.install(self.deadlines)
        self.install(self.ratelimit)
        self.install(self.pipeline)
        self.install(self.health)
        self.install(self.metrics)
        self.install(self.tracing)
        self.install(self.discovery)
        self.install(self.clients)  # after discovery: clients close before the registry
        self.install(self.events)  # a database installed later closes before the broker
        self.install(self.introspection)  # routes only: /_chassis and /_chassis/ui

    def __repr__(self) -> str:
        return f"<Service {self.name} {self.version}>"

    def client(self, name: str, **overrides: Any) -> ServiceClient:
        """The resilient client of upstream service ``name`` (the same object each time).

        Instances come from discovery; ``overrides`` replace fields of the
        ``CHASSIS_CLIENT__*`` settings for this upstream (e.g. ``timeout_seconds=1``).
        """
        return self.clients.get(name, **overrides)

    def database(self, path: str | Path | None = None, *, schema: str = "") -> Database:
        """Install the service's SQLite database, with an outbox published by ``service.events``.

        The database opens at startup (running ``schema``, which must be idempotent:
        ``CREATE TABLE IF NOT EXISTS ...``) and closes at shutdown; a ``database``
        readiness check is added. ``path`` defaults to ``CHASSIS_DATABASE__PATH``,
        else ``<service name>.db``. See :class:`~chassis.db.Database`.

        Raises:
            LifecycleError: the service has a database already, or has started.
        """
        if self._database is not None:
            raise LifecycleError(f"{self!r} has a database already: {self._database!r}")
        if self.app.frozen:
            raise LifecycleError(f"{self!r} has started; add the database before")
        db = Database(path, schema=schema, source=self.name, publisher=self.events.publish_event)
        self.install(db)
        self.health.add_check("database", db.check)
        self.events.database = db
        self._database = db
        return db

    # -- settings -----------------------------------------------------------------
    @property
    def settings(self) -> ChassisSettings:
        """The service's settings, read on first access.

        Raises:
            ConfigError: a setting is invalid (every bad variable is named).
        """
        if self._settings is None:
            self._settings = load_settings(self._settings_cls)
        return self._settings

    # -- composition --------------------------------------------------------------
    def install(self, capability: Capability) -> Capability:
        """Install ``capability`` (anything with ``setup(app)``) and remember it."""
        capability.setup(self.app)
        self.capabilities.append(capability)
        return capability

    def route(
        self, method: str, path: str, *, name: str | None = None
    ) -> Callable[[HandlerT], HandlerT]:
        """Decorator registering a handler for ``method`` on ``path``."""

        def decorate(handler: HandlerT) -> HandlerT:
            if method == "GET":
                self.app.router.add_get(path, handler, name=name)
            else:
                self.app.router.add_route(method, path, handler, name=name)
            return handler

        return decorate

    def get(self, path: str, *, name: str | None = None) -> Callable[[HandlerT], HandlerT]:
        """Register a ``GET`` handler (``HEAD`` is answered too)."""
        return self.route("GET", path, name=name)

    def post(self, path: str, *, name: str | None = None) -> Callable[[HandlerT], HandlerT]:
        """Register a ``POST`` handler."""
        return self.route("POST", path, name=name)

    def put(self, path: str, *, name: str | None = None) -> Callable[[HandlerT], HandlerT]:
        """Register a ``PUT`` handler."""
        return self.route("PUT", path, name=name)

    def patch(self, path: str, *, name: str | None = None) -> Callable[[HandlerT], HandlerT]:
        """Register a ``PATCH`` handler."""
        return self.route("PATCH", path, name=name)

    def delete(self, path: str, *, name: str | None = None) -> Callable[[HandlerT], HandlerT]:
        """Register a ``DELETE`` handler."""
        return self.route("DELETE", path, name=name)

    def lifespan(self, fn: LifespanT) -> LifespanT:
        """Decorator adding an aiohttp cleanup context for a resource the service owns.

        The async generator runs up to its ``yield`` at startup and after it at
        shutdown (after in-flight requests finish)::

            @service.lifespan
            async def database(app):
                app[DB] = await open_pool()
                yield
                await app[DB].close()
        """
        self.app.cleanup_ctx.append(fn)
        return fn

    # -- lifecycle ----------------------------------------------------------------
    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        settings = self.settings
        app[SETTINGS_KEY] = settings
        # aiohttp enforces this on bodies without a Content-Length (chunked uploads).
        app._client_max_size = settings.http.max_body_bytes
        for capability in self.capabilities:
            configure = getattr(capability, "configure", None)
            if configure is not None:
                configure(settings)
        log.info("%s %s starting", self.name, self.version, extra={"event": "starting"})
        try:
            yield
        finally:
            log.info("%s stopped", self.name, extra={"event": "stopped"})

    def _bind(self) -> LogContext:
        env = self._settings.environment if self._settings is not None else ""
        return LogContext(service=self.name, version=self.version, environment=env)

    @contextlib.asynccontextmanager
    async def running(
        self, host: str | None = None, port: int | None = None
    ) -> AsyncIterator[RunningService]:
        """Serve on ``host:port`` for the duration of the ``async with`` block.

        ``port=0`` picks a free port; the yielded :class:`RunningService` has the
        bound URL. Leaving the block drains the service as SIGTERM would.
        """
        if self.app.frozen:
            raise LifecycleError(f"{self!r} has already been started; build a new Service")
        settings = self.settings
        host = settings.http.host if host is None else host
        port = settings.http.port if port is None else port
        with bind_log_context(self._bind()):
            runner = web.AppRunner(
                self.app,
                handle_signals=False,
                access_log=None,
                shutdown_timeout=settings.health.shutdown_timeout_seconds,
                keepalive_timeout=settings.http.keepalive_timeout_seconds,
            )
            await runner.setup()
            try:
                site = web.TCPSite(runner, host, port, reuse_address=True)
                await site.start()
            except BaseException:
                # Never served: nothing to drain, just undo the startup.
                await runner.cleanup()
                raise
            try:
                bound_port = _bound_port(site, port)
                running = RunningService(self, host, bound_port)
                log.info(
                    "%s listening on %s",
                    self.name,
                    running.url,
                    extra={"event": "listening", "url": running.url},
                )
                await self._notify_listening(host, bound_port)
                yield running
            finally:
                await self._drain(runner)

    async def _drain(self, runner: web.AppRunner) -> None:
        settings = self.settings.health
        self.health.draining = True
        hooks = asyncio.ensure_future(self._notify_draining())
        delay = settings.drain_delay_seconds
        log.info(
            "%s draining: readiness is failing, listener closes in %.3gs",
            self.name,
            delay,
            extra={"event": "draining"},
        )
        if delay > 0:
            interrupt = self._interrupt or asyncio.Event()
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(interrupt.wait(), delay)
        await hooks
        await runner.cleanup()
        log.info("%s drained", self.name, extra={"event": "drained"})

    async def _notify_listening(self, host: str, port: int) -> None:
        for capability in self.capabilities:
            hook = getattr(capability, "on_listening", None)
            if hook is not None:
                await hook(host, port)

    async def _notify_draining(self) -> None:
        for capability in self.capabilities:
            hook = getattr(capability, "on_draining", None)
            if hook is not None:
                try:
                    await hook()
                except Exception:
                    log.exception("drain hook of %r failed", capability)

    async def serve(self, host: str | None = None, port: int | None = None) -> None:
        """Serve until SIGTERM or SIGINT, then drain. The async body of :meth:`run`."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        self._interrupt = asyncio.Event()
        signals = 0

        def on_signal(signum: int) -> None:
            nonlocal signals
            signals += 1
            log.info("received %s", signal.Signals(signum).name, extra={"event": "signal"})
            if signals == 1:
                stop.set()
            else:
                assert self._interrupt is not None
                self._interrupt.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            async with self.running(host, port):
                with _tuned_collector(self.settings.runtime):
                    await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def run(self, host: str | None = None, port: int | None = None) -> None:
        """Configure logging, serve until SIGTERM/SIGINT, drain, return.

        The event loop is the kind ``CHASSIS_RUNTIME__EVENT_LOOP`` names (``asyncio``'s
        own by default, or ``uvloop``); see :func:`run_on_event_loop`.

        Raises:
            ConfigError: invalid settings, or ``uvloop`` asked for and not installed,
                before anything starts.
        """
        settings = self.settings
        run = _loop_runner(settings.runtime)  # fails before logging is set up
        handler = configure_logging(
            settings.log,
            service=self.name,
            version=self.version,
            environment=settings.environment,
        )
        try:
            run(self.serve(host, port))
        finally:
            handler.flush()


def run_on_event_loop(main: Coroutine[Any, Any, T], runtime: RuntimeSettings | None = None) -> T:
    """Run ``main`` to completion on a new event loop of the kind ``runtime`` names, as
    :meth:`Service.run` does, and return its result.

    ``runtime`` defaults to the ``CHASSIS_RUNTIME__*`` variables: for a process that
    serves several services itself (SimpleBank's embedded mode) and wants the same
    loop as ``chassis run``.

    Raises:
        ConfigError: ``uvloop`` is asked for and cannot be imported, or a
            ``CHASSIS_*`` variable is invalid (``main`` is then closed, never run).
    """
    try:
        run = _loop_runner(load_settings().runtime if runtime is None else runtime)
    except ConfigError:
        main.close()  # never awaited, and no warning saying so
        raise
    result: T = run(main)
    return result


def _loop_runner(runtime: RuntimeSettings) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """``asyncio.run`` or ``uvloop.run``, as ``runtime.event_loop`` says.

    Raises:
        ConfigError: ``uvloop`` is asked for and cannot be imported.
    """
    if runtime.event_loop == "asyncio":
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        raise ConfigError(
            [
                (
                    env_var_name(("runtime", "event_loop")),
                    "uvloop is not installed: pip install 'aiochassis[uvloop]'",
                )
            ]
        ) from None
    return uvloop.run


@contextlib.contextmanager
def _tuned_collector(settings: RuntimeSettings) -> Iterator[None]:
    """Apply ``settings``' garbage-collector tuning for the ``with`` block, then undo it.

    A serving process allocates short-lived objects per request and keeps a large,
    stable heap from startup: freezing that heap and collecting the youngest
    generation less often spends less time in the collector. Cycles are still found.
    """
    previous = gc.get_threshold()
    frozen = settings.gc_freeze
    if frozen:
        gc.collect()  # garbage of the startup is not frozen with the rest
        gc.freeze()
    if settings.gc_threshold:
        gc.set_threshold(settings.gc_threshold, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        if frozen:
            gc.unfreeze()


def _bound_port(site: web.TCPSite, requested: int) -> int:
    server = site._server
    sockets: list[socket.socket] = list(getattr(server, "sockets", None) or [])
    for sock in sockets:
        return int(sock.getsockname()[1])
    return requested


SERVICE_KEY = web.AppKey("chassis.service", Service)
"""The :class:`Service` that owns an application: ``request.app[SERVICE_KEY]``."""

SETTINGS_KEY = web.AppKey("chassis.settings", ChassisSettings)
"""The service's settings, set at startup: ``request.app[SETTINGS_KEY]``."""
