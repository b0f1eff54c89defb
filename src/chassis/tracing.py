"""OpenTelemetry tracing: a tracer provider per service, a lean server middleware, ``@traced``.

:class:`Tracing` owns one :class:`~opentelemetry.sdk.trace.TracerProvider` (the
global provider is never set) and plugs into an application through
``setup(app)``:

* a middleware, outermost in the chain, opens one ``SERVER`` span per request,
  named ``METHOD /route/{template}``, continuing the W3C ``traceparent`` /
  ``tracestate`` and ``baggage`` of the request; every log line written while the
  request is handled, the access log included, carries its ``trace_id`` and
  ``span_id``;
* spans are exported over OTLP (``http/protobuf`` or ``grpc``) by a batch
  processor whose thread does the network I/O, so export never blocks the event
  loop; the application's one cleanup context flushes them on graceful shutdown.

With a :class:`~chassis.Service` it is ``service.tracing``; on a bare application::

    tracing = Tracing(service_name="orders", settings=TracingSettings(endpoint=url))
    tracing.setup(app)

Service code opens its own spans with ``@traced`` or with the tracer itself::

    @traced("price order", attributes={"orders.book": "main"})
    async def price(order: Order) -> Decimal: ...

    with current_tracer().start_as_current_span("reconcile"):
        ...

and forwards the trace to the services it calls with :func:`inject_headers`.

Which tracer ``@traced`` and :func:`current_tracer` use, first match wins:

1. the tracer of the service handling the current request (the middleware binds
   it in a context variable for the request's duration);
2. the tracer of the service whose startup ran in the current context: the task
   that started it and every task created from it afterwards (background tasks of
   lifespans, for instance);
3. the global OpenTelemetry API tracer, a no-op unless the application set a
   global provider itself.

The SDK and the OTLP exporters are imported when a service starts, not when this
module is, so importing :mod:`chassis` stays cheap.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import os
import socket
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast
from urllib.parse import urlsplit

from aiohttp import hdrs, web
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util._decorator import _agnosticcontextmanager
from opentelemetry.util.types import Attributes, AttributeValue

from ._spans import start_id_only_span, start_server_span
from ._version import __version__
from .config import ChassisSettings, TracingSettings, env_var_name
from .exceptions import ConfigError, LifecycleError
from .http import _fail_current_span, route_template
from .metrics import KNOWN_METHODS

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import Tracer as SdkTracer
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

__all__ = [
    "INSTRUMENTATION_NAME",
    "TRACING_KEY",
    "Tracing",
    "current_trace_id",
    "current_tracer",
    "inject_headers",
    "traced",
]

P = ParamSpec("P")
R = TypeVar("R")
HeadersT = TypeVar("HeadersT", bound=MutableMapping[str, str])
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

INSTRUMENTATION_NAME = "chassis"
"""Instrumentation scope of the chassis' spans (its version is the chassis')."""

_TRACES_PATH = "/v1/traces"
_GRPC_MISSING = (
    "the grpc protocol needs the optional OTLP/gRPC exporter: pip install 'aiochassis[grpc]'"
)

# Stateless helpers shared by every service: immutable or without mutable state.
_TRACE_CONTEXT = TraceContextTextMapPropagator()
_W3C_BAGGAGE = W3CBaggagePropagator()
_PROPAGATOR = CompositePropagator([_TRACE_CONTEXT, _W3C_BAGGAGE])
_SERVER = SpanKind.SERVER
_ERROR = Status(StatusCode.ERROR)
_TRACEPARENT = "traceparent"
_BAGGAGE = "baggage"
_attach = otel_context.attach
_get_current = otel_context.get_current
_detach = otel_context.detach
_in_context = trace.set_span_in_context

_current: contextvars.ContextVar[Tracing | None] = contextvars.ContextVar(
    "chassis_tracing", default=None
)


class _ServiceTracer(trace.Tracer):
    """A service's tracer: the SDK's while a span processor listens, ids only otherwise.

    A span no processor receives is built, timed, annotated and thrown away at its
    end. With no exporter configured and no processor added since (the test kit's
    :func:`~chassis.testing.capture_spans` adds one), this tracer hands out
    non-recording spans instead, with the same ids and sampling decision: log lines,
    exemplars and the ``traceparent`` of outgoing calls and events stay correct, and
    ``span.is_recording()`` tells code that annotation would be wasted.
    """

    def __init__(self, sdk: SdkTracer) -> None:
        self.sdk = sdk
        # The provider's multi-processor; a kind without the tuple always records.
        self._processor = sdk.span_processor

    @property
    def recording(self) -> bool:
        """Whether spans started now are recorded (some processor would receive them)."""
        return getattr(self._processor, "_span_processors", True) != ()

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        """The SDK's span when recording, else a span with its ids only."""
        if self.recording:
            return self.sdk.start_span(
                name,
                context,
                kind,
                attributes,
                links,
                start_time,
                record_exception,
                set_status_on_exception,
            )
        return start_id_only_span(self.sdk, name, context, kind, attributes, links)

    def start_server_span(
        self, name: str, parent: otel_context.Context | None, attributes: dict[str, AttributeValue]
    ) -> trace.Span:
        """The server middleware's span: a lean recorded one, or ids only, as above."""
        if self.recording:
            return start_server_span(self.sdk, name, parent, _SERVER, attributes)
        return start_id_only_span(self.sdk, name, parent, _SERVER, attributes)

    @_agnosticcontextmanager
    def start_as_current_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        """:meth:`start_span` made the current span for a ``with`` block, or for each
        call of a decorated function (sync or async), as the SDK tracer's method does."""
        span = self.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


def current_tracer() -> trace.Tracer:
    """The tracer of the current service, by the rule in this module's docstring."""
    tracing = _current.get()
    if tracing is not None:
        tracer = tracing._tracer
        if tracer is not None:
            return tracer
    return trace.get_tracer(INSTRUMENTATION_NAME, __version__)


def current_trace_id() -> str:
    """The current span's trace id as 32 lower-case hex digits, or ``""`` without one."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def inject_headers(headers: HeadersT) -> HeadersT:
    """Add ``traceparent``, ``tracestate`` and ``baggage`` of the current context to ``headers``.

    Returns ``headers`` itself, so a call reads naturally::

        async with session.get(url, headers=inject_headers({})) as response: ...

    Outside a span (and without baggage) nothing is added.
    """
    _PROPAGATOR.inject(headers)
    return headers


def _fail_with_status(span: trace.Span, status: int) -> None:
    """Mark a server span failed by a 5xx answer, unless an exception already did."""
    current = getattr(span, "status", None)
    if current is None or current.is_unset:
        span.set_status(_ERROR)
        span.set_attribute("error.type", str(status))


_ADDRESSES: dict[tuple[str, str], tuple[str, int | None]] = {}
_MAX_ADDRESSES = 256  # Host headers come from clients: the memo is bounded


def _server_address(host: str, scheme: str) -> tuple[str, int | None]:
    """Split a ``Host`` header (``example.com:8080``, ``[::1]``) into address and port
    (remembered: a service is called by few names)."""
    key = (host, scheme)
    found = _ADDRESSES.get(key)
    if found is None:
        found = _split_host(host, scheme)
        if len(_ADDRESSES) < _MAX_ADDRESSES:
            _ADDRESSES[key] = found
    return found


def _split_host(host: str, scheme: str) -> tuple[str, int | None]:
    address, port_text = host, ""
    if host.startswith("["):
        end = host.find("]")
        if end > 0:
            address, port_text = host[1:end], host[end + 1 :].removeprefix(":")
    elif host.count(":") == 1:
        address, port_text = host.split(":")
    if not port_text:
        return address, 443 if scheme == "https" else 80
    if port_text.isascii() and port_text.isdigit() and len(port_text) <= 5:
        port = int(port_text)
        return address, port if port <= 65535 else None
    return address, None


class Tracing:
    """A service's tracer provider, its server middleware and its exporter.

    Args:
        service_name, service_version: the service's identity in the resource.
        environment: ``deployment.environment``; the service's
            ``CHASSIS_ENVIRONMENT`` by default.
        settings: tracing settings; when omitted, the service's settings (or the
            defaults) are used at startup. Unset fields fall back to ``OTEL_*``.
        exporter: export to this exporter instead of the configured OTLP endpoint
            (an in-memory exporter in tests, for instance). Settable until startup.
        exclude_paths: request paths never traced (exact matches). The metrics
            path of a service with metrics enabled is always left out: a scrape is
            answered before the request pipeline and makes no span either.

    Attributes:
        provider: the :class:`~opentelemetry.sdk.trace.TracerProvider`, from startup
            until shutdown (``None`` otherwise, and when tracing is disabled).
        instance_id: ``service.instance.id`` of the running service; new at each start.
    """

    def __init__(
        self,
        *,
        service_name: str = "",
        service_version: str = "",
        environment: str | None = None,
        settings: TracingSettings | None = None,
        exporter: SpanExporter | None = None,
        exclude_paths: Iterable[str] = (),
    ) -> None:
        self.service_name = service_name
        self.service_version = service_version
        self._explicit_environment = environment
        self.environment = environment or ChassisSettings.model_fields["environment"].default
        self._explicit_settings = settings
        self.settings = settings or TracingSettings()
        self.exporter = exporter
        self.exclude_paths = frozenset(exclude_paths)
        self._skip_paths = self.exclude_paths
        self._metrics_path: str | None = None
        self.provider: TracerProvider | None = None
        self.instance_id = ""
        self._resolved: TracingSettings | None = None
        self._tracer: _ServiceTracer | None = None

    def __repr__(self) -> str:
        state = "running" if self._tracer is not None else "stopped"
        return f"<Tracing {self.service_name or '?'} {state}>"

    @property
    def tracer(self) -> trace.Tracer:
        """The service's tracer.

        Raises:
            LifecycleError: the service has not started (or has stopped), or tracing
                is disabled; :func:`current_tracer` never raises.
        """
        if self._tracer is None:
            raise LifecycleError(
                f"{self!r} has no tracer: it exists from startup to shutdown of an enabled "
                "service; use chassis.tracing.current_tracer() in code that may run outside"
            )
        return self._tracer

    # -- configuration ------------------------------------------------------------
    def configure(self, settings: ChassisSettings) -> None:
        """Adopt a service's settings unless explicit ones were given.

        Raises:
            ConfigError: a tracing setting (or an ``OTEL_*`` fallback) is invalid, or
                ``grpc`` is asked for without the optional exporter installed.
        """
        if self._explicit_settings is None:
            self.settings = settings.tracing
        if self._explicit_environment is None:
            self.environment = settings.environment
        self._resolved = self._resolve()
        self._metrics_path = settings.metrics.path if settings.metrics.enabled else None

    def _resolve(self) -> TracingSettings:
        resolved = self.settings.resolve()
        endpoint = resolved.endpoint
        if not resolved.enabled or endpoint is None or self.exporter is not None:
            return resolved
        var = env_var_name(("tracing", "endpoint"))
        origin = "" if self.settings.endpoint else " (from OTEL_EXPORTER_OTLP_*ENDPOINT)"
        parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
        if resolved.protocol == "grpc":
            if parts.scheme not in {"", "http", "https"} or not parts.hostname:
                raise ConfigError([(var, f"not a host:port or http(s) URL{origin}")])
            if not _has_grpc_exporter():
                raise ConfigError([(env_var_name(("tracing", "protocol")), _GRPC_MISSING)])
        elif parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError([(var, f"not an http:// or https:// URL{origin}")])
        return resolved

    # -- wiring -------------------------------------------------------------------
    def setup(self, app: web.Application) -> None:
        """Put the middleware first in ``app``'s chain and add one cleanup context."""
        app.middlewares.insert(0, self.middleware)
        app.cleanup_ctx.append(self._lifespan)
        app[TRACING_KEY] = self

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        self._start()
        previous = _current.get()
        if self._tracer is not None:
            # Inherited by the tasks this context creates from now on (rule 2).
            _current.set(self)
        try:
            yield
        finally:
            provider = self.provider
            self._tracer = None
            self.provider = None
            if _current.get() is self:
                _current.set(previous)
            if provider is not None:
                timeout_millis = int(self._settings().export_timeout_seconds * 1000)
                await asyncio.to_thread(_close_provider, provider, timeout_millis)

    def _settings(self) -> TracingSettings:
        if self._resolved is None:
            self._resolved = self._resolve()
        return self._resolved

    def _start(self) -> None:
        """Build the provider, its processor and exporter; settings are final by now."""
        settings = self._settings()
        if not settings.enabled or self._tracer is not None:
            return
        skip = set(self.exclude_paths)
        if self._metrics_path is not None:
            skip.add(self._metrics_path)
        self._skip_paths = frozenset(skip)
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.version import __version__ as sdk_version

        self.instance_id = str(uuid.uuid4())
        resource = Resource(
            {
                "service.name": self.service_name or "unknown_service",
                "service.version": self.service_version,
                "service.instance.id": self.instance_id,
                "deployment.environment": self.environment,
                "deployment.environment.name": self.environment,
                "host.name": socket.gethostname(),
                "process.pid": os.getpid(),
                "telemetry.sdk.language": "python",
                "telemetry.sdk.name": "opentelemetry",
                "telemetry.sdk.version": sdk_version,
            }
        )
        provider = TracerProvider(
            sampler=_sampler(settings),
            resource=resource,
            shutdown_on_exit=False,  # the cleanup context shuts it down, atexit would leak it
        )
        exporter = self.exporter if self.exporter is not None else _otlp_exporter(settings)
        if exporter is not None:
            provider.add_span_processor(
                BatchSpanProcessor(
                    exporter,
                    max_queue_size=settings.max_queue_size,
                    schedule_delay_millis=settings.schedule_delay_seconds * 1000,
                    max_export_batch_size=min(
                        settings.max_export_batch_size, settings.max_queue_size
                    ),
                    export_timeout_millis=settings.export_timeout_seconds * 1000,
                )
            )
        self.provider = provider
        self._tracer = _ServiceTracer(
            cast("SdkTracer", provider.get_tracer(INSTRUMENTATION_NAME, __version__))
        )

    async def flush(self) -> bool:
        """Export every finished span now (in a thread); ``False`` if it timed out.

        Shutdown flushes on its own; this is for tests and short-lived jobs.
        """
        provider = self.provider
        if provider is None:
            return True
        timeout_millis = int(self._settings().export_timeout_seconds * 1000)
        return await asyncio.to_thread(provider.force_flush, timeout_millis)

    # -- request path -------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The aiohttp middleware: one ``SERVER`` span around the rest of the chain."""
        tracer = self._tracer
        if tracer is None or request.path in self._skip_paths:
            return await handler(request)  # disabled, not started, or left out
        headers = request.headers
        # What _PROPAGATOR.extract(headers) does, minus the work for absent headers.
        # The current context (empty in a request task, unless a caller wraps us), read
        # once: the span, the sampler and its parent check would each read it again.
        parent = _get_current()
        if _TRACEPARENT in headers:
            parent = _TRACE_CONTEXT.extract(headers, parent)
        if _BAGGAGE in headers:
            parent = _W3C_BAGGAGE.extract(headers, parent)
        method = request.method
        route = route_template(request)
        known = method in KNOWN_METHODS
        if not known:
            name = "HTTP"
        elif route == "unmatched":
            name = method
        else:
            name = f"{method} {route}"
        # Attributes go in at creation: samplers may use them (as the semantic
        # conventions ask), and the SDK sets them in one pass instead of one by one.
        attributes = self._describe(request, method if known else "_OTHER", route)
        span = tracer.start_server_span(name, parent, attributes)
        token = _attach(_in_context(span, parent))
        current = _current.set(self)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # a redirect, or used without the chassis pipeline
            status = exc.status
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                _fail_with_status(span, status)
            raise
        except Exception as exc:  # used without the chassis pipeline
            _fail_current_span(exc)
            raise
        else:
            status = response.status
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                _fail_with_status(span, status)
            return response
        finally:
            _current.reset(current)
            _detach(token)
            span.end()

    @staticmethod
    def _describe(request: web.Request, method: str, route: str) -> dict[str, AttributeValue]:
        scheme = request.scheme
        address, port = _server_address(request.host, scheme)
        attributes: dict[str, AttributeValue] = {
            "http.request.method": method,
            "url.path": request.path,
            "url.scheme": scheme,
            "server.address": address,
        }
        if route != "unmatched":
            attributes["http.route"] = route
        if port is not None:
            attributes["server.port"] = port
        remote = request.remote
        if remote is not None:
            attributes["client.address"] = remote
        user_agent = request.headers.get(hdrs.USER_AGENT)
        if user_agent is not None:
            attributes["user_agent.original"] = user_agent
        if method == "_OTHER":
            attributes["http.request.method_original"] = request.method
        return attributes


def _close_provider(provider: TracerProvider, timeout_millis: int) -> None:
    """Export what is queued, then stop the processor's thread and the exporter."""
    provider.force_flush(timeout_millis)
    provider.shutdown()


def _has_grpc_exporter() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is not None
    except ImportError:
        return False


def _sampler(settings: TracingSettings) -> Sampler:
    from opentelemetry.sdk.trace import sampling

    ratio = 1.0 if settings.sampler_arg is None else settings.sampler_arg
    name = settings.sampler or "parentbased_traceidratio"
    root: Sampler
    if name.endswith("always_on"):
        root = sampling.ALWAYS_ON
    elif name.endswith("always_off"):
        root = sampling.ALWAYS_OFF
    else:
        root = sampling.TraceIdRatioBased(ratio)
    return sampling.ParentBased(root) if name.startswith("parentbased_") else root


def _otlp_exporter(settings: TracingSettings) -> SpanExporter | None:
    """The OTLP exporter for ``settings``, or ``None`` without an endpoint."""
    endpoint = settings.endpoint
    if not endpoint:
        return None
    headers: dict[str, str] | None = None
    if settings.headers is not None:
        from opentelemetry.util.re import parse_env_headers

        headers = dict(parse_env_headers(settings.headers.get_secret_value(), liberal=True))
    timeout = settings.export_timeout_seconds
    if settings.protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError as exc:
            raise ConfigError([(env_var_name(("tracing", "protocol")), _GRPC_MISSING)]) from exc
        return GrpcExporter(endpoint=endpoint, headers=headers, timeout=timeout)
    from ._otlp import LeanOTLPSpanExporter

    if urlsplit(endpoint).path in {"", "/"}:
        endpoint = endpoint.rstrip("/") + _TRACES_PATH
    # The chassis' own encoder: the same OTLP bytes at a fraction of the stock one's CPU.
    return LeanOTLPSpanExporter(endpoint, headers=headers, timeout_seconds=timeout)


def traced(
    name: str | None = None,
    *,
    attributes: Mapping[str, AttributeValue] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator running each call of a function in a span of the current service's tracer.

    The span is named ``name`` (the function's qualified name by default), carries
    ``attributes``, and is current while the function runs, so spans and log lines
    inside are its children. On an ``async def`` the wrapper is itself an
    ``async def`` and spans the awaited call. An exception leaving the function is
    recorded on the span, which gets error status; a cancellation just ends it.
    The span name is ``wrapper.span_name``. See the module docstring for which
    tracer is used.

    Raises:
        TypeError: used bare (``@traced`` instead of ``@traced()``), or on a
            generator function.
    """
    if callable(name):
        raise TypeError("use @traced() or @traced('span name'), with parentheses")
    fixed: dict[str, AttributeValue] | None = dict(attributes) if attributes else None

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"@traced cannot trace generator function {fn.__qualname__}: "
                "it would see only the creation of the generator"
            )
        span_name = name or fn.__qualname__
        wrapper: Callable[..., Any]
        if inspect.iscoroutinefunction(fn):
            call = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def traced_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                span = current_tracer().start_span(span_name, kind=kind, attributes=fixed)
                token = _attach(_in_context(span))
                try:
                    return await call(*args, **kwargs)
                except Exception as exc:
                    _fail_current_span(exc)
                    raise
                finally:
                    _detach(token)
                    span.end()

            wrapper = traced_async
        else:

            @functools.wraps(fn)
            def traced_sync(*args: P.args, **kwargs: P.kwargs) -> R:
                span = current_tracer().start_span(span_name, kind=kind, attributes=fixed)
                token = _attach(_in_context(span))
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    _fail_current_span(exc)
                    raise
                finally:
                    _detach(token)
                    span.end()

            wrapper = traced_sync
        wrapper.__dict__["span_name"] = span_name
        return cast(Callable[P, R], wrapper)

    return decorate


TRACING_KEY = web.AppKey("chassis.tracing", Tracing)
"""The :class:`Tracing` installed on an application: ``request.app[TRACING_KEY]``."""
