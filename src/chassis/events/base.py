"""The event envelope and the contract every events back end implements.

An :class:`Event` is what services publish and subscribe to. A :class:`Backend`
moves encoded events between services; back ends (:mod:`chassis.events.memory`,
:mod:`chassis.events.rabbitmq`) are interchangeable by configuration
(``CHASSIS_EVENTS__BACKEND``).

The split of work: a back end delivers, redelivers later when asked, and keeps
dead letters. Everything else (tracing, metrics, the handler call, the retry
policy, idempotency) lives in the :class:`~chassis.events.Events` capability, so
every back end behaves the same.

A back end instance belongs to one service instance. Its life:

1. ``await backend.start()``: connect;
2. ``await backend.publish(event)`` any number of times: returns once the broker
   holds the event (publisher confirm); raises :class:`~chassis.exceptions.PublishError`
   otherwise;
3. ``await backend.consume(consumer, bindings, on_delivery, prefetch=n)``, at most
   once: the events of the bound ``(source, type)`` pairs go to the queue of
   ``consumer`` (the consuming service's name), which the back end declares if
   needed. Instances consuming as the same ``consumer`` share that queue:
   competing consumers, each event goes to one of them. ``on_delivery`` is awaited
   for each delivery, up to ``prefetch`` at a time, and settles it with exactly one
   of ``ack()``, ``retry(...)`` or ``dead_letter(...)``. A delivery left unsettled
   (the process died, the connection dropped) is delivered again later with
   ``redelivered=True``;
4. ``await backend.stop_consuming()``: no new deliveries; those in flight may still
   be settled;
5. ``await backend.aclose()``: release everything; idempotent.

The RabbitMQ back end is built as ``RabbitMQBackend(url, settings=events_settings)``
(``url`` a plain string, ``settings`` the :class:`~chassis.config.EventsSettings`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from chassis.exceptions import InvalidEvent, PublishError

__all__ = [
    "ATTEMPT_HEADER",
    "Backend",
    "Binding",
    "DeadLetter",
    "Delivery",
    "DeliveryHandler",
    "Event",
    "InvalidEvent",
    "PublishError",
    "check_name",
    "decode",
    "encode",
    "new_event",
]

ATTEMPT_HEADER = "chassis-attempt"
"""Message header a back end may use to carry the delivery attempt across redeliveries."""

CONTENT_TYPE = "application/json"
"""Content type of an encoded envelope."""

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,127}")

Binding = tuple[str, str]
"""``(source service, event type)``; the type ``"*"`` binds every type of that source."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event: what happened, where, when, and its data.

    The envelope is CloudEvents-like; its JSON form is documented in the events guide.
    ``attempt`` and ``redelivered`` describe the delivery a handler received; they
    are not part of the envelope.
    """

    id: str
    """Unique id (a UUID): consumers use it to apply an event once."""
    type: str
    """What happened, e.g. ``order_created``."""
    source: str
    """Name of the publishing service."""
    time: dt.datetime
    """When it happened (timezone-aware, UTC)."""
    data: dict[str, Any]
    """The payload: a JSON object."""
    key: str | None = None
    """Optional business key (an order id), for logs and partitioning."""
    schema_version: int = 1
    """Version of the data's schema, for consumers to evolve with their producers."""
    traceparent: str | None = None
    """W3C trace context of the publisher's span."""
    tracestate: str | None = None
    """W3C trace state accompanying ``traceparent``."""
    attempt: int = field(default=1, compare=False)
    """Which delivery this is to the consumer: 1 for the first."""
    redelivered: bool = field(default=False, compare=False)
    """The broker delivered it before (to this or another instance) without an ack."""


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid service name or event type.

    Raises:
        InvalidEvent: it is not 1-128 characters of letters, digits, ``_`` and ``-``
            starting with a letter.
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidEvent(
            f"invalid event {kind} {value!r}: use 1-128 letters, digits, '_' and '-', "
            "starting with a letter"
        )
    return value


def new_event(
    type: str,
    data: Mapping[str, Any],
    *,
    source: str,
    key: str | None = None,
    schema_version: int = 1,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> Event:
    """A new event with a fresh id and the current UTC time; the data is checked.

    Raises:
        InvalidEvent: a bad type or source, or data that is not a JSON object.
    """
    check_name("type", type)
    check_name("source", source)
    if key is not None and not isinstance(key, str):
        raise InvalidEvent(f"event key must be a string or None, got {type_name(key)}")
    event = Event(
        id=str(uuid.uuid4()),
        type=type,
        source=source,
        time=dt.datetime.now(dt.timezone.utc),
        data=_json_object(type, data),
        key=key,
        schema_version=schema_version,
        traceparent=traceparent,
        tracestate=tracestate,
    )
    return event


def type_name(value: object) -> str:
    """``type(value).__name__``, for messages."""
    return type(value).__name__


def _json_object(event_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-safe copy of ``data``: what a consumer will receive."""
    if not isinstance(data, Mapping):
        raise InvalidEvent(
            f"data of event {event_type!r} must be a JSON object (a dict), got {type_name(data)}"
        )
    try:
        text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"data of event {event_type!r} is not JSON-serialisable: {exc}") from exc
    copy: dict[str, Any] = json.loads(text)
    return copy


def encode(event: Event) -> tuple[bytes, dict[str, str]]:
    """The message body (the JSON envelope) and headers of ``event``.

    Headers carry the trace context (``traceparent``, ``tracestate``) and the
    event's ``id``, ``type`` and ``source`` (as ``event-id``, ``event-type``,
    ``event-source``) so brokers and tools can route and inspect without parsing.
    """
    envelope = {
        "id": event.id,
        "type": event.type,
        "source": event.source,
        "time": event.time.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z"),
        "schema_version": event.schema_version,
        "key": event.key,
        "traceparent": event.traceparent,
        "tracestate": event.tracestate,
        "data": event.data,
    }
    try:
        body = json.dumps(envelope, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"data of event {event.type!r} is not JSON-serialisable: {exc}") from exc
    headers = {"event-id": event.id, "event-type": event.type, "event-source": event.source}
    if event.traceparent:
        headers["traceparent"] = event.traceparent
        if event.tracestate:
            headers["tracestate"] = event.tracestate
    return body, headers


def decode(
    body: bytes,
    headers: Mapping[str, Any] | None = None,
    *,
    attempt: int = 1,
    redelivered: bool = False,
) -> Event:
    """The event in a message, with its delivery info.

    Trace context in ``headers`` wins over the envelope's.

    Raises:
        InvalidEvent: the body is not a valid envelope (the message says why).
    """
    try:
        raw = json.loads(body)
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidEvent(f"message body is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidEvent(f"envelope must be a JSON object, got {type_name(raw)}")
    missing = [name for name in ("id", "type", "source", "time", "data") if name not in raw]
    if missing:
        raise InvalidEvent(f"envelope lacks {', '.join(missing)}")
    ident, kind, source, data = raw["id"], raw["type"], raw["source"], raw["data"]
    if not isinstance(ident, str) or not ident:
        raise InvalidEvent("envelope id must be a non-empty string")
    check_name("type", kind)
    check_name("source", source)
    if not isinstance(data, dict):
        raise InvalidEvent(f"envelope data must be a JSON object, got {type_name(data)}")
    try:
        time = dt.datetime.fromisoformat(str(raw["time"]).replace("Z", "+00:00"))
    except ValueError:
        raise InvalidEvent(f"envelope time {raw['time']!r} is not an ISO 8601 time") from None
    if time.tzinfo is None:
        raise InvalidEvent(f"envelope time {raw['time']!r} has no timezone")
    version = raw.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidEvent(f"envelope schema_version must be a positive integer, got {version!r}")
    key = raw.get("key")
    if key is not None and not isinstance(key, str):
        raise InvalidEvent("envelope key must be a string or null")
    headers = headers or {}
    traceparent = _text(headers.get("traceparent")) or _text(raw.get("traceparent"))
    tracestate = _text(headers.get("tracestate")) or _text(raw.get("tracestate"))
    return Event(
        id=ident,
        type=kind,
        source=source,
        time=time.astimezone(dt.timezone.utc),
        data=data,
        key=key,
        schema_version=version,
        traceparent=traceparent,
        tracestate=tracestate,
        attempt=attempt,
        redelivered=redelivered,
    )


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a consumer gave up on, and why."""

    event: Event | None
    """The event; none when the message could not be decoded."""
    reason: str
    """Why: the handler's last exception (``ValueError: bad amount``) or the decoding error."""
    body: bytes = b""
    """The message body as received."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """The message headers as received."""


@runtime_checkable
class Delivery(Protocol):
    """One delivery of a message to a consumer. Settle it exactly once."""

    @property
    def event(self) -> Event:
        """The delivered event, ``attempt`` and ``redelivered`` filled in.

        Raises:
            InvalidEvent: the message is not a valid envelope (dead-letter it).
        """

    @property
    def attempt(self) -> int:
        """1 for the first delivery to this consumer, +1 per ``retry``."""

    @property
    def redelivered(self) -> bool:
        """Delivered before without being settled (a crash, a lost connection)."""

    async def ack(self) -> None:
        """Done: remove it from the queue."""

    async def retry(self, delay_seconds: float, reason: str) -> None:
        """Deliver it again after ``delay_seconds``, with ``attempt`` one higher."""

    async def dead_letter(self, reason: str) -> None:
        """Give up: move it to the consumer's dead letters with ``reason``."""


DeliveryHandler = Callable[[Delivery], Awaitable[None]]
"""What a back end calls for each delivery."""


@runtime_checkable
class Backend(Protocol):
    """Moves events between services. See the module docstring for the life cycle."""

    async def start(self) -> None:
        """Connect (and keep reconnecting when the broker goes away)."""

    async def publish(self, event: Event) -> None:
        """Publish ``event``; return once the broker holds it.

        Raises:
            PublishError: the broker refused it or did not confirm it in time.
        """

    async def consume(
        self,
        consumer: str,
        bindings: Sequence[Binding],
        on_delivery: DeliveryHandler,
        *,
        prefetch: int,
    ) -> None:
        """Start delivering the bound events to ``on_delivery``, up to ``prefetch`` at once."""

    async def stop_consuming(self) -> None:
        """Take no new deliveries; those in flight can still be settled."""

    async def aclose(self) -> None:
        """Stop and release connections and tasks; idempotent."""

    def healthy(self) -> bool:
        """Whether the broker can be reached now (for the readiness check)."""

    async def dead_letters(self, consumer: str) -> list[DeadLetter]:
        """The dead letters of ``consumer``, oldest first (for tests and inspection)."""
