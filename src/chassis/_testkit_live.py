"""Services under test on loopback sockets, and an in-memory broker that records.

Part of the public test kit; import the names from :mod:`chassis.testing`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import aiohttp

from ._testkit_capture import MetricsWatch, SpanCapture, capture_spans
from .events.base import Event, decode, encode, new_event
from .events.memory import InMemoryBroker
from .exceptions import InvalidEvent, LifecycleError
from .service import RunningService, Service

__all__ = ["LiveService", "Launcher", "RecordingBroker", "ServiceLauncher"]

ServiceTarget = Service | Callable[[], Service | Awaitable[Service]]
"""A service, or a function building one (``create_service``), maybe async."""

EventFilter = Callable[[Event], bool]


class RecordingBroker(InMemoryBroker):
    """An :class:`~chassis.events.InMemoryBroker` that keeps every event published through it.

    Give it to the services of a test (the ``chassis_service`` fixture does) and
    check what they publish, or wait for it::

        event = await broker.wait_for("orders", "order_placed", where=lambda e: e.key == oid)

    Routing, queues, retries and dead letters are the in-memory broker's own.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []
        """Every valid event published so far, in order (whether a queue took it or not)."""
        self._waiters: list[tuple[str, str, EventFilter | None, asyncio.Future[Event]]] = []

    def __repr__(self) -> str:
        return f"<RecordingBroker events={len(self.events)} queues={sorted(self._queues)}>"

    def route(self, source: str, type: str, body: bytes, headers: Mapping[str, str]) -> int:
        """Record the event, then route it as :meth:`InMemoryBroker.route` does."""
        try:
            event = decode(body, headers)
        except InvalidEvent:
            event = None  # a test delivering a malformed message on purpose
        if event is not None:
            self.events.append(event)
            for waiter in list(self._waiters):
                w_source, w_type, where, future = waiter
                if not future.done() and _matches(event, w_source, w_type, where):
                    future.set_result(event)
        return super().route(source, type, body, headers)

    def find(
        self,
        source: str | None = None,
        type: str | None = None,
        *,
        where: EventFilter | None = None,
    ) -> list[Event]:
        """The recorded events from ``source`` of ``type`` (``None``: any) passing ``where``."""
        return [e for e in self.events if _matches(e, source, type, where)]

    async def wait_for(
        self,
        source: str,
        type: str,
        *,
        timeout: float = 10.0,
        where: EventFilter | None = None,
    ) -> Event:
        """The first event from ``source`` of ``type`` (``"*"``: any) for which ``where`` holds.

        An event published earlier counts: there is no race with the code that
        published it. Give ``where`` to tell one event from another of the same type.

        Raises:
            TimeoutError: no such event within ``timeout`` seconds (the message lists
                what was published).
        """
        wanted_type = None if type == "*" else type
        for event in self.events:
            if _matches(event, source, wanted_type, where):
                return event
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        waiter = (source, wanted_type or "", where, future)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            seen = [f"{e.source}/{e.type}" for e in self.events[-20:]]
            raise TimeoutError(
                f"no {source}/{type} event{' passing where=' if where else ''} within "
                f"{timeout:g}s; published: {seen or 'nothing'}"
            ) from None
        finally:
            self._waiters.remove(waiter)

    async def publish(
        self, source: str, type: str, data: Mapping[str, Any], *, key: str | None = None
    ) -> Event:
        """Publish an event as service ``source`` would, to the services consuming it.

        Raises:
            InvalidEvent: a bad source or type, or data that is not a JSON object.
        """
        event = new_event(type, data, source=source, key=key)
        body, headers = encode(event)
        self.route(source, type, body, headers)
        return event

    def clear(self) -> None:
        """Forget the recorded events (the queues are left alone)."""
        self.events.clear()


def _matches(event: Event, source: str | None, type: str | None, where: EventFilter | None) -> bool:
    if source is not None and event.source != source:
        return False
    if type and event.type != type:
        return False
    return where is None or where(event)


class LiveService:
    """A service serving on a free loopback port, with an HTTP client bound to it.

    ``async with LiveService(create_service) as live:`` (or the ``chassis_service``
    fixture) starts the service as ``chassis run`` would, minus the signals, and
    gives:

    * ``live.client``: an :class:`aiohttp.ClientSession` whose relative URLs go to
      the service (``await live.client.get("/items/1")``);
    * ``live.spans``: its finished spans (a :class:`SpanCapture`);
    * ``live.metrics``: changes of its metrics since it started (a :class:`MetricsWatch`).

    Closing drains the service: readiness fails, drain hooks run, in-flight requests
    finish, cleanups run. The drain delay (time for load balancers to notice) is
    skipped, as a second SIGTERM would, unless ``wait_drain_delay`` is true.

    Args:
        target: the service, or a function (maybe async) returning one, called at start.
        host: a loopback address.
        port: the port; 0 picks a free one.
        broker: the in-memory broker the service's events use, unless it was given
            a broker or back end already.
        wait_drain_delay: wait ``health.drain_delay_seconds`` when closing.
    """

    def __init__(
        self,
        target: ServiceTarget,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        broker: InMemoryBroker | None = None,
        wait_drain_delay: bool = False,
    ) -> None:
        self._target = target
        self.host = host
        self.port = port
        self._broker = broker
        self.wait_drain_delay = wait_drain_delay
        self._service: Service | None = None
        self._running: RunningService | None = None
        self._client: aiohttp.ClientSession | None = None
        self._spans: SpanCapture | None = None
        self._metrics: MetricsWatch | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._closed = False

    def __repr__(self) -> str:
        state = self.url if self._running is not None else "stopped"
        return f"<LiveService {self._service!r} {state}>"

    # -- what a test uses -------------------------------------------------------------
    def _started(self) -> RunningService:
        if self._running is None:
            raise LifecycleError(f"{self!r} is not running: await start() first")
        return self._running

    @property
    def service(self) -> Service:
        """The service (from :meth:`start` on, and after it stopped)."""
        if self._service is None:
            raise LifecycleError(f"{self!r} has no service yet: await start() first")
        return self._service

    @property
    def url(self) -> str:
        """The service's base URL, e.g. ``http://127.0.0.1:51234``."""
        return self._started().url

    @property
    def client(self) -> aiohttp.ClientSession:
        """An HTTP client whose relative URLs go to the service; closed with it."""
        self._started()
        assert self._client is not None
        return self._client

    @property
    def spans(self) -> SpanCapture:
        """The service's finished spans."""
        self._started()
        assert self._spans is not None
        return self._spans

    @property
    def metrics(self) -> MetricsWatch:
        """Changes of the service's metrics since it started listening."""
        self._started()
        assert self._metrics is not None
        return self._metrics

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> LiveService:
        """Build the service if given a function, then serve it; returns itself.

        The service runs in a task of its own, as under ``chassis run``: what it binds
        in context variables (its log context, its tracer) stays out of the test's.

        Raises:
            LifecycleError: started before, or the service has run already.
        """
        if self._task is not None or self._closed:
            raise LifecycleError(f"{self!r} has been started already; make a new one")
        service = await _resolve(self._target)
        self._service = service
        self._spans = capture_spans(service)
        events = service.events
        if self._broker is not None and events.broker is None and events.backend is None:
            events.broker = self._broker
        started: asyncio.Future[RunningService] = asyncio.get_running_loop().create_future()
        self._task = task = asyncio.create_task(
            self._serve(service, started), name=f"chassis-live-{service.name}"
        )
        try:
            either: set[asyncio.Future[Any]] = {started, task}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not started.done():
                task.result()  # startup failed: raise why
                raise LifecycleError(f"{service!r} stopped while starting")  # pragma: no cover
            running = started.result()
            self.port = running.port
            self._metrics = MetricsWatch(service)
            self._client = aiohttp.ClientSession(base_url=running.url)
            self._running = running
        except BaseException:
            await self.aclose()
            raise
        return self

    async def _serve(self, service: Service, started: asyncio.Future[RunningService]) -> None:
        async with service.running(self.host, self.port) as running:
            started.set_result(running)
            await self._stop.wait()
            if not self.wait_drain_delay:
                # What a second SIGTERM does: the drain goes on without the delay.
                interrupt = asyncio.Event()
                interrupt.set()
                service._interrupt = interrupt

    async def aclose(self) -> None:
        """Close the client, then drain and stop the service; idempotent.

        Raises:
            Exception: what the service raised while draining or cleaning up.
        """
        self._closed = True
        self._running = None
        client, self._client = self._client, None
        task, self._task = self._task, None
        try:
            if client is not None:
                await client.close()
        finally:
            if task is not None:
                self._stop.set()
                await task

    async def __aenter__(self) -> LiveService:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _resolve(target: ServiceTarget) -> Service:
    if isinstance(target, Service):
        return target
    made = target()
    if inspect.isawaitable(made):
        made = await made
    if not isinstance(made, Service):
        raise TypeError(f"{target!r} returned {made!r}, not a chassis Service")
    return made


class ServiceLauncher:
    """Starts :class:`LiveService`\\ s on demand and closes them all at the end.

    The ``chassis_service`` fixture is one: ``live = await chassis_service(create_service)``.
    The services it starts share one broker (see :class:`RecordingBroker`), as
    services sharing a real broker would.

    Args:
        broker: the broker of the services' events (one of their own by default).
    """

    def __init__(self, *, broker: InMemoryBroker | None = None) -> None:
        self.broker = broker if broker is not None else RecordingBroker()
        self.started: list[LiveService] = []
        """The services started, in order."""

    def __repr__(self) -> str:
        return f"<ServiceLauncher {len(self.started)} started>"

    async def __call__(
        self, target: ServiceTarget, *, port: int = 0, wait_drain_delay: bool = False
    ) -> LiveService:
        """Start ``target`` (see :class:`LiveService`) on ``127.0.0.1``."""
        live = LiveService(target, port=port, broker=self.broker, wait_drain_delay=wait_drain_delay)
        await live.start()
        self.started.append(live)
        return live

    async def aclose(self) -> None:
        """Close every service started, the last one first; errors are raised after all."""
        await _close_all(self.started)


class _Startable(Protocol):
    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


T = TypeVar("T", bound=_Startable)


class Launcher(Generic[T]):
    """Builds and starts test servers on demand, and closes them all at the end.

    The ``chassis_upstream`` and ``chassis_consul`` fixtures are launchers of
    :class:`FaultyUpstream` and :class:`ConsulStandIn`: call one with the class'
    arguments: ``up = await chassis_upstream(name="inventory", error_every=2)``.

    Args:
        factory: builds a server from keyword arguments (its class).
    """

    def __init__(self, factory: Callable[..., T]) -> None:
        self.factory = factory
        self.started: list[T] = []
        """The servers started, in order."""

    def __repr__(self) -> str:
        return f"<Launcher {getattr(self.factory, '__name__', self.factory)} {len(self.started)}>"

    async def __call__(self, **options: Any) -> T:
        """A new server built with ``options``, started."""
        server = self.factory(**options)
        await server.start()
        self.started.append(server)
        return server

    async def aclose(self) -> None:
        """Close every server started, the last one first; errors are raised after all."""
        await _close_all(self.started)


async def _close_all(things: list[Any]) -> None:
    errors: list[Exception] = []
    while things:
        thing = things.pop()
        try:
            await thing.aclose()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
