"""Bulkhead on its own: limits, queue, deadline-bounded waits, decorator."""

from __future__ import annotations

import asyncio

import pytest

from chassis.client import Bulkhead, bulkhead, timeout
from chassis.exceptions import BulkheadFull, DeadlineExceeded


async def test_bulkhead_admits_up_to_its_limit_and_rejects_the_rest() -> None:
    gate = asyncio.Event()
    guard = Bulkhead(2, name="ledger")

    async def hold() -> None:
        async with guard:
            await gate.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0)
    assert guard.active == 2
    with pytest.raises(BulkheadFull) as caught:
        await guard.call(asyncio.sleep, 0)
    assert caught.value.service == "ledger"
    assert guard.rejected == 1
    gate.set()
    await asyncio.gather(*holders)
    assert guard.active == 0


async def test_waiters_get_slots_first_come_first_served() -> None:
    order: list[int] = []
    guard = Bulkhead(1, max_queue=3)

    @guard
    async def work(i: int) -> None:
        order.append(i)
        await asyncio.sleep(0.01)

    await asyncio.gather(*(work(i) for i in range(4)))
    assert order == [0, 1, 2, 3]
    assert guard.active == 0
    assert guard.waiting == 0


async def test_a_wait_for_a_slot_is_bounded() -> None:
    guard = Bulkhead(1, max_queue=1, max_wait_seconds=0.05)
    gate = asyncio.Event()

    async def hold() -> None:
        async with guard:
            await gate.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFull, match="no slot within"):
        await guard.acquire()
    # Inside a deadline, the wait ends with it (whichever of the two fires first).
    guard.max_wait_seconds = None
    with pytest.raises((BulkheadFull, DeadlineExceeded)):
        async with timeout(0.05):
            await guard.acquire()
    assert guard.waiting == 0
    gate.set()
    await holder
    assert guard.active == 0


async def test_a_cancelled_waiter_passes_its_slot_on() -> None:
    guard = Bulkhead(1, max_queue=2)
    gate = asyncio.Event()
    done: list[str] = []

    async def hold() -> None:
        async with guard:
            await gate.wait()

    async def wait(name: str) -> None:
        async with guard:
            done.append(name)

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    first = asyncio.create_task(wait("first"))
    second = asyncio.create_task(wait("second"))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    await asyncio.gather(holder, second)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert done == ["second"]
    assert guard.active == 0


async def test_bulkhead_decorator_exposes_its_object() -> None:
    @bulkhead(1)
    async def one() -> int:
        return 1

    assert await one() == 1
    assert one.bulkhead.max_concurrency == 1  # type: ignore[attr-defined]
