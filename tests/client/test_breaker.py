"""CircuitBreaker on its own: states, fail-fast, half-open probe, verdicts, decorator."""

from __future__ import annotations

import asyncio

import pytest

from chassis.client import CircuitBreaker, CircuitState, circuit_breaker
from chassis.exceptions import CircuitOpen


class Dependency:
    def __init__(self) -> None:
        self.calls = 0
        self.failing = True

    async def __call__(self) -> str:
        self.calls += 1
        if self.failing:
            raise ConnectionError("down")
        return "ok"


async def test_breaker_opens_after_the_threshold_and_fails_fast() -> None:
    dependency = Dependency()
    breaker = CircuitBreaker("db", failure_threshold=3, recovery_seconds=60)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            await breaker.call(dependency)
    assert breaker.state == "open"
    assert not breaker.allows_request
    with pytest.raises(CircuitOpen) as caught:
        await breaker.call(dependency)
    assert dependency.calls == 3
    assert caught.value.service == "db"
    assert caught.value.retry_after is not None and caught.value.retry_after > 59


async def test_success_resets_the_consecutive_failure_count() -> None:
    dependency = Dependency()
    breaker = CircuitBreaker("db", failure_threshold=2)
    with pytest.raises(ConnectionError):
        await breaker.call(dependency)
    dependency.failing = False
    await breaker.call(dependency)
    dependency.failing = True
    with pytest.raises(ConnectionError):
        await breaker.call(dependency)
    assert breaker.state == "closed"
    assert breaker.failure_count == 1


async def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    changes: list[CircuitState] = []
    breaker = CircuitBreaker(
        "db",
        failure_threshold=1,
        recovery_seconds=0.1,
        on_state_change=lambda b, state: changes.append(state),
    )
    with pytest.raises(ConnectionError):
        await breaker.call(Dependency())
    await asyncio.sleep(0.15)
    assert breaker.allows_request

    release = asyncio.Event()

    async def probe() -> str:
        await release.wait()
        return "ok"

    task = asyncio.create_task(breaker.call(probe))
    await asyncio.sleep(0.01)
    assert breaker.state == "half_open"
    with pytest.raises(CircuitOpen, match="probe"):
        await breaker.call(probe)
    release.set()
    assert await task == "ok"
    assert breaker.state == "closed"
    assert changes == ["open", "half_open", "closed"]


async def test_a_cancelled_probe_frees_the_probe_slot_without_a_verdict() -> None:
    breaker = CircuitBreaker("db", failure_threshold=1, recovery_seconds=0.05)
    with pytest.raises(ConnectionError):
        await breaker.call(Dependency())
    await asyncio.sleep(0.1)
    task = asyncio.create_task(breaker.call(asyncio.sleep, 10))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state == "half_open"
    assert breaker.allows_request
    dependency = Dependency()
    dependency.failing = False
    assert await breaker.call(dependency) == "ok"
    assert breaker.state == "closed"


async def test_verdicts_decide_what_counts() -> None:
    def verdict(exc: BaseException) -> bool | None:
        if isinstance(exc, KeyError):
            return False  # an answer, not a failure
        if isinstance(exc, TimeoutError):
            return None  # says nothing about the dependency
        return True

    breaker = CircuitBreaker("db", failure_threshold=1, is_failure=verdict)

    async def fail(exc: Exception) -> None:
        raise exc

    for exc in (KeyError("k"), TimeoutError()):
        with pytest.raises(type(exc)):
            await breaker.call(fail, exc)
    assert breaker.state == "closed"
    with pytest.raises(ConnectionError):
        await breaker.call(fail, ConnectionError())
    assert breaker.state == "open"


async def test_decorated_functions_share_the_breaker() -> None:
    dependency = Dependency()

    @circuit_breaker("ledger", failure_threshold=2, recovery_seconds=60)
    async def read() -> str:
        return await dependency()

    shared: CircuitBreaker = read.circuit_breaker  # type: ignore[attr-defined]

    @shared
    async def write() -> str:
        return await dependency()

    for fn in (read, write):
        with pytest.raises(ConnectionError):
            await fn()
    with pytest.raises(CircuitOpen):
        await write()
    assert dependency.calls == 2


async def test_async_with_guards_a_block() -> None:
    breaker = CircuitBreaker("db", failure_threshold=1, recovery_seconds=60)
    with pytest.raises(ConnectionError):
        async with breaker:
            raise ConnectionError("down")
    with pytest.raises(CircuitOpen):
        async with breaker:
            pytest.fail("an open circuit runs nothing")
