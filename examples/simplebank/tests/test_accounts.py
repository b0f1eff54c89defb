"""accounts: deposits, reservations (reserve, release, settle), the ledger, bad input."""

from __future__ import annotations

import pytest
from simplebank.common import PROBLEM_BASE, new_id
from simplebank.services import Bank

from conftest import Client

pytestmark = pytest.mark.one_service


async def reserve(client: Client, order_id: str, asset: str, amount: int) -> tuple[int, dict]:
    return await client.call(
        "accounts",
        "POST",
        "/reservations",
        json={
            "order_id": order_id,
            "customer_id": client.customer,
            "asset": asset,
            "amount": amount,
        },
    )


async def release(client: Client, order_id: str) -> tuple[int, dict]:
    return await client.call(
        "accounts",
        "POST",
        f"/reservations/{order_id}/release",
        json={"customer_id": client.customer, "reason": "test"},
    )


async def test_a_new_customer_has_nothing(alice: Client, bank: Bank) -> None:
    assert await alice.balances() == {
        "customer_id": alice.customer,
        "version": 0,
        "cash": {"available_cents": 0, "reserved_cents": 0},
        "positions": [],
    }


async def test_a_repeated_deposit_is_applied_once(alice: Client, bank: Bank) -> None:
    body = {"deposit_id": new_id(), "amount_cents": 12_345}
    first = await alice.call("accounts", "POST", "/deposits", json=body)
    again = await alice.call("accounts", "POST", "/deposits", json=body)
    assert (first[0], again[0]) == (201, 200)
    assert again[1]["cash"]["available_cents"] == 12_345
    assert again[1]["version"] == 1
    status, problem = await alice.call(
        "accounts", "POST", "/deposits", json={**body, "amount_cents": 1}
    )
    assert status == 409 and problem["type"] == PROBLEM_BASE + "conflict"


@pytest.mark.parametrize(
    "body",
    [
        {"deposit_id": "d", "amount_cents": 100},
        {"amount_cents": 100},
        {"deposit_id": "9f1b6c3e-0000-4000-8000-000000000000", "amount_cents": -5},
        {"deposit_id": "9f1b6c3e-0000-4000-8000-000000000000", "amount_cents": 0},
        {"deposit_id": "9f1b6c3e-0000-4000-8000-000000000000", "amount_cents": 10**13},
        {"deposit_id": "9f1b6c3e-0000-4000-8000-000000000000", "amount_cents": "100"},
        {"deposit_id": "9f1b6c3e-0000-4000-8000-000000000000", "amount_cents": 1.5},
    ],
)
async def test_invalid_deposits_are_refused_and_change_nothing(
    body: dict, alice: Client, bank: Bank
) -> None:
    status, problem = await alice.call("accounts", "POST", "/deposits", json=body)
    assert status == 422, problem
    assert (await alice.balances())["cash"]["available_cents"] == 0


async def test_malformed_json_is_a_400_problem(alice: Client, bank: Bank) -> None:
    status, problem = await alice.call("accounts", "POST", "/deposits", data="{oops")
    assert status == 400 and problem["title"] == "Malformed JSON"


async def test_reserve_is_idempotent_by_order_id(alice: Client, bank: Bank) -> None:
    await alice.deposit(10_000)
    oid = new_id()
    assert (await reserve(alice, oid, "USD", 4_000))[0] == 201
    assert (await reserve(alice, oid, "USD", 4_000))[0] == 200
    assert (await alice.balances())["cash"] == {"available_cents": 6_000, "reserved_cents": 4_000}
    status, problem = await reserve(alice, oid, "USD", 5_000)
    assert status == 409 and problem["type"] == PROBLEM_BASE + "conflict"
    assert (await release(alice, oid))[0] == 200


async def test_reserve_beyond_the_balance_is_refused(alice: Client, bank: Bank) -> None:
    await alice.deposit(1_000)
    status, problem = await reserve(alice, new_id(), "USD", 1_001)
    assert status == 409
    assert problem["type"] == PROBLEM_BASE + "insufficient-funds"
    assert (problem["available_cents"], problem["required_cents"]) == (1_000, 1_001)
    status, problem = await reserve(alice, new_id(), "VTI", 1)
    assert problem["type"] == PROBLEM_BASE + "insufficient-shares"
    assert (await alice.balances())["cash"] == {"available_cents": 1_000, "reserved_cents": 0}


async def test_a_refused_reserve_holds_nothing_and_can_be_asked_again(
    alice: Client, bank: Bank
) -> None:
    await alice.deposit(1_000)
    oid = new_id()
    assert (await reserve(alice, oid, "USD", 1_500))[0] == 409
    status, _ = await alice.call("accounts", "GET", f"/reservations/{oid}")
    assert status == 404
    await alice.deposit(1_000)
    status, held = await reserve(alice, oid, "USD", 1_500)
    assert (status, held["state"]) == (201, "HELD")
    assert (await alice.balances())["cash"] == {"available_cents": 500, "reserved_cents": 1_500}
    assert (await release(alice, oid))[0] == 200


async def test_release_returns_the_money_once_and_blocks_a_settle(
    alice: Client, bank: Bank
) -> None:
    await alice.deposit(10_000)
    oid = new_id()
    await reserve(alice, oid, "USD", 4_000)
    first, again = await release(alice, oid), await release(alice, oid)
    assert first[0] == again[0] == 200
    assert again[1]["state"] == "RELEASED"
    assert (await alice.balances())["cash"] == {"available_cents": 10_000, "reserved_cents": 0}
    status, _ = await alice.call(
        "accounts",
        "POST",
        f"/reservations/{oid}/settle",
        json={
            "customer_id": alice.customer,
            "side": "buy",
            "symbol": "VTI",
            "quantity": 1,
            "price_cents": 100,
            "fee_cents": 1,
        },
    )
    assert status == 409


async def test_a_release_before_the_reserve_leaves_a_tombstone(alice: Client, bank: Bank) -> None:
    await alice.deposit(10_000)
    oid = new_id()
    status, body = await release(alice, oid)  # the saga gave up before the reserve arrived
    assert status == 200 and body["state"] == "RELEASED" and body["amount"] == 0
    status, _ = await reserve(alice, oid, "USD", 4_000)  # ... which arrives late
    assert status == 409
    assert (await alice.balances())["cash"]["available_cents"] == 10_000


async def test_settle_moves_cash_shares_and_the_fee_once(alice: Client, bank: Bank) -> None:
    await alice.deposit(10_000)
    oid = new_id()
    await reserve(alice, oid, "USD", 5_000)
    settle = {
        "customer_id": alice.customer,
        "side": "buy",
        "symbol": "VTI",
        "quantity": 4,
        "price_cents": 1_000,
        "fee_cents": 100,
    }
    for _ in range(2):
        status, body = await alice.call(
            "accounts", "POST", f"/reservations/{oid}/settle", json=settle
        )
        assert status == 200, body
        assert body["settlement"]["cash_delta_cents"] == -4_100
    assert (await alice.balances())["cash"] == {"available_cents": 5_900, "reserved_cents": 0}
    assert await alice.position("VTI") == {"available": 4, "reserved": 0}
    assert (await release(alice, oid))[0] == 409  # settled: never both
    _, audit = await alice.call("accounts", "GET", "/internal/audit")
    assert audit["totals"]["fees_cents"] == 100
    assert audit["ledger_sums"] == {"USD": 0, "VTI": 0}


async def test_a_fill_that_does_not_fit_the_reservation_is_refused(
    alice: Client, bank: Bank
) -> None:
    await alice.deposit(10_000)
    oid = new_id()
    await reserve(alice, oid, "USD", 1_000)
    status, _ = await alice.call(
        "accounts",
        "POST",
        f"/reservations/{oid}/settle",
        json={
            "customer_id": alice.customer,
            "side": "buy",
            "symbol": "VTI",
            "quantity": 1,
            "price_cents": 1_000,
            "fee_cents": 100,
        },
    )
    assert status == 409
    await release(alice, oid)
