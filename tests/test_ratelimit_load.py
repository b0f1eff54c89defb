"""chassis.ratelimit under bounded overload on real sockets, in real time.

Every loop is bounded in count and in time, and the bounds are generous: these run
on busy two-core machines next to other test suites. Exact counts are checked with
an injected clock in ``test_ratelimit.py``; here the clock is real.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from chassis.config import RateLimitSettings
from chassis.http import RequestPipeline
from chassis.ratelimit import RateLimiter

ClientFactory = Callable[[web.Application], Awaitable[Any]]


def app_with(
    limiter: RateLimiter, handler: Callable[[web.Request], Awaitable[web.Response]]
) -> web.Application:
    app = web.Application()
    limiter.setup(app)
    RequestPipeline().setup(app)
    app.router.add_get("/work", handler)
    return app


async def ok(request: web.Request) -> web.Response:
    return web.json_response({})


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


async def test_admitted_rate_at_ten_times_the_limit_tracks_the_limit_in_real_time(
    aiohttp_client: ClientFactory,
) -> None:
    rate, seconds = 20.0, 3.0
    burst = int(rate)  # absorbs a stalled second on a busy machine without losing tokens
    limiter = RateLimiter(
        RateLimitSettings(enabled=True, rate_per_second=rate, burst=burst, key="global")
    )
    client = await aiohttp_client(app_with(limiter, ok))
    send_rate = 10 * rate
    total = int(send_rate * seconds)
    statuses: list[int] = []
    in_flight = asyncio.Semaphore(32)

    async def one() -> None:
        async with in_flight:
            response = await client.get("/work")
            statuses.append(response.status)
            response.release()

    start = time.monotonic()
    tasks = []
    for i in range(total):  # open loop: paced sends, whatever the answers
        delay = start + i / send_rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    elapsed = time.monotonic() - start
    admitted = statuses.count(200)
    assert admitted + statuses.count(429) == total
    allowed = burst + rate * elapsed
    # The limiter can never admit more than its budget for the time that passed...
    assert admitted <= allowed + 1, (admitted, allowed)
    # ...and, offered ten times its rate, it admits close to all of it (wide bound).
    assert admitted >= 0.6 * allowed, (admitted, allowed)


async def test_critical_requests_keep_99_percent_success_while_sheddable_are_shed(
    aiohttp_client: ClientFactory,
) -> None:
    async def work(request: web.Request) -> web.Response:
        await asyncio.sleep(0.02)
        return web.json_response({})

    settings = RateLimitSettings(
        enabled=True, max_in_flight=8, sheddable_share=0.5, normal_share=0.8
    )
    client = await aiohttp_client(app_with(RateLimiter(settings), work))
    deadline = time.monotonic() + 2.5
    results: dict[str, list[int]] = {"critical": [], "sheddable": []}

    async def worker(priority: str, max_requests: int) -> None:
        for _ in range(max_requests):
            if time.monotonic() > deadline:
                return
            response = await client.get("/work", headers={"X-Priority": priority})
            results[priority].append(response.status)
            response.release()
            if response.status != 200:
                await asyncio.sleep(0.005)

    await asyncio.wait_for(
        asyncio.gather(
            *(worker("sheddable", 400) for _ in range(24)),
            *(worker("critical", 400) for _ in range(3)),
        ),
        60,
    )
    critical, sheddable = results["critical"], results["sheddable"]
    assert len(critical) >= 20, "too few critical requests to judge"
    assert critical.count(200) / len(critical) >= 0.99, critical
    assert sheddable.count(503) > 0  # the service was saturated and shed
    assert sheddable.count(200) > 0  # while still serving sheddable work it had room for
    assert set(sheddable) <= {200, 503}


async def test_admitted_requests_p99_stays_bounded_while_overloaded(
    aiohttp_client: ClientFactory,
) -> None:
    # A dependency that serves two requests at a time, 100 ms each. Without the
    # limiter, 48 clients would queue on it for about 48 / 2 x 100 ms = 2.4 s each.
    dependency = asyncio.Semaphore(2)

    async def work(request: web.Request) -> web.Response:
        async with dependency:
            await asyncio.sleep(0.1)
        return web.json_response({})

    settings = RateLimitSettings(enabled=True, max_in_flight=2, normal_share=1.0)
    client = await aiohttp_client(app_with(RateLimiter(settings), work))
    deadline = time.monotonic() + 4.0
    admitted: list[float] = []
    shed = 0

    async def worker() -> None:
        nonlocal shed
        for _ in range(200):
            if time.monotonic() > deadline:
                return
            start = time.monotonic()
            response = await client.get("/work")
            response.release()
            if response.status == 200:
                admitted.append(time.monotonic() - start)
            else:
                assert response.status == 503
                shed += 1
                await asyncio.sleep(0.1)

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(48))), 60)
    assert len(admitted) >= 10, "too few admitted requests to judge"
    assert shed > len(admitted)  # it really was overloaded
    assert p99(admitted) < 1.0, sorted(admitted)[-5:]
