"""market: quotes, exchange orders with an idempotency key, cancels that wait for the exchange."""

from __future__ import annotations

import asyncio

from simplebank.common import PROBLEM_BASE, new_id
from simplebank.exchange import Exchange
from simplebank.services import Bank
from simplebank.testing import wait_for_pending_cancels

from conftest import Client


def place_body(oid: str, **overrides: object) -> dict:
    body = {
        "order_id": oid,
        "side": "buy",
        "symbol": "VTI",
        "quantity": 3,
        "limit_price_cents": 26000,
    }
    body.update(overrides)
    return body


async def test_an_order_is_placed_once_with_the_idempotency_key(
    alice: Client, bank: Bank, exchange: Exchange
) -> None:
    oid = new_id()
    first = await alice.call("market", "POST", "/exchange-orders", json=place_body(oid))
    again = await alice.call("market", "POST", "/exchange-orders", json=place_body(oid))
    assert (first[0], again[0]) == (201, 200)
    assert first[1]["price_cents"] == 25000 and first[1]["status"] == "FILLED"
    assert exchange.upstream.hits_by_path["/orders"] == 1
    sent = next(r for r in exchange.upstream.received if r.path == "/orders")
    assert sent.headers["Idempotency-Key"] == oid
    # Not part of a saga: undo it so the exchange and the books agree.
    status, _ = await alice.call("market", "POST", f"/exchange-orders/{oid}/cancel", json={})
    assert status == 200
    assert oid not in exchange.fills()


async def test_transient_exchange_errors_are_retried(
    alice: Client, bank: Bank, exchange: Exchange
) -> None:
    exchange.upstream.script(503, 503)
    oid = new_id()
    status, body = await alice.call("market", "POST", "/exchange-orders", json=place_body(oid))
    assert status == 201, body
    assert exchange.upstream.hits_by_path["/orders"] == 3
    await alice.call("market", "POST", f"/exchange-orders/{oid}/cancel", json={})


async def test_a_price_past_the_limit_is_rejected(
    alice: Client, bank: Bank, exchange: Exchange
) -> None:
    status, body = await alice.call(
        "market", "POST", "/exchange-orders", json=place_body(new_id(), limit_price_cents=24000)
    )
    assert status == 409 and body["type"] == PROBLEM_BASE + "limit-not-met"
    assert exchange.fills() == {}


async def test_an_unreachable_exchange_fails_cleanly(
    alice: Client, bank: Bank, exchange: Exchange
) -> None:
    await exchange.outage()
    status, body = await alice.call("market", "POST", "/exchange-orders", json=place_body(new_id()))
    assert status == 503 and body["type"] == PROBLEM_BASE + "exchange-unavailable"


async def test_a_cancel_during_an_outage_is_finished_by_the_reconciler(
    alice: Client, bank: Bank, exchange: Exchange
) -> None:
    oid = new_id()
    assert (await alice.call("market", "POST", "/exchange-orders", json=place_body(oid)))[0] == 201
    await exchange.outage()
    status, body = await alice.call("market", "POST", f"/exchange-orders/{oid}/cancel", json={})
    assert status == 202 and body["status"] == "CANCEL_PENDING"
    await exchange.recover()
    assert await wait_for_pending_cancels(bank.urls["market"]) == 0
    assert exchange.orders[oid]["status"] == "CANCELLED"


async def test_quotes_come_from_the_exchange_and_survive_an_outage(
    alice: Client, bank: Bank, exchange: Exchange
) -> None:
    assert (await alice.call("market", "GET", "/quotes/VTI"))[1] == {
        "symbol": "VTI",
        "price_cents": 25000,
    }
    status, body = await alice.call("market", "GET", "/quotes/ZZZ")
    assert status == 422 and body["type"] == PROBLEM_BASE + "unknown-symbol"
    await exchange.outage()
    assert (await alice.call("market", "GET", "/quotes/VTI"))[1]["price_cents"] == 25000
    status, body = await alice.call("market", "GET", "/quotes/BND")  # never fetched
    assert status == 503 and body["type"] == PROBLEM_BASE + "exchange-unavailable"


async def test_an_attempt_racing_a_refused_one_answers_the_fill_the_exchange_made(
    alice: Client, bank: Bank, exchange: Exchange
) -> None:
    """Two attempts with one key: the exchange refuses the first and fills the second."""
    oid = new_id()
    exchange.upstream.latency_seconds = 0.5
    first = asyncio.ensure_future(
        alice.call("market", "POST", "/exchange-orders", json=place_body(oid))
    )
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 30
    while exchange.upstream.in_flight < 1:  # the first attempt is at the exchange
        assert loop.time() < give_up and not first.done()
        await asyncio.sleep(0.01)
    exchange.upstream.script(409)  # what the exchange answers the first to wake
    second = await alice.call("market", "POST", "/exchange-orders", json=place_body(oid))
    assert (await first)[0] == 409
    exchange.upstream.latency_seconds = 0
    assert oid in exchange.fills()
    status, body = second
    assert status == 201 and body["status"] == "FILLED", body
    assert body["exchange_order_id"] == exchange.fills()[oid]["exchange_order_id"]
    status, again = await alice.call("market", "POST", "/exchange-orders", json=place_body(oid))
    assert (status, again["exchange_order_id"]) == (200, body["exchange_order_id"])
    # As a saga compensating a refused place does: the cancel reaches the fill.
    status, _ = await alice.call("market", "POST", f"/exchange-orders/{oid}/cancel", json={})
    assert status == 200 and oid not in exchange.fills()
