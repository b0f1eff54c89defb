"""holdings, the CQRS read model: built from events, applied once however often delivered."""

from __future__ import annotations

from typing import Any

import aiohttp
from simplebank.services import Bank

from chassis.events import Event, decode
from conftest import Customer


async def outbox(bank: Bank, service: str, *types: str) -> list[Event]:
    db = bank.services[service].events.database
    assert db is not None
    marks = ",".join("?" * len(types))
    rows = await db.fetchall(f"SELECT body FROM chassis_outbox WHERE type IN ({marks})", types)
    return [decode(bytes(row["body"])) for row in rows]


async def audit(session: aiohttp.ClientSession, bank: Bank, service: str) -> dict[str, Any]:
    async with session.get(bank.urls[service] + "/internal/audit") as response:
        assert response.status == 200
        return await response.json()  # type: ignore[no-any-return]


async def test_duplicated_events_are_applied_once_by_the_read_model(
    anna: Customer, bank: Bank, session: aiohttp.ClientSession
) -> None:
    await anna.deposit(1_000_000)
    await anna.order("buy", "VTI", 2)
    await bank.settle()
    before = await anna.ok("GET", "/portfolio")
    notes = await anna.ok("GET", "/notifications")
    events = await outbox(bank, "accounts", "deposit_made", "reservation_settled")
    events += await outbox(bank, "orders", "order_created", "order_filled")
    assert len(events) == 4
    for _ in range(3):  # every event delivered again, three times
        for event in events:
            await bank.services[event.source].events.publish_event(event)
    await bank.settle()
    after = await anna.ok("GET", "/portfolio")
    assert after == before
    assert after["cash_cents"] == 1_000_000 - 50_000 - 100
    assert [(p["symbol"], p["quantity"]) for p in after["positions"]] == [("VTI", 2)]
    assert await anna.ok("GET", "/notifications") == notes


async def test_holdings_follow_a_sale_with_the_average_cost(anna: Customer, bank: Bank) -> None:
    await anna.deposit(1_000_000)
    await anna.order("buy", "BND", 10)  # 73 000 + 100
    await anna.order("buy", "BND", 30)  # 219 000 + 219
    await anna.order("sell", "BND", 20)
    await bank.settle()
    [position] = (await anna.ok("GET", "/portfolio"))["positions"]
    assert position["quantity"] == 20
    assert position["cost_basis_cents"] == -(-(73_100 + 219_219) * 20 // 40)


async def test_a_customer_with_no_activity_has_an_empty_portfolio_at_version_0(
    anna: Customer,
) -> None:
    body = await anna.ok("GET", "/portfolio")
    assert (body["version"], body["cash_cents"], body["positions"]) == (0, 0, [])
