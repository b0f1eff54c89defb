"""Retries with exponential back-off, full jitter, ``Retry-After`` and a retry budget.

:class:`Retry` runs an async function again when it fails with a transient error,
sleeping between attempts for an exponentially growing, fully jittered time
(``backoff.expo`` + ``backoff.full_jitter``: a uniformly random wait between 0 and
``base * 2**n``, capped), or for longer if the failure says so (an exception's
``retry_after``: a ``Retry-After`` header). It never sleeps past the deadline in
force (:mod:`chassis.client.deadline`): if the wait would outlast it, the last
failure is raised at once.

A :class:`RetryBudget` bounds what retries may add to the load on one upstream:
over a sliding window, retries may be at most ``ratio`` of the requests made plus
a small allowance per second. When an upstream is down every request fails, and
without a budget each would be sent ``max_attempts`` times; with one, the load
grows by ``ratio`` at most.

::

    budget = RetryBudget(ratio=0.2)

    @retry(max_attempts=3, budget=budget)
    async def fetch() -> bytes: ...

    data = await Retry(max_attempts=5).call(fetch)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import functools
import inspect
import math
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, ParamSpec, TypeVar

import backoff

from chassis.exceptions import UpstreamError

from .deadline import _deadline

__all__ = [
    "IDEMPOTENT_METHODS",
    "RETRYABLE_STATUSES",
    "Retry",
    "RetryBudget",
    "is_transient",
    "parse_retry_after",
    "retry",
]

P = ParamSpec("P")
T = TypeVar("T")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""Methods that may be sent twice (RFC 9110 §9.2.2); others need an ``Idempotency-Key``."""

RETRYABLE_STATUSES = frozenset({502, 503, 504})
"""Statuses that say "not now" rather than "no": the request may succeed if sent again."""

_BUCKETS = 10


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP date.

    ``None`` for a missing or malformed value; never negative.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit() and value.isascii():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def is_transient(exc: BaseException) -> bool:
    """The default retry condition.

    An :class:`~chassis.exceptions.UpstreamError` says itself whether it is
    ``retryable``; otherwise any ``ConnectionError`` or ``TimeoutError`` is.
    """
    if isinstance(exc, UpstreamError):
        return exc.retryable
    return isinstance(exc, ConnectionError | TimeoutError)


class RetryBudget:
    """How many retries one upstream may receive: a fraction of recent requests, plus a floor.

    Requests and retries are counted in ten buckets spanning ``window_seconds``. A
    retry is allowed while the retries in the window stay within
    ``ratio * requests + min_per_second * window_seconds``.

    Args:
        ratio: retries allowed per request (0.2: at most 20 % extra load).
        min_per_second: retries always allowed per second, so an upstream that
            receives few requests can still be retried.
        window_seconds: how far back requests and retries count.
        clock: a monotonic clock (for tests).
    """

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        window_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ratio < 0 or min_per_second < 0 or window_seconds <= 0:
            raise ValueError("ratio and min_per_second must be >= 0, window_seconds > 0")
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window_seconds = window_seconds
        self._clock = clock
        self._width = window_seconds / _BUCKETS
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._index = 0
        self._bucket_end = clock() + self._width
        self._total_requests = 0
        self._total_retries = 0
        self.exhausted = 0
        """Retries refused since the budget was made."""

    def __repr__(self) -> str:
        return (
            f"<RetryBudget ratio={self.ratio} requests={self._total_requests} "
            f"retries={self._total_retries}>"
        )

    def _roll(self) -> None:
        now = self._clock()
        if now < self._bucket_end:
            return
        steps = int((now - self._bucket_end) / self._width) + 1
        if steps >= _BUCKETS:
            self._requests = [0] * _BUCKETS
            self._retries = [0] * _BUCKETS
            self._total_requests = self._total_retries = 0
            self._bucket_end = now + self._width
            return
        for _ in range(steps):
            self._index = (self._index + 1) % _BUCKETS
            self._total_requests -= self._requests[self._index]
            self._total_retries -= self._retries[self._index]
            self._requests[self._index] = 0
            self._retries[self._index] = 0
        self._bucket_end += steps * self._width

    @property
    def allowance(self) -> float:
        """Retries the window allows in total right now (spent ones included)."""
        self._roll()
        return self.ratio * self._total_requests + self.min_per_second * self.window_seconds

    def snapshot(self) -> dict[str, float]:
        """The budget's level now: window counts, allowance and retries still available."""
        allowance = self.allowance
        return {
            "ratio": self.ratio,
            "window_seconds": self.window_seconds,
            "requests": self._total_requests,
            "retries": self._total_retries,
            "allowance": round(allowance, 3),
            "available": round(max(0.0, allowance - self._total_retries), 3),
            "exhausted": self.exhausted,
        }

    def record_request(self) -> None:
        """Count a first attempt (retries are counted by :meth:`try_spend`)."""
        if self._clock() >= self._bucket_end:
            self._roll()
        self._requests[self._index] += 1
        self._total_requests += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; ``False`` (and counted) if none is left."""
        if self._total_retries + 1 > self.allowance:
            self.exhausted += 1
            return False
        self._retries[self._index] += 1
        self._total_retries += 1
        return True


class Retry:
    """Runs an async function again on transient failures.

    Args:
        max_attempts: attempts in all, the first included (1 never retries).
        backoff_base_seconds: the first back-off step; step ``n`` is up to
            ``base * 2**n`` (full jitter), capped at ``backoff_max_seconds``.
        backoff_max_seconds: the largest step.
        retry_on: exception types to retry, or a predicate; ``is_transient``
            by default. ``asyncio.CancelledError`` is never retried.
        budget: a :class:`RetryBudget` to draw retries from (shared per upstream).

    Attributes:
        retries: retries made since the object was built.
    """

    def __init__(
        self,
        *,
        max_attempts: int = 3,
        backoff_base_seconds: float = 0.05,
        backoff_max_seconds: float = 2.0,
        retry_on: type[BaseException]
        | tuple[type[BaseException], ...]
        | Callable[[BaseException], bool] = is_transient,
        budget: RetryBudget | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, not {max_attempts}")
        if backoff_base_seconds <= 0 or backoff_max_seconds <= 0:
            raise ValueError("back-off steps must be > 0 seconds")
        self.max_attempts = max_attempts
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        if isinstance(retry_on, type | tuple):
            types = retry_on
            self._should_retry: Callable[[BaseException], bool] = lambda exc: isinstance(exc, types)
        else:
            self._should_retry = retry_on
        self.budget = budget
        self.retries = 0

    def __repr__(self) -> str:
        return f"<Retry max_attempts={self.max_attempts}>"

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)``, again after each transient failure.

        Raises:
            Exception: the last failure, once attempts, the budget or the deadline
                allow no other try.
        """
        budget = self.budget
        if budget is not None:
            budget.record_request()
        attempt = 1
        waits: Generator[float, Any, None] | None = None
        while True:
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                if attempt >= self.max_attempts or not self._should_retry(exc):
                    raise
                if waits is None:
                    waits = backoff.expo(factor=self.backoff_base_seconds)
                    next(waits)  # backoff's generators start with a bare yield
                step = min(next(waits), self.backoff_max_seconds)
                delay = backoff.full_jitter(step)
                asked = getattr(exc, "retry_after", None)
                if isinstance(asked, int | float) and math.isfinite(asked) and asked > delay:
                    delay = float(asked)
                deadline = _deadline.get()
                if deadline is not None and time.monotonic() + delay >= deadline:
                    raise
                if budget is not None and not budget.try_spend():
                    raise
                self.retries += 1
            await asyncio.sleep(delay)
            attempt += 1

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate an async function with this policy (and budget)."""
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"retry() decorates async functions, not {fn!r}")

        @functools.wraps(fn)
        async def retried(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.call(fn, *args, **kwargs)

        retried.retry = self  # type: ignore[attr-defined]
        return retried


def retry(
    *,
    max_attempts: int = 3,
    backoff_base_seconds: float = 0.05,
    backoff_max_seconds: float = 2.0,
    retry_on: type[BaseException]
    | tuple[type[BaseException], ...]
    | Callable[[BaseException], bool] = is_transient,
    budget: RetryBudget | None = None,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorator: a :class:`Retry` with these arguments around an async function."""
    return Retry(
        max_attempts=max_attempts,
        backoff_base_seconds=backoff_base_seconds,
        backoff_max_seconds=backoff_max_seconds,
        retry_on=retry_on,
        budget=budget,
    )
