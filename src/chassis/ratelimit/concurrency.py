"""The :class:`ConcurrencyLimiter`: a bounded number of calls at once, with a bounded queue."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from chassis._slots import Slots
from chassis.exceptions import Overloaded
from chassis.ratelimit.buckets import Clock

__all__ = ["ConcurrencyLimiter"]

P = ParamSpec("P")
R = TypeVar("R")


class ConcurrencyLimiter:
    """Admits ``max_in_flight`` calls at once; up to ``queue`` more wait, first come first served.

    Use it as ``async with limiter:`` or as a decorator (``@limiter``). A call that
    finds the queue full, or waits longer than ``queue_timeout_seconds``, raises
    :class:`~chassis.exceptions.Overloaded` (reason ``queue_full`` or
    ``queue_timeout``).

    Args:
        max_in_flight: calls admitted at once.
        queue: calls that may wait for a slot; 0 refuses at once when full.
        queue_timeout_seconds: the longest wait in the queue.
        retry_after_seconds: ``Retry-After`` of the refusal.
        clock: monotonic seconds, to measure waits (the timeout runs on the event loop).
    """

    def __init__(
        self,
        max_in_flight: int,
        *,
        queue: int = 0,
        queue_timeout_seconds: float = 1.0,
        retry_after_seconds: float = 1.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight!r}")
        if queue < 0:
            raise ValueError(f"queue must not be negative, got {queue!r}")
        if not queue_timeout_seconds > 0:
            raise ValueError(
                f"queue_timeout_seconds must be positive, got {queue_timeout_seconds!r}"
            )
        self.max_in_flight = max_in_flight
        self.queue = queue
        self.queue_timeout_seconds = queue_timeout_seconds
        self.retry_after_seconds = retry_after_seconds
        self._clock = clock
        self._slots = Slots(max_in_flight)

    def __repr__(self) -> str:
        return (
            f"<ConcurrencyLimiter {self.in_flight}/{self.max_in_flight} in flight, "
            f"{self.waiting}/{self.queue} waiting>"
        )

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self._slots.held

    @property
    def waiting(self) -> int:
        """Calls waiting in the queue now."""
        return self._slots.waiting

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits for it."""
        return self._slots.try_acquire()

    async def acquire(self) -> float:
        """Take a slot, waiting in the queue if allowed; returns the seconds waited.

        Raises:
            Overloaded: the queue is full, or the wait timed out.
        """
        if self.try_acquire():
            return 0.0
        if self._slots.waiting >= self.queue:
            raise self._refusal("queue_full", "too many calls in flight")
        start = self._clock()
        try:
            await self._slots.wait(self.queue_timeout_seconds)
        except TimeoutError:
            raise self._refusal(
                "queue_timeout", f"no slot free within {self.queue_timeout_seconds:g}s"
            ) from None
        return self._clock() - start

    def release(self) -> None:
        """Give a slot back: to the first waiter if any, else to the pool."""
        self._slots.release()

    def _refusal(self, reason: str, detail: str) -> Overloaded:
        return Overloaded(detail, reason=reason, retry_after=self.retry_after_seconds)

    async def __aenter__(self) -> ConcurrencyLimiter:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        """Decorate an ``async def`` so each call holds a slot; the wrapper has ``.limiter``."""
        _require_coroutine_function(fn, "concurrency_limited")

        @functools.wraps(fn)
        async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
            await self.acquire()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.release()

        limited.__dict__["limiter"] = self
        return limited


def _require_coroutine_function(fn: Callable[..., Any], decorator: str) -> None:
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(
            f"@{decorator} needs an async def function, got {getattr(fn, '__qualname__', fn)!r}"
        )
