"""A tiny OTLP/HTTP trace sink: answers 200 to ``POST /v1/traces`` and counts spans.

``GET /stats`` returns ``{"requests": ..., "spans": ..., "bytes": ..., "paths": {...},
"decode_errors": ...}`` so the benchmark can show that export really happened.
Any POST path is accepted (and counted per path), so an exporter that appends
``/v1/traces`` to a base URL is still seen. Spans are counted by decoding the
protobuf body with ``opentelemetry-proto``, a dependency of the chassis' OTLP exporter.
"""

from __future__ import annotations

import argparse
import gzip
import zlib
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass
class Stats:
    """What the sink has received."""

    requests: int = 0
    spans: int = 0
    bytes: int = 0
    decode_errors: int = 0
    paths: Counter[str] = field(default_factory=Counter)


STATS = web.AppKey("stats", Stats)


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def count_spans(body: bytes) -> int | None:
    """Spans in an ``ExportTraceServiceRequest``, or ``None`` when it cannot be decoded."""
    message = ExportTraceServiceRequest()
    try:
        message.ParseFromString(body)
    except Exception:
        return None
    return sum(
        len(scope.spans) for resource in message.resource_spans for scope in resource.scope_spans
    )


async def receive(request: web.Request) -> web.Response:
    """Accept one export, count it, answer like a collector would."""
    raw = await request.read()
    stats = request.app[STATS]
    stats.requests += 1
    stats.bytes += len(raw)
    stats.paths[request.path] += 1
    try:
        body = _decompress(raw, request.headers.get("Content-Encoding", ""))
    except (OSError, zlib.error, EOFError):
        body = b""
    spans = count_spans(body)
    if spans is None:
        stats.decode_errors += 1
    else:
        stats.spans += spans
    return web.Response(
        body=ExportTraceServiceResponse().SerializeToString(),
        content_type="application/x-protobuf",
    )


async def stats(request: web.Request) -> web.Response:
    """What the sink has received so far."""
    stats = request.app[STATS]
    return web.json_response(
        {
            "requests": stats.requests,
            "spans": stats.spans,
            "bytes": stats.bytes,
            "decode_errors": stats.decode_errors,
            "paths": dict(stats.paths),
        }
    )


def build_app() -> web.Application:
    """The sink application."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATS] = Stats()
    app.router.add_get("/stats", stats)
    app.router.add_post("/{tail:.*}", receive)
    return app


def main() -> None:
    """Serve on 127.0.0.1 until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(build_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
