"""A real OTLP trace receiver for tests: OTLP/HTTP on aiohttp, OTLP/gRPC on grpc.aio.

Both decode ``ExportTraceServiceRequest`` messages with ``opentelemetry-proto`` and
keep every span as a :class:`ReceivedSpan`, so a test can assert on what a chassis
service really exported::

    sink = OtlpSink()
    async with sink.http() as url:            # http://127.0.0.1:<port>
        ...                                   # export to f"{url}/v1/traces"
        spans = await sink.wait_for(lambda spans: len(spans) >= 3)
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

SPAN_KIND = {
    Span.SPAN_KIND_INTERNAL: "INTERNAL",
    Span.SPAN_KIND_SERVER: "SERVER",
    Span.SPAN_KIND_CLIENT: "CLIENT",
    Span.SPAN_KIND_PRODUCER: "PRODUCER",
    Span.SPAN_KIND_CONSUMER: "CONSUMER",
}
STATUS = {
    Status.STATUS_CODE_UNSET: "UNSET",
    Status.STATUS_CODE_OK: "OK",
    Status.STATUS_CODE_ERROR: "ERROR",
}


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, decoded (ids as lower-case hex, as in logs and headers)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    status: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    events: list[str] = field(default_factory=list)


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, which)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def decode(body: bytes) -> list[ReceivedSpan]:
    """Every span of a serialized ``ExportTraceServiceRequest``."""
    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    return from_message(message)


def from_message(message: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    """Every span of an ``ExportTraceServiceRequest``."""
    spans = []
    for resource_spans in message.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=SPAN_KIND.get(span.kind, str(span.kind)),
                        status=STATUS.get(span.status.code, str(span.status.code)),
                        attributes=_attributes(span.attributes),
                        resource=resource,
                        scope=scope_spans.scope.name,
                        events=[event.name for event in span.events],
                    )
                )
    return spans


class OtlpSink:
    """Receives OTLP trace exports and keeps the spans, in arrival order."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.paths: Counter[str] = Counter()
        self._arrived = asyncio.Event()

    def _store(self, spans: list[ReceivedSpan]) -> None:
        self.spans.extend(spans)
        self._arrived.set()

    async def _receive(self, request: web.Request) -> web.Response:
        raw = await request.read()
        encoding = request.headers.get("Content-Encoding", "").lower()
        if encoding == "gzip":
            raw = gzip.decompress(raw)
        elif encoding == "deflate":
            raw = zlib.decompress(raw)
        self.paths[request.path] += 1
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415)
        self._store(decode(raw))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    @contextlib.asynccontextmanager
    async def http(self) -> AsyncIterator[str]:
        """Serve OTLP/HTTP on a free loopback port; yields the base URL.

        Any ``POST`` path is accepted and counted in :attr:`paths`.
        """
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self._receive)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            yield f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()

    @contextlib.asynccontextmanager
    async def grpc(self) -> AsyncIterator[str]:
        """Serve OTLP/gRPC (insecure) on a free loopback port; yields ``http://host:port``."""
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        sink = self

        class Receiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
            async def Export(
                self, request: ExportTraceServiceRequest, context: Any
            ) -> ExportTraceServiceResponse:
                sink.paths["grpc"] += 1
                sink._store(from_message(request))
                return ExportTraceServiceResponse()

        server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await server.stop(grace=None)

    async def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0
    ) -> list[ReceivedSpan]:
        """Wait until ``predicate(spans)`` holds; fail with what arrived after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not predicate(self.spans):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = [(s.resource.get("service.name"), s.name) for s in self.spans]
                raise AssertionError(f"spans never matched within {timeout}s; got {names}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.5))
        return list(self.spans)
