"""The metrics of the events capability, on a service's registry.

=================================================  ========================================
``events_published_total{type}``                   events the broker confirmed
``events_publish_failures_total{type}``            publishes the broker refused or did not
                                                   confirm in time
``events_consumed_total{source,type,outcome}``     deliveries handled; ``outcome`` is
                                                   ``success``, ``duplicate`` (an idempotent
                                                   handler had applied it), ``retried`` or
                                                   ``dead_lettered``
``events_redelivered_total{source,type}``          deliveries that were not the first
``events_dead_lettered_total{source,type}``        events given up on
``event_handler_duration_seconds{source,type}``    histogram of the time to handle a delivery
``events_handlers_in_flight``                      deliveries being handled now
``events_outbox_backlog``                          outbox events not yet published
=================================================  ========================================

``source`` is ``unknown`` (and ``type`` ``invalid``) for a message that is not a
valid envelope.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from chassis.config import DURATION_BUCKETS_SECONDS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["EventMetrics"]

OUTCOMES = ("success", "duplicate", "retried", "dead_lettered")
"""Values of the ``outcome`` label of ``events_consumed_total``."""

HANDLER_BUCKETS_SECONDS: tuple[float, ...] = (*DURATION_BUCKETS_SECONDS, 30.0, 60.0)
"""Buckets of ``event_handler_duration_seconds``: handlers may run longer than requests."""


class EventMetrics:
    """Counters, a histogram and gauges of one service's events.

    Args:
        registry: where the series are registered (a service's own registry).
        in_flight: reads the number of deliveries being handled.
        outbox_backlog: reads the number of unsent outbox events.
        buckets_seconds: buckets of the handler-duration histogram.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        in_flight: Callable[[], int],
        outbox_backlog: Callable[[], int],
        buckets_seconds: Sequence[float] = HANDLER_BUCKETS_SECONDS,
    ) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.published = Counter(
            "events_published", "Events published and confirmed by the broker.", ("type",),
            registry=registry,
        )  # fmt: skip
        self.publish_failures = Counter(
            "events_publish_failures",
            "Publishes the broker refused or did not confirm in time.",
            ("type",),
            registry=registry,
        )
        self.consumed = Counter(
            "events_consumed",
            "Event deliveries handled, by outcome: success, duplicate, retried, dead_lettered.",
            ("source", "type", "outcome"),
            registry=registry,
        )
        self.redelivered = Counter(
            "events_redelivered",
            "Deliveries of an event that were not its first (retries and broker redeliveries).",
            ("source", "type"),
            registry=registry,
        )
        self.dead_lettered = Counter(
            "events_dead_lettered",
            "Events given up on after the last attempt, or not valid envelopes.",
            ("source", "type"),
            registry=registry,
        )
        self.handler_duration = Histogram(
            "event_handler_duration_seconds",
            "Time to handle one event delivery, every handler included, in seconds.",
            ("source", "type"),
            buckets=tuple(buckets_seconds),
            registry=registry,
        )
        in_flight_gauge = Gauge(
            "events_handlers_in_flight", "Event deliveries being handled now.", registry=registry
        )
        in_flight_gauge.set_function(lambda: float(in_flight()))
        backlog_gauge = Gauge(
            "events_outbox_backlog",
            "Events committed to the outbox and not yet published.",
            registry=registry,
        )
        backlog_gauge.set_function(lambda: float(outbox_backlog()))
