"""The embedded events back end: a broker living in the process.

:class:`InMemoryBroker` stands in for RabbitMQ when every service runs in one
process (a demo, a test). It keeps RabbitMQ's semantics as far as one process
allows:

* a queue per consuming service, bound to ``(source, type)`` pairs; an event
  published before any consumer bound a queue to it goes nowhere;
* competing consumers: instances consuming as the same service share its queue
  and each event goes to one of them (round robin among those with room);
* at most ``prefetch`` unsettled deliveries per consuming instance;
* ``ack`` removes a delivery, ``retry`` puts it back after a delay with its
  attempt counted, ``dead_letter`` moves it to the queue's dead letters;
* a delivery left unsettled when its instance stops goes back to the front of the
  queue, marked ``redelivered``.

Messages are stored encoded, exactly as a network broker would carry them, so the
envelope is checked the same way with every back end.

Services in one process share :meth:`InMemoryBroker.default` unless given their
own (``service.events.broker = InMemoryBroker()``, what tests do).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from chassis.exceptions import PublishError

from .base import Binding, DeadLetter, DeliveryHandler, Event, decode, encode

__all__ = ["InMemoryBackend", "InMemoryBroker"]


@dataclass(frozen=True, slots=True)
class _Message:
    source: str
    type: str
    body: bytes
    headers: Mapping[str, str]
    attempt: int = 1
    redelivered: bool = False


class _Consumer:
    __slots__ = ("backend", "context", "in_flight", "on_delivery", "prefetch")

    def __init__(
        self,
        backend: InMemoryBackend,
        on_delivery: DeliveryHandler,
        prefetch: int,
        context: contextvars.Context,
    ) -> None:
        self.backend = backend
        self.on_delivery = on_delivery
        self.prefetch = prefetch
        self.context = context
        self.in_flight = 0


class _Queue:
    __slots__ = ("bindings", "consumers", "dead", "delayed", "name", "next", "ready", "unacked")

    def __init__(self, name: str) -> None:
        self.name = name
        self.bindings: set[Binding] = set()
        self.ready: deque[_Message] = deque()
        self.consumers: list[_Consumer] = []
        self.unacked: set[_Delivery] = set()
        self.delayed: set[asyncio.TimerHandle] = set()
        self.dead: list[DeadLetter] = []
        self.next = 0

    def binds(self, source: str, type: str) -> bool:
        bindings = self.bindings
        return (source, type) in bindings or (source, "*") in bindings


class _Delivery:
    """One delivery of a message from a queue to a consumer."""

    __slots__ = ("_event", "broker", "consumer", "message", "queue", "settled")

    def __init__(
        self, broker: InMemoryBroker, queue: _Queue, consumer: _Consumer, message: _Message
    ) -> None:
        self.broker = broker
        self.queue = queue
        self.consumer = consumer
        self.message = message
        self.settled = False
        self._event: Event | None = None

    @property
    def event(self) -> Event:
        if self._event is None:
            m = self.message
            self._event = decode(m.body, m.headers, attempt=m.attempt, redelivered=m.redelivered)
        return self._event

    @property
    def attempt(self) -> int:
        return self.message.attempt

    @property
    def redelivered(self) -> bool:
        return self.message.redelivered

    def _settle(self) -> bool:
        if self.settled:
            return False
        self.settled = True
        self.queue.unacked.discard(self)
        self.consumer.in_flight -= 1
        return True

    async def ack(self) -> None:
        if self._settle():
            self.broker._dispatch(self.queue)

    async def retry(self, delay_seconds: float, reason: str) -> None:
        if not self._settle():
            return
        queue = self.queue
        again = replace(self.message, attempt=self.message.attempt + 1, redelivered=False)
        loop = asyncio.get_running_loop()

        def put_back() -> None:
            queue.delayed.discard(handle)
            queue.ready.append(again)
            self.broker._dispatch(queue)

        handle = loop.call_later(max(0.0, delay_seconds), put_back)
        queue.delayed.add(handle)
        self.broker._dispatch(queue)

    async def dead_letter(self, reason: str) -> None:
        if not self._settle():
            return
        m = self.message
        try:
            event: Event | None = self.event
        except Exception:
            event = None
        self.queue.dead.append(DeadLetter(event, reason, m.body, dict(m.headers)))
        self.broker._dispatch(self.queue)

    def requeue(self) -> None:
        """Put an unsettled delivery back at the front, marked redelivered."""
        if self._settle():
            self.queue.ready.appendleft(replace(self.message, redelivered=True))


class InMemoryBroker:
    """A message broker in the process: queues, bindings, retries and dead letters.

    Connect each service instance with :meth:`connect` (the events capability does
    it); wait for quiet with :meth:`wait_idle`; inspect :meth:`dead_letters`.
    """

    _default: ClassVar[InMemoryBroker | None] = None

    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}
        self._backends: set[InMemoryBackend] = set()
        self.published = 0
        """Events published through this broker so far."""

    def __repr__(self) -> str:
        return f"<InMemoryBroker queues={sorted(self._queues)}>"

    @classmethod
    def default(cls) -> InMemoryBroker:
        """The process' shared broker, created on first use."""
        if cls._default is None:
            cls._default = cls()
        return cls._default

    def connect(self) -> InMemoryBackend:
        """A back end for one service instance (see :class:`~chassis.events.Backend`)."""
        return InMemoryBackend(self)

    # -- routing ------------------------------------------------------------------
    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue(name)
        return queue

    def route(self, source: str, type: str, body: bytes, headers: Mapping[str, str]) -> int:
        """Put an encoded message on every queue bound to ``(source, type)``; how many.

        :meth:`InMemoryBackend.publish` uses it; tests use it to deliver a message
        that is not a valid envelope.
        """
        self.published += 1
        message = _Message(source, type, body, dict(headers))
        routed = 0
        for queue in self._queues.values():
            if queue.binds(source, type):
                queue.ready.append(message)
                routed += 1
                self._dispatch(queue)
        return routed

    def _dispatch(self, queue: _Queue) -> None:
        consumers = queue.consumers
        while queue.ready and consumers:
            count = len(consumers)
            for step in range(count):
                consumer = consumers[(queue.next + step) % count]
                if consumer.in_flight < consumer.prefetch:
                    queue.next = (queue.next + step + 1) % count
                    break
            else:
                return  # every consumer is full; an ack calls us again
            delivery = _Delivery(self, queue, consumer, queue.ready.popleft())
            queue.unacked.add(delivery)
            consumer.in_flight += 1
            consumer.backend._spawn(consumer, delivery)

    # -- inspection -----------------------------------------------------------------
    def dead_letters(self, consumer: str) -> list[DeadLetter]:
        """The dead letters of service ``consumer``'s queue, oldest first."""
        queue = self._queues.get(consumer)
        return list(queue.dead) if queue is not None else []

    def queued(self, consumer: str) -> int:
        """Messages of ``consumer``'s queue waiting, in flight or delayed for a retry."""
        queue = self._queues.get(consumer)
        if queue is None:
            return 0
        return len(queue.ready) + len(queue.unacked) + len(queue.delayed)

    def is_idle(self) -> bool:
        """Nothing in flight, nothing waiting for a retry, nothing waiting for a
        consumer that is there, and no connected service has unsent outbox events.

        Messages in a queue nobody consumes from do not count: they wait for their
        service to start.
        """
        for queue in self._queues.values():
            if queue.unacked or queue.delayed or (queue.ready and queue.consumers):
                return False
        return not any(backend.pending() for backend in self._backends)

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until :meth:`is_idle` (checked every few milliseconds).

        Raises:
            TimeoutError: still busy after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not self.is_idle():
            if time.monotonic() >= deadline:
                busy = {name: self.queued(name) for name in self._queues if self.queued(name)}
                raise TimeoutError(f"broker still busy after {timeout:g}s: {busy or 'outboxes'}")
            await asyncio.sleep(0.005)


class InMemoryBackend:
    """One service instance's connection to an :class:`InMemoryBroker`."""

    name = "memory"

    def __init__(self, broker: InMemoryBroker) -> None:
        self.broker = broker
        self._started = False
        self._closed = False
        self._consumer: _Consumer | None = None
        self._queue: _Queue | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._deliveries: set[_Delivery] = set()
        self.pending: Callable[[], int] = lambda: 0
        """Events this instance still has to publish (its outbox); set by the events
        capability so :meth:`InMemoryBroker.wait_idle` waits for them too."""

    def __repr__(self) -> str:
        return f"<InMemoryBackend {self._queue.name if self._queue else '-'}>"

    async def start(self) -> None:
        if self._closed:
            raise PublishError("the in-memory back end is closed", event_type="")
        self._started = True
        self.broker._backends.add(self)

    async def publish(self, event: Event) -> None:
        if not self._started or self._closed:
            raise PublishError(
                f"cannot publish {event.type!r}: the in-memory back end is not started",
                event_type=event.type,
            )
        body, headers = encode(event)
        self.broker.route(event.source, event.type, body, headers)

    async def consume(
        self,
        consumer: str,
        bindings: Sequence[Binding],
        on_delivery: DeliveryHandler,
        *,
        prefetch: int,
    ) -> None:
        if self._consumer is not None:
            raise RuntimeError("this back end is consuming already")
        queue = self.broker._queue(consumer)
        queue.bindings.update(bindings)
        entry = _Consumer(self, on_delivery, prefetch, contextvars.copy_context())
        self._consumer, self._queue = entry, queue
        queue.consumers.append(entry)
        self.broker._dispatch(queue)

    def _spawn(self, consumer: _Consumer, delivery: _Delivery) -> None:
        self._deliveries.add(delivery)
        # Each delivery runs in a copy of the consumer's context, never the publisher's.
        task = consumer.context.copy().run(asyncio.ensure_future, self._deliver(consumer, delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, consumer: _Consumer, delivery: _Delivery) -> None:
        try:
            await consumer.on_delivery(delivery)
        finally:
            if delivery.settled:
                self._deliveries.discard(delivery)

    async def stop_consuming(self) -> None:
        entry, queue = self._consumer, self._queue
        if entry is not None and queue is not None and entry in queue.consumers:
            queue.consumers.remove(entry)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.stop_consuming()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        queue = self._queue
        for delivery in list(self._deliveries):
            delivery.requeue()
        self._deliveries.clear()
        self.broker._backends.discard(self)
        if queue is not None:
            self.broker._dispatch(queue)

    def healthy(self) -> bool:
        return self._started and not self._closed

    def idle(self) -> bool:
        """Whether the whole broker is idle (see :meth:`InMemoryBroker.is_idle`)."""
        return self.broker.is_idle()

    async def dead_letters(self, consumer: str) -> list[DeadLetter]:
        return self.broker.dead_letters(consumer)
