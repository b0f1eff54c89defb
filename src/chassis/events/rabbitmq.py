"""The RabbitMQ events back end (aio-pika): exchanges, queues, confirms, retries, reconnects.

Topology, for a service ``orders`` publishing and a service ``ledger`` consuming:

* ``orders.events``: a durable topic exchange per publishing service; an event's
  routing key is its type.
* ``ledger.events``: a durable queue per consuming service, bound to each
  ``(source, type)`` it subscribes to (the type ``"*"`` binds ``#``). Every instance
  of ``ledger`` consumes from it: competing consumers.
* ``ledger.retry.<ms>``: durable delay queues, one per retry delay (rounded up to two
  significant digits), whose messages expire after that delay and are dead-lettered
  back to ``ledger.events``. One delay per queue keeps expiry first-in first-out, so
  a long delay never holds up a short one. An unused delay queue deletes itself a
  minute after its delay.
* ``ledger.dead``: the durable dead-letter queue; the reason is in the
  ``chassis-dead-reason`` header.

Messages are persistent; publishes wait for the broker's confirm. A retried message
carries its delivery attempt in the ``chassis-attempt`` header. Retries and dead
letters are persistent messages in durable queues: they survive a broker restart.

One background task keeps the connection: it reconnects with exponential back-off
(full jitter) when the broker goes away and declares the topology again on every new
connection. While disconnected, :meth:`RabbitMQBackend.healthy` is false and publishes
wait for the connection, up to ``publish_timeout_seconds`` in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import aio_pika
import aiormq.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL

from chassis import _compat
from chassis.config import EventsSettings
from chassis.exceptions import EventError, InvalidEvent, PublishError

from .base import (
    ATTEMPT_HEADER,
    CONTENT_TYPE,
    Binding,
    DeadLetter,
    DeliveryHandler,
    Event,
    decode,
    encode,
)

__all__ = [
    "DEAD_REASON_HEADER",
    "RETRY_REASON_HEADER",
    "RabbitMQBackend",
    "consumer_queue",
    "dead_letter_queue",
    "exchange_name",
    "retry_queue",
]

log = logging.getLogger("chassis.events")

DEAD_REASON_HEADER = "chassis-dead-reason"
"""Header of a dead-lettered message: why its consumer gave up on it."""
RETRY_REASON_HEADER = "chassis-retry-reason"
"""Header of a retried message: why its last delivery failed."""

_RETRY_QUEUE_IDLE_MS = 60_000  # a delay queue unused this long past its delay goes away
_REASON_MAX = 4000  # characters
_CLOSE_TIMEOUT_SECONDS = 5.0
_LOST_GRACE_SECONDS = 0.5  # after a failed publish: time for the loss to be noticed


def exchange_name(source: str) -> str:
    """The topic exchange service ``source`` publishes to."""
    return f"{source}.events"


def consumer_queue(consumer: str) -> str:
    """The queue the instances of service ``consumer`` consume from."""
    return f"{consumer}.events"


def dead_letter_queue(consumer: str) -> str:
    """The dead-letter queue of service ``consumer``."""
    return f"{consumer}.dead"


def retry_queue(consumer: str, delay_ms: int) -> str:
    """The delay queue holding ``consumer``'s retries for ``delay_ms`` milliseconds."""
    return f"{consumer}.retry.{delay_ms}"


def _delay_ms(seconds: float) -> int:
    """``seconds`` in milliseconds, rounded up to two significant digits (at least 1)."""
    ms = max(1, math.ceil(seconds * 1000))
    scale = int(10 ** max(0, len(str(ms)) - 2))
    return math.ceil(ms / scale) * scale


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _header_int(value: Any, default: int) -> int:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return number if number >= 1 else default


def _header_text(value: Any) -> str | None:
    """A header value as text; none for tables and arrays (``x-death``)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (str, int, float, bool)):
        return str(value)
    return None


class _RoutineConnectionErrors(logging.Filter):
    """Drops aiormq's ERROR records of a refused or broker-closed connection.

    During an outage aiormq logs one per reconnection attempt; the back end reports
    the outage itself, once (``cannot connect``, ``lost the connection``).
    """

    PREFIXES = ("error when creating transport", "Unexpected connection close from remote")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.PREFIXES))


def _quiet_routine_connection_errors() -> None:
    logger = logging.getLogger("aiormq.connection")
    if not any(isinstance(f, _RoutineConnectionErrors) for f in logger.filters):
        logger.addFilter(_RoutineConnectionErrors())


class _Session:
    """One connection and what was opened on it; replaced on every reconnect."""

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self.lost = asyncio.Event()
        self._publish: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._lock = asyncio.Lock()

    async def publish_channel(self) -> AbstractChannel:
        """The channel publishes go through (confirms on), reopened if the broker closed it."""
        channel = self._publish
        if channel is None or channel.is_closed:
            async with self._lock:
                channel = self._publish
                if channel is None or channel.is_closed:
                    channel = await self.connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                    self._publish = channel
                    self._exchanges.clear()
        return channel

    async def exchange(self, name: str) -> AbstractExchange:
        """The topic exchange ``name``, declared once per channel."""
        channel = await self.publish_channel()
        exchange = self._exchanges.get(name)
        if exchange is None:
            exchange = await channel.declare_exchange(
                name, aio_pika.ExchangeType.TOPIC, durable=True
            )
            self._exchanges[name] = exchange
        return exchange


@dataclass(eq=False)
class _Consumer:
    """What ``consume`` asked for, and its state on the current connection."""

    name: str
    bindings: tuple[Binding, ...]
    on_delivery: DeliveryHandler
    prefetch: int
    context: contextvars.Context
    stopped: bool = False
    session: _Session | None = None
    channel: AbstractChannel | None = None
    queue: AbstractQueue | None = None
    tag: str | None = None


class _Delivery:
    """One message delivered from a consumer queue."""

    __slots__ = ("_backend", "_consumer", "_event", "_session", "attempt", "message", "settled")

    def __init__(
        self,
        backend: RabbitMQBackend,
        session: _Session,
        consumer: _Consumer,
        message: AbstractIncomingMessage,
    ) -> None:
        self._backend = backend
        self._session = session
        self._consumer = consumer
        self.message = message
        self.attempt = _header_int((message.headers or {}).get(ATTEMPT_HEADER), 1)
        self.settled = False
        self._event: Event | None = None

    @property
    def redelivered(self) -> bool:
        return bool(self.message.redelivered)

    @property
    def event(self) -> Event:
        if self._event is None:
            self._event = decode(
                self.message.body,
                self.message.headers,
                attempt=self.attempt,
                redelivered=self.redelivered,
            )
        return self._event

    def _take(self) -> bool:
        if self.settled:
            return False
        self.settled = True
        return True

    async def ack(self) -> None:
        if self._take():
            await self._finish(requeue=False)

    async def retry(self, delay_seconds: float, reason: str) -> None:
        if not self._take():
            return
        consumer = self._consumer.name
        headers = {ATTEMPT_HEADER: self.attempt + 1, RETRY_REASON_HEADER: reason[:_REASON_MAX]}
        if delay_seconds <= 0:
            await self._move(consumer_queue(consumer), headers)
            return
        ms = _delay_ms(delay_seconds)
        arguments = {
            "x-message-ttl": ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": consumer_queue(consumer),
            "x-expires": ms + _RETRY_QUEUE_IDLE_MS,
        }
        await self._move(retry_queue(consumer, ms), headers, arguments)

    async def dead_letter(self, reason: str) -> None:
        if self._take():
            queue = dead_letter_queue(self._consumer.name)
            await self._move(queue, {DEAD_REASON_HEADER: reason[:_REASON_MAX]})

    async def _move(
        self, queue: str, extra: Mapping[str, Any], arguments: dict[str, Any] | None = None
    ) -> None:
        """Publish a copy with the ``extra`` headers to ``queue``, then ack the original.

        With ``arguments``, ``queue`` is declared first (each time: that renews the lease
        of a delay queue). When the copy cannot be published, the original goes back.
        """
        try:
            if arguments is not None:
                channel = await self._session.publish_channel()
                await channel.declare_queue(queue, durable=True, arguments=arguments)
            await self._backend._send(queue, self._headers(extra), self, session=self._session)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "could not move a message of %s to %s (%s); it will be delivered again",
                self._consumer.name,
                queue,
                exc,
            )
            await self._finish(requeue=True)
            return
        await self._finish(requeue=False)

    def _headers(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        headers = {
            name: value
            for name, value in (self.message.headers or {}).items()
            if name != "x-death"  # the broker's own record; it grows with every retry
        }
        headers.update(extra)
        return headers

    async def _finish(self, *, requeue: bool) -> None:
        """Ack (or give back) the message; after a lost connection the broker redelivers it."""
        try:
            if requeue:
                await self.message.nack(requeue=True)
            else:
                await self.message.ack()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info(
                "could not settle a message of %s (%s); the broker delivers it again",
                self._consumer.name,
                exc,
            )


class RabbitMQBackend:
    """The events back end over RabbitMQ; see the module docstring for the topology.

    Built by the events capability when ``CHASSIS_EVENTS__BACKEND=rabbitmq``; one per
    service instance. Implements :class:`~chassis.events.Backend`.

    Args:
        url: the broker's AMQP URL (``amqp://user:password@127.0.0.1:5672/vhost``).
        settings: timeouts and reconnect backoff (``publish_timeout_seconds``,
            ``reconnect_initial_seconds``, ``reconnect_max_seconds``).
    """

    name = "rabbitmq"

    def __init__(self, url: str, *, settings: EventsSettings) -> None:
        self._url = url
        parsed = URL(url)
        self._where = f"{parsed.host or '127.0.0.1'}:{parsed.port or 5672}{parsed.path or '/'}"
        self._settings = settings
        self._session: _Session | None = None
        self._ready = asyncio.Event()
        self._attempted = asyncio.Event()
        self._lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._consumer: _Consumer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        state = "connected" if self.healthy() else "disconnected"
        return f"<RabbitMQBackend {self._where} {state}>"

    # -- connection ---------------------------------------------------------------------
    async def start(self) -> None:
        """Start connecting; returns after the first attempt, successful or not.

        When the broker cannot be reached, the service starts anyway (not ready) and
        the connection is retried in the background.
        """
        if self._closed:
            raise EventError("the RabbitMQ back end is closed")
        _quiet_routine_connection_errors()
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(
                self._supervise(), name="chassis-events-rabbitmq"
            )
        await self._attempted.wait()

    def healthy(self) -> bool:
        """Connected, with the topology declared (and consuming, if asked to)."""
        session = self._session
        return session is not None and not session.lost.is_set() and not self._closed

    async def _supervise(self) -> None:
        initial = self._settings.reconnect_initial_seconds
        delay = initial
        failures = 0
        while not self._closed:
            session = await self._connect(quiet=failures > 0)
            self._attempted.set()
            if session is None:
                failures += 1
            else:
                if failures:
                    log.info("reconnected to RabbitMQ at %s", self._where)
                failures, delay = 0, initial
                try:
                    await session.lost.wait()
                finally:
                    await self._drop(session)
                log.warning("lost the connection to RabbitMQ at %s; reconnecting", self._where)
                failures = 1
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, self._settings.reconnect_max_seconds)

    async def _connect(self, *, quiet: bool) -> _Session | None:
        """A new session with the topology declared; none (logged) when that failed."""
        made: list[aio_pika.Connection] = []

        def make(*args: Any, **kwargs: Any) -> aio_pika.Connection:
            made.append(aio_pika.Connection(*args, **kwargs))
            return made[-1]

        try:
            connection = await aio_pika.connect(
                self._url,
                timeout=self._settings.publish_timeout_seconds,
                connection_class=cast("type[aio_pika.Connection]", make),
            )
        except BaseException as exc:
            # Close the half-made connection here, on the loop: left to the garbage
            # collector, aio-pika's __del__ schedules its close() outside a running loop,
            # and that coroutine is never awaited.
            for failed in made:
                await self._close_connection(failed)
            if isinstance(exc, asyncio.CancelledError) or not isinstance(exc, Exception):
                raise
            log.log(
                logging.DEBUG if quiet else logging.WARNING,
                "cannot connect to RabbitMQ at %s: %s",
                self._where,
                _describe(exc),
            )
            return None
        session = _Session(connection)
        connection.close_callbacks.add(lambda *_: self._lose(session))
        try:
            async with self._lock:
                await session.publish_channel()
                consumer = self._consumer
                if consumer is not None and not consumer.stopped:
                    await self._start_consumer(session, consumer)
                if not session.lost.is_set():  # it may have gone again already
                    self._session = session
                    self._ready.set()
        except asyncio.CancelledError:
            await self._close_connection(connection)
            raise
        except Exception as exc:
            log.error("cannot set up the events topology on RabbitMQ at %s: %s", self._where, exc)
            await self._close_connection(connection)
            return None
        return session

    def _lose(self, session: _Session) -> None:
        """The connection (or a channel we did not close) went away."""
        session.lost.set()
        if self._session is session:
            self._session = None
            self._ready.clear()

    async def _drop(self, session: _Session) -> None:
        self._lose(session)
        await self._close_connection(session.connection)

    @staticmethod
    async def _close_connection(connection: AbstractConnection) -> None:
        with contextlib.suppress(Exception):
            async with _compat.timeout(_CLOSE_TIMEOUT_SECONDS):
                await connection.close()

    async def _wait_session(self, deadline: float) -> _Session | None:
        """The live session, waiting for a reconnection until ``deadline`` (loop time)."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            session = self._session
            if session is not None and not session.lost.is_set():
                return session
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                async with _compat.timeout(remaining):
                    await self._ready.wait()
            await asyncio.sleep(0)
        return None

    # -- publishing ---------------------------------------------------------------------
    async def publish(self, event: Event) -> None:
        """Publish ``event`` to its source's exchange; return once the broker confirmed it.

        While the broker is unreachable it waits for the reconnection, up to
        ``publish_timeout_seconds`` in all (the outbox relay retries later).

        Raises:
            PublishError: the broker refused the event, did not confirm it in time, or
                could not be reached in time.
        """
        if self._closed:
            raise PublishError(
                f"cannot publish {event.type!r}: the RabbitMQ back end is closed",
                event_type=event.type,
            )
        body, headers = encode(event)
        message = aio_pika.Message(
            body,
            headers=dict(headers),
            content_type=CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=event.id,
            type=event.type,
            app_id=event.source,
            timestamp=event.time,
        )
        await self._publish(
            message,
            exchange=exchange_name(event.source),
            routing_key=event.type,
            event_type=event.type,
            session=None,
        )

    async def _send(
        self, queue: str, headers: dict[str, Any], delivery: _Delivery, *, session: _Session
    ) -> None:
        """Put a copy of ``delivery``'s message, with ``headers``, on ``queue``."""
        original = delivery.message
        message = aio_pika.Message(
            original.body,
            headers=headers,
            content_type=original.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=original.message_id,
            type=original.type,
            app_id=original.app_id,
            timestamp=original.timestamp,
        )
        await self._publish(
            message,
            exchange="",
            routing_key=queue,
            event_type=str(original.type or ""),
            session=session,
        )

    async def _publish(
        self,
        message: aio_pika.Message,
        *,
        exchange: str,
        routing_key: str,
        event_type: str,
        session: _Session | None,
    ) -> None:
        """Publish with a confirm; ``exchange=""`` is the default one (mandatory routing).

        Without ``session``, waits for a connection and republishes after a lost one,
        until ``publish_timeout_seconds``; with it, fails as soon as that session does.
        """
        timeout = self._settings.publish_timeout_seconds
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        problem = f"RabbitMQ at {self._where} is unreachable"
        while True:
            current = session or await self._wait_session(deadline)
            if current is None or current.lost.is_set():
                raise PublishError(
                    f"event {event_type!r} not published within {timeout:g}s: {problem}",
                    event_type=event_type,
                )
            try:
                async with _compat.timeout(max(0.0, deadline - loop.time())):
                    if exchange:
                        target = await current.exchange(exchange)
                    else:
                        target = (await current.publish_channel()).default_exchange
                    await target.publish(message, routing_key=routing_key, mandatory=not exchange)
                return
            except (TimeoutError, asyncio.TimeoutError):
                raise PublishError(
                    f"event {event_type!r} not confirmed by RabbitMQ within {timeout:g}s",
                    event_type=event_type,
                ) from None
            # A nack, an unroutable message, a channel error (an exchange of another type).
            except (aiormq.exceptions.DeliveryError, aiormq.exceptions.AMQPChannelError) as exc:
                raise PublishError(
                    f"RabbitMQ refused event {event_type!r}: {exc}", event_type=event_type
                ) from exc
            except asyncio.CancelledError:
                raise
            except CONNECTION_EXCEPTIONS as exc:
                problem = _describe(exc)
                if session is not None:
                    raise PublishError(
                        f"event {event_type!r} not published: {problem}", event_type=event_type
                    ) from exc
                # Give the close callback a moment; a live connection retries at once.
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    async with _compat.timeout(
                        min(_LOST_GRACE_SECONDS, max(0.0, deadline - loop.time()))
                    ):
                        await current.lost.wait()

    # -- consuming ----------------------------------------------------------------------
    async def consume(
        self,
        consumer: str,
        bindings: Sequence[Binding],
        on_delivery: DeliveryHandler,
        *,
        prefetch: int,
    ) -> None:
        """Declare ``consumer``'s queues and bindings and start consuming (again on every
        reconnection). When the broker is unreachable now, that happens on connection.

        Raises:
            EventError: the broker refused the topology (e.g. a queue of that name
                exists with other arguments).
        """
        if self._closed:
            raise EventError("the RabbitMQ back end is closed")
        if self._consumer is not None:
            raise RuntimeError("this back end is consuming already")
        entry = _Consumer(
            consumer, tuple(bindings), on_delivery, prefetch, contextvars.copy_context()
        )
        self._consumer = entry
        async with self._lock:
            session = self._session
            if session is None or session.lost.is_set():
                return  # the supervisor starts it on connection
            try:
                await self._start_consumer(session, entry)
            except aiormq.exceptions.AMQPChannelError as exc:
                raise EventError(f"RabbitMQ refused the queues of {consumer!r}: {exc}") from exc
            except CONNECTION_EXCEPTIONS as exc:
                log.warning("consuming as %s starts on reconnection (%s)", consumer, exc)

    async def _start_consumer(self, session: _Session, consumer: _Consumer) -> None:
        if consumer.session is session:
            return
        channel = await session.connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=consumer.prefetch)
        queue = await channel.declare_queue(consumer_queue(consumer.name), durable=True)
        await channel.declare_queue(dead_letter_queue(consumer.name), durable=True)
        for source, event_type in consumer.bindings:
            exchange = await channel.declare_exchange(
                exchange_name(source), aio_pika.ExchangeType.TOPIC, durable=True
            )
            await queue.bind(exchange, routing_key="#" if event_type == "*" else event_type)

        async def on_message(message: AbstractIncomingMessage) -> None:
            self._spawn(consumer, _Delivery(self, session, consumer, message))

        consumer.tag = await queue.consume(on_message, no_ack=False)
        consumer.session, consumer.channel, consumer.queue = session, channel, queue

        def on_channel_close(*_: Any) -> None:
            if consumer.session is session and not consumer.stopped:
                self._lose(session)  # the broker closed it: start over on a new connection

        channel.close_callbacks.add(on_channel_close)

    def _spawn(self, consumer: _Consumer, delivery: _Delivery) -> None:
        # Each delivery runs in a copy of the context consume() was called in.
        task: asyncio.Task[None] = consumer.context.copy().run(
            asyncio.ensure_future, self._deliver(consumer, delivery)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, consumer: _Consumer, delivery: _Delivery) -> None:
        try:
            await consumer.on_delivery(delivery)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("events delivery handler of %s failed", consumer.name)

    async def stop_consuming(self) -> None:
        """Cancel the consumer: no new deliveries. Those in flight can still be settled;
        what is left unsettled goes back to the queue at :meth:`aclose`."""
        consumer = self._consumer
        if consumer is None or consumer.stopped:
            return
        consumer.stopped = True
        queue, tag, session = consumer.queue, consumer.tag, consumer.session
        if queue is None or tag is None or session is None or session.lost.is_set():
            return
        try:
            async with _compat.timeout(_CLOSE_TIMEOUT_SECONDS):
                await queue.cancel(tag)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("cancelling the consumer of %s: %s", consumer.name, exc)

    # -- inspection ---------------------------------------------------------------------
    async def dead_letters(self, consumer: str) -> list[DeadLetter]:
        """The messages in ``consumer``'s dead-letter queue, oldest first.

        They are read and given back: the queue keeps them (each read marks them
        redelivered). New dead letters arriving meanwhile are not included.

        Raises:
            EventError: the broker could not be reached in ``publish_timeout_seconds``.
        """
        loop = asyncio.get_running_loop()
        session = await self._wait_session(loop.time() + self._settings.publish_timeout_seconds)
        if session is None:
            raise EventError(f"cannot read dead letters: RabbitMQ at {self._where} is unreachable")
        channel = await session.connection.channel(publisher_confirms=False)
        letters: list[DeadLetter] = []
        try:
            queue = await channel.declare_queue(dead_letter_queue(consumer), durable=True)
            result = queue.declaration_result
            for _ in range(result.message_count or 0):
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                letters.append(_dead_letter(message))
        finally:
            # Closing the channel returns every message read to the queue, in order.
            with contextlib.suppress(Exception):
                await channel.close()
        return letters

    async def queue_depths(self, consumer: str) -> dict[str, int]:
        """Messages waiting in ``consumer``'s queue and in its dead-letter queue.

        Declared passively on a channel of its own: nothing is created or read.
        Messages delivered and not yet settled are not counted.

        Raises:
            EventError: not connected, or a queue does not exist.
        """
        session = self._session
        if session is None or session.lost.is_set() or self._closed:
            raise EventError(f"RabbitMQ at {self._where} is not connected")
        try:
            channel = await session.connection.channel(publisher_confirms=False)
            try:
                depths = {}
                for key, name in (
                    ("queued", consumer_queue(consumer)),
                    ("dead_letters", dead_letter_queue(consumer)),
                ):
                    queue = await channel.declare_queue(name, passive=True)
                    depths[key] = queue.declaration_result.message_count or 0
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
        except (aiormq.exceptions.AMQPError, *CONNECTION_EXCEPTIONS) as exc:
            raise EventError(f"cannot count the queues of {consumer}: {_describe(exc)}") from exc
        return depths

    # -- shutdown -----------------------------------------------------------------------
    async def aclose(self) -> None:
        """Stop consuming, cancel handlers still running (their messages are delivered
        again), close the channels and the connection. Idempotent."""
        if self._closed:
            return
        await self.stop_consuming()
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            tasks.append(supervisor)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        session, self._session = self._session, None
        self._ready.clear()
        if session is not None:
            session.lost.set()
            await self._close_connection(session.connection)


def _dead_letter(message: AbstractIncomingMessage) -> DeadLetter:
    raw = message.headers or {}
    headers = {
        name: text for name, value in raw.items() if (text := _header_text(value)) is not None
    }
    reason = headers.get(DEAD_REASON_HEADER, "")
    try:
        event: Event | None = decode(
            message.body, raw, attempt=_header_int(raw.get(ATTEMPT_HEADER), 1)
        )
    except InvalidEvent:
        event = None
    return DeadLetter(event, reason, message.body, headers)
