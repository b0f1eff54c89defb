"""A lean OTLP/HTTP span exporter: protobuf wire format written directly.

The stock exporter builds a tree of protobuf message objects for every span and
then serialises it; on a busy service that encoding alone took about a quarter of the
process' CPU, on the same core as the request handlers. This module writes the same
bytes (``ExportTraceServiceRequest`` of opentelemetry-proto) straight from the SDK's
``ReadableSpan`` objects, and posts them with the standard library's HTTP client from
the batch processor's thread, so nothing here runs on the event loop.

Only the public SDK API is used (``SpanExporter``, ``ReadableSpan``); a test decodes the
output with opentelemetry-proto and compares it with the stock encoder's.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import random
import struct
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext

from ._spans import ServerSpan

__all__ = ["LeanOTLPSpanExporter", "encode_spans"]

log = logging.getLogger("chassis.tracing.export")

_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_RETRYABLE = frozenset({429, 502, 503, 504})
_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack


_SMALL = [bytes((i,)) for i in range(0x80)]


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64  # int64 as two's complement
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(tag: int, payload: bytes) -> bytes:
    return _varint(tag) + _varint(len(payload)) + payload


def _tag(field: int, wire_type: int) -> int:
    return (field << 3) | wire_type


# Pre-computed tags (field number, wire type).
_T_STR = _tag(1, 2)  # AnyValue.string_value
_T_BOOL = _tag(2, 0)
_T_INT = _tag(3, 0)
_T_DOUBLE = bytes((_tag(4, 1),))
_T_ARRAY = _tag(5, 2)
_T_KVLIST = _tag(6, 2)
_T_BYTES = _tag(7, 2)


def _any_value(value: Any) -> bytes:
    """An ``AnyValue`` message (its body, without tag and length)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return bytes((_T_BOOL, 1 if value else 0))
    if isinstance(value, str):
        return _len_field(_T_STR, value.encode())
    if isinstance(value, int):
        return _varint(_T_INT) + _varint(value)
    if isinstance(value, float):
        return _T_DOUBLE + _pack_double(value)
    if isinstance(value, bytes):
        return _len_field(_T_BYTES, value)
    if isinstance(value, Sequence):
        body = b"".join(_len_field(_tag(1, 2), _any_value(v)) for v in value)
        return _len_field(_T_ARRAY, body)
    if isinstance(value, Mapping):
        body = b"".join(_len_field(_tag(1, 2), _key_value(str(k), v)) for k, v in value.items())
        return _len_field(_T_KVLIST, body)
    raise TypeError(f"cannot encode a {type(value).__name__} attribute value")


def _key_value(key: str, value: Any) -> bytes:
    return _len_field(_tag(1, 2), key.encode()) + _len_field(_tag(2, 2), _any_value(value))


# Spans of one service repeat the same attributes (method, route, scheme, host...):
# encode each (field, key, value) once, tag and length included. Bounded: cleared
# when full. Only the exporter's thread encodes.
_KV_CACHE: dict[int, dict[tuple[str, Any, type], bytes]] = {}
_KV_CACHE_MAX = 8192


def _attributes(field: int, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    cache = _KV_CACHE.get(field)
    if cache is None:
        cache = _KV_CACHE[field] = {}
    tag = None
    parts = []
    for key, value in attributes.items():
        try:
            cache_key = (key, value, type(value))
            chunk = cache.get(cache_key)
        except TypeError:  # unhashable (a list): encode every time
            cache_key, chunk = None, None
        if chunk is None:
            try:
                body = _key_value(key, value)
            except TypeError:
                log.warning("span attribute %r has a type OTLP cannot carry; dropped", key)
                continue
            if tag is None:
                tag = _varint(_tag(field, 2))
            chunk = tag + _varint(len(body)) + body
            if cache_key is not None:
                if len(cache) >= _KV_CACHE_MAX:
                    cache.clear()
                cache[cache_key] = chunk
        parts.append(chunk)
    return b"".join(parts)


def _uint(field: int, value: int) -> bytes:
    return _varint(_tag(field, 0)) + _varint(value) if value else b""


def _string(field: int, value: str | None) -> bytes:
    return _len_field(_tag(field, 2), value.encode()) if value else b""


def _flags(parent: SpanContext | None) -> int:
    if parent is not None and parent.is_remote:
        return _HAS_IS_REMOTE | _IS_REMOTE
    return _HAS_IS_REMOTE


def _trace_state(context: SpanContext) -> str | None:
    state = context.trace_state
    if not state:
        return None
    return ",".join(f"{k}={v}" for k, v in state.items())


# Constant parts of a Span message, written once (tag byte, and length where fixed).
_B_TRACE_ID = bytes((_tag(1, 2), 16))
_B_SPAN_ID = bytes((_tag(2, 2), 8))
_B_PARENT_ID = bytes((_tag(4, 2), 8))
_B_NAME = _varint(_tag(5, 2))
_B_KIND = [bytes((_tag(6, 0), kind + 1)) for kind in range(5)]
_B_START = bytes((_tag(7, 1),))
_B_END = bytes((_tag(8, 1),))
_B_STATUS = {
    code: _len_field(_tag(15, 2), _uint(3, code)) for code in range(3)
}  # without a description
_B_FLAGS_LOCAL = _varint(_tag(16, 5)) + struct.pack("<I", _HAS_IS_REMOTE)
_B_FLAGS_REMOTE = _varint(_tag(16, 5)) + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)


def _plain_attributes(span: ReadableSpan) -> Mapping[str, Any] | None:
    """The span's attributes without the read-only view ``span.attributes`` builds."""
    raw = getattr(span, "_attributes", None)
    if type(raw) is dict:  # the chassis' own server spans
        return raw
    inner = getattr(raw, "_dict", None)  # the SDK's BoundedAttributes
    if isinstance(inner, dict):
        return inner
    return span.attributes


# A service's server spans come in few shapes (name, kind, attributes, status): the
# encoded bytes around the ids and times are kept per shape. Bounded; exporter thread only.
_HEADS: dict[tuple[str, int], bytes] = {}
_TAILS: dict[tuple[Any, ...], bytes] = {}
_SHAPES_MAX = 4096


def _server_span(span: ServerSpan) -> bytes | None:
    """:func:`_span` of a plain chassis server span from remembered parts; ``None`` for
    a span with events, links, a trace state or a status description."""
    context = span._own_context
    status = span._status
    if span._events or span._links or context.trace_state or status.description:
        return None
    attributes = span._plain
    if span._dropped_attributes or span._dropped_events:
        return None
    parent = span._parent
    remote = parent is not None and parent.is_remote
    try:
        # Types too: True == 1 == 1.0 as keys, not as OTLP values.
        tail_key = (
            tuple(attributes.items()),
            tuple(map(type, attributes.values())),
            status.status_code.value,
            remote,
        )
        tail = _TAILS.get(tail_key)
    except TypeError:  # an unhashable value
        return None
    if tail is None:
        tail = (
            _attributes(9, attributes)
            + _B_STATUS[status.status_code.value]
            + (_B_FLAGS_REMOTE if remote else _B_FLAGS_LOCAL)
        )
        if len(_TAILS) >= _SHAPES_MAX:
            _TAILS.clear()
        _TAILS[tail_key] = tail
    kind = span._kind.value
    head_key = (span._name, kind)
    head = _HEADS.get(head_key)
    if head is None:
        name = span._name.encode()
        head = _B_NAME + _varint(len(name)) + name + _B_KIND[kind]
        if len(_HEADS) >= _SHAPES_MAX:
            _HEADS.clear()
        _HEADS[head_key] = head
    parts = [
        _B_TRACE_ID,
        context.trace_id.to_bytes(16, "big"),
        _B_SPAN_ID,
        context.span_id.to_bytes(8, "big"),
    ]
    if parent is not None:
        parts += (_B_PARENT_ID, parent.span_id.to_bytes(8, "big"))
    parts += (
        head,
        _B_START,
        _pack_fixed64(span._start_time or 0),
        _B_END,
        _pack_fixed64(span._end_time or 0),
        tail,
    )
    return b"".join(parts)


def _span(span: ReadableSpan) -> bytes:
    if type(span) is ServerSpan:
        encoded = _server_span(span)
        if encoded is not None:
            return encoded
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    name = span.name.encode()
    parts = [
        _B_TRACE_ID,
        context.trace_id.to_bytes(16, "big"),
        _B_SPAN_ID,
        context.span_id.to_bytes(8, "big"),
    ]
    if context.trace_state:
        parts.append(_string(3, _trace_state(context)))
    if parent is not None:
        parts += (_B_PARENT_ID, parent.span_id.to_bytes(8, "big"))
    parts += (
        _B_NAME,
        _varint(len(name)),
        name,
        _B_KIND[span.kind.value],
        _B_START,
        _pack_fixed64(span.start_time or 0),
        _B_END,
        _pack_fixed64(span.end_time or 0),
        _attributes(9, _plain_attributes(span)),
        _uint(10, span.dropped_attributes),
    )
    for event in span.events:
        body = (
            bytes((_tag(1, 1),))
            + _pack_fixed64(event.timestamp)
            + _string(2, event.name)
            + _attributes(3, event.attributes)
            + _uint(4, event.dropped_attributes)
        )
        parts.append(_len_field(_tag(11, 2), body))
    parts.append(_uint(12, span.dropped_events))
    for link in span.links:
        body = (
            _len_field(_tag(1, 2), link.context.trace_id.to_bytes(16, "big"))
            + _len_field(_tag(2, 2), link.context.span_id.to_bytes(8, "big"))
            + _attributes(4, link.attributes)
            + _uint(5, link.dropped_attributes)
            + bytes((_tag(6, 5),))
            + struct.pack("<I", _flags(link.context))
        )
        parts.append(_len_field(_tag(13, 2), body))
    parts.append(_uint(14, span.dropped_links))
    status = span.status
    if status.description:
        parts.append(
            _len_field(
                _tag(15, 2), _string(2, status.description) + _uint(3, status.status_code.value)
            )
        )
    else:
        parts.append(_B_STATUS[status.status_code.value])
    parts.append(_B_FLAGS_REMOTE if parent is not None and parent.is_remote else _B_FLAGS_LOCAL)
    return b"".join(parts)


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """Serialise ``spans`` as an OTLP ``ExportTraceServiceRequest``."""
    # Grouped by identity: hashing a Resource serialises its attributes every time.
    resources: dict[int, Any] = {}
    grouped: dict[int, dict[Any, list[bytes]]] = {}
    for span in spans:
        resource = span.resource
        scopes = grouped.get(id(resource))
        if scopes is None:
            scopes = grouped[id(resource)] = {}
            resources[id(resource)] = resource
        scopes.setdefault(span.instrumentation_scope or None, []).append(_span(span))
    out = []
    for key, scopes in grouped.items():
        resource = resources[key]
        body = _len_field(_tag(1, 2), _attributes(1, resource.attributes))
        for scope, encoded in scopes.items():
            if scope is None:
                scope_body = b""
            else:
                scope_body = (
                    _string(1, scope.name)
                    + _string(2, scope.version)
                    + _attributes(3, scope.attributes)
                )
            scope_spans = _len_field(_tag(1, 2), scope_body) + b"".join(
                _len_field(_tag(2, 2), s) for s in encoded
            )
            if scope is not None:
                scope_spans += _string(3, scope.schema_url)
            body += _len_field(_tag(2, 2), scope_spans)
        body += _string(3, resource.schema_url)
        out.append(_len_field(_tag(1, 2), body))
    return b"".join(out)


class LeanOTLPSpanExporter(SpanExporter):
    """Posts spans to an OTLP/HTTP endpoint (``application/x-protobuf``).

    Retries 429/502/503/504 and connection errors with jittered exponential back-off
    within ``timeout_seconds``; gives up on anything else. Runs in the batch span
    processor's thread.

    Args:
        endpoint: the full traces URL, e.g. ``http://collector:4318/v1/traces``.
        headers: extra request headers (authentication, tenant).
        timeout_seconds: the whole budget of one export, retries included.
        compression: ``gzip`` or ``None``.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_seconds: float = 10.0,
        compression: str | None = None,
    ) -> None:
        url = urllib.parse.urlsplit(endpoint)
        if url.scheme not in {"http", "https"} or not url.hostname:
            raise ValueError(f"not an http(s) URL: {endpoint!r}")
        self.endpoint = endpoint
        self._url = url
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._headers = {"Content-Type": "application/x-protobuf", **(headers or {})}
        if compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"
        self._compression = compression
        self.timeout_seconds = timeout_seconds
        self._connection: http.client.HTTPConnection | None = None
        self._shutdown = False

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._connection is None:
            port = self._url.port
            cls = (
                http.client.HTTPSConnection
                if self._url.scheme == "https"
                else http.client.HTTPConnection
            )
            self._connection = cls(self._url.hostname or "", port, timeout=timeout)
        else:
            self._connection.timeout = timeout
        return self._connection

    def _post(self, body: bytes, timeout: float) -> int:
        connection = self._connect(timeout)
        try:
            connection.request("POST", self._path, body=body, headers=self._headers)
            response = connection.getresponse()
            response.read()
            if response.will_close:
                connection.close()
                self._connection = None
            return response.status
        except (OSError, http.client.HTTPException):
            connection.close()
            self._connection = None
            raise

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Encode and post one batch."""
        if self._shutdown:
            return SpanExportResult.FAILURE
        body = encode_spans(spans)
        if self._compression == "gzip":
            body = gzip.compress(body)
        deadline = time.monotonic() + self.timeout_seconds
        delay = 0.5
        while True:
            remaining = deadline - time.monotonic()
            error: str
            try:
                status = self._post(body, max(0.1, remaining))
                if 200 <= status < 300:
                    return SpanExportResult.SUCCESS
                error = f"HTTP {status}"
                if status not in _RETRYABLE:
                    log.warning("span export to %s failed: %s", self.endpoint, error)
                    return SpanExportResult.FAILURE
            except (OSError, http.client.HTTPException) as exc:
                error = f"{type(exc).__name__}: {exc}"
            sleep = random.uniform(0, delay)  # full jitter
            if self._shutdown or time.monotonic() + sleep >= deadline:
                log.warning("span export to %s failed: %s", self.endpoint, error)
                return SpanExportResult.FAILURE
            time.sleep(sleep)  # the batch processor's thread, never the event loop
            delay = min(delay * 2, 8.0)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing is buffered here."""
        return True

    def shutdown(self) -> None:
        """Refuse further exports and close the connection."""
        self._shutdown = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None
