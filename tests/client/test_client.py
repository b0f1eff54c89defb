"""ServiceClient end to end: real loopback sockets, a fault-injecting upstream, no mocks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from chassis._faulty_upstream import FaultyUpstream
from chassis.client import (
    DEADLINE_HEADER,
    DeadlinePropagation,
    Fallback,
    PowerOfTwoChoices,
    ServiceClient,
    timeout,
)
from chassis.config import ClientSettings
from chassis.discovery.static import StaticRegistry
from chassis.exceptions import (
    BulkheadFull,
    CircuitOpen,
    ClientClosed,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from chassis.logging import LogContext, bind_log_context

from .conftest import UPSTREAM

MakeClient = Callable[..., ServiceClient]


def deadline_headers(up: FaultyUpstream) -> list[int]:
    return [int(r.headers[DEADLINE_HEADER]) for r in up.received]


# -- calls and answers --------------------------------------------------------------------
async def test_get_returns_the_answer_with_its_body_read(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream)
    response = await client.get("/prices/VTI", params={"currency": "USD"})
    assert response.status == 200
    assert response.ok
    assert response.json()["path"] == "/prices/VTI"
    assert response.attempts == 1
    assert upstream.received[0].query_string == "currency=USD"


async def test_json_helpers_send_and_parse_json(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream)
    assert (await client.get_json("/prices/VTI"))["method"] == "GET"
    answer = await client.post_json("/orders", json={"symbol": "VTI", "qty": 3})
    assert answer["method"] == "POST"
    sent = upstream.received[-1]
    assert sent.body == b'{"symbol":"VTI","qty":3}'
    assert sent.headers["Content-Type"] == "application/json"


async def test_json_helpers_raise_for_error_statuses(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream, max_attempts=1)
    upstream.script(404)
    with pytest.raises(UpstreamStatusError) as caught:
        await client.get_json("/prices/NOPE")
    assert caught.value.status == 404
    assert caught.value.service == UPSTREAM
    assert caught.value.response.json()["status"] == 404


async def test_a_5xx_answer_is_returned_once_retries_give_up(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream, max_attempts=3)
    upstream.configure(error_every=1, error_status=503)
    response = await client.get("/prices/VTI")
    assert response.status == 503
    assert response.attempts == 3
    assert upstream.hits == 3


async def test_a_500_is_not_retried(upstream: FaultyUpstream, make_client: MakeClient) -> None:
    client = make_client(upstream, max_attempts=3)
    upstream.script(500)
    response = await client.get("/prices/VTI")
    assert response.status == 500
    assert upstream.hits == 1


async def test_transient_failures_are_retried_on_another_instance(
    make_upstream: Callable[..., Any], make_client: MakeClient
) -> None:
    bad = await make_upstream(reset_every=1)
    good = await make_upstream()
    client = make_client(bad, good, max_attempts=2)
    for _ in range(4):
        assert (await client.get("/prices/VTI")).status == 200
    # Round robin starts every other call on the bad instance; its retry goes to the other.
    assert bad.hits == 2
    assert good.hits == 4


async def test_connection_reset_without_retries_raises_upstream_unavailable(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream, max_attempts=1)
    upstream.configure(reset_every=1)
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.get("/prices/VTI")
    assert caught.value.retryable
    assert caught.value.attempts == 1
    assert isinstance(caught.value, ConnectionError)


async def test_no_known_instance_raises_without_a_request(make_client: MakeClient) -> None:
    client = make_client()
    with pytest.raises(UpstreamUnavailable, match="no healthy instance"):
        await client.get("/prices/VTI")


async def test_a_slow_body_counts_against_the_attempt_timeout(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream, max_attempts=1, timeout_seconds=0.2)
    upstream.configure(slow_body_seconds=1.0)
    with pytest.raises(UpstreamTimeout):
        await client.get("/prices/VTI")


# -- idempotency --------------------------------------------------------------------------
async def test_post_without_idempotency_key_is_never_retried(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream, max_attempts=3)
    upstream.script(503)
    response = await client.post("/orders", json={"qty": 1})
    assert response.status == 503
    assert upstream.hits == 1

    upstream.configure(reset_every=1)
    with pytest.raises(UpstreamUnavailable):
        await client.post("/orders", json={"qty": 1})
    assert upstream.hits == 2


async def test_post_with_idempotency_key_is_retried(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream, max_attempts=3)
    upstream.script(503, 503)
    response = await client.post(
        "/orders", json={"qty": 1}, headers={"Idempotency-Key": "order-42"}
    )
    assert response.status == 200
    assert upstream.hits == 3
    assert {r.headers["Idempotency-Key"] for r in upstream.received} == {"order-42"}
    assert len({r.body for r in upstream.received}) == 1  # the same body every time


# -- deadlines ------------------------------------------------------------------------------
async def test_a_300ms_deadline_holds_through_retries_against_a_slow_upstream(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    # Each attempt may take 120 ms and is retried; the upstream needs a second.
    client = make_client(upstream, timeout_seconds=0.12, max_attempts=5)
    upstream.configure(latency_seconds=1.0)
    start = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await client.get("/prices/VTI", deadline=0.3)
    elapsed = time.monotonic() - start
    # 200 ms of slack: this shared machine's event loop can be slow to wake, and a
    # cancelled attempt must still close its connection. The bug this guards against
    # (a retry that ignores the deadline) costs a whole further attempt or more.
    assert elapsed < 0.3 + 0.2
    assert upstream.hits >= 2, "the deadline left room for a retry"
    sent = deadline_headers(upstream)
    assert all(0 < ms < 300 for ms in sent), sent
    assert sent == sorted(sent, reverse=True) or sent[0] == 120


async def test_downstream_sees_the_inbound_deadline_minus_time_spent(
    upstream: FaultyUpstream, make_client: MakeClient, aiohttp_client: Any
) -> None:
    """A chassis server clips its own outgoing calls to its caller's deadline."""
    client = make_client(upstream, max_attempts=1)

    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)  # some work before the nested call
        answer = await client.get_json("/prices/VTI")
        return web.json_response(answer)

    app = web.Application()
    DeadlinePropagation().setup(app)
    app.router.add_get("/quote", handler)
    server = await aiohttp_client(app)
    response = await server.get("/quote", headers={DEADLINE_HEADER: "300"})
    assert response.status == 200
    (sent,) = deadline_headers(upstream)
    assert 0 < sent <= 250


async def test_an_expired_inbound_deadline_sends_nothing(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream)
    with pytest.raises(UpstreamTimeout) as caught:
        async with timeout(0):
            await client.get("/prices/VTI")
    assert caught.value.attempts == 0
    assert upstream.hits == 0


async def test_retry_after_is_honoured(upstream: FaultyUpstream, make_client: MakeClient) -> None:
    client = make_client(upstream, max_attempts=2)
    upstream.configure(retry_after=1)
    upstream.script(503)
    response = await client.get("/prices/VTI")
    assert response.status == 200
    first, second = upstream.received
    assert second.at - first.at >= 0.95


async def test_retry_after_beyond_the_deadline_returns_at_once(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream, max_attempts=3)
    upstream.configure(retry_after=30)
    upstream.script(503)
    start = time.monotonic()
    response = await client.get("/prices/VTI", deadline=2.0)
    assert response.status == 503
    assert response.headers["Retry-After"] == "30"
    assert time.monotonic() - start < 1.0
    assert upstream.hits == 1


# -- circuit breaker ------------------------------------------------------------------------
async def test_open_circuit_fails_fast_without_calling_upstream(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(
        upstream, max_attempts=1, breaker_failure_threshold=3, breaker_recovery_seconds=60
    )
    upstream.configure(error_every=1)
    for _ in range(3):
        assert (await client.get("/prices/VTI")).status == 503
    assert upstream.hits == 3
    for _ in range(5):
        with pytest.raises(CircuitOpen) as caught:
            await client.get("/prices/VTI")
        assert caught.value.attempts == 0
        assert caught.value.retry_after is not None
        assert 50 < caught.value.retry_after <= 60
    assert upstream.hits == 3
    assert client.circuit_states() == [(f"{UPSTREAM}-0", "open")]


async def test_half_open_probe_recovers_the_circuit(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(
        upstream, max_attempts=1, breaker_failure_threshold=2, breaker_recovery_seconds=0.3
    )
    upstream.configure(error_every=1)
    for _ in range(2):
        await client.get("/prices/VTI")
    with pytest.raises(CircuitOpen):
        await client.get("/prices/VTI")
    upstream.clear_faults()
    await asyncio.sleep(0.4)

    # One probe at a time: while it is in flight, other calls still fail fast.
    upstream.configure(latency_seconds=0.3)
    probe = asyncio.create_task(client.get("/prices/VTI"))
    await asyncio.sleep(0.1)
    assert client.circuit_states() == [(f"{UPSTREAM}-0", "half_open")]
    with pytest.raises(CircuitOpen):
        await client.get("/prices/VTI")
    assert (await probe).status == 200
    assert client.circuit_states() == [(f"{UPSTREAM}-0", "closed")]
    upstream.clear_faults()
    assert (await client.get("/prices/VTI")).status == 200
    assert upstream.hits == 4


async def test_a_failed_probe_reopens_the_circuit(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(
        upstream, max_attempts=1, breaker_failure_threshold=1, breaker_recovery_seconds=0.2
    )
    upstream.configure(error_every=1)
    await client.get("/prices/VTI")
    await asyncio.sleep(0.3)
    assert (await client.get("/prices/VTI")).status == 503  # the probe
    with pytest.raises(CircuitOpen):
        await client.get("/prices/VTI")
    assert upstream.hits == 2


async def test_an_open_instance_is_skipped_for_its_siblings(
    make_upstream: Callable[..., Any], make_client: MakeClient
) -> None:
    bad = await make_upstream(error_every=1)
    good = await make_upstream()
    client = make_client(
        bad, good, max_attempts=1, breaker_failure_threshold=2, breaker_recovery_seconds=60
    )
    statuses = [(await client.get("/prices/VTI")).status for _ in range(10)]
    assert statuses.count(503) == 2
    assert bad.hits == 2
    assert good.hits == 8


async def test_a_timeout_cut_short_by_the_callers_deadline_does_not_count_against_the_instance(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream, max_attempts=1, breaker_failure_threshold=1)
    upstream.configure(latency_seconds=0.5)
    with pytest.raises(UpstreamTimeout):
        await client.get("/prices/VTI", deadline=0.05)
    assert client.circuit_states() == [(f"{UPSTREAM}-0", "closed")]


# -- retry budget ---------------------------------------------------------------------------
@pytest.mark.parametrize("outage", ["503", "refused"])
async def test_outage_load_stays_within_the_retry_budget(
    upstream: FaultyUpstream, make_client: MakeClient, outage: str
) -> None:
    calls, ratio, floor, window = 200, 0.2, 1.0, 10.0
    registry = CollectorRegistry()
    client = make_client(
        upstream,
        max_attempts=3,
        retry_budget_ratio=ratio,
        retry_budget_min_per_second=floor,
        retry_budget_window_seconds=window,
        breaker_failure_threshold=10_000,  # isolate the budget from the breaker
        bulkhead_max_concurrency=calls,
        backoff_base_seconds=0.001,
        backoff_max_seconds=0.002,
        metrics=registry,
    )
    if outage == "503":
        upstream.configure(error_every=1)
    else:
        await upstream.outage()

    async def one() -> None:
        with contextlib.suppress(UpstreamUnavailable):  # the refused outage raises
            await client.get("/prices/VTI")

    await asyncio.gather(*(one() for _ in range(calls)))

    def attempts() -> float:
        status = "503" if outage == "503" else "error"
        labels = {"upstream": UPSTREAM, "method": "GET", "status_code": status}
        return registry.get_sample_value("http_client_request_duration_seconds_count", labels) or 0

    allowed = calls * (1 + ratio) + floor * window
    assert attempts() <= allowed
    assert attempts() > calls, "retries happened while the budget allowed them"
    if outage == "503":
        assert upstream.hits == attempts()
    exhausted = registry.get_sample_value(
        "http_client_retry_budget_exhausted_total", {"upstream": UPSTREAM}
    )
    assert exhausted is not None and exhausted > 0


# -- bulkhead ---------------------------------------------------------------------------------
async def test_bulkhead_rejects_calls_beyond_its_limit(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream, bulkhead_max_concurrency=2)
    upstream.configure(latency_seconds=0.3)
    results = await asyncio.gather(
        *(client.get("/prices/VTI") for _ in range(5)), return_exceptions=True
    )
    assert sum(isinstance(r, BulkheadFull) for r in results) == 3
    assert sum(getattr(r, "status", None) == 200 for r in results) == 2
    assert upstream.max_in_flight == 2
    assert upstream.hits == 2


async def test_bulkhead_queue_admits_waiters_within_the_deadline(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream, bulkhead_max_concurrency=1, bulkhead_max_queue=2)
    upstream.configure(latency_seconds=0.1)
    results = await asyncio.gather(
        *(client.get("/prices/VTI") for _ in range(4)), return_exceptions=True
    )
    assert sum(isinstance(r, BulkheadFull) for r in results) == 1
    assert upstream.max_in_flight == 1
    assert upstream.hits == 3


async def test_a_bulkhead_wait_ends_with_the_calls_deadline(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream, bulkhead_max_concurrency=1, bulkhead_max_queue=1)
    upstream.configure(latency_seconds=0.5)
    holder = asyncio.create_task(client.get("/prices/VTI"))
    await asyncio.sleep(0.05)
    start = time.monotonic()
    with pytest.raises(BulkheadFull):
        await client.get("/prices/VTI", deadline=0.1)
    assert 0.05 < time.monotonic() - start < 0.4
    assert (await holder).status == 200
    assert upstream.hits == 1


# -- fallback ---------------------------------------------------------------------------------
async def test_fallback_serves_the_last_good_answer(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream, max_attempts=1)
    prices = Fallback(cache_ttl_seconds=60)
    fresh = await client.get_json("/prices/VTI", fallback=prices)
    await upstream.outage()
    assert await client.get_json("/prices/VTI", fallback=prices) == fresh
    with pytest.raises(UpstreamUnavailable):  # never answered: nothing to fall back on
        await client.get_json("/prices/BND", fallback=prices)
    assert prices.cache_hits == 1


async def test_fallback_stub_and_handler(upstream: FaultyUpstream, make_client: MakeClient) -> None:
    client = make_client(upstream, max_attempts=1)
    upstream.configure(error_every=1)
    stub = Fallback(value={"price": None, "stale": True})
    assert await client.get_json("/prices/VTI", fallback=stub) == {"price": None, "stale": True}

    seen: list[BaseException] = []

    async def degrade(exc: BaseException) -> dict[str, str]:
        seen.append(exc)
        return {"source": "handler"}

    assert await client.get_json("/prices/VTI", fallback=Fallback(handler=degrade)) == {
        "source": "handler"
    }
    assert isinstance(seen[0], UpstreamStatusError)
    assert seen[0].status == 503


async def test_fallback_on_a_response_call_treats_5xx_as_failure(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream, max_attempts=1)
    last_good = Fallback(cache_ttl_seconds=60)
    good = await client.get("/prices/VTI", fallback=last_good)
    upstream.configure(error_every=1)
    assert await client.get("/prices/VTI", fallback=last_good) is good
    with pytest.raises(UpstreamStatusError):
        await client.get("/prices/BND", fallback=last_good)


async def test_fallback_does_not_hide_a_4xx(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream)
    upstream.script(404)
    with pytest.raises(UpstreamStatusError) as caught:
        await client.get_json("/prices/NOPE", fallback=Fallback(value={}))
    assert caught.value.status == 404


# -- load balancing ---------------------------------------------------------------------------
async def test_power_of_two_choices_prefers_the_less_loaded_instance(
    make_upstream: Callable[..., Any], make_client: MakeClient
) -> None:
    slow = await make_upstream(latency_seconds=0.2)
    fast = await make_upstream()
    client = make_client(slow, fast, balancer=PowerOfTwoChoices(seed=1), timeout_seconds=2)

    async def worker() -> None:
        for _ in range(10):
            await client.get("/prices/VTI")

    await asyncio.gather(*(worker() for _ in range(4)))
    assert slow.hits + fast.hits == 40
    # Round robin would send 20 to each; the slow one's outstanding requests steer
    # traffic to the fast one.
    assert slow.hits < 10, (slow.hits, fast.hits)


async def test_round_robin_spreads_calls_evenly(
    make_upstream: Callable[..., Any], make_client: MakeClient
) -> None:
    ups = [await make_upstream() for _ in range(3)]
    client = make_client(*ups)
    for _ in range(9):
        await client.get("/prices/VTI")
    assert [up.hits for up in ups] == [3, 3, 3]


# -- propagation ------------------------------------------------------------------------------
async def test_request_id_and_trace_context_are_propagated(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    client = make_client(upstream, tracer=tracer, max_attempts=2)
    upstream.script(503)
    with (
        bind_log_context(LogContext(request_id="req-123")),
        tracer.start_as_current_span("handler") as parent,
    ):
        await client.get("/prices/VTI")
    trace_id = format(parent.get_span_context().trace_id, "032x")
    for received in upstream.received:
        assert received.headers["X-Request-ID"] == "req-123"
        assert received.headers["traceparent"].split("-")[1] == trace_id
    spans = [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.CLIENT]
    assert len(spans) == 2
    first, second = spans
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["http.response.status_code"] == 503
    assert first.attributes["peer.service"] == UPSTREAM
    assert second.attributes["http.request.resend_count"] == 1
    assert first.parent is not None and first.parent.span_id == parent.get_span_context().span_id
    # Each attempt's traceparent names its own span.
    sent_ids = [r.headers["traceparent"].split("-")[2] for r in upstream.received]
    assert sent_ids == [format(s.context.span_id, "016x") for s in spans]
    provider.shutdown()


# -- metrics ----------------------------------------------------------------------------------
async def test_client_metrics_are_exported_by_upstream_name(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    registry = CollectorRegistry()
    client = make_client(upstream, metrics=registry, max_attempts=2, breaker_failure_threshold=2)
    await client.get("/prices/VTI")
    upstream.script(503)
    await client.get("/prices/VTI")
    upstream.configure(error_every=1)
    await client.get("/prices/VTI")  # two failures: the circuit opens
    with pytest.raises(CircuitOpen):
        await client.get("/prices/VTI")

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"upstream": UPSTREAM, **labels})

    ok = {"method": "GET", "status_code": "200"}
    assert value("http_client_request_duration_seconds_count", **ok) == 2
    assert value("http_client_request_duration_seconds_count", method="GET", status_code="503") == 3
    assert value("http_client_retries_total") == 2
    assert value("http_client_circuit_state", instance=f"{UPSTREAM}-0") == 2
    assert value("http_client_rejected_total", reason="circuit_open") == 1
    assert value("http_client_active_requests") == 0
    for sample_labels in (
        s.labels for m in registry.collect() for s in m.samples if s.name.startswith("http_client")
    ):
        assert all("127.0.0.1" not in v for v in sample_labels.values())


# -- lifecycle --------------------------------------------------------------------------------
async def test_closed_client_raises_and_closes_idempotently(
    upstream: FaultyUpstream,
) -> None:
    registry = StaticRegistry({UPSTREAM: [upstream.url]})
    async with ServiceClient(UPSTREAM, registry=registry) as client:
        assert (await client.get("/prices/VTI")).status == 200
    assert client.closed
    with pytest.raises(ClientClosed):
        await client.get("/prices/VTI")
    await client.aclose()
    with pytest.raises(ClientClosed):
        async with client:
            pass


async def test_a_client_without_context_manager_opens_lazily(upstream: FaultyUpstream) -> None:
    client = ServiceClient(
        UPSTREAM,
        registry=StaticRegistry({UPSTREAM: [upstream.url]}),
        settings=ClientSettings(max_attempts=1),
    )
    try:
        assert (await client.head("/prices/VTI")).body == b""
    finally:
        await client.aclose()


async def test_relative_paths_are_refused(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream)
    with pytest.raises(ValueError, match="must start with '/'"):
        await client.get("prices/VTI")


async def test_an_explicit_request_id_is_kept(
    upstream: FaultyUpstream, make_client: MakeClient
) -> None:
    client = make_client(upstream)
    with bind_log_context(LogContext(request_id="from-context")):
        await client.get("/prices/VTI", headers={"x-request-id": "mine"})
    assert upstream.received[0].headers.getall("X-Request-ID") == ["mine"]
