"""fees: the fee policy, charges and refunds (idempotent, tombstones)."""

from __future__ import annotations

import pytest
from simplebank.common import new_id
from simplebank.fees import fee_for
from simplebank.services import Bank

from conftest import Client

pytestmark = pytest.mark.one_service


@pytest.mark.parametrize(
    ("gross", "fee"),
    [
        (1, 1),
        (50, 50),
        (100, 100),
        (5_000, 100),
        (100_000, 100),
        (1_000_000, 1_000),
        (1_000_001, 1_001),
    ],
)
def test_the_fee_is_ten_basis_points_at_least_a_dollar_never_more_than_the_gross(
    gross: int, fee: int
) -> None:
    assert fee_for(gross) == fee


async def charge(client: Client, oid: str, gross: int) -> tuple[int, dict]:
    return await client.call(
        "fees",
        "POST",
        "/charges",
        json={
            "order_id": oid,
            "customer_id": client.customer,
            "side": "buy",
            "symbol": "VTI",
            "gross_cents": gross,
        },
    )


async def refund(client: Client, oid: str) -> tuple[int, dict]:
    return await client.call(
        "fees", "POST", f"/charges/{oid}/refund", json={"customer_id": client.customer}
    )


async def test_a_charge_and_its_refund_each_count_once(alice: Client, bank: Bank) -> None:
    oid = new_id()
    assert [(await charge(alice, oid, 2_000_000))[0] for _ in range(2)] == [201, 200]
    _, audit = await alice.call("fees", "GET", "/internal/audit")
    assert audit["charged_cents"] == 2_000
    assert [(await refund(alice, oid))[0] for _ in range(2)] == [200, 200]
    _, audit = await alice.call("fees", "GET", "/internal/audit")
    assert (audit["charged_cents"], audit["refunded_cents"], audit["net_cents"]) == (
        2_000,
        2_000,
        0,
    )


async def test_a_refund_before_the_charge_refuses_the_late_charge(
    alice: Client, bank: Bank
) -> None:
    oid = new_id()
    status, body = await refund(alice, oid)
    assert status == 200 and body["state"] == "REFUNDED" and body["fee_cents"] == 0
    assert (await charge(alice, oid, 5_000))[0] == 409
    _, audit = await alice.call("fees", "GET", "/internal/audit")
    assert audit["net_cents"] == 0


@pytest.mark.parametrize("gross", ["", "0", "-1", "abc", str(10**13)])
async def test_a_quote_needs_a_sensible_gross(gross: str, alice: Client, bank: Bank) -> None:
    status, _ = await alice.call("fees", "GET", f"/fees/quote?gross_cents={gross}")
    assert status == 422


async def test_a_quote_applies_the_policy(alice: Client, bank: Bank) -> None:
    assert (await alice.call("fees", "GET", "/fees/quote?gross_cents=250000"))[1] == {
        "gross_cents": 250_000,
        "fee_cents": 250,
    }
