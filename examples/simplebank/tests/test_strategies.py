"""strategies: investing by allocations, idempotently, with what cannot be bought left as cash."""

from __future__ import annotations

from typing import Any

from conftest import Customer

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
