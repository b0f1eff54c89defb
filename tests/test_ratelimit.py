"""chassis.ratelimit: buckets, key table, concurrency, shedding, decorators, middleware."""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from chassis import Service
from chassis.config import RateLimitSettings, load_settings
from chassis.exceptions import ConfigError, Overloaded, RateLimited, ServiceUnavailable
from chassis.health import Health
from chassis.http import PROBLEM_CONTENT_TYPE, RequestPipeline
from chassis.ratelimit import (
    RATELIMIT_KEY,
    ConcurrencyLimiter,
    Decision,
    KeyedLimiter,
    Priority,
    PriorityShedder,
    RateLimiter,
    TokenBucket,
    concurrency_limited,
    rate_limited,
    request_key,
)

ClientFactory = Callable[[web.Application], Awaitable[Any]]


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeLag:
    """A lag source reporting whatever the test sets."""

    def __init__(self) -> None:
        self.lag = 0.0

    def current_lag_seconds(self) -> float:
        return self.lag


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def limited_app(limiter: RateLimiter, **routes: Any) -> web.Application:
    """A bare app in the chassis' order: pipeline (problem JSON) outside the limiter."""
    app = web.Application()
    limiter.setup(app)
    RequestPipeline().setup(app)
    Health().setup(app)
    app.router.add_get("/ok", ok)
    for path, handler in routes.items():
        app.router.add_get("/" + path, handler)
    return app


def service_limiter(service: Service) -> RateLimiter:
    """The service's rate limiter: ``service.ratelimit`` once the Service builds one,
    else a new one installed here (outermost, which only makes exemptions stricter)."""
    existing = getattr(service, "ratelimit", None)
    if isinstance(existing, RateLimiter):
        return existing
    limiter = RateLimiter(
        service_name=service.name,
        registry=service.metrics.registry,
        lag_monitor=service.health.lag,
    )
    service.install(limiter)
    return limiter


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# -- TokenBucket -------------------------------------------------------------------------
def test_token_bucket_admits_a_burst_then_refills_at_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, burst=3, clock=clock)
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.1)  # one token
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    clock.advance(60)  # refills to the burst, no further
    assert sum(bucket.try_acquire() for _ in range(10)) == 3


def test_token_bucket_decision_carries_remaining_reset_and_retry_after() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2, burst=4, clock=clock)
    first = bucket.decide()
    assert first == Decision(True, 4, 3, 0.5, 0.0)
    for _ in range(3):
        bucket.decide()
    refused = bucket.decide()
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.retry_after_seconds == pytest.approx(0.5)
    assert refused.reset_seconds == pytest.approx(2.0)
    assert refused.headers() == {
        "RateLimit-Limit": "4",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "2",
        "Retry-After": "1",
    }
    error = refused.refusal()
    assert isinstance(error, RateLimited)
    assert error.status == 429
    assert error.retry_after == pytest.approx(0.5)
    assert error.headers["Retry-After"] == "1"


def test_token_bucket_burst_defaults_to_the_rate_rounded_up() -> None:
    assert TokenBucket(2.5).burst == 3
    assert TokenBucket(0.2).burst == 1


@pytest.mark.parametrize(("rate", "burst"), [(0, None), (-1, None), (float("inf"), None), (1, 0)])
def test_token_bucket_rejects_impossible_limits(rate: float, burst: int | None) -> None:
    with pytest.raises(ValueError, match=r"rate|burst"):
        TokenBucket(rate, burst)


def test_a_cost_larger_than_the_bucket_is_refused_loudly() -> None:
    with pytest.raises(ValueError, match="exceeds the bucket size"):
        TokenBucket(1, burst=2).decide(cost=3)


# -- KeyedLimiter ------------------------------------------------------------------------
def test_keyed_limiter_keeps_one_bucket_per_key() -> None:
    clock = FakeClock()
    limiter = KeyedLimiter(1, burst=2, clock=clock)
    assert [limiter.try_acquire("a") for _ in range(3)] == [True, True, False]
    assert limiter.try_acquire("b")
    assert len(limiter) == 2
    assert "a" in limiter


def test_take_answers_the_balance_and_refuses_without_taking() -> None:
    clock = FakeClock()
    limiter = KeyedLimiter(2, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [2.0, 1.0, 0.0]
    assert limiter.take("a", cost=2) == -2.0  # refused: two tokens short, none taken
    clock.advance(0.5)  # one token back
    assert limiter.take("a") == 0.0
    refused = Decision.from_balance(limiter.take("a"), 2, 3, 1)
    assert refused == Decision(False, 3, 0, 1.5, 0.5)
    assert Decision.from_balance(1.5, 2, 3, 1) == Decision(True, 3, 1, 0.75, 0.0)


def test_random_key_flood_keeps_the_key_table_at_its_bound() -> None:
    limiter = KeyedLimiter(5, burst=5, max_keys=100, clock=FakeClock())
    rng = random.Random(5)
    for i in range(20_000):
        assert limiter.try_acquire(rng.getrandbits(64))
        assert len(limiter) == min(i + 1, 100)
    assert len(limiter) == 100


def test_the_least_recently_used_key_is_evicted_first() -> None:
    limiter = KeyedLimiter(1, burst=1, max_keys=2, clock=FakeClock())
    limiter.try_acquire("old")
    limiter.try_acquire("busy")
    limiter.try_acquire("old")  # touched: "busy" is now the least recent
    limiter.try_acquire("new")
    assert "old" in limiter
    assert "busy" not in limiter
    assert not limiter.try_acquire("old")  # kept its state: still empty


def test_long_header_keys_are_digested_to_a_bounded_size() -> None:
    key = request_key("header:X-Api-Key")
    request = _FakeRequest(headers={"X-Api-Key": "k" * 10_000})
    assert len(key(request)) < 64  # type: ignore[arg-type]
    assert key(_FakeRequest(headers={"X-Api-Key": "abc"})) == "h:abc"  # type: ignore[arg-type]
    assert key(_FakeRequest(headers={})) == "c:127.0.0.9"  # type: ignore[arg-type]
    assert request_key("global")(request) == "*"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown rate-limit key"):
        request_key("header:")


class _FakeRequest:
    """Just what a key function reads: headers and the peer address."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self.remote = "127.0.0.9"


# -- PriorityShedder ---------------------------------------------------------------------
def test_shedder_sheds_sheddable_first_then_normal_and_never_critical_by_in_flight() -> None:
    shedder = PriorityShedder(max_in_flight=10, sheddable_share=0.5, normal_share=0.8)
    admitted = {
        p: max((n for n in range(20) if shedder.shed_reason(p, n) is None), default=-1) + 1
        for p in Priority
    }
    assert admitted == {Priority.SHEDDABLE: 5, Priority.NORMAL: 8, Priority.CRITICAL: 20}
    assert shedder.shed_reason(Priority.SHEDDABLE, 5) == "in_flight"


def test_shedder_sheds_by_event_loop_lag_sheddable_first() -> None:
    lag = FakeLag()
    shedder = PriorityShedder(lag_monitor=lag, max_event_loop_lag_seconds=0.1)
    lag.lag = 0.15
    assert shedder.shed_reason(Priority.SHEDDABLE, 0) == "event_loop_lag"
    assert shedder.shed_reason(Priority.NORMAL, 0) is None
    lag.lag = 0.25
    assert shedder.shed_reason(Priority.NORMAL, 0) == "event_loop_lag"
    lag.lag = 100.0
    assert shedder.shed_reason(Priority.CRITICAL, 1_000) is None


def test_a_share_of_one_leaves_that_priority_to_the_concurrency_limit() -> None:
    shedder = PriorityShedder(max_in_flight=4, sheddable_share=1.0, normal_share=1.0)
    assert shedder.shed_reason(Priority.SHEDDABLE, 100) is None


def test_priority_names_parse_in_any_case() -> None:
    assert Priority.parse(" Critical ") is Priority.CRITICAL
    assert Priority.parse("sheddable") is Priority.SHEDDABLE
    assert Priority.parse("urgent") is None
    assert Priority.parse(None) is None


# -- ConcurrencyLimiter ------------------------------------------------------------------
async def test_concurrency_limiter_refuses_when_full_and_no_queue() -> None:
    limiter = ConcurrencyLimiter(2)
    async with limiter, limiter:
        assert limiter.in_flight == 2
        with pytest.raises(Overloaded) as caught:
            await limiter.acquire()
        assert caught.value.reason == "queue_full"
        assert caught.value.headers["Retry-After"] == "1"
    assert limiter.in_flight == 0


async def test_queued_calls_get_slots_in_arrival_order() -> None:
    limiter = ConcurrencyLimiter(1, queue=3, queue_timeout_seconds=30)
    order: list[int] = []
    await limiter.acquire()

    async def call(i: int) -> None:
        async with limiter:
            order.append(i)

    tasks = [asyncio.create_task(call(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert limiter.waiting == 3
    limiter.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert (limiter.in_flight, limiter.waiting) == (0, 0)


async def test_a_queued_call_that_waits_too_long_is_shed() -> None:
    limiter = ConcurrencyLimiter(1, queue=1, queue_timeout_seconds=0.05)
    await limiter.acquire()
    with pytest.raises(Overloaded) as caught:
        await limiter.acquire()
    assert caught.value.reason == "queue_timeout"
    assert limiter.waiting == 0
    limiter.release()
    assert limiter.in_flight == 0


async def test_a_cancelled_waiter_leaves_the_queue_without_leaking_a_slot() -> None:
    limiter = ConcurrencyLimiter(1, queue=1, queue_timeout_seconds=30)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    assert limiter.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.waiting == 0
    limiter.release()
    assert limiter.in_flight == 0
    assert limiter.try_acquire()


async def test_queue_wait_is_measured_with_the_injected_clock() -> None:
    clock = FakeClock()
    limiter = ConcurrencyLimiter(1, queue=1, queue_timeout_seconds=30, clock=clock)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    clock.advance(0.75)
    limiter.release()
    assert await waiter == pytest.approx(0.75)


def test_concurrency_limiter_rejects_impossible_limits() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        ConcurrencyLimiter(0)
    with pytest.raises(ValueError, match="queue"):
        ConcurrencyLimiter(1, queue=-1)


# -- decorators --------------------------------------------------------------------------
async def test_rate_limited_async_function_raises_rate_limited_with_retry_after() -> None:
    clock = FakeClock()
    calls: list[str] = []

    @rate_limited(rate=1, burst=2, clock=clock)
    async def fetch(symbol: str) -> str:
        calls.append(symbol)
        return symbol

    assert inspect.iscoroutinefunction(fetch)
    assert isinstance(fetch.limiter, TokenBucket)  # type: ignore[attr-defined]
    assert [await fetch("A"), await fetch("B")] == ["A", "B"]
    with pytest.raises(RateLimited) as caught:
        await fetch("C")
    assert caught.value.retry_after == pytest.approx(1.0)
    assert calls == ["A", "B"]
    clock.advance(1)
    assert await fetch("D") == "D"


async def test_rate_limited_with_a_key_function_limits_each_key_apart() -> None:
    @rate_limited(rate=1, burst=1, key=lambda user, *_: user, clock=FakeClock())
    async def act(user: str, amount: int) -> int:
        return amount

    assert await act("ann", 1) == 1
    assert await act("bob", 2) == 2
    with pytest.raises(RateLimited):
        await act("ann", 3)
    assert isinstance(act.limiter, KeyedLimiter)  # type: ignore[attr-defined]


async def test_decorators_share_a_given_object() -> None:
    shared = ConcurrencyLimiter(1)

    @concurrency_limited(limiter=shared)
    async def one() -> None:
        await asyncio.sleep(0.05)

    @concurrency_limited(limiter=shared)
    async def two() -> None:
        return None

    task = asyncio.create_task(one())
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        await two()
    await task
    await two()
    assert two.limiter is shared  # type: ignore[attr-defined]


async def test_concurrency_limited_queues_then_sheds() -> None:
    gate = asyncio.Event()

    @concurrency_limited(1, queue=1, queue_timeout_seconds=30)
    async def work(i: int) -> int:
        await gate.wait()
        return i

    first = asyncio.create_task(work(1))
    second = asyncio.create_task(work(2))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as caught:
        await work(3)
    assert caught.value.reason == "queue_full"
    gate.set()
    assert await asyncio.gather(first, second) == [1, 2]


def test_decorators_refuse_sync_functions_and_ambiguous_arguments() -> None:
    def sync() -> None:
        return None

    with pytest.raises(TypeError, match="async def"):
        rate_limited(rate=1)(sync)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async def"):
        concurrency_limited(1)(sync)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="either"):
        rate_limited()
    with pytest.raises(ValueError, match="either"):
        rate_limited(rate=1, limiter=TokenBucket(1))
    with pytest.raises(ValueError, match="needs a key"):
        rate_limited(limiter=KeyedLimiter(1))
    with pytest.raises(ValueError, match="either"):
        concurrency_limited()


async def test_rate_limited_handler_answers_429_problem_with_ratelimit_headers(
    aiohttp_client: ClientFactory,
) -> None:
    @rate_limited(rate=0.5, burst=2, key="header:X-Api-Key")
    async def quote(request: web.Request) -> web.Response:
        return web.json_response({"price": 1})

    registry = CollectorRegistry()
    client = await aiohttp_client(limited_app(RateLimiter(registry=registry), quote=quote))
    headers = {"X-Api-Key": "alpha"}
    first = await client.get("/quote", headers=headers)
    assert first.status == 200
    assert first.headers["RateLimit-Limit"] == "2"
    assert first.headers["RateLimit-Remaining"] == "1"
    assert (await client.get("/quote", headers=headers)).status == 200
    refused = await client.get("/quote", headers=headers)
    assert refused.status == 429
    assert refused.headers["Content-Type"] == PROBLEM_CONTENT_TYPE
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert int(refused.headers["RateLimit-Reset"]) >= 1
    body = await refused.json()
    assert body["status"] == 429
    assert body["title"] == "Too Many Requests"
    assert "retry in" in body["detail"]
    # another API key has its own bucket
    assert (await client.get("/quote", headers={"X-Api-Key": "beta"})).status == 200
    # the middleware counts the decorator's refusal even with no limits of its own
    assert sample(registry, "chassis_ratelimit_decisions_total", route="/quote", outcome="limited")


# -- the middleware ----------------------------------------------------------------------
async def test_admitted_count_at_ten_times_the_rate_is_within_ten_percent(
    aiohttp_client: ClientFactory,
) -> None:
    clock = FakeClock()
    rate, burst, seconds = 20.0, 5, 3.0
    limiter = RateLimiter(
        RateLimitSettings(enabled=True, rate_per_second=rate, burst=burst, key="global"),
        clock=clock,
    )
    client = await aiohttp_client(limited_app(limiter))
    sent = int(10 * rate * seconds)
    admitted = limited = 0
    for _ in range(sent):
        response = await client.get("/ok")
        admitted += response.status == 200
        limited += response.status == 429
        response.release()
        clock.advance(1 / (10 * rate))
    assert admitted + limited == sent
    allowed = burst + rate * seconds
    assert abs(admitted - allowed) <= 0.1 * rate * seconds, (admitted, allowed)


async def test_rate_limits_are_per_client_address_by_default(
    aiohttp_client: ClientFactory,
) -> None:
    limiter = RateLimiter(RateLimitSettings(enabled=True, rate_per_second=0.01, burst=1))
    client = await aiohttp_client(limited_app(limiter))
    assert (await client.get("/ok")).status == 200
    assert (await client.get("/ok")).status == 429
    assert len(limiter._service.local) == 1  # type: ignore[union-attr,arg-type]
    assert "c:127.0.0.1" in limiter._service.local  # type: ignore[union-attr,operator]


async def test_random_api_key_flood_over_http_keeps_the_key_table_at_its_bound(
    aiohttp_client: ClientFactory,
) -> None:
    limiter = RateLimiter(
        RateLimitSettings(enabled=True, rate_per_second=1, key="header:X-Api-Key", max_keys=25)
    )
    client = await aiohttp_client(limited_app(limiter))
    table = limiter._service.local  # type: ignore[union-attr]
    assert table is not None
    for i in range(200):
        response = await client.get("/ok", headers={"X-Api-Key": f"key-{random.getrandbits(64)}"})
        assert response.status == 200
        response.release()
        assert len(table) == min(i + 1, 25)


async def test_route_settings_limit_only_their_route(aiohttp_client: ClientFactory) -> None:
    settings = RateLimitSettings(
        enabled=True, routes={"/items/{id}": {"rate_per_second": 0.01, "burst": 1}}
    )

    async def item(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"]})

    app = limited_app(RateLimiter(settings))
    app.router.add_get("/items/{id}", item)
    client = await aiohttp_client(app)
    assert (await client.get("/items/1")).status == 200
    assert (await client.get("/items/2")).status == 429  # one bucket per route template
    assert all([(await client.get("/ok")).status == 200 for _ in range(5)])


async def test_refusals_inside_the_pipeline_carry_its_request_id(
    aiohttp_client: ClientFactory,
) -> None:
    limiter = RateLimiter(RateLimitSettings(enabled=True, rate_per_second=0.01, burst=1))
    client = await aiohttp_client(limited_app(limiter))
    assert (await client.get("/ok")).status == 200
    refused = await client.get("/ok", headers={"X-Request-ID": "req-42"})
    assert refused.status == 429
    assert refused.headers["X-Request-ID"] == "req-42"
    body = await refused.json()
    assert (body["request_id"], body["instance"]) == ("req-42", "/ok")


async def test_limit_route_applies_even_when_the_settings_are_disabled(
    aiohttp_client: ClientFactory,
) -> None:
    limiter = RateLimiter(RateLimitSettings(enabled=False, rate_per_second=0.01, burst=1))
    limiter.limit_route("/ok", rate_per_second=0.01, burst=2)
    client = await aiohttp_client(limited_app(limiter))
    statuses = [(await client.get("/ok")).status for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_disabled_settings_limit_nothing(aiohttp_client: ClientFactory) -> None:
    limiter = RateLimiter(RateLimitSettings(enabled=False, rate_per_second=0.01, burst=1))
    client = await aiohttp_client(limited_app(limiter))
    assert [(await client.get("/ok")).status for _ in range(5)] == [200] * 5


async def test_saturated_service_sheds_sheddable_then_normal_never_critical(
    aiohttp_client: ClientFactory,
) -> None:
    lag = FakeLag()
    settings = RateLimitSettings(enabled=True, max_event_loop_lag_seconds=0.1)
    client = await aiohttp_client(limited_app(RateLimiter(settings, lag_monitor=lag)))

    async def status(priority: str) -> int:
        response = await client.get("/ok", headers={"X-Priority": priority})
        response.release()
        return response.status

    assert [await status(p) for p in ("sheddable", "normal", "critical")] == [200, 200, 200]
    lag.lag = 0.15
    shed = await client.get("/ok", headers={"X-Priority": "sheddable"})
    assert shed.status == 503
    assert shed.headers["Retry-After"] == "1"
    assert shed.headers["Content-Type"] == PROBLEM_CONTENT_TYPE
    assert "sheddable requests are shed" in (await shed.json())["detail"]
    assert [await status(p) for p in ("normal", "critical")] == [200, 200]
    lag.lag = 0.5
    assert [await status(p) for p in ("sheddable", "normal", "critical")] == [503, 503, 200]


async def test_route_priority_applies_to_requests_without_a_priority_header(
    aiohttp_client: ClientFactory,
) -> None:
    lag = FakeLag()
    lag.lag = 1.0
    settings = RateLimitSettings(
        enabled=True,
        max_event_loop_lag_seconds=0.1,
        routes={"/ok": {"priority": "critical"}, "/bulk": {"priority": "sheddable"}},
    )
    app = limited_app(RateLimiter(settings, lag_monitor=lag), bulk=ok)
    client = await aiohttp_client(app)
    assert (await client.get("/ok")).status == 200
    assert (await client.get("/bulk")).status == 503
    # the trusted header wins over the route's priority
    assert (await client.get("/bulk", headers={"X-Priority": "critical"})).status == 200


async def test_service_wide_concurrency_limit_sheds_and_counts(
    aiohttp_client: ClientFactory,
) -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await gate.wait()
        return web.json_response({})

    registry = CollectorRegistry()
    settings = RateLimitSettings(enabled=True, max_in_flight=1, normal_share=1.0)
    limiter = RateLimiter(settings, registry=registry)
    client = await aiohttp_client(limited_app(limiter, slow=slow))
    pending = asyncio.create_task(client.get("/slow"))
    await asyncio.wait_for(entered.wait(), 10)
    assert sample(registry, "chassis_ratelimit_in_flight") == 1
    refused = await client.get("/slow")
    assert refused.status == 503
    assert (await refused.json())["status"] == 503
    gate.set()
    assert (await pending).status == 200
    assert sample(registry, "chassis_ratelimit_in_flight") == 0
    counts = {
        outcome: sample(
            registry, "chassis_ratelimit_decisions_total", route="/slow", outcome=outcome
        )
        for outcome in ("admitted", "limited", "shed")
    }
    assert counts == {"admitted": 1, "limited": 0, "shed": 1}
    assert sample(registry, "chassis_ratelimit_queue_wait_seconds_count") == 1


async def test_queued_requests_wait_for_a_slot_and_the_wait_is_measured(
    aiohttp_client: ClientFactory,
) -> None:
    gate = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await gate.wait()
        return web.json_response({})

    registry = CollectorRegistry()
    settings = RateLimitSettings(
        enabled=True, max_in_flight=1, queue=1, queue_timeout_seconds=30, normal_share=1.0
    )
    limiter = RateLimiter(settings, registry=registry)
    client = await aiohttp_client(limited_app(limiter, slow=slow))
    first = asyncio.create_task(client.get("/slow"))
    second = asyncio.create_task(client.get("/slow"))
    for _ in range(1000):
        if limiter.in_flight == 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    gate.set()
    assert [(await first).status, (await second).status] == [200, 200]
    assert sample(registry, "chassis_ratelimit_queue_wait_seconds_count") == 2
    assert sample(registry, "chassis_ratelimit_queue_wait_seconds_sum") >= 0.04


async def test_invalid_key_spec_fails_startup_naming_the_variable() -> None:
    service = Service(
        "svc",
        settings=_quick(ratelimit={"enabled": True, "rate_per_second": 1, "key": "cookie"}),
    )
    service_limiter(service)
    with pytest.raises(ConfigError, match="CHASSIS_RATELIMIT__KEY"):
        async with service.running(port=0):
            pass


async def test_invalid_route_key_fails_startup_naming_the_variable() -> None:
    limiter = RateLimiter(RateLimitSettings(enabled=True, routes={"/ok": {"key": "ip"}}))
    app = web.Application()
    limiter.setup(app)
    runner = web.AppRunner(app)
    with pytest.raises(ConfigError, match=r"CHASSIS_RATELIMIT__ROUTES.*route /ok"):
        await runner.setup()
    await runner.cleanup()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("{not json", "not a JSON object"),
        ('{"/x": {"rate_per_second": -1}}', "'/x': rate_per_second: Input should be greater"),
        ('{"/x": {"priority": "urgent"}}', "'/x': priority"),
    ],
)
def test_invalid_route_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, reason: str
) -> None:
    monkeypatch.setenv("CHASSIS_RATELIMIT__ROUTES", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.errors[0][0] == "CHASSIS_RATELIMIT__ROUTES"
    assert reason in caught.value.errors[0][1]


def test_route_settings_are_read_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHASSIS_RATELIMIT__ROUTES", '{"/o/{id}": {"max_in_flight": 2}}')
    assert load_settings().ratelimit.routes["/o/{id}"].max_in_flight == 2


async def test_probes_and_metrics_are_never_limited_and_readiness_stays_green() -> None:
    lag = FakeLag()
    service = Service(
        "svc",
        settings=_quick(
            ratelimit={
                "enabled": True,
                "rate_per_second": 0.01,
                "burst": 1,
                "key": "global",
                "max_event_loop_lag_seconds": 0.1,
            }
        ),
    )
    limiter = service_limiter(service)
    limiter.lag_monitor = lag
    assert service.app[RATELIMIT_KEY] is limiter

    @service.get("/work")
    async def work(request: web.Request) -> web.Response:
        return web.json_response({})

    async with service.running(port=0) as running, aiohttp.ClientSession(running.url) as http:
        assert (await http.get("/work")).status == 200
        assert (await http.get("/work")).status == 429
        lag.lag = 1.0
        assert (await http.get("/work", headers={"X-Priority": "sheddable"})).status == 503
        for _ in range(10):
            for path in ("/health/ready", "/health/live", "/health/startup", "/metrics"):
                response = await http.get(path, headers={"X-Priority": "sheddable"})
                assert response.status == 200, path
                response.release()
        metrics = await (await http.get("/metrics")).text()
    assert 'chassis_ratelimit_decisions_total{outcome="limited",route="/work"} 1.0' in metrics
    assert 'chassis_ratelimit_decisions_total{outcome="shed",route="/work"} 1.0' in metrics
    assert "/health" not in "".join(
        line for line in metrics.splitlines() if line.startswith("chassis_ratelimit")
    )


async def test_overloaded_is_a_service_unavailable_with_its_reason() -> None:
    error = Overloaded("busy", reason="in_flight", retry_after=2.2, priority="normal")
    assert isinstance(error, ServiceUnavailable)
    assert (error.status, error.reason, error.priority) == (503, "in_flight", "normal")
    assert error.headers["Retry-After"] == "3"


def _quick(**overrides: Any) -> Any:
    from tests.conftest import quick_settings

    return quick_settings(**overrides)
