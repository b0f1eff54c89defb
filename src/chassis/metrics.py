"""Prometheus metrics: a registry per service, the golden signals, ``@timed`` and ``@counted``.

:class:`Metrics` owns one :class:`prometheus_client.CollectorRegistry` (never the
global one) and plugs into an application through ``setup(app)``:

* a middleware records every request's duration, body sizes and status in
  ``http_server_*`` series labelled by method, route template and status code;
  their cardinality is bounded by construction (unknown methods become ``OTHER``,
  unrouted paths ``unmatched``);
* ``GET /metrics`` serves the registry in the Prometheus text format, or in
  OpenMetrics (which carries exemplars) when the ``Accept`` header asks for it;
* event-loop lag, process (CPU, memory, open fds) and garbage-collector metrics
  report saturation, and ``chassis_service_info`` names the running version.

With a :class:`~chassis.Service` it is ``service.metrics``; on a bare application::

    metrics = Metrics(service_name="orders")
    metrics.setup(app)

Service code adds its own metrics, named after the service (``orders_...``)::

    sold = service.metrics.counter("sell_shares_total", "Shares sold.", labels=("side",))

    @service.metrics.timed("sell_shares")     # orders_sell_shares_duration_seconds
    async def sell_shares(order: Order) -> None: ...

The decorators wrap the objects: :func:`timed` takes any histogram or summary,
:func:`counted` a counter with one ``outcome`` label.

``prometheus_client`` is imported when the first :class:`Metrics` is built, not
when this module is, so importing :mod:`chassis` stays cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
import re
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from itertools import accumulate, pairwise
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar, cast

from aiohttp import hdrs, web

from .config import ChassisSettings, MetricsSettings, env_var_name
from .exceptions import ConfigError
from .health import LoopLagMonitor
from .http import route_template

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.metrics_core import Metric

__all__ = [
    "BODY_SIZE_BUCKETS_BYTES",
    "KNOWN_METHODS",
    "METRICS_KEY",
    "Metrics",
    "counted",
    "timed",
]

P = ParamSpec("P")
R = TypeVar("R")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Kind = Literal["counter", "gauge", "histogram"]

KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
"""HTTP methods recorded by name; any other method is recorded as ``OTHER``."""

BODY_SIZE_BUCKETS_BYTES: tuple[float, ...] = (
    0,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
)
"""Histogram buckets of request and response body sizes (powers of four; 0 = no body)."""

_REQUEST_LABELS = ("method", "route", "status_code")
_DURATION = "http_server_request_duration_seconds"
_DURATION_HELP = "Duration of HTTP requests handled by the server, in seconds."
_REQUEST_SIZE = "http_server_request_body_size_bytes"
_REQUEST_SIZE_HELP = "Size of HTTP request bodies, in bytes."
_RESPONSE_SIZE = "http_server_response_body_size_bytes"
_RESPONSE_SIZE_HELP = "Size of HTTP response bodies known when the handler returns, in bytes."
_ACTIVE = "http_server_active_requests"
_ACTIVE_HELP = "HTTP requests being handled by the server right now."
_METRIC_NAME_OK = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*").fullmatch
_CANCELLED_STATUS = 499  # the client went away (or shutdown timed out) before an answer


class _Observer(Protocol):
    """Anything with ``observe(seconds)``: a histogram, a summary, or a labelled child."""

    def observe(self, amount: float) -> None: ...


def _metric_prefix(service_name: str) -> str:
    """``market-data`` -> ``market_data_``; empty for an empty name."""
    if not service_name:
        return ""
    snake = re.sub(r"[^a-z0-9_]", "_", service_name.lower())
    if not _METRIC_NAME_OK(snake):
        raise ValueError(f"service name {service_name!r} cannot prefix a metric name")
    return snake + "_"


def _reject_generators(fn: Callable[..., Any], decorator: str) -> None:
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"@{decorator} cannot measure generator function {fn.__qualname__}: "
            "it would see only the creation of the generator"
        )


def _require_observable(metric: object, decorator: str) -> None:
    # prometheus_client only fails at observe() time on a labelled parent; fail here instead.
    is_parent = getattr(metric, "_is_parent", None)
    if callable(is_parent) and is_parent():
        raise ValueError(
            f"@{decorator} needs a metric without labels or a labelled child: "
            "pass metric.labels(...)"
        )


def timed(metric: _Observer) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator observing each call's duration in seconds on ``metric``.

    ``metric`` is a histogram or summary without labels, or a labelled child
    (``histogram.labels("buy")``). On an ``async def`` the wrapper is itself an
    ``async def`` and times the awaited call, not the creation of the coroutine.
    Calls that raise are observed too. The metric is ``wrapper.metric``::

        latency = Histogram("quote_fetch_duration_seconds", "Quote fetches.", registry=registry)

        @timed(latency)
        async def fetch_quote(symbol: str) -> Quote: ...

    Raises:
        ValueError: ``metric`` has labels but no values bound.
        TypeError: the decorated function is a generator function.
    """
    _require_observable(metric, "timed")
    observe = metric.observe
    clock = time.perf_counter

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        _reject_generators(fn, "timed")
        wrapper: Callable[..., Any]
        if inspect.iscoroutinefunction(fn):
            call = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def timed_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                start = clock()
                try:
                    return await call(*args, **kwargs)
                finally:
                    observe(clock() - start)

            wrapper = timed_async
        else:

            @functools.wraps(fn)
            def timed_sync(*args: P.args, **kwargs: P.kwargs) -> R:
                start = clock()
                try:
                    return fn(*args, **kwargs)
                finally:
                    observe(clock() - start)

            wrapper = timed_sync
        wrapper.__dict__["metric"] = metric
        return cast(Callable[P, R], wrapper)

    return decorate


def counted(metric: Counter) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator counting calls on ``metric`` by ``outcome``: ``success`` or ``error``.

    ``metric`` is a counter whose only label is ``outcome``. A call that returns
    counts as ``success``; one that raises anything (cancellation included) as
    ``error``. On an ``async def`` the awaited call is what counts. The metric is
    ``wrapper.metric``.

    Raises:
        ValueError: ``metric``'s labels are not exactly ``("outcome",)``.
        TypeError: the decorated function is a generator function.
    """
    try:
        success = metric.labels(outcome="success")
        error = metric.labels(outcome="error")
    except ValueError as exc:
        raise ValueError(
            f"@counted needs a counter whose only label is 'outcome' ({exc})"
        ) from None
    count_success = success.inc
    count_error = error.inc

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        _reject_generators(fn, "counted")
        wrapper: Callable[..., Any]
        if inspect.iscoroutinefunction(fn):
            call = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def counted_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                try:
                    result = await call(*args, **kwargs)
                except BaseException:
                    count_error()
                    raise
                count_success()
                return result

            wrapper = counted_async
        else:

            @functools.wraps(fn)
            def counted_sync(*args: P.args, **kwargs: P.kwargs) -> R:
                try:
                    result = fn(*args, **kwargs)
                except BaseException:
                    count_error()
                    raise
                count_success()
                return result

            wrapper = counted_sync
        wrapper.__dict__["metric"] = metric
        return cast(Callable[P, R], wrapper)

    return decorate


def _response_size(response: web.StreamResponse | None, method: str) -> int | None:
    """Body bytes of ``response`` if known when the handler returns (none for ``HEAD``)."""
    if response is None:
        return None
    if response.prepared:
        return response.body_length
    if method == "HEAD":
        return 0
    return response.content_length


def _bounds(buckets: Sequence[float]) -> tuple[float, ...]:
    """Upper bounds of histogram buckets, ending with +Inf.

    Raises:
        ValueError: the buckets are empty or not strictly increasing.
    """
    bounds = [float(b) for b in buckets]
    if not bounds or any(a >= b for a, b in pairwise(bounds)):
        raise ValueError(f"histogram buckets must be strictly increasing, got {tuple(buckets)}")
    if bounds[-1] != math.inf:
        bounds.append(math.inf)
    return tuple(bounds)


_SIZE_BOUNDS = _bounds(BODY_SIZE_BUCKETS_BYTES)


def _check_buckets(settings: MetricsSettings) -> None:
    try:
        _bounds(settings.duration_buckets_seconds)
    except ValueError as exc:
        raise ConfigError(
            [(env_var_name(("metrics", "duration_buckets_seconds")), str(exc))]
        ) from None


class _Series:
    """One label set's three histograms: per-bucket counts and sums."""

    __slots__ = (
        "duration",
        "duration_sum",
        "exemplars",
        "labels",
        "request",
        "request_sum",
        "response",
        "response_sum",
    )

    def __init__(self, labels: tuple[str, str, str], duration_buckets: int) -> None:
        self.labels = labels
        self.duration = [0] * duration_buckets
        self.duration_sum = 0.0
        # Per duration bucket: (trace id, seconds, Unix time) of its latest sampled request.
        self.exemplars: list[tuple[int, float, float] | None] | None = None
        self.request = [0] * len(_SIZE_BOUNDS)
        self.request_sum = 0
        self.response = [0] * len(_SIZE_BOUNDS)
        self.response_sum = 0


class _ServerMetrics:
    """The golden-signal series, exported by a custom collector on the service's registry.

    The middleware runs on the event loop, so it updates plain counters instead of
    ``prometheus_client`` metric objects with a lock per value: an observation
    costs a bisect and two additions. A scrape from another thread could see a
    request in a bucket but not yet in the sum; nothing worse.
    """

    def __init__(self, duration_buckets: Sequence[float]) -> None:
        from prometheus_client.utils import floatToGoString

        le: Callable[[float], str] = floatToGoString  # how prometheus_client spells bounds
        self.duration_bounds = _bounds(duration_buckets)
        self.duration_les = tuple(le(b) for b in self.duration_bounds)
        self.size_les = tuple(le(b) for b in _SIZE_BOUNDS)
        self.active = dict.fromkeys((*sorted(KNOWN_METHODS), "OTHER"), 0)
        # (method, route, status) -> its series. Bounded: every component is (ten
        # method names, the router's templates, three-digit status codes).
        self.series: dict[tuple[str, str, int], _Series] = {}

    def observe(
        self,
        key: tuple[str, str, int],
        seconds: float,
        trace_id: int | None,
        request_bytes: int,
        response_bytes: int | None,
    ) -> None:
        """Record one finished request."""
        series = self.series.get(key)
        if series is None:
            method, route, status = key
            labels = (method, route, str(status))
            series = self.series[key] = _Series(labels, len(self.duration_bounds))
        i = bisect_left(self.duration_bounds, seconds)
        series.duration[i] += 1
        series.duration_sum += seconds
        if trace_id is not None:
            exemplars = series.exemplars
            if exemplars is None:
                exemplars = series.exemplars = [None] * len(self.duration_bounds)
            exemplars[i] = (trace_id, seconds, time.time())
        series.request[bisect_left(_SIZE_BOUNDS, request_bytes)] += 1
        series.request_sum += request_bytes
        if response_bytes is not None:
            series.response[bisect_left(_SIZE_BOUNDS, response_bytes)] += 1
            series.response_sum += response_bytes

    def _families(
        self,
    ) -> tuple[
        HistogramMetricFamily, HistogramMetricFamily, HistogramMetricFamily, GaugeMetricFamily
    ]:
        from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

        return (
            HistogramMetricFamily(_DURATION, _DURATION_HELP, labels=_REQUEST_LABELS),
            HistogramMetricFamily(_REQUEST_SIZE, _REQUEST_SIZE_HELP, labels=_REQUEST_LABELS),
            HistogramMetricFamily(_RESPONSE_SIZE, _RESPONSE_SIZE_HELP, labels=_REQUEST_LABELS),
            GaugeMetricFamily(_ACTIVE, _ACTIVE_HELP, labels=("method",)),
        )

    def describe(self) -> Iterator[Metric]:
        """The families, without samples: reserves their names in the registry."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        """The families with the current values."""
        from prometheus_client.samples import Exemplar

        duration, request_size, response_size, active = self._families()
        for series in list(self.series.values()):
            buckets: list[Any] = list(
                zip(self.duration_les, accumulate(series.duration), strict=True)
            )
            for i, exemplar in enumerate(series.exemplars or ()):
                if exemplar is not None:
                    trace_id, value, at = exemplar
                    labels = {"trace_id": f"{trace_id:032x}"}
                    buckets[i] = (*buckets[i], Exemplar(labels, value, at))
            duration.add_metric(series.labels, buckets, series.duration_sum)
            sizes = list(zip(self.size_les, accumulate(series.request), strict=True))
            request_size.add_metric(series.labels, sizes, series.request_sum)
            if any(series.response):
                sizes = list(zip(self.size_les, accumulate(series.response), strict=True))
                response_size.add_metric(series.labels, sizes, series.response_sum)
        for method, value in self.active.items():
            active.add_metric((method,), value)
        yield from (duration, request_size, response_size, active)


class Metrics:
    """A service's Prometheus registry, golden-signal middleware and ``/metrics`` endpoint.

    Args:
        service_name: prefixes metrics made through :meth:`counter`, :meth:`gauge`,
            :meth:`histogram`, :meth:`timed` and :meth:`counted` (snake-cased:
            ``market-data`` -> ``market_data_``), and labels ``chassis_service_info``.
        version: the ``version`` label of ``chassis_service_info``.
        settings: metrics settings; when omitted, the service's settings (or the
            defaults) are used at startup.
        registry: the registry to fill and serve; a new one by default. Never the
            process-global ``prometheus_client.REGISTRY`` unless you pass it.
        lag_monitor: an event-loop lag monitor that something else runs (a
            service passes its health monitor); without one, the metrics run their
            own while the application is up.
    """

    def __init__(
        self,
        *,
        service_name: str = "",
        version: str = "",
        settings: MetricsSettings | None = None,
        registry: CollectorRegistry | None = None,
        lag_monitor: LoopLagMonitor | None = None,
    ) -> None:
        from prometheus_client import CollectorRegistry

        self.service_name = service_name
        self.version = version
        self.prefix = _metric_prefix(service_name)
        if settings is not None:
            _check_buckets(settings)
        self._explicit_settings = settings
        self.settings = settings or MetricsSettings()
        self.registry: CollectorRegistry = registry if registry is not None else CollectorRegistry()
        self._runs_lag_monitor = lag_monitor is None
        self.lag = lag_monitor if lag_monitor is not None else LoopLagMonitor()
        self._made: dict[str, tuple[Kind, tuple[str, ...], tuple[float, ...] | None, Any]] = {}
        self._server: _ServerMetrics | None = None
        self._current_span: Callable[[], Any] | None = None

    def __repr__(self) -> str:
        return f"<Metrics {self.service_name or '(unnamed)'} {self.settings.path}>"

    # -- service metrics ----------------------------------------------------------
    def counter(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        prefix: str | None = None,
    ) -> Counter:
        """The counter ``<prefix><name>`` on this registry, made on first call.

        A trailing ``_total`` is optional: ``counter("sold_total")`` and
        ``counter("sold")`` are the same counter, exposed as ``<prefix>sold_total``.
        ``prefix`` replaces the service's own (``orders_``): ``""`` for none, or a
        domain's, such as ``simplebank_``, for a metric several services share.

        Raises:
            ValueError: the name is invalid, or already used by a metric of another
                kind or with other labels.
        """
        from prometheus_client import Counter

        stem = name.removesuffix("_total")
        return cast(
            "Counter",
            self._get_or_make(
                "counter",
                stem,
                labels,
                None,
                lambda full: Counter(full, documentation, labels, registry=self.registry),
                prefix,
            ),
        )

    def gauge(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        prefix: str | None = None,
    ) -> Gauge:
        """The gauge ``<prefix><name>`` on this registry, made on first call.

        ``prefix`` replaces the service's own, as for :meth:`counter`.

        Raises:
            ValueError: the name is invalid, or already used by a metric of another
                kind or with other labels.
        """
        from prometheus_client import Gauge

        return cast(
            "Gauge",
            self._get_or_make(
                "gauge",
                name,
                labels,
                None,
                lambda full: Gauge(full, documentation, labels, registry=self.registry),
                prefix,
            ),
        )

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float] | None = None,
        prefix: str | None = None,
    ) -> Histogram:
        """The histogram ``<prefix><name>`` on this registry, made on first call.

        ``buckets`` defaults to ``prometheus_client``'s latency buckets (5 ms to 10 s);
        ``prefix`` replaces the service's own, as for :meth:`counter`.

        Raises:
            ValueError: the name is invalid, or already used by a metric of another
                kind, with other labels or other buckets.
        """
        from prometheus_client import Histogram

        chosen = tuple(float(b) for b in (buckets or Histogram.DEFAULT_BUCKETS))
        return cast(
            "Histogram",
            self._get_or_make(
                "histogram",
                name,
                labels,
                chosen,
                lambda full: Histogram(
                    full, documentation, labels, buckets=chosen, registry=self.registry
                ),
                prefix,
            ),
        )

    def timed(
        self,
        name: str,
        documentation: str | None = None,
        *,
        buckets: Sequence[float] | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorator timing calls into the histogram ``<prefix><name>_duration_seconds``.

        A name already ending in ``_seconds`` is used as it is. See :func:`timed`.
        """
        full = name if name.endswith("_seconds") else f"{name}_duration_seconds"
        doc = documentation or f"Duration of {name} calls, in seconds."
        return timed(self.histogram(full, doc, buckets=buckets))

    def counted(
        self, name: str, documentation: str | None = None
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorator counting calls in ``<prefix><name>_total{outcome="success|error"}``.

        See :func:`counted`.
        """
        doc = documentation or f"Calls of {name.removesuffix('_total')}, by outcome."
        return counted(self.counter(name, doc, labels=("outcome",)))

    def _get_or_make(
        self,
        kind: Kind,
        name: str,
        labels: Sequence[str],
        buckets: tuple[float, ...] | None,
        make: Callable[[str], Any],
        prefix: str | None = None,
    ) -> Any:
        full = (self.prefix if prefix is None else prefix) + name
        if not (_METRIC_NAME_OK(full) and (name[:1].isalpha() or name[:1] == "_")):
            raise ValueError(f"invalid metric name {full!r}: use [a-zA-Z_][a-zA-Z0-9_]*")
        wanted = tuple(labels)
        known = self._made.get(full)
        if known is None:
            metric = make(full)
            self._made[full] = (kind, wanted, buckets, metric)
            return metric
        known_kind, known_labels, known_buckets, metric = known
        if known_kind != kind:
            raise ValueError(f"metric {full!r} is already a {known_kind}, not a {kind}")
        if known_labels != wanted:
            raise ValueError(f"metric {full!r} already has labels {known_labels}, not {wanted}")
        if known_buckets != buckets:
            raise ValueError(f"histogram {full!r} already has buckets {known_buckets}")
        return metric

    # -- wiring -------------------------------------------------------------------
    def configure(self, settings: ChassisSettings) -> None:
        """Adopt a service's metrics settings unless explicit ones were given.

        Raises:
            ConfigError: the duration buckets are not strictly increasing.
        """
        if self._explicit_settings is None:
            _check_buckets(settings.metrics)
            self.settings = settings.metrics

    def setup(self, app: web.Application) -> None:
        """Put the middleware first in ``app``'s chain and add one cleanup context."""
        app.middlewares.insert(0, self.middleware)
        app.cleanup_ctx.append(self._lifespan)
        app[METRICS_KEY] = self

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        task: asyncio.Task[None] | None = None
        if self.settings.enabled:
            self._start()
            if self._runs_lag_monitor:
                task = asyncio.get_running_loop().create_task(
                    self.lag.run(), name="chassis-metrics-loop-lag"
                )
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _start(self) -> None:
        """Register the chassis' own metrics, once; settings are final by now."""
        if self._server is not None:
            return
        from prometheus_client import Gauge, GCCollector, PlatformCollector, ProcessCollector

        settings = self.settings
        registry = self.registry
        server = _ServerMetrics(settings.duration_buckets_seconds)
        registry.register(server)
        lag = Gauge(
            "chassis_event_loop_lag_seconds",
            "How late the event loop last woke a sleeping task, in seconds.",
            registry=registry,
        )
        lag.set(self.lag.lag_seconds)
        self.lag.add_listener(lag.set)
        info = Gauge(
            "chassis_service_info",
            "The running service and its version; always 1.",
            ("service", "version"),
            registry=registry,
        )
        info.labels(self.service_name, self.version).set(1)
        if settings.process_metrics:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        if settings.exemplars:
            from opentelemetry import trace

            self._current_span = trace.get_current_span
        self._server = server

    # -- request path -------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The aiohttp middleware: serves the metrics path, measures everything else."""
        server = self._server
        if server is None:  # disabled, or the application has not started
            return await handler(request)
        method = request.method
        if (method == "GET" or method == "HEAD") and request.path == self.settings.path:
            return self._serve(request)
        if method not in KNOWN_METHODS:
            method = "OTHER"
        active = server.active
        active[method] += 1
        response: web.StreamResponse | None = None
        status = 500
        start = time.perf_counter()
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # used without the chassis pipeline
            response = exc
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = _CANCELLED_STATUS
            raise
        finally:
            elapsed = time.perf_counter() - start
            active[method] -= 1
            trace_id = None
            current_span = self._current_span
            if current_span is not None:
                context = current_span().get_span_context()
                if context.trace_flags & 0x01:  # sampled; formatted only when scraped
                    trace_id = context.trace_id
            length = request.content_length
            server.observe(
                (method, route_template(request), status),
                elapsed,
                trace_id,
                _body_bytes(request) if length is None else length,
                _response_size(response, method),
            )

    def _serve(self, request: web.Request) -> web.Response:
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(",".join(request.headers.getall(hdrs.ACCEPT, ())))
        return web.Response(
            body=encoder(self.registry),
            headers={hdrs.CONTENT_TYPE: content_type, hdrs.CACHE_CONTROL: "no-store"},
        )


METRICS_KEY = web.AppKey("chassis.metrics", Metrics)
"""The :class:`Metrics` installed on an application: ``request.app[METRICS_KEY]``."""


def _body_bytes(request: web.Request) -> int:
    """Bytes of a body sent without Content-Length (chunked), as read so far."""
    # aiohttp < 3.12 has no ``total_bytes`` on the empty stream of a bodiless request.
    return int(getattr(request.content, "total_bytes", 0))
