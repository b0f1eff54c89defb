"""The order saga end to end: accounts, orders, market and fees on loopback, the exchange stand-in.

The ``bank`` fixture checks every invariant after each test (ledger balanced, money
conserved, nothing negative, no reservation left held, every order terminal, fee
ledger = fee account, FILLED orders on the exchange and FAILED ones not).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from simplebank.common import CUSTOMER_HEADER, PROBLEM_BASE, new_id
from simplebank.exchange import Exchange
from simplebank.services import Bank, run_services
from simplebank.testing import check_invariants

from chassis.events import InMemoryBroker, decode
from chassis.testing import FaultyUpstream
from conftest import Client, bank_settings


async def metric(session: aiohttp.ClientSession, bank: Bank, service: str, line: str) -> float:
    async with session.get(bank.urls[service] + "/metrics") as response:
        text = await response.text()
    for row in text.splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    return 0.0


async def audit(client: Client, service: str) -> dict:
    status, body = await client.call(service, "GET", "/internal/audit")
    assert status == 200
    return body


async def test_buy_fills_at_the_exchange_price_and_charges_the_fee(
    alice: Client, bank: Bank, exchange: Exchange
) -> None:
    await alice.deposit(1_000_000)
    order = await alice.order("buy", "VTI", 10)
    assert order["state"] == "FILLED", order
    assert (order["price_cents"], order["gross_cents"], order["fee_cents"]) == (25000, 250_000, 250)
    assert order["version"] == 5  # PENDING, RESERVED, PLACED, FEE_CHARGED, FILLED
    balances = await alice.balances()
    assert balances["cash"] == {"available_cents": 1_000_000 - 250_000 - 250, "reserved_cents": 0}
    assert await alice.position("VTI") == {"available": 10, "reserved": 0}
    assert exchange.fills()[order["order_id"]]["quantity"] == 10
    assert (await audit(alice, "fees"))["net_cents"] == 250


async def test_sell_fills_at_the_current_price_and_credits_cash_minus_fee(
    alice: Client, bank: Bank, exchange: Exchange, session: aiohttp.ClientSession
) -> None:
    await alice.deposit(1_000_000)
    await alice.order("buy", "BND", 100)  # 7300 x 100 = 730000, fee 730
    exchange.set_price("BND", 7500)
    order = await alice.order("sell", "BND", 40)
    assert order["state"] == "FILLED", order
    assert (order["price_cents"], order["gross_cents"], order["fee_cents"]) == (7500, 300_000, 300)
    cash = (await alice.balances())["cash"]
    assert cash == {"available_cents": 1_000_000 - 730_730 + 300_000 - 300, "reserved_cents": 0}
    assert await alice.position("BND") == {"available": 60, "reserved": 0}
    assert (
        await metric(
            session, bank, "orders", 'simplebank_orders_total{outcome="filled",side="sell"}'
        )
        == 1
    )
    assert (
        await metric(
            session, bank, "orders", 'simplebank_orders_total{outcome="filled",side="buy"}'
        )
        == 1
    )


@pytest.mark.parametrize("fault", ["outage", "errors"])
async def test_exchange_down_fails_the_order_and_releases_the_reservation(
    fault: str, alice: Client, bank: Bank, exchange: Exchange, session: aiohttp.ClientSession
) -> None:
    await alice.deposit(500_000)
    await alice.call("market", "GET", "/quotes/VTI")  # market answers from this while down
    if fault == "outage":
        await exchange.outage()
    else:
        exchange.upstream.error_every = 1  # every request answers 503
    order = await alice.order("buy", "VTI", 10)
    assert order["state"] == "FAILED", order
    assert order["failed_step"] == "place"
    assert order["failure_reason"] == "exchange-unavailable"
    assert order["compensations"] == ["cancel", "release"]
    assert order["fee_cents"] is None
    assert (await alice.balances())["cash"] == {"available_cents": 500_000, "reserved_cents": 0}
    fees = await audit(alice, "fees")
    assert fees["net_cents"] == 0 and fees["charged_cents"] == 0
    for step in ("cancel", "release"):
        line = f'simplebank_saga_compensations_total{{step="{step}"}}'
        assert await metric(session, bank, "orders", line) == 1
    line = 'simplebank_orders_total{outcome="failed",side="buy"}'
    assert await metric(session, bank, "orders", line) == 1
    # Back up: market's pending cancel reaches the exchange; the fixture checks the rest.
    exchange.upstream.clear_faults()
    if fault == "outage":
        await exchange.recover()


async def test_exchange_too_slow_fails_the_order_and_cancels_a_late_fill(
    alice: Client, bank: Bank, exchange: Exchange
) -> None:
    await alice.deposit(500_000)
    await alice.call("market", "GET", "/quotes/VTI")  # market answers from this while slow
    exchange.upstream.latency_seconds = 2.5  # over the 2 s attempt timeout
    order = await alice.order("buy", "VTI", 1)
    assert order["state"] == "FAILED", order
    assert order["failure_reason"] == "exchange-unavailable"
    assert order["compensations"] == ["cancel", "release"]
    assert (await alice.balances())["cash"]["available_cents"] == 500_000
    # The exchange may fill the order after the client gave up: the cancel undoes it
    # (or, arriving first, refuses it); the fixture checks that it is not filled.


async def test_sell_without_the_shares_is_refused_and_changes_nothing(
    alice: Client, bank: Bank
) -> None:
    await alice.deposit(100_000)
    status, body = await alice.call(
        "orders", "POST", "/orders", json={"side": "sell", "symbol": "VTI", "quantity": 1}
    )
    assert status == 409
    assert body["type"] == PROBLEM_BASE + "insufficient-shares"
    assert (await alice.call("orders", "GET", "/orders"))[1]["orders"] == []


async def test_buy_beyond_the_cash_is_refused_and_changes_nothing(
    alice: Client, bank: Bank
) -> None:
    await alice.deposit(100_000)
    status, body = await alice.call(
        "orders", "POST", "/orders", json={"side": "buy", "symbol": "VTI", "quantity": 4}
    )
    assert status == 409, body
    assert body["type"] == PROBLEM_BASE + "insufficient-funds"
    assert body["available_cents"] == 100_000
    assert (await alice.balances())["cash"] == {"available_cents": 100_000, "reserved_cents": 0}
    assert (await alice.call("orders", "GET", "/orders"))[1]["orders"] == []


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"side": "buy", "symbol": "VTI", "quantity": -1}, 422),
        ({"side": "buy", "symbol": "VTI", "quantity": 0}, 422),
        ({"side": "buy", "symbol": "VTI", "quantity": 10**12}, 422),
        ({"side": "buy", "symbol": "VTI", "quantity": "10"}, 422),
        ({"side": "buy", "symbol": "VTI", "quantity": 1.5}, 422),
        ({"side": "buy", "symbol": "VTI", "quantity": True}, 422),
        ({"side": "hold", "symbol": "VTI", "quantity": 1}, 422),
        ({"side": "buy", "symbol": "vti; drop", "quantity": 1}, 422),
        ({"side": "buy", "symbol": "VTI", "quantity": 1, "price": 1}, 422),
        ({"side": "buy", "symbol": "NOPE", "quantity": 1}, 422),
        ([1, 2], 422),
        ("{not json", 400),
    ],
)
async def test_bad_orders_get_a_problem_and_change_nothing(
    payload: object, status: int, alice: Client, bank: Bank
) -> None:
    await alice.deposit(10_000_000)
    if isinstance(payload, str):
        got, body = await alice.call("orders", "POST", "/orders", data=payload)
    else:
        got, body = await alice.call("orders", "POST", "/orders", json=payload)
    assert got == status, body
    assert body["status"] == status
    if isinstance(payload, dict) and payload.get("symbol") == "NOPE":
        assert body["type"] == PROBLEM_BASE + "unknown-symbol"
    assert (await alice.balances())["cash"]["available_cents"] == 10_000_000
    assert (await alice.call("orders", "GET", "/orders"))[1]["orders"] == []


async def test_orders_need_the_gateway_identity(bank: Bank, session: aiohttp.ClientSession) -> None:
    async with session.post(
        bank.urls["orders"] + "/orders", json={"side": "buy", "symbol": "VTI", "quantity": 1}
    ) as response:
        assert response.status == 401
        assert response.content_type == "application/problem+json"
    async with session.get(
        bank.urls["orders"] + "/orders", headers={CUSTOMER_HEADER: "not-a-uuid"}
    ) as response:
        assert response.status == 401


async def test_a_customer_never_sees_another_customers_orders(
    alice: Client, bob: Client, bank: Bank
) -> None:
    await alice.deposit(1_000_000)
    order = await alice.order("buy", "BND", 1)
    status, _ = await bob.call("orders", "GET", f"/orders/{order['order_id']}")
    assert status == 404
    assert (await bob.call("orders", "GET", "/orders"))[1]["orders"] == []
    assert [o["order_id"] for o in (await alice.call("orders", "GET", "/orders"))[1]["orders"]] == [
        order["order_id"]
    ]


async def test_an_idempotency_key_places_the_order_once(alice: Client, bank: Bank) -> None:
    await alice.deposit(1_000_000)
    body = {"side": "buy", "symbol": "BND", "quantity": 2}
    headers = {**alice.headers, "Idempotency-Key": "client-key-1"}
    answers = []
    for _ in range(2):
        async with alice.session.post(
            bank.urls["orders"] + "/orders", json=body, headers=headers
        ) as response:
            answers.append((response.status, (await response.json())["order_id"]))
    assert [status for status, _ in answers] == [202, 200]
    assert answers[0][1] == answers[1][1]
    await alice.wait(answers[0][1])
    async with alice.session.post(
        bank.urls["orders"] + "/orders", json={**body, "quantity": 3}, headers=headers
    ) as response:
        assert response.status == 409


async def test_duplicated_saga_events_are_applied_once(
    alice: Client, bank: Bank, exchange: Exchange
) -> None:
    await alice.deposit(1_000_000)
    orders = bank.services["orders"]
    status, created = await alice.call(
        "orders", "POST", "/orders", json={"side": "buy", "symbol": "VTI", "quantity": 2}
    )
    assert status == 202
    oid = created["order_id"]
    db = orders.events.database
    assert db is not None
    await bank.settle()
    rows = await db.fetchall(
        "SELECT body FROM chassis_outbox WHERE type IN ('order_created', 'order_fee_charged')"
    )
    events = [decode(bytes(row["body"])) for row in rows]
    assert len(events) == 2
    for _ in range(3):  # every saga event delivered again, three times
        for event in events:
            await orders.events.publish_event(event)
    await bank.settle()
    order = await alice.wait(oid)
    assert order["state"] == "FILLED" and order["version"] == 5
    assert exchange.upstream.hits_by_path["/orders"] == 1
    assert (await alice.balances())["cash"]["available_cents"] == 1_000_000 - 50_000 - 100
    assert await alice.position("VTI") == {"available": 2, "reserved": 0}


async def test_a_failed_fee_step_refunds_cancels_and_releases_newest_first(
    tmp_path: Path, exchange: Exchange, session: aiohttp.ClientSession
) -> None:
    """fees behind a faulty proxy: the charge fails, and so does the refund until fees is back."""
    broker = InMemoryBroker()
    settings = bank_settings()
    async with run_services(
        tmp_path / "fees", names=["fees"], settings=settings, broker=broker
    ) as fees:

        async def forward(request: web.Request) -> web.Response:
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() in ("content-type", "idempotency-key", "x-customer-id")
            }
            async with session.request(
                request.method,
                fees.urls["fees"] + request.path_qs,
                data=await request.read(),
                headers=headers,
            ) as response:
                return web.Response(
                    status=response.status,
                    body=await response.read(),
                    content_type=response.content_type,
                )

        async with (
            FaultyUpstream(
                name="fees",
                routes=[
                    web.get("/fees/quote", forward),
                    web.post("/charges", forward),
                    web.post("/charges/{order_id}/refund", forward),
                ],
            ) as proxy,
            run_services(
                tmp_path / "rest",
                names=["accounts", "orders", "market"],
                urls={"exchange": exchange.url, "fees": proxy.url},
                settings=settings,
                options={"market": {"reconcile_interval_seconds": 0.1}},
                broker=broker,
            ) as rest,
        ):
            rest.services.update(fees.services)
            alice = Client(session, rest, new_id())
            await alice.deposit(1_000_000)
            status, created = await alice.call(
                "orders", "POST", "/orders", json={"side": "buy", "symbol": "VTI", "quantity": 3}
            )
            assert status == 202
            proxy.error_every = 1  # fees unreachable from now on: charge, then refund fail
            loop = asyncio.get_running_loop()
            give_up = loop.time() + 30
            while (await alice.call("orders", "GET", f"/orders/{created['order_id']}"))[1][
                "state"
            ] != "COMPENSATING":
                assert loop.time() < give_up
                await asyncio.sleep(0.02)
            assert created["order_id"] in exchange.fills()  # filled before the fee step
            await asyncio.sleep(0.5)  # the refund keeps failing: still compensating
            status, order = await alice.call("orders", "GET", f"/orders/{created['order_id']}")
            assert order["state"] == "COMPENSATING"
            proxy.clear_faults()  # fees is back: the compensations finish
            order = await alice.wait(created["order_id"])
            assert order["state"] == "FAILED"
            assert (order["failed_step"], order["failure_reason"]) == ("charge", "fees-unavailable")
            assert order["compensations"] == ["refund", "cancel", "release"]
            assert created["order_id"] not in exchange.fills()  # the fill was busted
            assert (await alice.balances())["cash"] == {
                "available_cents": 1_000_000,
                "reserved_cents": 0,
            }
            await rest.settle()
            report = await check_invariants(rest.urls | {"fees": fees.urls["fees"]}, exchange)
            assert not report.violations, report.violations


async def test_a_waiting_read_answers_each_time_the_order_moves_on(
    alice: Client, bank: Bank, exchange: Exchange
) -> None:
    await alice.deposit(1_000_000)
    await alice.call("market", "GET", "/quotes/VTI")
    exchange.upstream.latency_seconds = 0.3  # the order sits RESERVED for a while
    status, order = await alice.call(
        "orders", "POST", "/orders", json={"side": "buy", "symbol": "VTI", "quantity": 1}
    )
    assert status == 202, order
    seen = [order["version"]]
    for _ in range(6):  # one read per state change: four of them
        path = f"/orders/{order['order_id']}?version={order['version']}&wait_seconds=10"
        status, order = await alice.call("orders", "GET", path)
        assert status == 200, order
        seen.append(order["version"])
        if order["state"] in ("FILLED", "FAILED"):
            break
    assert order["state"] == "FILLED", order
    assert seen == sorted(set(seen)) and len(seen) <= 5, seen
    # A settled order never changes again: the read answers it as it is.
    path = f"/orders/{order['order_id']}?version={order['version']}&wait_seconds=10"
    assert await alice.call("orders", "GET", path) == (200, order)
    # Without a version, the wait starts from the version read first.
    status, again = await alice.call("orders", "GET", f"/orders/{order['order_id']}?wait_seconds=1")
    assert (status, again) == (200, order)


async def test_a_waiting_read_refuses_bad_parameters(alice: Client, bank: Bank) -> None:
    await alice.deposit(1_000_000)
    order = await alice.order("buy", "BND", 1)
    base = f"/orders/{order['order_id']}"
    for query in (
        "wait_seconds=abc",
        "wait_seconds=-1",
        "wait_seconds=11",
        "wait_seconds=nan",
        "wait_seconds=1&version=0",
        "wait_seconds=1&version=x",
    ):
        status, body = await alice.call("orders", "GET", f"{base}?{query}")
        assert status == 422, (query, body)
        assert body["type"].startswith(PROBLEM_BASE + "invalid-"), body
    status, _ = await alice.call("orders", "GET", f"/orders/{new_id()}?wait_seconds=5&version=1")
    assert status == 404
