"""strategies: investing by allocations, idempotently, with what cannot be bought left as cash."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from simplebank.common import CUSTOMER_HEADER, new_id
from simplebank.exchange import Exchange
from simplebank.services import SERVICES, run_services
from simplebank.testing import check_invariants

from chassis.events import InMemoryBroker
from chassis.testing import FaultyUpstream
from conftest import Customer, bank_settings

SIXTY_FORTY = {
    "name": "60/40",
    "allocations": [{"symbol": "VTI", "percent": 60}, {"symbol": "BND", "percent": 40}],
}


async def strategy(customer: Customer, body: dict[str, Any] = SIXTY_FORTY) -> str:
    return (await customer.ok("POST", "/strategies", json=body, status=201))["strategy_id"]  # type: ignore[no-any-return]


async def test_an_investment_retried_with_its_key_places_its_orders_once(anna: Customer) -> None:
    await anna.deposit(2_000_000)
    sid = await strategy(anna)
    path, headers = f"/strategies/{sid}/investments", {"Idempotency-Key": "invest-1"}
    status, first = await anna.call("POST", path, json={"amount_cents": 500_000}, headers=headers)
    assert status == 202, first
    status, again = await anna.call("POST", path, json={"amount_cents": 500_000}, headers=headers)
    assert status == 200 and again["investment_id"] == first["investment_id"]
    status, _ = await anna.call("POST", path, json={"amount_cents": 1}, headers=headers)
    assert status == 409
    await anna.poll(f"/investments/{first['investment_id']}", lambda i: i["state"] == "COMPLETED")
    assert len((await anna.ok("GET", "/orders"))["orders"]) == 2


async def test_an_amount_too_small_for_a_share_is_skipped_and_left_as_cash(
    anna: Customer,
) -> None:
    await anna.deposit(100_000)
    sid = await strategy(anna)
    invested = await anna.ok(
        "POST", f"/strategies/{sid}/investments", json={"amount_cents": 20_000}, status=202
    )
    # 12 000 cannot buy one VTI (limit 26 250); 8 000 buys one BND (limit 7 665 + fee 100).
    states = {o["symbol"]: (o["state"], o["reason"]) for o in invested["orders"]}
    assert states["VTI"] == ("SKIPPED", "amount-too-small")
    done = await anna.poll(
        f"/investments/{invested['investment_id']}", lambda i: i["state"] != "IN_PROGRESS"
    )
    assert done["state"] == "PARTIAL" and done["spent_cents"] == 7300 + 100


async def test_an_investment_beyond_the_cash_is_refused_order_by_order(anna: Customer) -> None:
    await anna.deposit(10_000)
    sid = await strategy(anna)
    invested = await anna.ok(
        "POST", f"/strategies/{sid}/investments", json={"amount_cents": 1_000_000}, status=202
    )
    assert {o["state"] for o in invested["orders"]} == {"REJECTED"}
    assert {o["reason"] for o in invested["orders"]} == {"insufficient-funds"}
    assert invested["state"] == "FAILED"
    assert await anna.cash() == {"available_cents": 10_000, "reserved_cents": 0}


async def test_an_order_whose_answer_was_lost_is_confirmed_not_rejected(
    tmp_path: Path, exchange: Exchange, session: aiohttp.ClientSession
) -> None:
    """orders accepts the investment's orders but its answers never reach strategies."""
    broker = InMemoryBroker()
    others = [name for name in SERVICES if name != "strategies"]
    lose_answers = True
    async with run_services(
        tmp_path / "bank",
        names=others,
        urls={"exchange": exchange.url},
        settings=bank_settings(),
        options={"market": {"reconcile_interval_seconds": 0.1}},
        broker=broker,
    ) as bank:

        async def forward(request: web.Request) -> web.Response:
            """Deliver the request to orders; then, while answers are lost, never answer."""
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() in ("content-type", "idempotency-key", "x-customer-id")
            }
            async with session.request(
                request.method,
                bank.urls["orders"] + request.path_qs,
                data=await request.read(),
                headers=headers,
            ) as response:
                body = await response.read()
            if lose_answers:
                await asyncio.sleep(5)  # past strategies' deadline: the answer is lost
            return web.Response(status=response.status, body=body, content_type="application/json")

        async with (
            FaultyUpstream(name="orders", routes=[web.post("/orders", forward)]) as proxy,
            run_services(
                tmp_path / "strategies",
                names=["strategies"],
                urls={**bank.urls, "orders": proxy.url},
                settings=bank_settings(client={"timeout_seconds": 0.5, "deadline_seconds": 1.5}),
                options={"strategies": {"reconcile_interval_seconds": 3600}},
                broker=broker,
            ) as strategies,
        ):
            customer = new_id()
            who = {CUSTOMER_HEADER: customer}
            urls = {**strategies.urls, **bank.urls}  # orders itself, not the proxy

            async def call(service: str, method: str, path: str, body: Any = None) -> Any:
                async with session.request(
                    method, urls[service] + path, json=body, headers=who
                ) as response:
                    return response.status, await response.json(content_type=None)

            status, _ = await call(
                "accounts", "POST", "/deposits", {"deposit_id": new_id(), "amount_cents": 10**6}
            )
            assert status == 201
            status, created = await call("strategies", "POST", "/strategies", SIXTY_FORTY)
            assert status == 201, created
            path = f"/strategies/{created['strategy_id']}/investments"
            status, invested = await call("strategies", "POST", path, {"amount_cents": 500_000})
            assert status == 202, invested
            # No answer is not a refusal: both are pending, without an order id yet.
            assert [(o["state"], o["order_id"]) for o in invested["orders"]] == [
                ("PENDING", None),
                ("PENDING", None),
            ]
            assert invested["state"] == "IN_PROGRESS"
            status, placed = await call("orders", "GET", "/orders")
            by_symbol = {o["symbol"]: o["order_id"] for o in placed["orders"]}
            assert sorted(by_symbol) == ["BND", "VTI"]  # orders has them, once each
            status, audit = await call("strategies", "GET", "/internal/audit")
            assert len(audit["orders_without_outcome"]) == 2

            lose_answers = False  # orders answers again: the same key finds its orders
            status, left = await call("strategies", "POST", "/internal/reconcile")
            assert (status, left) == (200, {"unconfirmed_orders": 0})
            iid = invested["investment_id"]
            loop = asyncio.get_running_loop()
            give_up = loop.time() + 30
            while True:
                status, investment = await call("strategies", "GET", f"/investments/{iid}")
                if investment["state"] != "IN_PROGRESS":
                    break
                assert loop.time() < give_up, investment
                await asyncio.sleep(0.05)
            assert investment["state"] == "COMPLETED", investment
            assert {o["symbol"]: o["order_id"] for o in investment["orders"]} == by_symbol
            status, placed = await call("orders", "GET", "/orders")
            assert len(placed["orders"]) == 2  # sent again, placed once
            await bank.settle()
            await strategies.settle()
            report = await check_invariants(urls, exchange)
            assert not report.violations, report.violations
