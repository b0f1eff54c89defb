"""Retry and RetryBudget on their own, as objects and as decorators."""

from __future__ import annotations

import asyncio
import time

import pytest

from chassis.client import Retry, RetryBudget, retry, timeout
from chassis.client.retries import is_transient, parse_retry_after
from chassis.exceptions import CircuitOpen, UpstreamStatusError, UpstreamUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Flaky:
    """Fails ``failures`` times with ``error``, then answers."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self, value: str = "ok") -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return value


async def test_retry_decorator_retries_transient_failures() -> None:
    flaky = Flaky(2, ConnectionResetError("reset"))

    @retry(max_attempts=3, backoff_base_seconds=0.001)
    async def fetch(value: str) -> str:
        return await flaky(value)

    assert await fetch("quote") == "quote"
    assert flaky.calls == 3
    assert fetch.retry.retries == 2  # type: ignore[attr-defined]


async def test_retry_gives_up_after_max_attempts_with_the_last_failure() -> None:
    flaky = Flaky(5, TimeoutError("slow"))
    with pytest.raises(TimeoutError, match="slow"):
        await Retry(max_attempts=3, backoff_base_seconds=0.001).call(flaky)
    assert flaky.calls == 3


async def test_retry_leaves_other_errors_alone() -> None:
    flaky = Flaky(1, ValueError("bug"))
    with pytest.raises(ValueError, match="bug"):
        await Retry(max_attempts=3, backoff_base_seconds=0.001).call(flaky)
    assert flaky.calls == 1


async def test_retry_on_accepts_types_and_predicates() -> None:
    flaky = Flaky(1, KeyError("x"))
    assert await Retry(retry_on=KeyError, backoff_base_seconds=0.001).call(flaky) == "ok"
    flaky = Flaky(1, KeyError("x"))
    retried = Retry(retry_on=lambda exc: isinstance(exc, LookupError), backoff_base_seconds=0.001)
    assert await retried.call(flaky) == "ok"


def test_upstream_errors_say_whether_they_are_transient() -> None:
    assert is_transient(UpstreamUnavailable("down", retryable=True))
    assert not is_transient(UpstreamUnavailable("no instances"))
    assert not is_transient(CircuitOpen("open"))
    assert is_transient(UpstreamStatusError("503", status=503, retryable=True))


async def test_retry_honours_retry_after_on_the_exception() -> None:
    flaky = Flaky(1, UpstreamStatusError("busy", status=503, retryable=True, retry_after=0.2))
    start = time.monotonic()
    await Retry(backoff_base_seconds=0.001).call(flaky)
    assert time.monotonic() - start >= 0.19


async def test_retry_never_sleeps_past_the_deadline() -> None:
    flaky = Flaky(1, UpstreamStatusError("busy", status=503, retryable=True, retry_after=5))
    start = time.monotonic()
    with pytest.raises(UpstreamStatusError):
        async with timeout(1.0):
            await Retry(backoff_base_seconds=0.001).call(flaky)
    assert time.monotonic() - start < 0.5
    assert flaky.calls == 1


async def test_cancellation_is_never_retried() -> None:
    started = asyncio.Event()
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(Retry(retry_on=BaseException).call(slow))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 1


def test_backoff_grows_with_full_jitter_up_to_the_cap() -> None:
    import backoff

    waits = backoff.expo(factor=0.05)
    next(waits)
    steps = [min(next(waits), 0.3) for _ in range(6)]
    assert steps == [0.05, 0.1, 0.2, 0.3, 0.3, 0.3]
    assert all(0 <= backoff.full_jitter(s) <= s for s in steps)


def test_retry_budget_allows_a_ratio_of_requests_plus_a_floor() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.1, min_per_second=0.5, window_seconds=10, clock=clock)
    for _ in range(100):
        budget.record_request()
    allowed = sum(budget.try_spend() for _ in range(100))
    assert allowed == 15  # 0.1 * 100 + 0.5 * 10
    assert budget.exhausted == 85


def test_retry_budget_forgets_requests_that_left_the_window() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.5, min_per_second=0, window_seconds=10, clock=clock)
    for _ in range(10):
        budget.record_request()
    assert sum(budget.try_spend() for _ in range(10)) == 5
    clock.now += 5
    assert not budget.try_spend()  # the first requests are still in the window
    clock.now += 6
    assert not budget.try_spend()  # they left it, and so did their retries: nothing to spend
    for _ in range(4):
        budget.record_request()
    assert sum(budget.try_spend() for _ in range(4)) == 2


async def test_retry_draws_from_a_shared_budget() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.2, window_seconds=10)  # two retries
    policy = Retry(max_attempts=5, backoff_base_seconds=0.001, budget=budget)
    flaky = Flaky(100, ConnectionResetError("down"))
    for _ in range(3):
        with pytest.raises(ConnectionResetError):
            await policy.call(flaky)
    assert flaky.calls == 3 + 2  # three first attempts, two retries
    assert budget.exhausted == 3  # the third retry of the first call, then one per call


def test_retry_after_parses_seconds_and_dates() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-1") is None
    assert parse_retry_after(None) is None


def test_retry_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        Retry(max_attempts=0)
    with pytest.raises(TypeError, match="async"):
        retry()(lambda: None)  # type: ignore[arg-type,return-value]
