"""Client metrics, exported by one collector per registry.

:class:`ClientMetrics` registers on a :class:`prometheus_client.CollectorRegistry`
(a service's own, never the global one unless you pass it) and exports, for every
:class:`~chassis.client.ServiceClient` tracking it:

==============================================  ======================================
``http_client_request_duration_seconds``        histogram per attempt
  ``{upstream, method, status_code}``           (``status_code`` is ``timeout`` or
                                                ``error`` when no answer came)
``http_client_retries_total{upstream}``         retries sent
``http_client_retry_budget_exhausted_total``    retries refused by the retry budget
  ``{upstream}``
``http_client_circuit_state{upstream,instance}``  0 closed, 1 half-open, 2 open
``http_client_rejected_total{upstream,reason}``   calls failed fast: ``circuit_open``,
                                                ``bulkhead_full``, ``no_instances``
``http_client_active_requests{upstream}``       calls in flight (back-off included)
==============================================  ======================================

``upstream`` is the service name, never a URL; ``instance`` is the instance id.
Clients update plain counters on the event loop (an observation is a bisect and
two additions); the collector reads them when the registry is scraped.
"""

from __future__ import annotations

import math
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate, pairwise
from typing import TYPE_CHECKING, Protocol

from chassis.config import DURATION_BUCKETS_SECONDS

from .breaker import CIRCUIT_STATE_VALUES, CircuitState

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.metrics_core import Metric

    _Families = tuple[
        HistogramMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
        GaugeMetricFamily,
    ]

__all__ = ["DEFAULT_DURATION_BUCKETS_SECONDS", "ClientMetrics", "UpstreamStats"]

DEFAULT_DURATION_BUCKETS_SECONDS = DURATION_BUCKETS_SECONDS
"""Buckets of ``http_client_request_duration_seconds`` unless given others."""

REJECT_REASONS = ("circuit_open", "bulkhead_full", "no_instances")


class _Series:
    __slots__ = ("counts", "labels", "total")

    def __init__(self, labels: tuple[str, str, str], buckets: int) -> None:
        self.labels = labels
        self.counts = [0] * buckets
        self.total = 0.0


class UpstreamStats:
    """What one client records for the collector. Updated on the event loop only."""

    __slots__ = ("__weakref__", "_bounds", "rejected", "series", "upstream")

    def __init__(self, upstream: str, bounds: tuple[float, ...]) -> None:
        self.upstream = upstream
        self._bounds = bounds
        self.series: dict[tuple[str, str], _Series] = {}
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)

    def observe(self, method: str, status: str, seconds: float) -> None:
        """Record one attempt."""
        series = self.series.get((method, status))
        if series is None:
            labels = (self.upstream, method, status)
            series = self.series[(method, status)] = _Series(labels, len(self._bounds))
        series.counts[bisect_left(self._bounds, seconds)] += 1
        series.total += seconds


class _Source(Protocol):
    """A client as the collector reads it."""

    @property
    def stats(self) -> UpstreamStats: ...

    @property
    def retries(self) -> int: ...

    @property
    def retry_budget_exhausted(self) -> int: ...

    @property
    def active_requests(self) -> int: ...

    def circuit_states(self) -> Iterable[tuple[str, CircuitState]]: ...


class ClientMetrics:
    """The ``http_client_*`` metrics of every client that tracks it.

    Make one per registry and give it to every client (a
    :class:`~chassis.client.Clients` does); registering a second one on the same
    registry fails with ``ValueError`` (duplicated series).

    Args:
        registry: where to register; none means not registered (call
            ``registry.register(metrics)`` yourself).
        duration_buckets_seconds: buckets of the duration histogram.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        duration_buckets_seconds: Sequence[float] = DEFAULT_DURATION_BUCKETS_SECONDS,
    ) -> None:
        bounds = [float(b) for b in duration_buckets_seconds if not math.isinf(b)]
        if not bounds or any(b >= c for b, c in pairwise(bounds)):
            raise ValueError("duration buckets must be non-empty and strictly increasing")
        self.bounds = (*bounds, math.inf)
        self._sources: weakref.WeakSet[_Source] = weakref.WeakSet()
        if registry is not None:
            registry.register(self)

    def __repr__(self) -> str:
        return f"<ClientMetrics clients={len(self._sources)}>"

    def new_stats(self, upstream: str) -> UpstreamStats:
        """Counters for a client of ``upstream``, with this collector's buckets."""
        return UpstreamStats(upstream, self.bounds)

    def track(self, source: _Source) -> None:
        """Export ``source``'s metrics while it lives."""
        self._sources.add(source)

    def _families(self) -> _Families:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        return (
            HistogramMetricFamily(
                "http_client_request_duration_seconds",
                "Duration of HTTP requests sent to upstream services, per attempt, in seconds.",
                labels=("upstream", "method", "status_code"),
            ),
            CounterMetricFamily(
                "http_client_retries",
                "Retries sent to upstream services.",
                labels=("upstream",),
            ),
            CounterMetricFamily(
                "http_client_retry_budget_exhausted",
                "Retries not sent because the upstream's retry budget was spent.",
                labels=("upstream",),
            ),
            GaugeMetricFamily(
                "http_client_circuit_state",
                "Circuit breaker state per upstream instance: 0 closed, 1 half-open, 2 open.",
                labels=("upstream", "instance"),
            ),
            CounterMetricFamily(
                "http_client_rejected",
                "Calls failed fast without a request: circuit open, bulkhead full, no instances.",
                labels=("upstream", "reason"),
            ),
            GaugeMetricFamily(
                "http_client_active_requests",
                "Calls to upstream services in flight, back-off waits included.",
                labels=("upstream",),
            ),
        )

    def describe(self) -> Iterator[Metric]:
        """The families without samples: reserves their names in the registry."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        """The families with the current values of every tracked client."""
        from prometheus_client.utils import floatToGoString

        le: Callable[[float], str] = floatToGoString  # how prometheus_client spells bounds
        families = self._families()
        duration, retries, exhausted, circuits, rejected, active = families
        les = [le(b) for b in self.bounds]
        totals: dict[str, list[int]] = {}
        rejections: dict[tuple[str, str], int] = {}
        for source in list(self._sources):
            stats = source.stats
            upstream = stats.upstream
            for series in list(stats.series.values()):
                buckets = list(zip(les, accumulate(series.counts), strict=True))
                duration.add_metric(series.labels, buckets, series.total)
            numbers = totals.setdefault(upstream, [0, 0, 0])
            numbers[0] += source.retries
            numbers[1] += source.retry_budget_exhausted
            numbers[2] += source.active_requests
            for instance, state in source.circuit_states():
                circuits.add_metric((upstream, instance), CIRCUIT_STATE_VALUES[state])
            for reason, count in stats.rejected.items():
                rejections[(upstream, reason)] = rejections.get((upstream, reason), 0) + count
        for upstream, (n_retries, n_exhausted, n_active) in totals.items():
            retries.add_metric((upstream,), n_retries)
            exhausted.add_metric((upstream,), n_exhausted)
            active.add_metric((upstream,), n_active)
        for labels, count in rejections.items():
            rejected.add_metric(labels, count)
        yield from families
