"""JSON logs, one object per line, correlated with requests and traces.

:func:`configure_logging` installs a single handler on the root logger. Every line
carries ``timestamp`` (UTC, ISO 8601, milliseconds, ``Z``), ``level``, ``logger``,
``message``, ``service``, ``version``, ``environment``, ``host``, ``pid``,
``module``, ``function``, ``line``, ``request_id``, ``trace_id``, ``span_id``, any
``extra={...}`` fields, and ``exception`` (``type``, ``message``, ``stacktrace``)
when one is attached.

``request_id`` comes from a context variable bound for the duration of a request,
so every line logged while handling it carries the id; ``trace_id``/``span_id``
come from the current OpenTelemetry span.

Lines are formatted on the caller's thread (where the context lives) and, by
default, written by a background thread, so a slow stdout never blocks the
event loop. Everything a line contains goes through ``json.dumps``: a newline, quote
or control character in a header or path cannot forge a second record.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import os
import queue
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

from opentelemetry import trace as otel_trace
from pythonjsonlogger.json import JsonEncoder, JsonFormatter

from .config import LogSettings

__all__ = [
    "ChassisJsonFormatter",
    "ConsoleFormatter",
    "LogContext",
    "bind_log_context",
    "configure_logging",
    "current_log_context",
    "current_request_id",
    "log_direct",
]


@dataclass(frozen=True, slots=True)
class LogContext:
    """What a log line inherits from the code path that emitted it."""

    service: str = ""
    version: str = ""
    environment: str = ""
    request_id: str = ""


_EMPTY = LogContext()
_log_context: contextvars.ContextVar[LogContext] = contextvars.ContextVar(
    "chassis_log_context", default=_EMPTY
)


def current_log_context() -> LogContext:
    """The :class:`LogContext` bound in the current task."""
    return _log_context.get()


def current_request_id() -> str:
    """The id of the request being handled, or ``""`` outside a request."""
    return _log_context.get().request_id


@contextlib.contextmanager
def bind_log_context(context: LogContext) -> Iterator[LogContext]:
    """Bind ``context`` for log lines emitted inside the ``with`` block."""
    token = _log_context.set(context)
    try:
        yield context
    finally:
        _log_context.reset(token)


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
_INVALID_SPAN = otel_trace.INVALID_SPAN_CONTEXT
# The fixed fields of a JSON line; an ``extra=`` of the same name does not replace them.
_FIELD_NAMES = frozenset(
    [
        "timestamp",
        "level",
        "logger",
        "message",
        "service",
        "version",
        "environment",
        "host",
        "pid",
        "module",
        "function",
        "line",
        "request_id",
        "trace_id",
        "span_id",
    ]
)
_quote: Callable[[str], str] = json.encoder.encode_basestring


def _trace_ids() -> tuple[str, str]:
    ctx = otel_trace.get_current_span().get_span_context()
    if ctx is _INVALID_SPAN or not ctx.is_valid:
        return "", ""
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


_second_cache: tuple[int, str] = (-1, "")


def _utc_timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds and ``Z``; the seconds part is cached."""
    global _second_cache
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    cached_second, prefix = _second_cache
    if cached_second != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache = (seconds, prefix)
    return f"{prefix}.{millis:03d}Z"


def _structured_exception(exc_info: Any) -> dict[str, Any] | None:
    if not exc_info or exc_info is True:
        return None
    etype, value, tb = exc_info
    if etype is None:
        return None
    return {
        "type": f"{etype.__module__}.{etype.__qualname__}"
        if etype.__module__ != "builtins"
        else etype.__qualname__,
        "message": str(value),
        "stacktrace": "".join(traceback.format_exception(etype, value, tb)),
    }


class ChassisJsonFormatter(JsonFormatter):
    """Formats a record as one JSON object with the chassis' fixed field set.

    Args:
        service, version, environment: defaults used when no request context is bound.
    """

    def __init__(self, *, service: str = "", version: str = "", environment: str = "") -> None:
        super().__init__(json_ensure_ascii=False)
        self._defaults = LogContext(service=service, version=version, environment=environment)
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._quoted_host = _quote(self._host)
        self._pid_text = str(self._pid)
        self._encoder = JsonEncoder()
        # One encoder for every line: json.dumps() with options builds a new one per call.
        self._encode = json.JSONEncoder(ensure_ascii=False, default=self._encoder.default).encode
        self._middles: dict[tuple[str, str, str, str | None, str | None, int], str] = {}

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object on one line.

        The hot path (a plain message, no exception) skips python-json-logger's generic
        machinery but keeps its encoder for values JSON has no type for.
        """
        if isinstance(record.msg, dict):
            return super().format(record)
        if record.exc_info or record.exc_text or record.stack_info:
            return self._encode(self.fields(record))
        return self._line(record)

    def _line(self, record: logging.LogRecord) -> str:
        """:meth:`fields` as JSON, written directly: what ``json.dumps`` would write
        (same keys, order and separators), without building the dict first."""
        return self.compose(
            record.created,
            record.levelname,
            record.name,
            record.getMessage(),
            record.module,
            record.funcName,
            record.lineno,
            [
                (key, item)
                for key, item in record.__dict__.items()
                if key not in _RECORD_ATTRS and key not in _FIELD_NAMES
            ],
        )

    def compose(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        module: str | None,
        function: str | None,
        line: int,
        extras: Iterable[tuple[str, Any]],
    ) -> str:
        """One JSON line from its parts, in the current context (request, trace).

        The line :meth:`format` writes for a record with these attributes and
        ``extra=dict(extras)``; ``extras`` must not repeat a fixed field's name.
        """
        ctx = _log_context.get()
        trace_id, span_id = _trace_ids()
        q = _quote
        middle_key = (ctx.service, ctx.version, ctx.environment, module, function, line)
        middle = self._middles.get(middle_key)
        if middle is None:
            middle = self._middle(ctx, module, function, line)
            if len(self._middles) >= 256:
                self._middles.clear()
            self._middles[middle_key] = middle
        parts = [
            '{"timestamp": "',
            _utc_timestamp(created),
            '", "level": ',
            q(level),
            ', "logger": ',
            q(logger),
            ', "message": ',
            q(message),
            middle,
            q(ctx.request_id),
            ', "trace_id": "',
            trace_id,
            '", "span_id": "',
            span_id,
            '"',
        ]
        value = self._value
        for key, item in extras:
            parts += (", ", q(key), ": ", value(item))
        parts.append("}")
        return "".join(parts)

    def _middle(self, ctx: LogContext, module: str | None, function: str | None, line: int) -> str:
        """The fields from ``service`` to the ``request_id`` key, which repeat line after
        line for one service and call site (remembered by :meth:`compose`)."""
        defaults = self._defaults
        q = _quote
        return "".join(
            [
                ', "service": ',
                q(ctx.service or defaults.service),
                ', "version": ',
                q(ctx.version or defaults.version),
                ', "environment": ',
                q(ctx.environment or defaults.environment),
                ', "host": ',
                self._quoted_host,
                ', "pid": ',
                self._pid_text,
                ', "module": ',
                self._value(module),
                ', "function": ',
                self._value(function),
                ', "line": ',
                str(line),
                ', "request_id": ',
            ]
        )

    def _value(self, item: Any) -> str:
        kind = type(item)
        if kind is str:
            return _quote(item)
        if kind is int:
            return int.__repr__(item)
        if item is None:
            return "null"
        if kind is bool:
            return "true" if item else "false"
        if kind is float and math.isfinite(item):
            return float.__repr__(item)
        return self._encode(item)

    def add_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        """Fill ``log_data`` with the chassis field set (python-json-logger hook)."""
        log_data.update(self.fields(record))
        for key, value in message_dict.items():
            if key not in {"exc_info", "stack_info"}:
                log_data[key] = value

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """The chassis fields for ``record``."""
        ctx = _log_context.get()
        defaults = self._defaults
        trace_id, span_id = _trace_ids()
        data: dict[str, Any] = {
            "timestamp": _utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": ctx.service or defaults.service,
            "version": ctx.version or defaults.version,
            "environment": ctx.environment or defaults.environment,
            "host": self._host,
            "pid": self._pid,
            "module": record.module,
            "function": record.funcName,
            "line": record.lineno,
            "request_id": ctx.request_id,
            "trace_id": trace_id,
            "span_id": span_id,
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in data:
                data[key] = value
        exception = _structured_exception(record.exc_info)
        if exception is not None:
            data["exception"] = exception
        elif record.exc_text:
            data["exception"] = {"type": "", "message": "", "stacktrace": record.exc_text}
        if record.stack_info:
            data["stack_info"] = record.stack_info
        return data


class ConsoleFormatter(logging.Formatter):
    """Human-readable lines for a terminal: time, level, logger, message, ids, extras."""

    def format(self, record: logging.LogRecord) -> str:
        ctx = _log_context.get()
        trace_id, _ = _trace_ids()
        stamp = _utc_timestamp(record.created)
        parts = [f"{stamp} {record.levelname:<8} {record.name}: {record.getMessage()}"]
        extras = {
            k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and k != "message"
        }
        if ctx.request_id:
            extras["request_id"] = ctx.request_id
        if trace_id:
            extras["trace_id"] = trace_id
        if extras:
            parts.append(" ".join(f"{k}={v!r}" for k, v in extras.items()))
        text = "  ".join(parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


_STOP = object()


class _BackgroundStreamHandler(logging.Handler):
    """Formats on the caller's thread, writes from a daemon thread in batches."""

    def __init__(self, stream: IO[str], *, linger_seconds: float = 0.01) -> None:
        super().__init__()
        self.stream = stream
        self.linger_seconds = linger_seconds
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="chassis-log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._queue.put(line)

    def _run(self) -> None:
        while True:
            batch: list[str] = []
            markers: list[threading.Event] = []
            stop = False
            item = self._queue.get()
            if isinstance(item, str):
                # Let a burst gather: one wake-up and one write per burst, not per line.
                time.sleep(self.linger_seconds)
            while True:
                if item is _STOP:
                    stop = True
                elif isinstance(item, threading.Event):
                    markers.append(item)
                else:
                    batch.append(item)  # type: ignore[arg-type]
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                with contextlib.suppress(Exception):
                    self.stream.write("\n".join(batch) + "\n")
                    self.stream.flush()
            for marker in markers:
                marker.set()
            if stop:
                return

    def flush(self) -> None:
        """Block until every line queued before this call is written (at most 5 s)."""
        if self._thread.is_alive():
            written = threading.Event()
            self._queue.put(written)
            written.wait(5.0)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(5.0)
        super().close()


class _SyncStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    pass


_LEVEL_NAMES = {
    level: logging.getLevelName(level)
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
}


def _sole_json_writer(logger: logging.Logger, level: int) -> _BackgroundStreamHandler | None:
    """The chassis' background JSON handler, when a record of ``logger`` at ``level``
    would reach it and nothing else: no filters or handlers on the way up, the root's
    only handler, whose filters let the record through."""
    current = logger
    while current.propagate and current.parent is not None:
        if current.filters or current.handlers:
            return None
        current = current.parent
    if current.parent is not None or current.filters or len(current.handlers) != 1:
        return None  # the record stops short of the root, or the root has company
    handler = current.handlers[0]
    if type(handler) is not _BackgroundStreamHandler or level < handler.level:
        return None
    if type(handler.formatter) is not ChassisJsonFormatter:
        return None
    for found in handler.filters:
        if type(found) is not _RepeatFilter or logger.name.startswith(found.prefixes):
            return None
    return handler


def log_direct(
    logger: logging.Logger,
    level: int,
    message: str,
    *,
    module: str,
    function: str,
    extra: Iterable[tuple[str, Any]],
) -> bool:
    """Queue the JSON line ``logger.log(level, message, extra=dict(extra))`` would
    write, without a ``LogRecord``, when the chassis' background JSON handler is the
    only place the record would go; ``False`` (nothing written) otherwise.

    Same bytes as the logging path (``line`` is 0). The caller checks
    ``logger.isEnabledFor(level)`` first; the request hot path (the access log) uses
    this, and any other handler, filter or formatter installed makes it step aside.
    """
    handler = _sole_json_writer(logger, level)
    if handler is None:
        return False
    formatter = cast(ChassisJsonFormatter, handler.formatter)
    line = formatter.compose(
        time.time(),
        _LEVEL_NAMES.get(level) or logging.getLevelName(level),
        logger.name,
        message,
        module,
        function,
        0,
        extra,
    )
    handler._queue.put(line)
    return True


_HANDLER_ATTR = "_chassis_handler"


class _ClientErrorFilter(logging.Filter):
    """aiohttp logs a request it cannot parse as an ERROR with a traceback.

    A malformed request is the client's mistake, not the server's: log it as one
    WARNING line naming the problem, so it doesn't page anyone or flood the logs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ in {
            "BadHttpMessage",
            "BadStatusLine",
            "InvalidHeader",
            "LineTooLong",
            "TransferEncodingError",
            "ContentLengthError",
        }:
            original = record.getMessage()
            detail = [ln.strip() for ln in str(getattr(exc, "message", exc)).splitlines()]
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "%s: %s"
            record.args = (original, detail[0] if detail else type(exc).__name__)
            record.exc_info = None
            record.exc_text = None
        return True


_CLIENT_ERROR_FILTER = _ClientErrorFilter()


class _RepeatFilter(logging.Filter):
    """Let a library's identical warning through once per ``interval_seconds``.

    Under overload the OpenTelemetry SDK warns once per dropped span; one line every
    few seconds says the same, and the rest would only add load to an overloaded process.
    """

    def __init__(self, prefixes: tuple[str, ...], interval_seconds: float = 10.0) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.interval_seconds = interval_seconds
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_seconds:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


def configure_logging(
    settings: LogSettings | None = None,
    *,
    service: str = "",
    version: str = "",
    environment: str = "",
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Install the chassis handler on the root logger (replacing an earlier one).

    Idempotent: calling it again swaps the handler, so several services in one
    process share one writer. Returns the handler.
    """
    settings = settings or LogSettings()
    stream = stream if stream is not None else sys.stdout
    handler: logging.Handler
    if settings.background_writes:
        handler = _BackgroundStreamHandler(stream)
    else:
        handler = _SyncStreamHandler(stream)
    formatter: logging.Formatter
    if settings.format == "json":
        formatter = ChassisJsonFormatter(service=service, version=version, environment=environment)
    else:
        formatter = ConsoleFormatter()
    handler.setFormatter(formatter)
    handler.addFilter(_RepeatFilter(("opentelemetry",)))
    setattr(handler, _HANDLER_ATTR, True)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_ATTR, False):
            root.removeHandler(old)
            old.flush()
            old.close()
    root.addHandler(handler)
    root.setLevel(settings.level)
    # aiohttp's own access logger is replaced by the chassis' access log.
    logging.getLogger("aiohttp.access").propagate = False
    server_logger = logging.getLogger("aiohttp.server")
    if _CLIENT_ERROR_FILTER not in server_logger.filters:
        server_logger.addFilter(_CLIENT_ERROR_FILTER)
    return handler
