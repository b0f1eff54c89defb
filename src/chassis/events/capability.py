"""``Events``: the capability that publishes a service's events and runs its subscribers.

With a :class:`~chassis.Service` it is ``service.events``::

    @service.events.subscribe("orders", "order_created")
    async def on_order_created(event: Event) -> None: ...

    await service.events.publish("order_created", {"order_id": oid}, key=oid)

The back end comes from ``CHASSIS_EVENTS__BACKEND``: ``memory`` (the default: the
process' shared :class:`~chassis.events.InMemoryBroker`, or the one set on
``service.events.broker``) or ``rabbitmq``. The lifecycle:

1. startup (cleanup context): the back end is built and started;
2. after every cleanup context has been entered (``on_startup``): the service's
   queue is bound to what it subscribes to and consumption starts; then the outbox
   relay of ``service.database()`` starts, so the service's own subscribers are
   bound before its first event goes out;
3. draining (``on_draining``): consumption stops, handlers in flight go on;
4. shutdown (``on_shutdown``, before any cleanup context is left): handlers in
   flight get ``events.stop_timeout_seconds`` to finish, then are cancelled (their
   events are delivered again, to another instance or after a restart);
5. cleanup: the back end is closed.

What a delivery goes through: a ``CONSUMER`` span continuing the producer's trace;
every handler subscribed to its ``(source, type)``, in registration order; then
``ack`` if they all returned, or ``retry`` with exponential back-off and full
jitter if one raised, or ``dead_letter`` with the exception as the reason once
``events.max_attempts`` deliveries have failed. A message that is not a valid
envelope is dead-lettered at once. Delivery is at least once: make handlers
idempotent, or subscribe with ``idempotent=True`` to get it from the database.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar, cast

from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from chassis import _compat
from chassis.config import ChassisSettings, EventsSettings, env_var_name
from chassis.exceptions import ConfigError, InvalidEvent, LifecycleError, PublishError

from .base import Backend, Binding, DeadLetter, Delivery, Event, check_name, new_event
from .memory import InMemoryBackend, InMemoryBroker
from .telemetry import EventMetrics

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from chassis.db import Database, Transaction
    from chassis.health import Health
    from chassis.tracing import Tracing

__all__ = ["EVENTS_KEY", "Events", "Handler", "IdempotentHandler", "Subscription"]

log = logging.getLogger("chassis.events")

Handler = Callable[[Event], Awaitable[None]]
"""A subscriber: ``async def handler(event)``."""
IdempotentHandler = Callable[[Event, "Transaction"], Awaitable[None]]
"""An idempotent subscriber: ``async def handler(event, tx)``, run inside a transaction."""
F = TypeVar("F", bound=Callable[..., Awaitable[None]])

_PROPAGATOR = TraceContextTextMapPropagator()
_RABBITMQ_MISSING = (
    "the rabbitmq back end needs the optional extra: pip install 'aiochassis[rabbitmq]'"
)


@dataclass(frozen=True, slots=True)
class Subscription:
    """A handler subscribed to events of one source service."""

    source: str
    """The publishing service."""
    type: str
    """The event type, or ``*`` for all of that source's types."""
    handler: Callable[..., Awaitable[None]]
    """The handler: ``(event)``, or ``(event, tx)`` when idempotent."""
    idempotent: bool
    """Runs in a transaction that records the event id; a repeated event is skipped."""
    name: str
    """Identifies the handler in the inbox (its qualified name unless given)."""
    max_attempts: float | None = None
    """Deliveries before a failing event is dead-lettered; ``None``: the setting
    ``events.max_attempts``; ``math.inf``: retried until it succeeds."""

    def matches(self, event: Event) -> bool:
        """Whether ``event`` is for this handler."""
        return event.source == self.source and self.type in ("*", event.type)


class Events:
    """Publishing and subscribing for one service.

    Args:
        service_name: the service: the source of its events and the name of its queue.
        registry: the Prometheus registry for the ``events_*`` metrics (registered at
            startup unless the service's metrics are disabled); none records none.
        tracing: the service's tracing, whose tracer makes the producer and consumer
            spans; none uses the global OpenTelemetry tracer.
        health: where the ``events`` readiness check is registered.
        settings: events settings; when omitted, the service's (or the defaults).
    """

    def __init__(
        self,
        *,
        service_name: str,
        registry: CollectorRegistry | None = None,
        tracing: Tracing | None = None,
        health: Health | None = None,
        settings: EventsSettings | None = None,
    ) -> None:
        self.service_name = check_name("source", service_name)
        self._explicit_settings = settings
        self.settings = settings or EventsSettings()
        self._tracing = tracing
        self.subscriptions: list[Subscription] = []
        self.broker: InMemoryBroker | None = None
        """The in-memory broker to use (with ``backend=memory``); none means
        :meth:`InMemoryBroker.default`. Set it before the service starts."""
        self._configured_backend: Backend | None = None
        self._active: Backend | None = None
        self.database: Database | None = None
        """The service's database (set by ``service.database()``): the inbox of
        idempotent subscribers and the outbox this capability publishes."""
        self._consuming = False
        self._running: set[asyncio.Task[Any]] = set()
        # Registered at startup, and only if the service's metrics are enabled.
        self._export_to = registry
        self.metrics: EventMetrics | None = None
        if health is not None:
            health.add_check("events", self.check, critical=False)

    def __repr__(self) -> str:
        state = "running" if self._active is not None else "stopped"
        return f"<Events {self.service_name} {state}>"

    @property
    def backend(self) -> Backend | None:
        """The back end: the one in use while the service runs, else the one set.

        Set one before the service starts to use it instead of what the settings
        say (any :class:`~chassis.events.Backend`); it is started and closed with
        the service.
        """
        return self._active or self._configured_backend

    @backend.setter
    def backend(self, backend: Backend | None) -> None:
        if self._active is not None:
            raise LifecycleError("set the back end before the service starts")
        self._configured_backend = backend

    def _in_flight(self) -> int:
        return len(self._running)

    def _backlog(self) -> int:
        return self.database.outbox_backlog if self.database is not None else 0

    # -- subscribing ----------------------------------------------------------------
    def add_handler(
        self,
        source: str,
        type: str,
        handler: Callable[..., Awaitable[None]],
        *,
        idempotent: bool = False,
        name: str | None = None,
        max_attempts: float | None = None,
    ) -> Subscription:
        """Subscribe ``handler`` to events ``type`` (``"*"``: every type) of ``source``.

        ``max_attempts`` overrides the ``events.max_attempts`` setting for events this
        handler takes: ``math.inf`` retries a step that must not be given up (a saga's
        compensation, say) until it succeeds, with back-off capped at
        ``events.retry_max_seconds``.

        Raises:
            TypeError: the handler is not an ``async def``.
            InvalidEvent: a bad source or type name.
            LifecycleError: the service is running already.
        """
        check_name("source", source)
        if type != "*":
            check_name("type", type)
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(f"event handler {handler!r} must be an async def")
        if self._active is not None:
            raise LifecycleError("subscribe before the service starts")
        module = getattr(handler, "__module__", "?")
        qualified = f"{module}.{getattr(handler, '__qualname__', '?')}"
        if max_attempts is not None and not max_attempts >= 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts!r}")
        subscription = Subscription(
            source, type, handler, idempotent, name or qualified, max_attempts
        )
        taken = {s.name for s in self.subscriptions if s.idempotent}
        if idempotent and subscription.name in taken:
            raise ValueError(
                f"two idempotent handlers are named {subscription.name!r}: "
                "pass name= to tell them apart"
            )
        self.subscriptions.append(subscription)
        return subscription

    def subscribe(
        self,
        source: str,
        type: str = "*",
        *,
        idempotent: bool = False,
        name: str | None = None,
        max_attempts: float | None = None,
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`add_handler`; returns the function unchanged.

        With ``idempotent=True`` the handler takes ``(event, tx)`` and runs inside a
        transaction of ``service.database()``, which also records the event's id: a
        redelivered or duplicated event does not run it again.
        """
        check_name("source", source)
        if type != "*":
            check_name("type", type)

        def decorate(fn: F) -> F:
            self.add_handler(
                source, type, fn, idempotent=idempotent, name=name, max_attempts=max_attempts
            )
            return fn

        return decorate

    @property
    def bindings(self) -> list[Binding]:
        """``(source, type)`` pairs the service's queue is bound to."""
        seen: dict[Binding, None] = {}
        for s in self.subscriptions:
            seen[(s.source, s.type)] = None
        return list(seen)

    # -- publishing -----------------------------------------------------------------
    async def publish(
        self,
        type: str,
        data: Mapping[str, Any],
        *,
        key: str | None = None,
        schema_version: int = 1,
    ) -> Event:
        """Publish an event now; return it once the broker has confirmed it.

        To publish only if a database transaction commits, use
        :meth:`chassis.db.Transaction.publish` (the outbox) instead.

        Raises:
            InvalidEvent: a bad type, or data that is not a JSON object.
            PublishError: the broker refused it or did not confirm it in time.
            LifecycleError: the service is not running.
        """
        event = new_event(
            type, data, source=self.service_name, key=key, schema_version=schema_version
        )
        return await self.publish_event(event)

    async def publish_event(self, event: Event) -> Event:
        """Publish a built event in a ``PRODUCER`` span; return it as sent.

        The span's parent is the trace context the event carries (the outbox keeps
        the one of the transaction that wrote it), else the current span; the event
        sent carries the producer span's context.

        Raises:
            PublishError: the broker refused it or did not confirm it in time.
            LifecycleError: the service is not running.
        """
        backend = self._active
        if backend is None:
            raise LifecycleError(f"{self!r} publishes from startup to shutdown of its service")
        parent = _extract(event) if event.traceparent else None
        span = self._tracer().start_span(
            f"publish {event.type}",
            parent,
            SpanKind.PRODUCER,
            {
                "messaging.system": _system(backend),
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": f"{event.source}.events",
                "messaging.message.id": event.id,
                "messaging.event.type": event.type,
            },
        )
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, trace.set_span_in_context(span, parent))
        if "traceparent" in carrier:
            event = replace(
                event, traceparent=carrier["traceparent"], tracestate=carrier.get("tracestate")
            )
        try:
            async with _compat.timeout(self.settings.publish_timeout_seconds):
                await backend.publish(event)
        except Exception as exc:
            _fail(span, exc)
            if self.metrics is not None:
                self.metrics.publish_failures.labels(event.type).inc()
            if isinstance(exc, PublishError | InvalidEvent):
                raise
            if isinstance(exc, TimeoutError):
                raise PublishError(
                    f"the broker did not confirm {event.type!r} within "
                    f"{self.settings.publish_timeout_seconds:g}s",
                    event_type=event.type,
                ) from exc
            raise PublishError(
                f"publishing {event.type!r} failed: {type(exc).__name__}: {exc}",
                event_type=event.type,
            ) from exc
        finally:
            span.end()
        if self.metrics is not None:
            self.metrics.published.labels(event.type).inc()
        return event

    # -- consuming --------------------------------------------------------------------
    def _retry_delay(self, attempt: int) -> float:
        settings = self.settings
        ceiling = min(
            settings.retry_max_seconds, settings.retry_initial_seconds * 2 ** (attempt - 1)
        )
        return random.uniform(0, ceiling)

    async def _on_delivery(self, delivery: Delivery) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await self._handle(delivery)
        finally:
            if task is not None:
                self._running.discard(task)

    async def _handle(self, delivery: Delivery) -> None:
        metrics = self.metrics
        try:
            event = delivery.event
        except InvalidEvent as exc:
            reason = f"InvalidEvent: {exc}"
            log.error(
                "dead-lettered a message that is not an event: %s",
                exc,
                extra={"event": "event_dead_lettered", "reason": reason},
            )
            if metrics is not None:
                metrics.consumed.labels("unknown", "invalid", "dead_lettered").inc()
                metrics.dead_lettered.labels("unknown", "invalid").inc()
            await delivery.dead_letter(reason)
            return
        labels = (event.source, event.type)
        if metrics is not None and (delivery.attempt > 1 or delivery.redelivered):
            metrics.redelivered.labels(*labels).inc()
        parent = _extract(event) if event.traceparent else None
        span = self._tracer().start_span(
            f"process {event.type}",
            parent,
            SpanKind.CONSUMER,
            {
                "messaging.system": _system(self._active),
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": f"{event.source}.events",
                "messaging.consumer.group.name": self.service_name,
                "messaging.message.id": event.id,
                "messaging.event.type": event.type,
                "messaging.event.attempt": delivery.attempt,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        bound = self._bind_tracing()
        start = time.perf_counter()
        try:
            applied = await self._run_handlers(event)
        except Exception as exc:
            _fail(span, exc)
            duration = time.perf_counter() - start
            await self._failed(delivery, event, exc)
        else:
            duration = time.perf_counter() - start
            await delivery.ack()
            if metrics is not None:
                outcome = "success" if applied else "duplicate"
                metrics.consumed.labels(*labels, outcome).inc()
        finally:
            if bound is not None:
                bound()
            otel_context.detach(token)
            span.end()
        if metrics is not None:
            metrics.handler_duration.labels(*labels).observe(duration)

    async def _run_handlers(self, event: Event) -> bool:
        """Run the matching handlers; False if every one had applied the event before."""
        applied = False
        matched = False
        for subscription in self.subscriptions:
            if not subscription.matches(event):
                continue
            matched = True
            if not subscription.idempotent:
                await subscription.handler(event)
                applied = True
                continue
            database = self.database
            assert database is not None  # checked at startup
            async with database.transaction() as tx:
                if await database.seen(tx, subscription.name, event):
                    log.info(
                        "%s skipped event %s: applied before",
                        subscription.name,
                        event.id,
                        extra={"event": "event_duplicate", "event_id": event.id},
                    )
                    continue
                await subscription.handler(event, tx)
                applied = True
        return applied or not matched

    def _attempt_limit(self, event: Event) -> float:
        """The most deliveries any handler of ``event`` asks for."""
        default = self.settings.max_attempts
        limits = [
            default if s.max_attempts is None else s.max_attempts
            for s in self.subscriptions
            if s.matches(event)
        ]
        return max(limits, default=default)

    async def _failed(self, delivery: Delivery, event: Event, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        labels = (event.source, event.type)
        metrics = self.metrics
        extra = {"event_id": event.id, "event_type": event.type, "attempt": delivery.attempt}
        limit = self._attempt_limit(event)
        if delivery.attempt >= limit:
            log.error(
                "dead-lettered event %s %s after %d attempt(s): %s",
                event.type,
                event.id,
                delivery.attempt,
                reason,
                exc_info=exc,
                extra={"event": "event_dead_lettered", "reason": reason, **extra},
            )
            if metrics is not None:
                metrics.consumed.labels(*labels, "dead_lettered").inc()
                metrics.dead_lettered.labels(*labels).inc()
            await delivery.dead_letter(reason)
            return
        delay = self._retry_delay(delivery.attempt)
        log.warning(
            "handling event %s %s failed (attempt %d of %s): %s; retrying in %.3gs",
            event.type,
            event.id,
            delivery.attempt,
            "unlimited" if math.isinf(limit) else int(limit),
            reason,
            delay,
            extra={"event": "event_retry", "reason": reason, **extra},
        )
        if metrics is not None:
            metrics.consumed.labels(*labels, "retried").inc()
        await delivery.retry(delay, reason)

    def _tracer(self) -> trace.Tracer:
        tracing = self._tracing
        tracer = tracing._tracer if tracing is not None else None
        if tracer is None:
            from chassis.tracing import current_tracer

            return current_tracer()
        return tracer

    def _bind_tracing(self) -> Callable[[], None] | None:
        """Make this service's tracer the current one for ``@traced`` in handlers."""
        from chassis.tracing import _current

        if self._tracing is None or self._tracing._tracer is None:
            return None
        token = _current.set(self._tracing)
        return lambda: _current.reset(token)

    # -- lifecycle --------------------------------------------------------------------
    def configure(self, settings: ChassisSettings) -> None:
        """Adopt a service's events settings unless explicit ones were given.

        Raises:
            ConfigError: ``rabbitmq`` is asked for without the optional extra installed.
        """
        if self._explicit_settings is None:
            self.settings = settings.events
        if not settings.metrics.enabled:
            self._export_to = None
        if self.settings.backend == "rabbitmq" and importlib.util.find_spec("aio_pika") is None:
            raise ConfigError([(env_var_name(("events", "backend")), _RABBITMQ_MISSING)])

    def setup(self, app: web.Application) -> None:
        """Add one cleanup context (the back end) and the start/stop of consumption."""
        app[EVENTS_KEY] = self
        app.cleanup_ctx.append(self._lifespan)
        # Both run outside every cleanup context: consumption starts once all of
        # them (the database, your lifespans) are entered, and ends before any is left.
        app.on_startup.append(self._start_consuming)
        app.on_shutdown.append(self._stop)

    def _build_backend(self) -> Backend:
        if self._configured_backend is not None:
            return self._configured_backend
        settings = self.settings
        if settings.backend == "rabbitmq":
            # Imported here: aio-pika is an optional extra.
            rabbitmq = importlib.import_module("chassis.events.rabbitmq")
            backend = rabbitmq.RabbitMQBackend(settings.url.get_secret_value(), settings=settings)
            return cast(Backend, backend)
        return (self.broker or InMemoryBroker.default()).connect()

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        if any(s.idempotent for s in self.subscriptions) and self.database is None:
            raise LifecycleError(
                "subscribe(..., idempotent=True) needs the service's database: "
                "call service.database(...) before it starts"
            )
        if self._export_to is not None and self.metrics is None:
            self.metrics = EventMetrics(
                self._export_to, in_flight=self._in_flight, outbox_backlog=self._backlog
            )
        backend = self._build_backend()
        if isinstance(backend, InMemoryBackend):
            backend.pending = self._backlog
        await backend.start()
        self._active = backend
        try:
            yield
        finally:
            try:
                await self._stop(app)
            finally:
                self._active = None
                self._configured_backend = None  # closed: it cannot serve another start
                await backend.aclose()

    async def _start_consuming(self, app: web.Application) -> None:
        backend = self._active
        if backend is None:
            return
        if self.subscriptions:
            await backend.consume(
                self.service_name,
                self.bindings,
                self._on_delivery,
                prefetch=self.settings.prefetch,
            )
            self._consuming = True
            log.info(
                "%s consuming %s",
                self.service_name,
                ", ".join(f"{s}/{t}" for s, t in self.bindings),
                extra={"event": "events_consuming"},
            )
        if self.database is not None:
            self.database.start_relay()

    async def _stop_consuming(self) -> None:
        if self._consuming and self._active is not None:
            self._consuming = False
            await self._active.stop_consuming()

    async def on_draining(self) -> None:
        """Stop taking new deliveries; the ones in flight go on."""
        await self._stop_consuming()

    async def _stop(self, app: web.Application | None = None) -> None:
        """Stop consuming and let in-flight handlers finish (bounded); idempotent."""
        await self._stop_consuming()
        running = set(self._running)
        if not running:
            return
        timeout = self.settings.stop_timeout_seconds
        log.info(
            "waiting up to %gs for %d event handler(s)",
            timeout,
            len(running),
            extra={"event": "events_stopping"},
        )
        _done, late = await asyncio.wait(running, timeout=timeout or None)
        if late:
            log.warning(
                "cancelled %d event handler(s) still running after %gs; "
                "their events will be delivered again",
                len(late),
                timeout,
                extra={"event": "events_handlers_cancelled"},
            )
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    # -- inspection -------------------------------------------------------------------
    async def check(self) -> bool:
        """Readiness: the back end is connected (true before it starts, for the memory one)."""
        backend = self._active
        if backend is None:
            return False
        return backend.healthy()

    async def dead_letters(self) -> list[DeadLetter]:
        """This service's dead letters, oldest first.

        Raises:
            LifecycleError: the service is not running.
        """
        if self._active is None:
            raise LifecycleError(f"{self!r} is not running")
        return await self._active.dead_letters(self.service_name)

    async def snapshot(self, *, timeout_seconds: float = 1.0) -> dict[str, Any]:
        """The live state, for introspection: back end, subscriptions, handlers in
        flight, outbox backlog, and the queue's backlog and dead letters where the back
        end can count them cheaply (``"unknown"`` otherwise, or after ``timeout_seconds``)."""
        backend = self._active
        queued: int | str = "unknown"
        dead: int | str = "unknown"
        if isinstance(backend, InMemoryBackend):
            queued = backend.broker.queued(self.service_name)
            dead = len(backend.broker.dead_letters(self.service_name))
        elif backend is not None and self.subscriptions:
            depths = getattr(backend, "queue_depths", None)
            if depths is not None:
                try:
                    async with _compat.timeout(timeout_seconds):
                        counted = await depths(self.service_name)
                    queued, dead = counted["queued"], counted["dead_letters"]
                except (Exception, TimeoutError) as exc:  # introspection never fails for it
                    log.debug("could not count the queues of %s: %s", self.service_name, exc)
        return {
            "backend": _system(backend) if backend is not None else self.settings.backend,
            "running": backend is not None,
            "connected": backend.healthy() if backend is not None else False,
            "consuming": self._consuming,
            "subscriptions": [
                {
                    "source": s.source,
                    "type": s.type,
                    "handler": s.name,
                    "idempotent": s.idempotent,
                    "max_attempts": s.max_attempts,
                }
                for s in self.subscriptions
            ],
            "handlers_in_flight": len(self._running),
            "outbox_backlog": self._backlog(),
            "queued": queued,
            "dead_letters": dead,
        }

    def is_idle(self) -> bool:
        """No handler running, no outbox event unsent, and (in memory) the broker idle."""
        if self._running or self._backlog():
            return False
        idle = getattr(self._active, "idle", None)
        return bool(idle()) if idle is not None else True

    async def drained(self, timeout: float = 10.0) -> None:
        """Wait until :meth:`is_idle`: for tests and demos, to let event chains settle.

        With the in-memory broker this covers every service connected to it; with
        RabbitMQ only this service (its handlers and outbox).

        Raises:
            TimeoutError: still busy after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not self.is_idle():
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.service_name}: events still in flight after {timeout:g}s "
                    f"(handlers: {len(self._running)}, outbox: {self._backlog()})"
                )
            await asyncio.sleep(0.005)


def _extract(event: Event) -> otel_context.Context:
    carrier = {"traceparent": event.traceparent or ""}
    if event.tracestate:
        carrier["tracestate"] = event.tracestate
    return _PROPAGATOR.extract(carrier)


def _system(backend: object) -> str:
    return str(getattr(backend, "name", None) or type(backend).__name__)


def _fail(span: trace.Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
    span.set_attribute("error.type", type(exc).__qualname__)


EVENTS_KEY = web.AppKey("chassis.events", Events)
"""The service's :class:`Events`: ``request.app[EVENTS_KEY]``."""
