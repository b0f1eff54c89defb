"""The request pipeline every chassis service shares.

:class:`RequestPipeline` is one aiohttp middleware that, for every request:

* takes the request id from ``X-Request-ID`` (1-128 characters of
  ``A-Z a-z 0-9 . _ : -``) or makes a new one, binds it for every log line of the
  request and echoes it in the response;
* rejects a body larger than the configured maximum with 413;
* turns every error into RFC 9457 ``application/problem+json``: aiohttp's HTTP
  errors (404, 405, 413, ...), :class:`~chassis.exceptions.ProblemError`, a body that
  is not JSON (400), and any other exception (500, with no stack trace in the body;
  the traceback goes to the log);
* writes one access-log line (method, route template, status, duration, bytes,
  client address, request id), sampled or off by configuration; probes and
  ``/metrics`` are logged at DEBUG.

:func:`read_json` parses a request body and, given a pydantic model, validates it
(malformed JSON -> 400, invalid content -> 422).
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, overload

from aiohttp import web
from opentelemetry import trace as otel_trace
from pydantic import BaseModel, ValidationError

from .config import ChassisSettings, LogSettings
from .exceptions import (
    BadRequest,
    CircuitOpen,
    DeadlineExceeded,
    ProblemError,
    RequestValidationError,
    UpstreamError,
    UpstreamStatusError,
)
from .logging import LogContext, _log_context, log_direct

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "REQUEST_ID_HEADER",
    "RequestPipeline",
    "problem_response",
    "read_json",
    "route_template",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:\-]{1,128}").fullmatch
_QUIET_PREFIXES = ("/health/", "/metrics", "/_chassis")  # probes, scrapes, status polls
_getrandbits = random.getrandbits

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ModelT = TypeVar("ModelT", bound=BaseModel)

access_logger = logging.getLogger("chassis.access")
_MODULE = __name__.rpartition(".")[2]  # a LogRecord's ``module`` for this file
error_logger = logging.getLogger("chassis.errors")

_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def new_request_id() -> str:
    """A fresh 32-hex-digit request id.

    Unique, not secret: a request id is echoed to clients and written to logs, so it
    comes from the fast PRNG (seeded from the OS at start) rather than a syscall.
    """
    return f"{_getrandbits(128):032x}"


def route_template(request: web.BaseRequest) -> str:
    """The matched route's template (``/orders/{id}``), or ``unmatched``."""
    match_info = getattr(request, "match_info", None)
    if match_info is None:
        return "unmatched"
    route = match_info.route
    resource = route.resource
    if resource is None or match_info.http_exception is not None:
        return "unmatched"
    return str(resource.canonical)


def problem_response(
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    type: str = "about:blank",
    instance: str | None = None,
    request_id: str | None = None,
    extensions: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Build an RFC 9457 ``application/problem+json`` response."""
    body: dict[str, Any] = {
        "type": type,
        "title": title or _REASONS.get(status, "Error"),
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    if request_id:
        body["request_id"] = request_id
    if extensions:
        for key, value in extensions.items():
            body.setdefault(key, value)
    return web.Response(
        status=status,
        body=json.dumps(body, ensure_ascii=False, default=str).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=dict(headers or {}),
    )


_SKIP_HEADERS = frozenset({"content-type", "content-length", "content-encoding"})


def _from_http_exception(exc: web.HTTPException, request: web.Request, rid: str) -> web.Response:
    default_text = f"{exc.status}: {exc.reason}"
    detail = exc.text if exc.text and exc.text != default_text else None
    headers = {k: v for k, v in exc.headers.items() if k.lower() not in _SKIP_HEADERS}
    return problem_response(
        exc.status,
        title=_REASONS.get(exc.status, exc.reason),
        detail=detail,
        instance=request.path,
        request_id=rid,
        headers=headers,
    )


def _from_problem(exc: ProblemError, request: web.Request, rid: str) -> web.Response:
    return problem_response(
        exc.status,
        title=exc.title,
        detail=exc.detail,
        type=exc.type,
        instance=request.path,
        request_id=rid,
        extensions=exc.extensions,
        headers=exc.headers,
    )


def _from_dependency_failure(
    exc: UpstreamError | DeadlineExceeded, request: web.Request, rid: str
) -> web.Response:
    """A dependency failed and the handler let it through: degrade, don't crash.

    Timeouts answer 504, a bad upstream answer 502, anything else (no instance,
    open circuit, full bulkhead) 503 with ``Retry-After`` when known. The body names
    no upstream: the log line does.
    """
    service = getattr(exc, "service", "")
    error_logger.warning(
        "dependency failure in %s %s: %s",
        request.method,
        route_template(request),
        exc,
        extra={"upstream": service, "error_type": type(exc).__name__},
    )
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(exc, TimeoutError):
        status, detail = 504, "A dependency of this service did not answer in time."
    elif isinstance(exc, UpstreamStatusError):
        status, detail = 502, "A dependency of this service answered with an error."
    else:
        status, detail = 503, "A dependency of this service is unavailable."
        if isinstance(exc, CircuitOpen) and retry_after is None:
            retry_after = 1.0
    if status == 503 and retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return problem_response(
        status, detail=detail, instance=request.path, request_id=rid, headers=headers
    )


@overload
async def read_json(request: web.Request) -> Any: ...
@overload
async def read_json(request: web.Request, model: type[ModelT]) -> ModelT: ...
async def read_json(request: web.Request, model: type[BaseModel] | None = None) -> Any:
    """Parse the request body as JSON, and validate it against ``model`` if given.

    Raises:
        BadRequest: the body is not valid JSON (400): malformed, not UTF-8, nested too
            deeply, or with an integer too long to convert.
        RequestValidationError: the JSON does not fit ``model`` (422); its
            ``errors`` extension lists each invalid field.
    """
    raw = await request.read()
    try:
        data = json.loads(raw.decode(request.charset or "utf-8"))
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            title="Malformed JSON",
        ) from exc
    except (UnicodeDecodeError, LookupError) as exc:
        raise BadRequest(
            f"request body is not text in its charset: {exc}", title="Malformed JSON"
        ) from exc
    except (ValueError, RecursionError) as exc:  # an over-long integer, too deep nesting
        raise BadRequest(
            f"request body is not acceptable JSON: {type(exc).__name__}", title="Malformed JSON"
        ) from exc
    if model is None:
        return data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        raise RequestValidationError(
            f"{len(errors)} invalid field{'s' if len(errors) != 1 else ''}",
            title="Invalid request",
            extensions={"errors": errors},
        ) from None


def _fail_current_span(exc: BaseException) -> None:
    """Record ``exc`` on the current span (the request's server span): event, status, type."""
    span = otel_trace.get_current_span()
    if span.is_recording():
        cls = type(exc)
        module = cls.__module__
        kind = cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
        span.record_exception(exc)
        span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, kind))
        span.set_attribute("error.type", kind)


class RequestPipeline:
    """The chassis' request middleware: request ids, problem JSON, access log.

    Args:
        service, version, environment: identity stamped on every log line.
        log: access-log settings (enable, sample rate).
        max_body_bytes: bodies declared larger than this get 413 at once.
    """

    def __init__(
        self,
        *,
        service: str = "",
        version: str = "",
        environment: str = "",
        log: LogSettings | None = None,
        max_body_bytes: int | None = None,
    ) -> None:
        self.service = service
        self.version = version
        self.environment = environment
        self.max_body_bytes = max_body_bytes
        self.configure_log(log or LogSettings())

    def configure_log(self, log: LogSettings) -> None:
        """Apply access-log settings."""
        self.access_log = log.access_log
        self.sample_rate = log.access_log_sample_rate

    def configure(self, settings: ChassisSettings) -> None:
        """Apply a service's settings."""
        self.environment = settings.environment
        self.max_body_bytes = settings.http.max_body_bytes
        self.configure_log(settings.log)

    def setup(self, app: web.Application) -> None:
        """Install the middleware first in ``app``'s chain."""
        app.middlewares.insert(0, self.middleware)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The aiohttp middleware."""
        start = time.perf_counter()
        header = request.headers.get(REQUEST_ID_HEADER)
        rid = header if header is not None and _REQUEST_ID_OK(header) else new_request_id()
        token = _log_context.set(LogContext(self.service, self.version, self.environment, rid))
        try:
            try:
                limit = self.max_body_bytes
                length = request.content_length
                if limit is not None and length is not None and length > limit:
                    raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=length)
                response = await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:
                    exc.headers[REQUEST_ID_HEADER] = rid
                    if self.access_log:
                        self._log_access(request, exc, start, rid)
                    raise
                response = _from_http_exception(exc, request, rid)
            except ProblemError as exc:
                if exc.status >= 500:
                    _fail_current_span(exc)
                response = _from_problem(exc, request, rid)
            except (UpstreamError, DeadlineExceeded) as exc:
                _fail_current_span(exc)
                response = _from_dependency_failure(exc, request, rid)
            except json.JSONDecodeError as exc:
                response = await self._from_decode_error(exc, request, rid)
            except Exception as exc:
                _fail_current_span(exc)
                error_logger.exception(
                    "unhandled exception in %s %s", request.method, route_template(request)
                )
                response = problem_response(
                    500,
                    instance=request.path,
                    request_id=rid,
                    detail="The server failed to handle the request.",
                )
            response.headers[REQUEST_ID_HEADER] = rid
            if self.access_log:
                self._log_access(request, response, start, rid)
            return response
        finally:
            _log_context.reset(token)

    async def _from_decode_error(
        self, exc: json.JSONDecodeError, request: web.Request, rid: str
    ) -> web.Response:
        # Only a failure to decode *this request's body* is the client's fault.
        is_body = False
        if request.body_exists:
            try:
                is_body = exc.doc == await request.text()
            except Exception:
                is_body = False
        if is_body:
            return _from_problem(
                BadRequest(f"request body is not valid JSON: {exc.msg}", title="Malformed JSON"),
                request,
                rid,
            )
        _fail_current_span(exc)
        error_logger.error("unhandled JSON decode error", exc_info=exc)
        return problem_response(500, instance=request.path, request_id=rid)

    def _log_access(
        self, request: web.Request, response: web.StreamResponse, start: float, rid: str
    ) -> None:
        status = response.status
        path = request.path
        if path.startswith(_QUIET_PREFIXES):
            # Probes and scrapes: a 503 from /health/ready while draining is by design.
            level = logging.DEBUG
        elif status >= 500:
            level = logging.ERROR
        else:
            level = logging.INFO
        if status < 400 and self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        if not access_logger.isEnabledFor(level):
            return
        duration_ms = (time.perf_counter() - start) * 1000
        size = response.body_length if response.prepared else (response.content_length or 0)
        route = route_template(request)
        method = request.method
        extra = {
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(duration_ms, 3),
            "bytes": size,
            "client": request.remote or "",
        }
        if log_direct(
            access_logger,
            level,
            f"{method} {route} {status}",
            module=_MODULE,
            function="access",
            extra=extra.items(),
        ):
            return
        # makeRecord + handle is Logger.log without its stack walk (findCaller), the
        # dearest part of a log call; filters, handlers and propagation still apply.
        record = access_logger.makeRecord(
            access_logger.name,
            level,
            __file__,
            0,
            "%s %s %d",
            (method, route, status),
            None,
            "access",
            extra,
        )
        access_logger.handle(record)
