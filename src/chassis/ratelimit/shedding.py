"""Request priorities and the :class:`PriorityShedder` that sheds by them."""

from __future__ import annotations

import enum
import math
from typing import Protocol

__all__ = ["LagSource", "Priority", "PriorityShedder"]


class Priority(enum.IntEnum):
    """How much a request matters when the service must shed load (higher sheds first)."""

    CRITICAL = 0
    NORMAL = 1
    SHEDDABLE = 2

    @property
    def label(self) -> str:
        """``critical``, ``normal`` or ``sheddable``: the header value and metric label."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | None) -> Priority | None:
        """The priority named ``value`` (any case), or None for anything else."""
        if not value:
            return None
        return _BY_LABEL.get(value.strip().lower())


_BY_LABEL = {p.label: p for p in Priority}


class LagSource(Protocol):
    """Anything that reports the event loop's lag, e.g. :class:`~chassis.health.LoopLagMonitor`."""

    def current_lag_seconds(self) -> float:
        """The current lag, in seconds."""


class PriorityShedder:
    """Decides which requests to shed while the service is saturated.

    * sheddable requests are shed once ``sheddable_share`` x ``max_in_flight``
      requests are in flight, or the event-loop lag reaches
      ``max_event_loop_lag_seconds``;
    * normal requests once ``normal_share`` x ``max_in_flight`` are in flight, or
      the lag reaches twice that;
    * critical requests never: only the concurrency limit itself bounds them.

    A share of 1 leaves that priority to the concurrency limit (and its queue).

    Args:
        max_in_flight: the service's concurrency limit; none sheds by lag only.
        sheddable_share, normal_share: fractions of ``max_in_flight``.
        lag_monitor: reports the event-loop lag; none sheds by in-flight only.
        max_event_loop_lag_seconds: the lag at which sheddable requests are shed.
    """

    def __init__(
        self,
        *,
        max_in_flight: int | None = None,
        sheddable_share: float = 0.5,
        normal_share: float = 0.8,
        lag_monitor: LagSource | None = None,
        max_event_loop_lag_seconds: float = 0.25,
    ) -> None:
        for name, share in (("sheddable_share", sheddable_share), ("normal_share", normal_share)):
            if not 0 < share <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {share!r}")
        self.max_in_flight = max_in_flight
        self.lag_monitor = lag_monitor
        self.max_event_loop_lag_seconds = max_event_loop_lag_seconds
        self._limits: dict[Priority, int | None] = {Priority.CRITICAL: None}
        for priority, share in (
            (Priority.SHEDDABLE, sheddable_share),
            (Priority.NORMAL, normal_share),
        ):
            limit = None
            if max_in_flight is not None and share < 1:
                limit = max(1, int(share * max_in_flight))
            self._limits[priority] = limit
        self._lag_limits = {
            Priority.CRITICAL: math.inf,
            Priority.NORMAL: 2 * max_event_loop_lag_seconds,
            Priority.SHEDDABLE: max_event_loop_lag_seconds,
        }

    def __repr__(self) -> str:
        return f"<PriorityShedder max_in_flight={self.max_in_flight} limits={self._limits}>"

    def shed_reason(self, priority: Priority, in_flight: int) -> str | None:
        """Why a ``priority`` request should be shed with ``in_flight`` others running, or None.

        The reasons are ``in_flight`` and ``event_loop_lag``.
        """
        limit = self._limits[priority]
        if limit is not None and in_flight >= limit:
            return "in_flight"
        monitor = self.lag_monitor
        if monitor is not None and monitor.current_lag_seconds() >= self._lag_limits[priority]:
            return "event_loop_lag"
        return None
