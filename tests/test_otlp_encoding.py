"""The lean OTLP encoder writes what the stock encoder writes, and the exporter posts it."""

from __future__ import annotations

import pytest
from aiohttp import web
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as stock_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from pytest_aiohttp import AiohttpServer

from chassis._otlp import LeanOTLPSpanExporter, encode_spans


def _spans() -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "orders", "replicas": 3, "ratio": 0.5})
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("chassis", "1.2.3", schema_url="https://opentelemetry.io/s/1")
    other = provider.get_tracer("other-lib")
    remote = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "x1"), ("other", "y2")]),
    )
    from opentelemetry import trace

    parent_ctx = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    with tracer.start_as_current_span(
        "GET /orders/{id}",
        context=parent_ctx,
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "GET",
            "http.response.status_code": 200,
            "negative": -42,
            "big": 2**62,
            "flag": False,
            "ratio": 0.25,
            "empty": "",
            "zero": 0,
            "tags": ["a", "b"],
            "codes": [1, 2, 3],
            "unicode": "café ☕",
        },
        links=[Link(remote, {"link.kind": "follows"})],
    ) as span:
        span.add_event("retry", {"attempt": 2})
        span.add_event("bare")
        with tracer.start_as_current_span("db query", kind=SpanKind.CLIENT) as child:
            child.set_status(Status(StatusCode.ERROR, "timed out"))
            child.record_exception(TimeoutError("slow"))
    with other.start_as_current_span("background"):
        pass
    with tracer.start_as_current_span("ok", kind=SpanKind.PRODUCER) as ok:
        ok.set_status(Status(StatusCode.OK))
    return list(memory.get_finished_spans())


def _normalised(message: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    # Older SDKs set neither Span.flags nor ScopeSpans.schema_url (both checked
    # separately below); compare everything else exactly.
    for resource_spans in message.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            scope_spans.schema_url = ""
            for span in scope_spans.spans:
                span.flags = 0
                for link in span.links:
                    link.flags = 0
    return message


def test_lean_encoding_decodes_to_what_the_stock_encoder_builds() -> None:
    spans = _spans()
    ours = ExportTraceServiceRequest.FromString(encode_spans(spans))
    theirs = stock_encode(spans)
    assert _normalised(ours) == _normalised(
        ExportTraceServiceRequest.FromString(theirs.SerializeToString())
    )
    assert len(ours.resource_spans[0].scope_spans) == 2
    schema_urls = {
        ss.schema_url
        for ss in ExportTraceServiceRequest.FromString(encode_spans(spans))
        .resource_spans[0]
        .scope_spans
    }
    assert schema_urls == {"https://opentelemetry.io/s/1", ""}
    decoded = ExportTraceServiceRequest.FromString(encode_spans(spans))
    server = next(
        s
        for ss in decoded.resource_spans[0].scope_spans
        for s in ss.spans
        if s.name.startswith("GET")
    )
    assert server.flags == 0x100 | 0x200  # the parent is remote
    assert server.parent_span_id == (0xB7AD6B7169203331).to_bytes(8, "big")
    assert server.trace_state == "vendor=x1,other=y2"


@pytest.fixture
def received() -> list[tuple[dict[str, str], bytes]]:
    return []


async def test_exporter_posts_protobuf_and_retries_unavailable(
    aiohttp_server: AiohttpServer, received: list[tuple[dict[str, str], bytes]]
) -> None:
    answers = [503, 200]

    async def collect(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=answers.pop(0) if answers else 200)

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    server = await aiohttp_server(app)
    exporter = LeanOTLPSpanExporter(
        str(server.make_url("/v1/traces")),
        headers={"Authorization": "Bearer t"},
        timeout_seconds=10,
        compression="gzip",
    )
    spans = _spans()
    import asyncio

    result = await asyncio.to_thread(exporter.export, spans)
    assert result is SpanExportResult.SUCCESS
    assert len(received) == 2  # one 503, then success
    headers, body = received[-1]
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["Authorization"] == "Bearer t"
    assert headers["Content-Encoding"] == "gzip"
    request = ExportTraceServiceRequest.FromString(body)  # aiohttp inflated it
    assert sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans) == len(
        spans
    )
    exporter.shutdown()
    assert exporter.export(spans) is SpanExportResult.FAILURE


async def test_exporter_gives_up_on_client_errors_and_unreachable_endpoints(
    aiohttp_server: AiohttpServer,
) -> None:
    import asyncio

    async def reject(request: web.Request) -> web.Response:
        return web.Response(status=400)

    app = web.Application()
    app.router.add_post("/v1/traces", reject)
    server = await aiohttp_server(app)
    exporter = LeanOTLPSpanExporter(str(server.make_url("/v1/traces")), timeout_seconds=5)
    assert await asyncio.to_thread(exporter.export, _spans()) is SpanExportResult.FAILURE
    exporter.shutdown()

    dead = LeanOTLPSpanExporter("http://127.0.0.1:1/v1/traces", timeout_seconds=0.5)
    assert await asyncio.to_thread(dead.export, _spans()) is SpanExportResult.FAILURE
    dead.shutdown()
    with pytest.raises(ValueError, match="http"):
        LeanOTLPSpanExporter("ftp://x/v1/traces")
