"""What a service under test emitted: its JSON log records, its spans, its metrics.

Part of the public test kit; import the names from :mod:`chassis.testing`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .logging import ChassisJsonFormatter
from .tracing import TRACING_KEY

if TYPE_CHECKING:
    import aiohttp
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind
    from prometheus_client import CollectorRegistry

    from .metrics import Metrics
    from .service import Service

__all__ = [
    "LogCapture",
    "MetricsSnapshot",
    "MetricsWatch",
    "SpanCapture",
    "capture_logs",
    "capture_spans",
    "scrape_metrics",
]


# -- logs -----------------------------------------------------------------------------


class LogCapture(logging.Handler):
    """A logging handler keeping each record as the chassis writes it: one JSON object.

    Made by :func:`capture_logs` (or the ``chassis_logs`` fixture). Records are
    formatted by :class:`~chassis.logging.ChassisJsonFormatter` when they are
    emitted (where the request and trace context live) and parsed back, so a test
    sees exactly the fields a log collector would.
    """

    def __init__(self, level: int | str = logging.INFO) -> None:
        super().__init__(level)
        self.setFormatter(ChassisJsonFormatter())
        self.lines: list[str] = []
        """The JSON lines, in the order they were logged."""

    def __repr__(self) -> str:
        return f"<LogCapture {len(self.lines)} records>"

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` and keep the line."""
        try:
            self.lines.append(self.format(record))
        except Exception:
            self.handleError(record)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every record so far, parsed: ``{"level": "INFO", "message": ..., ...}``."""
        return [json.loads(line) for line in self.lines]

    def find(self, **fields: Any) -> list[dict[str, Any]]:
        """The records whose fields equal every one given, e.g. ``find(event="access")``."""
        return [r for r in self.records if all(r.get(k, _MISSING) == v for k, v in fields.items())]

    def messages(self, **fields: Any) -> list[str]:
        """The ``message`` of each record :meth:`find` returns."""
        return [str(r["message"]) for r in self.find(**fields)]

    def clear(self) -> None:
        """Forget the records so far."""
        self.lines.clear()


_MISSING = object()


@contextlib.contextmanager
def capture_logs(level: int | str = logging.INFO, *, logger: str = "") -> Iterator[LogCapture]:
    """Capture the JSON records logged within the ``with`` block::

        with capture_logs() as logs:
            ...
        [access] = logs.find(logger="chassis.access", path="/items/1")

    The capture is added next to the handlers already installed (none is removed
    or closed); the logger's level is lowered to ``level`` meanwhile and restored
    afterwards.

    Args:
        level: the lowest level kept (``"DEBUG"`` to see everything).
        logger: the logger to listen on; the root logger (every logger) by default.
    """
    capture = LogCapture(level)
    target = logging.getLogger(logger or None)
    saved = target.level
    target.addHandler(capture)
    if saved == logging.NOTSET or saved > capture.level:
        target.setLevel(capture.level)
    try:
        yield capture
    finally:
        target.removeHandler(capture)
        target.setLevel(saved)
        capture.close()


# -- spans ----------------------------------------------------------------------------


class SpanCapture:
    """Every span a service finishes, kept in memory: a capability to install before startup.

    Made by :func:`capture_spans`. At startup it adds a synchronous processor with an
    in-memory exporter to the service's tracer provider (next to the OTLP exporter, if
    one is configured), so a span is here as soon as it ends: no flush is needed.
    Nothing is captured while tracing is disabled.
    """

    def __init__(self) -> None:
        self._exporter: InMemorySpanExporter | None = None

    def __repr__(self) -> str:
        return f"<SpanCapture {len(self.spans)} spans>"

    def setup(self, app: web.Application) -> None:
        """Add one cleanup context: it hooks into the provider the tracing built."""
        app.cleanup_ctx.append(self._lifespan)

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        tracing = app.get(TRACING_KEY)
        provider = tracing.provider if tracing is not None else None
        if provider is not None:
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                InMemorySpanExporter,
            )

            # The provider shuts the processor down with the service; the spans stay.
            self._exporter = InMemorySpanExporter()
            provider.add_span_processor(SimpleSpanProcessor(self._exporter))
        yield

    @property
    def spans(self) -> list[ReadableSpan]:
        """The finished spans, in the order they ended."""
        exporter = self._exporter
        return list(exporter.get_finished_spans()) if exporter is not None else []

    def find(
        self, name: str | None = None, *, kind: SpanKind | None = None, **attributes: Any
    ) -> list[ReadableSpan]:
        """The finished spans with this name, kind and attribute values (all optional).

        Attribute names with dots are passed as a mapping:
        ``find("GET /items/{id}", **{"http.response.status_code": 200})``.
        """
        found = []
        for span in self.spans:
            if name is not None and span.name != name:
                continue
            if kind is not None and span.kind is not kind:
                continue
            values = span.attributes or {}
            if all(values.get(k, _MISSING) == v for k, v in attributes.items()):
                found.append(span)
        return found

    def clear(self) -> None:
        """Forget the spans so far."""
        if self._exporter is not None:
            self._exporter.clear()


def capture_spans(service: Service) -> SpanCapture:
    """The span capture of ``service``, installed on first call (before it starts)::

        spans = capture_spans(service)
        async with service.running(port=0):
            ...
        [span] = spans.find("GET /items/{id}")

    Raises:
        LifecycleError: the service has started already and has no capture.
    """
    for capability in service.capabilities:
        if isinstance(capability, SpanCapture):
            return capability
    if service.app.frozen:
        from .exceptions import LifecycleError

        raise LifecycleError(f"{service!r} has started; capture its spans before it starts")
    capture = SpanCapture()
    service.install(capture)
    return capture


# -- metrics --------------------------------------------------------------------------

_SampleKey = tuple[str, frozenset[tuple[str, str]]]


class MetricsSnapshot:
    """The value of every sample of a registry (or a ``/metrics`` page) at one moment.

    Sample names are the exposed ones: ``http_server_request_duration_seconds_count``,
    ``..._sum``, ``..._bucket``, ``events_published_total``. Subtracting one snapshot
    from a later one gives the change of every sample.
    """

    def __init__(self, values: Mapping[_SampleKey, float]) -> None:
        self.values: Mapping[_SampleKey, float] = dict(values)

    def __repr__(self) -> str:
        return f"<MetricsSnapshot {len(self.values)} samples>"

    @classmethod
    def of(cls, registry: CollectorRegistry) -> MetricsSnapshot:
        """Collect ``registry`` now."""
        values: dict[_SampleKey, float] = {}
        for family in registry.collect():
            for sample in family.samples:
                values[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
        return cls(values)

    @classmethod
    def parse(cls, text: str) -> MetricsSnapshot:
        """Read a page in the Prometheus text format (what ``GET /metrics`` answers)."""
        from prometheus_client.parser import text_string_to_metric_families

        values: dict[_SampleKey, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
        return cls(values)

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels``; 0 if none.

        ``value("http_server_request_duration_seconds_count", route="/x")`` counts the
        requests to ``/x`` of every method and status code.
        """
        wanted = labels.items()
        total = 0.0
        for (sample, sample_labels), value in self.values.items():
            if sample == name and wanted <= sample_labels and not math.isnan(value):
                total += value
        return total

    def __sub__(self, earlier: MetricsSnapshot) -> MetricsSnapshot:
        keys = self.values.keys() | earlier.values.keys()
        return MetricsSnapshot(
            {k: self.values.get(k, 0.0) - earlier.values.get(k, 0.0) for k in keys}
        )


class MetricsWatch:
    """Changes in a service's metrics since a baseline, read from its own registry::

        metrics = MetricsWatch(service)          # the baseline: now
        ...
        assert metrics.delta("http_server_request_duration_seconds_count", route="/x") == 1

    Args:
        source: a :class:`~chassis.Service`, its :class:`~chassis.metrics.Metrics`, or a
            :class:`prometheus_client.CollectorRegistry`.
    """

    def __init__(self, source: Service | Metrics | CollectorRegistry) -> None:
        from .metrics import Metrics
        from .service import Service

        if isinstance(source, Service):
            source = source.metrics
        self.registry: CollectorRegistry = (
            source.registry if isinstance(source, Metrics) else source
        )
        self.baseline = MetricsSnapshot.of(self.registry)
        """The snapshot :meth:`delta` subtracts: taken when built, or at :meth:`reset`."""

    def __repr__(self) -> str:
        return f"<MetricsWatch {self.baseline!r}>"

    def snapshot(self) -> MetricsSnapshot:
        """The registry now."""
        return MetricsSnapshot.of(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """A sample's value now (see :meth:`MetricsSnapshot.value`)."""
        return self.snapshot().value(name, **labels)

    def delta(self, name: str, **labels: str) -> float:
        """How much a sample changed since the baseline (see :meth:`MetricsSnapshot.value`)."""
        return self.snapshot().value(name, **labels) - self.baseline.value(name, **labels)

    def reset(self) -> None:
        """Take a new baseline now."""
        self.baseline = self.snapshot()


async def scrape_metrics(
    client: aiohttp.ClientSession, url: str = "/metrics", **kwargs: Any
) -> MetricsSnapshot:
    """``GET`` a metrics page with ``client`` and parse it, as Prometheus would scrape it::

        before = await scrape_metrics(live.client)
        ...
        after = await scrape_metrics(live.client)
        assert (after - before).value("orders_placed_total") == 1

    ``kwargs`` go to ``client.get`` (headers, a timeout...).

    Raises:
        aiohttp.ClientResponseError: the page did not answer 200.
    """
    async with client.get(url, raise_for_status=True, **kwargs) as response:
        text = await response.text()
    return MetricsSnapshot.parse(text)
