"""The middleware's lean server span records what an SDK span records."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as stock_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from chassis._otlp import encode_spans
from chassis._spans import ServerSpan, start_server_span

REMOTE = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(1),
    trace_state=TraceState([("vendor", "x1")]),
)
ATTRIBUTES: dict[str, Any] = {"http.request.method": "GET", "url.path": "/a", "server.port": 80}


def _tracer(sampler: Sampler = ALWAYS_ON) -> tuple[SdkTracer, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, resource=Resource.create({"service.name": "t"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("chassis", "9.9")
    assert isinstance(tracer, SdkTracer)
    return tracer, memory


def _remote_parent() -> Context:
    return trace.set_span_in_context(trace.NonRecordingSpan(REMOTE), Context())


def _exercise(span: trace.Span) -> None:
    """What a handler and the middleware do to a server span in its life."""
    span.set_attribute("http.response.status_code", 500)
    span.set_attributes({"tags": ["a", "b"], "ratio": 0.5, "ok": False})
    span.add_event("retry", {"attempt": 2}, timestamp=1_000)
    span.add_link(REMOTE, {"link.kind": "follows"})
    span.record_exception(ValueError("bad"), timestamp=2_000)
    span.set_status(Status(StatusCode.ERROR, "HTTP 500"))
    span.update_name("GET /renamed")
    span.end(end_time=3_000)


_decode = ExportTraceServiceRequest.FromString


def _comparable(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest.FromString(stock_encode(spans).SerializeToString())
    for resource_spans in message.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.span_id = b""
                span.start_time_unix_nano = 0
                for event in span.events:
                    if event.name == "exception":  # the stack traces' line numbers differ
                        for attribute in event.attributes:
                            if attribute.key == "exception.stacktrace":
                                attribute.value.string_value = ""
    return message


def test_server_span_exports_exactly_what_an_sdk_span_exports() -> None:
    tracer, memory = _tracer()
    sdk_span = tracer.start_span("GET /a", _remote_parent(), SpanKind.SERVER, dict(ATTRIBUTES))
    _exercise(sdk_span)
    lean = start_server_span(tracer, "GET /a", _remote_parent(), SpanKind.SERVER, dict(ATTRIBUTES))
    assert isinstance(lean, ServerSpan)
    _exercise(lean)
    made_by_sdk, made_by_chassis = memory.get_finished_spans()
    assert _comparable([made_by_chassis]) == _comparable([made_by_sdk])
    # ... and the chassis' own encoder agrees with the stock one on the lean span.
    ours = _decode(encode_spans([made_by_chassis]))
    stock = _decode(stock_encode([made_by_chassis]).SerializeToString())
    for message in (ours, stock):
        for scope_spans in message.resource_spans[0].scope_spans:
            scope_spans.schema_url = ""
            for span in scope_spans.spans:
                span.flags = 0
                for link in span.links:
                    link.flags = 0
    assert ours == stock


def test_server_span_continues_the_remote_trace_and_is_the_parent_of_sdk_spans() -> None:
    tracer, memory = _tracer()
    span = start_server_span(tracer, "GET /a", _remote_parent(), SpanKind.SERVER, {})
    with trace.use_span(span, end_on_exit=True):
        assert trace.get_current_span() is span
        with tracer.start_as_current_span("child"):
            pass
    child, server = memory.get_finished_spans()
    context = server.get_span_context()
    assert context is not None
    assert context.trace_id == REMOTE.trace_id
    assert context.trace_state == REMOTE.trace_state
    assert server.parent == REMOTE
    assert child.parent is not None
    assert child.parent.span_id == context.span_id


def test_root_server_span_gets_a_new_trace() -> None:
    tracer, memory = _tracer()
    start_server_span(tracer, "GET /a", Context(), SpanKind.SERVER, {}).end()
    start_server_span(tracer, "GET /a", Context(), SpanKind.SERVER, {}).end()
    first, second = memory.get_finished_spans()
    assert first.parent is None
    assert first.context.trace_id != second.context.trace_id
    assert first.context.trace_flags.sampled


def test_dropped_by_the_sampler_means_a_non_recording_span_with_valid_ids() -> None:
    tracer, memory = _tracer(ALWAYS_OFF)
    span = start_server_span(tracer, "GET /a", Context(), SpanKind.SERVER, {})
    assert not span.is_recording()
    assert span.get_span_context().is_valid
    assert not span.get_span_context().trace_flags.sampled
    span.end()
    assert memory.get_finished_spans() == ()


def test_parent_based_sampling_follows_a_sampled_remote_parent() -> None:
    tracer, memory = _tracer(ParentBased(TraceIdRatioBased(0.0)))
    start_server_span(tracer, "GET /a", _remote_parent(), SpanKind.SERVER, {}).end()
    assert not start_server_span(tracer, "GET /a", Context(), SpanKind.SERVER, {}).is_recording()
    (span,) = memory.get_finished_spans()
    assert span.context.trace_id == REMOTE.trace_id


class _TaggingSampler(Sampler):
    """Records without sampling and adds an attribute, as a sampler may."""

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return SamplingResult(Decision.RECORD_ONLY, {"sampler.note": "seen"})

    def get_description(self) -> str:
        return "tagging"


def test_sampler_attributes_are_kept_and_record_only_spans_are_not_exported() -> None:
    tracer, memory = _tracer(_TaggingSampler())
    span = start_server_span(tracer, "GET /a", Context(), SpanKind.SERVER, {"a": 1})
    assert span.is_recording()
    assert isinstance(span, ServerSpan)
    assert dict(span.attributes or {}) == {"a": 1, "sampler.note": "seen"}
    span.end()
    assert memory.get_finished_spans() == ()  # SimpleSpanProcessor exports sampled spans only


def test_invalid_attributes_are_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    tracer, _ = _tracer()
    span = start_server_span(tracer, "GET /a", Context(), SpanKind.SERVER, {})
    with caplog.at_level(logging.WARNING, "chassis.tracing"):
        span.set_attribute("object", object())  # type: ignore[arg-type]
        span.set_attribute("mixed", [1, "a"])  # type: ignore[arg-type]
        span.set_attribute("", "no key")
    assert isinstance(span, ServerSpan)
    assert dict(span.attributes or {}) == {}
    assert len(caplog.records) == 3


def test_attributes_are_bounded_and_an_ended_span_changes_no_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracer, memory = _tracer()
    span = start_server_span(tracer, "GET /a", Context(), SpanKind.SERVER, {})
    for i in range(200):
        span.set_attribute(f"k{i}", i)
    span.set_status(StatusCode.OK)
    span.set_status(StatusCode.ERROR, "too late: OK is final")
    span.end()
    with caplog.at_level(logging.WARNING, "chassis.tracing"):
        span.end()
        span.set_attribute("after", 1)
    span.add_event("after")
    (exported,) = memory.get_finished_spans()
    assert len(exported.attributes or {}) == 128
    assert exported.dropped_attributes == 72
    assert exported.status.status_code is StatusCode.OK
    assert exported.events == ()
    assert len(caplog.records) == 2


def test_exception_in_a_with_block_is_recorded_and_fails_the_span() -> None:
    tracer, memory = _tracer()
    span = start_server_span(tracer, "GET /a", Context(), SpanKind.SERVER, {})
    with pytest.raises(KeyError), span:
        raise KeyError("gone")
    (exported,) = memory.get_finished_spans()
    assert exported.status.status_code is StatusCode.ERROR
    assert [event.name for event in exported.events] == ["exception"]
    assert exported.events[0].attributes is not None
    assert exported.events[0].attributes["exception.type"] == "KeyError"


def test_links_added_after_the_start_are_exported() -> None:
    tracer, memory = _tracer()
    span = start_server_span(tracer, "GET /a", Context(), SpanKind.SERVER, {})
    span.add_link(REMOTE)
    span.add_link(SpanContext(0, 0, is_remote=False))  # invalid: ignored
    span.end()
    (exported,) = memory.get_finished_spans()
    assert [link.context for link in exported.links] == [REMOTE]
    assert isinstance(exported.links[0], Link)


def test_plain_server_spans_encoded_from_remembered_shapes_match_the_stock_encoder() -> None:
    import chassis._otlp as otlp

    tracer, memory = _tracer()
    # Same keys with values equal in Python but not in OTLP (True == 1 == 1.0), statuses,
    # a root and a remote parent: each must keep its own encoding.
    plain_remote = SpanContext(REMOTE.trace_id, REMOTE.span_id, True, TraceFlags(1))
    parents = [Context(), trace.set_span_in_context(trace.NonRecordingSpan(plain_remote))]
    for value in (True, 1, 1.0, "1", ("a", "b"), True):
        for parent in (*parents, _remote_parent()):
            span = start_server_span(
                tracer, "GET /a", parent, SpanKind.SERVER, {**ATTRIBUTES, "x": value}
            )
            if value == "1":
                span.set_status(Status(StatusCode.ERROR))
            span.end()
    spans = memory.get_finished_spans()
    # Spans with a trace state take the general path; the others the remembered shapes.
    shaped = [otlp._server_span(span) is not None for span in spans]  # type: ignore[arg-type]
    assert shaped == [not span.context.trace_state for span in spans] and shaped.count(True) == 12
    ours = _decode(encode_spans(spans))
    stock = _decode(stock_encode(spans).SerializeToString())
    for message in (ours, stock):
        for scope_spans in message.resource_spans[0].scope_spans:
            scope_spans.schema_url = ""
            for span_message in scope_spans.spans:
                span_message.flags = 0
    assert ours == stock
    # ... byte for byte what the general path writes.
    fast = otlp._server_span
    try:
        otlp._server_span = lambda span: None  # type: ignore[assignment]
        general = encode_spans(spans)
    finally:
        otlp._server_span = fast
    assert encode_spans(spans) == general
