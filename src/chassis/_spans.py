"""The server span: a lean recording span for the middleware's one span per request.

The SDK's span guards every field with a lock, validates each attribute through a
bounded mapping and builds its context in several passes; for a span made by the
chassis itself, with attributes the chassis chose, that work costs more than the
rest of the tracing path. :class:`ServerSpan` keeps the same data in plain fields,
is a real OpenTelemetry span for everything that touches it (handlers read and
annotate it with ``trace.get_current_span()``, child spans of the SDK take it as
parent), and is a ``ReadableSpan`` for every processor and exporter, which receive
it exactly as they would an SDK span.

:func:`start_server_span` follows the SDK tracer's steps: the parent's trace or a
new one, the provider's sampler (which may add attributes or change the trace
state), the provider's id generator, and the span processors' ``on_start`` and
``on_end``. Attributes set after the start are checked as the SDK checks them.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.sampling import Decision, SamplingResult
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util.types import Attributes, AttributeValue

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import Tracer

__all__ = ["ServerSpan", "start_id_only_span", "start_server_span"]

log = logging.getLogger("chassis.tracing")

_time_ns = time.time_ns
_UNSET = Status(StatusCode.UNSET)
_OK = StatusCode.OK
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_RANDOM = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)  # W3C level 2, newer APIs only
_MAX_ATTRIBUTES = 128  # the SDK's default limit
_MAX_EVENTS = 128
_PLAIN = (str, bool, int, float)


def _valid(value: object) -> AttributeValue | None:
    """``value`` as OpenTelemetry accepts it, or ``None`` when it is not a valid one."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        kinds = {type(v) for v in value if v is not None}
        if len(kinds) <= 1 and kinds <= {str, bool, int, float}:
            return tuple(value)
    return None


class ServerSpan(trace.Span, ReadableSpan):
    """A recording span with plain fields, ended into the provider's span processors.

    Made by :func:`start_server_span`; not meant to be built directly. It reads as a
    ``ReadableSpan`` (``name``, ``attributes``, ``events``, ``status``, ...) and acts
    as an OpenTelemetry ``Span`` (``set_attribute``, ``add_event``, ``set_status``,
    ``record_exception``, ``end``).
    """

    # ReadableSpan.__init__ is not called: it would wrap every field again.
    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        tracer: Tracer,
        start_time: int,
    ) -> None:
        self._name = name
        self._context = self._own_context = context
        self._parent = parent
        self._kind = kind
        self._attributes = self._plain = attributes
        self._events: list[Event] = []
        self._links: list[Link] = []
        self._resource = tracer.resource
        self._instrumentation_info = tracer.instrumentation_info
        self._instrumentation_scope = getattr(tracer, "_instrumentation_scope", None)
        self._status = _UNSET
        self._start_time = start_time
        self._end_time: int | None = None
        self._processor = tracer.span_processor
        self._dropped_attributes = 0
        self._dropped_events = 0

    def __repr__(self) -> str:
        return f"<ServerSpan {self._name!r} {self._own_context.span_id:016x}>"

    # -- ReadableSpan ---------------------------------------------------------------
    @property
    def dropped_attributes(self) -> int:
        return self._dropped_attributes

    @property
    def dropped_events(self) -> int:
        return self._dropped_events

    @property
    def dropped_links(self) -> int:
        return 0

    # -- trace.Span -----------------------------------------------------------------
    def get_span_context(self) -> SpanContext:
        return self._own_context

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._end_time is not None:
            log.warning("setting attribute %r on the ended span %r", key, self._name)
            return
        if not key or not isinstance(key, str):
            log.warning("invalid span attribute key %r; dropped", key)
            return
        clean = _valid(value)
        if clean is None:
            log.warning(
                "span attribute %r: %s is not a valid OpenTelemetry value; dropped",
                key,
                type(value).__name__,
            )
            return
        attributes = self._plain
        if key not in attributes and len(attributes) >= _MAX_ATTRIBUTES:
            self._dropped_attributes += 1
            return
        attributes[key] = clean

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end_time is not None:
            return
        if len(self._events) >= _MAX_EVENTS:
            self._dropped_events += 1
            return
        self._events.append(Event(name, attributes, _time_ns() if timestamp is None else timestamp))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self._end_time is None and context.is_valid:
            self._links.append(Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK does: OK is final, UNSET changes nothing.
        if self._status.status_code is _OK:
            return
        if isinstance(status, Status):
            if status.status_code is not StatusCode.UNSET:
                self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        kind = type(exception)
        module = kind.__module__
        qualname = kind.__qualname__
        details: dict[str, AttributeValue] = {
            "exception.type": qualname if module in (None, "builtins") else f"{module}.{qualname}",
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            details.update(attributes)
        self.add_event("exception", details, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            log.warning("calling end() on the ended span %r", self._name)
            return
        self._end_time = _time_ns() if end_time is None else end_time
        self._processor.on_end(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_val is not None and self._end_time is None:
            self.record_exception(exc_val, escaped=True)
            self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        super().__exit__(exc_type, exc_val, exc_tb)


def _identify(
    tracer: Tracer,
    name: str,
    parent: Context | None,
    kind: SpanKind,
    attributes: dict[str, Any] | Attributes,
    links: Sequence[Link] | None,
) -> tuple[SpanContext, SpanContext, SamplingResult]:
    """The SDK tracer's first steps for a new span: its context (the parent's trace or
    a new one, a new span id, the sampler's decision in the flags and trace state),
    the parent's span context and the sampling result."""
    parent_context = trace.get_current_span(parent).get_span_context()
    ids = tracer.id_generator
    if parent_context.is_valid:
        trace_id = parent_context.trace_id
        random_id = parent_context.trace_flags & _RANDOM
    else:
        trace_id = ids.generate_trace_id()
        is_random = getattr(ids, "is_trace_id_random", None)
        random_id = _RANDOM if _RANDOM and is_random is not None and is_random() else 0
    sampled = tracer.sampler.should_sample(parent, trace_id, name, kind, attributes, links)
    flags = _SAMPLED if sampled.decision is Decision.RECORD_AND_SAMPLE else _NOT_SAMPLED
    if random_id:
        flags = TraceFlags(flags | random_id)
    context = SpanContext(
        trace_id,
        ids.generate_span_id(),
        is_remote=False,
        trace_flags=flags,
        trace_state=sampled.trace_state,
    )
    return context, parent_context, sampled


def start_server_span(
    tracer: Tracer,
    name: str,
    parent: Context | None,
    kind: SpanKind,
    attributes: dict[str, Any],
) -> trace.Span:
    """Start a span as ``tracer.start_span`` would, as a :class:`ServerSpan`.

    ``attributes`` must be valid OpenTelemetry values (the middleware builds them);
    the dict becomes the span's own.
    """
    context, parent_context, sampled = _identify(tracer, name, parent, kind, attributes, None)
    if sampled.decision is Decision.DROP:
        return NonRecordingSpan(context)
    if sampled.attributes:
        attributes.update(sampled.attributes)
    remote_parent = parent_context if parent_context.is_valid else None
    span = ServerSpan(name, context, remote_parent, kind, attributes, tracer, _time_ns())
    span._processor.on_start(cast(Any, span), parent_context=parent)
    return span


def start_id_only_span(
    tracer: Tracer,
    name: str,
    parent: Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Attributes = None,
    links: Sequence[Link] | None = None,
) -> NonRecordingSpan:
    """A span with the ids ``tracer.start_span`` would give it, and nothing else.

    Same trace id, a new span id, the sampler's decision in its flags and trace
    state: enough for log lines, exemplars and the ``traceparent`` of outgoing
    calls, for a tracer whose spans no processor would receive.
    """
    return NonRecordingSpan(_identify(tracer, name, parent, kind, attributes, links)[0])
