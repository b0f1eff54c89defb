"""One order, observed: a single trace across the bank, correlated logs, business metrics.

Every service exports to one in-memory exporter (``span_exporter`` overrides the
conftest fixture, which turns tracing on with sampler ``always_on``); the root logger
writes the chassis' JSON lines to a string for the test.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families
from simplebank.services import Bank

from chassis.config import LogSettings
from chassis.logging import configure_logging
from conftest import Customer

SAGA_SERVICES = {"gateway", "orders", "accounts", "market", "fees"}
"""The services a buy goes through (design.md, "Buy")."""

# Each event of a filled buy, and the services consuming it (design.md, "Events").
CONSUMED = {
    ("orders", "order_created"),
    ("holdings", "order_created"),
    ("orders", "order_reserved"),
    ("orders", "order_placed"),
    ("orders", "order_fee_charged"),
    ("holdings", "order_filled"),
    ("notifications", "order_filled"),
    ("strategies", "order_filled"),
    ("holdings", "reservation_settled"),
}


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The root logger writes the chassis' JSON lines, synchronously, to a string."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    handler = configure_logging(
        LogSettings(level="INFO", background_writes=False), service="test", stream=stream
    )
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        handler.close()
        for h in saved_handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(saved_level)


def service_of(span: ReadableSpan) -> str:
    return str(span.resource.attributes["service.name"])


def trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


async def finished_spans(bank: Bank, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    for service in bank.services.values():
        assert await service.tracing.flush()
    return list(exporter.get_finished_spans())


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[tuple[str, Any], float]:
    """``/metrics`` of a service: (sample name, sorted labels) -> value."""
    async with session.get(url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict[tuple[str, Any], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_one_buy_is_one_trace_from_the_gateway_through_every_service_and_event(
    json_logs: io.StringIO,
    span_exporter: InMemorySpanExporter,
    bank: Bank,
    anna: Customer,
) -> None:
    await anna.deposit(1_000_000)
    await bank.settle()
    await finished_spans(bank, span_exporter)
    span_exporter.clear()  # sign-up and deposit are traces of their own

    order = await anna.order("buy", "VTI", 2)
    assert order["state"] == "FILLED", order
    await bank.settle()  # the read side's consumers are done too
    spans = await finished_spans(bank, span_exporter)

    (root,) = [
        s
        for s in spans
        if service_of(s) == "gateway" and s.kind is SpanKind.SERVER and s.name == "POST /orders"
    ]
    assert root.parent is None  # the client sent no traceparent: the gateway starts it
    trace = [s for s in spans if trace_id(s) == trace_id(root)]
    ids = {s.context.span_id for s in trace if s.context is not None}
    orphans = [s.name for s in trace if s is not root and s.parent is None]
    dangling = [s.name for s in trace if s.parent is not None and s.parent.span_id not in ids]
    assert (orphans, dangling) == ([], [])  # one tree, rooted at the gateway

    servers = {(service_of(s), s.name) for s in trace if s.kind is SpanKind.SERVER}
    assert {service for service, _ in servers} >= SAGA_SERVICES
    assert {
        ("orders", "POST /orders"),
        ("market", "GET /quotes/{symbol}"),
        ("accounts", "POST /reservations"),
        ("market", "POST /exchange-orders"),
        ("fees", "POST /charges"),
        ("accounts", "POST /reservations/{order_id}/settle"),
    } <= servers
    consumers = {
        (service_of(s), str((s.attributes or {})["messaging.event.type"]))
        for s in trace
        if s.kind is SpanKind.CONSUMER
    }
    assert consumers >= CONSUMED
    to_exchange = [
        s
        for s in trace
        if s.kind is SpanKind.CLIENT and (s.attributes or {}).get("peer.service") == "exchange"
    ]
    assert any(s.name == "POST" and service_of(s) == "market" for s in to_exchange)

    # Nothing of this order escaped into another trace: every delivery of its events,
    # every saga command and every order sent to the exchange is in the one trace.
    elsewhere = [
        (service_of(s), s.name)
        for s in spans
        if trace_id(s) != trace_id(root)
        and (
            s.kind in (SpanKind.CONSUMER, SpanKind.PRODUCER)
            or (s.kind is SpanKind.SERVER and s.name.startswith("POST"))
            or (s.kind is SpanKind.CLIENT and s.name == "POST")
        )
    ]
    assert elsewhere == []

    records = [json.loads(line) for line in json_logs.getvalue().splitlines() if line]
    traced = [r for r in records if r["trace_id"] == trace_id(root)]
    assert {r["service"] for r in traced if r["logger"] == "chassis.access"} >= SAGA_SERVICES
    about_order = [r for r in records if r.get("order_id") == order["order_id"]]
    from_orders = [r for r in about_order if r["logger"] == "simplebank.orders"]
    assert {r.get("state") for r in from_orders} >= {
        "PENDING",
        "RESERVED",
        "PLACED",
        "FEE_CHARGED",
        "FILLED",
    }
    assert {r["trace_id"] for r in about_order} == {trace_id(root)}


async def test_a_filled_buy_counts_once_in_the_business_metrics(
    bank: Bank, anna: Customer, session: aiohttp.ClientSession
) -> None:
    await anna.deposit(1_000_000)
    orders_url, gateway_url = bank.urls["orders"], bank.urls["gateway"]
    before = await scrape(session, orders_url)
    placed_before = await scrape(session, gateway_url)

    order = await anna.order("buy", "VTI", 2)
    assert order["state"] == "FILLED", order
    await bank.settle()  # the saga's handler counts right after the order is FILLED

    after = await scrape(session, orders_url)
    placed_after = await scrape(session, gateway_url)

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("simplebank_orders_total", side="buy", outcome="filled") == 1
    assert grew("simplebank_orders_total", side="buy", outcome="failed") == 0
    assert grew("simplebank_orders_total", side="buy", outcome="rejected") == 0
    for step in ("release", "cancel", "refund"):
        assert grew("simplebank_saga_compensations_total", step=step) == 0
    assert grew("simplebank_saga_duration_seconds_count", side="buy", outcome="filled") == 1
    placed = "simplebank_gateway_orders_placed_total"
    assert sample(placed_after, placed, side="buy") - sample(placed_before, placed, side="buy") == 1
