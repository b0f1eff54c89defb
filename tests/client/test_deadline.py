"""Deadlines: timeout() as block and decorator, clipping, the server middleware."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import web

from chassis.client import (
    DEADLINE_HEADER,
    DeadlinePropagation,
    Timeout,
    current_deadline,
    remaining_seconds,
    timeout,
)
from chassis.client.deadline import format_deadline, parse_deadline
from chassis.exceptions import DeadlineExceeded


async def test_timeout_cancels_the_block_and_raises_deadline_exceeded() -> None:
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        async with timeout(0.05):
            await asyncio.sleep(5)
    assert time.monotonic() - start < 1.0
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.timeout_seconds == pytest.approx(0.05, abs=0.01)
    assert current_deadline() is None


async def test_an_inner_timeout_is_clipped_by_the_outer_deadline() -> None:
    async with timeout(0.2):
        outer = current_deadline()
        async with timeout(10):
            assert current_deadline() == outer
            left = remaining_seconds()
            assert left is not None and 0 < left <= 0.2
        async with timeout(0.01):
            assert current_deadline() is not None and outer is not None
            assert current_deadline() < outer  # type: ignore[operator]
        assert current_deadline() == outer


async def test_a_timeout_error_from_inside_is_not_mistaken_for_ours() -> None:
    with pytest.raises(TimeoutError) as caught:
        async with timeout(5):
            raise TimeoutError("the dependency's own")
    assert not isinstance(caught.value, DeadlineExceeded)


async def test_timeout_decorator_gives_each_call_its_own_limit() -> None:
    @timeout(0.1)
    async def work(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    results = await asyncio.gather(work(0.01), work(0.01), work(1), return_exceptions=True)
    assert results[:2] == [0.01, 0.01]
    assert isinstance(results[2], DeadlineExceeded)
    assert isinstance(work.timeout, Timeout)  # type: ignore[attr-defined]


async def test_a_timeout_object_guards_one_block_at_a_time() -> None:
    limit = Timeout(1)
    async with limit:
        with pytest.raises(RuntimeError, match="already in use"):
            async with limit:
                pass
    async with limit:  # reusable once the first block is over
        pass


def test_header_values() -> None:
    assert format_deadline(0.2999) == "299"
    assert format_deadline(0.0001) == "1"
    assert parse_deadline(" 250 ") == 0.25
    for bad in ("", "-5", "1.5", "abc", "١٢٣", "9" * 11):
        assert parse_deadline(bad) is None, bad


async def test_server_middleware_binds_the_callers_deadline(aiohttp_client: Any) -> None:
    async def handler(request: web.Request) -> web.Response:
        left = remaining_seconds()
        return web.json_response({"left": left})

    app = web.Application()
    DeadlinePropagation(max_seconds=2).setup(app)
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)

    async def left(headers: dict[str, str]) -> float | None:
        response = await client.get("/", headers=headers)
        value: float | None = (await response.json())["left"]
        return value

    value = await left({DEADLINE_HEADER: "500"})
    assert value is not None and 0.4 < value <= 0.5
    capped = await left({DEADLINE_HEADER: "60000"})
    assert capped is not None and 1.9 < capped <= 2
    assert await left({DEADLINE_HEADER: "soon"}) is None
    assert await left({}) is None
