"""The public API, black-box through the gateway: every endpoint, sagas, isolation, bad input.

The ``bank`` fixture runs every service and checks the invariants after each test
(books balanced, money conserved, read model = books, every order terminal).
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest
from simplebank.auth import issue_token
from simplebank.common import CUSTOMER_HEADER, PROBLEM_BASE, AuthSettings, new_id
from simplebank.exchange import Exchange
from simplebank.services import Bank

from conftest import Customer


async def test_index_lists_the_public_routes(anna: Customer) -> None:
    body = await anna.ok("GET", "/")
    paths = {route["path"] for route in body["routes"]}
    assert {"/signup", "/login", "/orders/{order_id}", "/portfolio", "/notifications"} <= paths
    assert not any(path.startswith("/internal") for path in paths)


async def test_sign_up_log_in_and_who_am_i(session: aiohttp.ClientSession, bank: Bank) -> None:
    carl = Customer(session, bank, "Carl")
    await carl.sign_up()
    me = await carl.ok("GET", "/me")
    assert me == {
        "customer_id": carl.customer_id,
        "email": carl.email,
        "name": "Carl",
        "created_at": me["created_at"],
    }
    status, body = await carl.call(
        "POST", "/login", json={"email": carl.email.upper(), "password": carl.password}
    )
    assert status == 200 and body["token_type"] == "Bearer" and body["expires_in"] == 3600
    async with session.get(bank.urls["customers"] + "/internal/audit") as response:
        assert (await response.json())["unhashed_passwords"] == 0


async def test_a_taken_email_and_bad_credentials_are_refused(anna: Customer) -> None:
    status, body = await anna.call(
        "POST", "/signup", json={"email": anna.email, "password": "another password", "name": "A"}
    )
    assert status == 409 and body["type"] == PROBLEM_BASE + "email-taken"
    for email, password in ((anna.email, "wrong password"), ("nobody@example.com", "whatever1")):
        status, body = await anna.call(
            "POST", "/login", json={"email": email, "password": password}, auth=False
        )
        assert status == 401 and body["type"] == PROBLEM_BASE + "invalid-credentials"


CUSTOMER_ROUTES = [
    ("GET", "/me"),
    ("POST", "/deposits"),
    ("GET", "/balances"),
    ("POST", "/orders"),
    ("POST", "/shares/buy"),
    ("POST", "/shares/sell"),
    ("GET", "/orders"),
    ("GET", f"/orders/{new_id()}"),
    ("GET", "/portfolio"),
    ("POST", "/strategies"),
    ("GET", "/strategies"),
    ("GET", f"/strategies/{new_id()}"),
    ("POST", f"/strategies/{new_id()}/investments"),
    ("GET", f"/strategies/{new_id()}/investments"),
    ("GET", f"/investments/{new_id()}"),
    ("GET", "/notifications"),
]


async def test_customer_routes_need_a_valid_token(anna: Customer, bank: Bank) -> None:
    auth = bank.services["gateway"].settings.auth  # type: ignore[attr-defined]
    expired = issue_token(anna.customer_id or "", auth, now=time.time() - 7200)
    forged = issue_token(
        anna.customer_id or "", AuthSettings(token_secret="another key of at least 32 chars!!")
    )
    bad = {
        "none": None,
        "not bearer": f"Basic {anna.token}",
        "garbage": "Bearer not.a.token",
        "expired": f"Bearer {expired}",
        "forged": f"Bearer {forged}",
    }
    for method, path in CUSTOMER_ROUTES:
        for why, header in bad.items():
            headers = {CUSTOMER_HEADER: anna.customer_id or ""}  # never trusted from outside
            if header is not None:
                headers["Authorization"] = header
            status, body = await anna.call(method, path, json={}, headers=headers, auth=False)
            assert status == 401, (method, path, why, body)
            assert body["type"] == PROBLEM_BASE + "unauthenticated"


async def test_a_client_sent_customer_header_is_replaced_by_the_token_identity(
    anna: Customer, ben: Customer
) -> None:
    await ben.deposit(70_000)
    status, body = await anna.call(
        "GET", "/balances", headers={CUSTOMER_HEADER: ben.customer_id or ""}
    )
    assert status == 200 and body["customer_id"] == anna.customer_id
    assert body["cash"]["available_cents"] == 0


async def test_deposit_is_idempotent_by_key_and_shows_in_balances(anna: Customer) -> None:
    headers = {"Idempotency-Key": "first-deposit"}
    status, body = await anna.call(
        "POST", "/deposits", json={"amount_cents": 150_000}, headers=headers
    )
    assert status == 201 and body["cash"] == {"available_cents": 150_000, "reserved_cents": 0}
    status, again = await anna.call(
        "POST", "/deposits", json={"amount_cents": 150_000}, headers=headers
    )
    assert status == 200 and again["cash"]["available_cents"] == 150_000
    status, other = await anna.call("POST", "/deposits", json={"amount_cents": 1}, headers=headers)
    assert status == 409 and other["type"] == PROBLEM_BASE + "conflict"
    assert (await anna.ok("GET", "/balances"))["version"] == body["version"]


async def test_buy_and_sell_fill_with_the_right_cash_positions_and_fees(
    anna: Customer, exchange: Exchange
) -> None:
    await anna.deposit(1_000_000)
    bought = await anna.order("buy", "VTI", 3)
    assert bought["state"] == "FILLED" and bought["version"] == 5, bought
    assert (bought["price_cents"], bought["gross_cents"], bought["fee_cents"]) == (
        25000,
        75_000,
        100,
    )
    assert await anna.cash() == {"available_cents": 1_000_000 - 75_100, "reserved_cents": 0}
    assert await anna.position("VTI") == {"available": 3, "reserved": 0}
    exchange.set_price("VTI", 26000)
    status, placed = await anna.call("POST", "/shares/sell", json={"symbol": "VTI", "quantity": 2})
    assert status == 202 and placed["side"] == "sell"
    sold = await anna.wait_order(placed["order_id"])
    assert sold["state"] == "FILLED" and sold["gross_cents"] == 52_000 and sold["fee_cents"] == 100
    assert await anna.cash() == {
        "available_cents": 1_000_000 - 75_100 + 52_000 - 100,
        "reserved_cents": 0,
    }
    assert await anna.position("VTI") == {"available": 1, "reserved": 0}
    listed = await anna.ok("GET", "/orders")
    assert [o["order_id"] for o in listed["orders"]] == [sold["order_id"], bought["order_id"]]
    filled = await anna.ok("GET", "/orders?state=FILLED&limit=1")
    assert [o["order_id"] for o in filled["orders"]] == [sold["order_id"]]
    await anna.poll(
        "/notifications",
        lambda b: [n["kind"] for n in b["notifications"]].count("order_filled") == 2,
    )


async def test_shares_buy_is_the_books_route_for_a_buy(anna: Customer) -> None:
    await anna.deposit(100_000)
    status, placed = await anna.call("POST", "/shares/buy", json={"symbol": "BND", "quantity": 1})
    assert status == 202 and placed["side"] == "buy"
    assert (await anna.wait_order(placed["order_id"]))["state"] == "FILLED"


async def test_a_waiting_read_follows_an_order_to_its_end_through_the_gateway(
    anna: Customer,
) -> None:
    await anna.deposit(100_000)
    order = await anna.ok(
        "POST", "/orders", json={"side": "buy", "symbol": "BND", "quantity": 1}, status=202
    )
    for _ in range(6):  # one read per state change: four of them
        if order["state"] in ("FILLED", "FAILED"):
            break
        path = f"/orders/{order['order_id']}?version={order['version']}&wait_seconds=10"
        order = await anna.ok("GET", path)
    assert order["state"] == "FILLED" and order["version"] == 5, order
    status, body = await anna.call("GET", f"/orders/{order['order_id']}?wait_seconds=99")
    assert status == 422 and body["type"] == PROBLEM_BASE + "invalid-wait"


async def test_exchange_outage_fails_the_order_releases_cash_and_notifies(
    anna: Customer, exchange: Exchange
) -> None:
    await anna.deposit(500_000)
    await anna.order("buy", "VTI", 1)  # market now has a recent quote to price orders with
    cash = await anna.cash()
    await exchange.outage()
    failed = await anna.order("buy", "VTI", 2)
    assert failed["state"] == "FAILED" and failed["failure_reason"] == "exchange-unavailable"
    assert failed["compensations"] == ["cancel", "release"] and failed["fee_cents"] is None
    assert await anna.cash() == cash  # the reservation was released, nothing charged
    assert cash["reserved_cents"] == 0
    notes = await anna.poll(
        "/notifications",
        lambda b: any(n["kind"] == "order_failed" for n in b["notifications"]),
    )
    message = next(n for n in notes["notifications"] if n["kind"] == "order_failed")["message"]
    assert "exchange-unavailable" in message
    await exchange.recover()


async def test_portfolio_version_increases_and_values_holdings_at_market_prices(
    anna: Customer, bank: Bank, session: aiohttp.ClientSession
) -> None:
    empty = await anna.ok("GET", "/portfolio")
    assert empty["version"] == 0 and empty["positions"] == [] and empty["total_value_cents"] == 0
    await anna.deposit(1_000_000)
    funded = await anna.portfolio_newer_than(0)
    assert funded["cash_cents"] == 1_000_000
    await anna.order("buy", "BND", 10)  # 73 000 + fee 100
    # Events of accounts and orders may be applied in any order: wait for both.
    after = await anna.poll(
        "/portfolio",
        lambda p: p["version"] > funded["version"] and p["pending_orders"] == 0 and p["positions"],
    )
    [position] = after["positions"]
    assert position == {
        "symbol": "BND",
        "quantity": 10,
        "cost_basis_cents": 73_100,
        "price_cents": 7300,
        "market_value_cents": 73_000,
        "gain_cents": -100,
    }
    assert after["cash_cents"] == 1_000_000 - 73_100
    assert after["total_value_cents"] == 1_000_000 - 73_100 + 73_000
    # market-data's price moves: the composition values the same holdings anew.
    async with session.put(
        bank.urls["market-data"] + "/prices/BND", json={"price_cents": 8000}
    ) as response:
        assert response.status == 200
    revalued = await anna.ok("GET", "/portfolio")
    assert revalued["positions"][0]["market_value_cents"] == 80_000
    assert revalued["version"] == after["version"]  # prices are not part of the read model


async def test_instruments_and_prices(anna: Customer) -> None:
    instruments = (await anna.ok("GET", "/instruments"))["instruments"]
    vti = next(i for i in instruments if i["symbol"] == "VTI")
    assert vti["name"] == "Vanguard Total Stock Market ETF" and vti["price_cents"] == 25000
    assert (await anna.ok("GET", "/instruments/BND"))["asset_class"] == "bond-etf"
    status, _ = await anna.call("GET", "/instruments/NOPE")
    assert status == 404
    status, _ = await anna.call("GET", "/instruments/..%2Finternal%2Faudit")
    assert status == 404
    prices = await anna.ok("GET", "/prices?symbols=VTI,BND")
    assert prices["prices"] == {"VTI": 25000, "BND": 7300}
    status, body = await anna.call("GET", "/prices?symbols=vti;DROP")
    assert status == 422 and body["type"] == PROBLEM_BASE + "invalid-symbols"


async def test_a_strategy_invests_an_amount_by_its_allocations(anna: Customer) -> None:
    await anna.deposit(2_000_000)
    strategy = await anna.ok(
        "POST",
        "/strategies",
        json={
            "name": "Classic 60/40",
            "allocations": [{"symbol": "VTI", "percent": 60}, {"symbol": "BND", "percent": 40}],
        },
        status=201,
    )
    sid = strategy["strategy_id"]
    assert (await anna.ok("GET", f"/strategies/{sid}"))["name"] == "Classic 60/40"
    assert [s["strategy_id"] for s in (await anna.ok("GET", "/strategies"))["strategies"]] == [sid]
    investment = await anna.ok(
        "POST", f"/strategies/{sid}/investments", json={"amount_cents": 1_000_000}, status=202
    )
    # 600 000 for VTI: limit 26 250 -> 22 shares; 400 000 for BND: limit 7 665 -> 52 shares.
    assert [(o["symbol"], o["quantity"]) for o in investment["orders"]] == [
        ("VTI", 22),
        ("BND", 52),
    ]
    done = await anna.poll(
        f"/investments/{investment['investment_id']}", lambda i: i["state"] != "IN_PROGRESS"
    )
    assert done["state"] == "COMPLETED", done
    assert done["spent_cents"] == 22 * 25000 + 550 + 52 * 7300 + 380
    assert done["spent_cents"] <= 1_000_000
    assert await anna.position("VTI") == {"available": 22, "reserved": 0}
    assert await anna.position("BND") == {"available": 52, "reserved": 0}
    listed = await anna.ok("GET", f"/strategies/{sid}/investments")
    assert [i["investment_id"] for i in listed["investments"]] == [investment["investment_id"]]


@pytest.mark.parametrize(
    ("allocations", "kind"),
    [
        (
            [{"symbol": "VTI", "percent": 60}, {"symbol": "BND", "percent": 30}],
            "invalid-allocations",
        ),
        (
            [{"symbol": "VTI", "percent": 50}, {"symbol": "VTI", "percent": 50}],
            "invalid-allocations",
        ),
        ([{"symbol": "NOPE", "percent": 100}], "unknown-symbol"),
        ([{"symbol": "VTI", "percent": 0}, {"symbol": "BND", "percent": 100}], None),
        ([], None),
    ],
)
async def test_invalid_strategies_are_refused(
    anna: Customer, allocations: list[dict[str, Any]], kind: str | None
) -> None:
    status, body = await anna.call(
        "POST", "/strategies", json={"name": "bad", "allocations": allocations}
    )
    assert status == 422, body
    if kind is not None:
        assert body["type"] == PROBLEM_BASE + kind
    assert (await anna.ok("GET", "/strategies"))["strategies"] == []


async def test_notifications_tell_the_customer_what_happened(anna: Customer) -> None:
    await anna.deposit(12_345)
    notes = await anna.poll("/notifications", lambda b: len(b["notifications"]) >= 2)
    messages = [n["message"] for n in notes["notifications"]]
    assert messages == ["Deposit of $123.45 received.", "Welcome to SimpleBank, Anna!"]
    status, body = await anna.call("GET", "/notifications?limit=0")
    assert status == 422 and body["type"] == PROBLEM_BASE + "invalid-limit"


async def test_a_customer_cannot_see_or_touch_another_customers_resources(
    anna: Customer, ben: Customer
) -> None:
    await ben.deposit(1_000_000)
    order = await ben.order("buy", "VTI", 1)
    strategy = await ben.ok(
        "POST",
        "/strategies",
        json={"name": "all in", "allocations": [{"symbol": "BND", "percent": 100}]},
        status=201,
    )
    sid = strategy["strategy_id"]
    investment = await ben.ok(
        "POST", f"/strategies/{sid}/investments", json={"amount_cents": 100_000}, status=202
    )
    await ben.poll(
        f"/investments/{investment['investment_id']}", lambda i: i["state"] != "IN_PROGRESS"
    )
    await anna.deposit(1_000_000)
    for method, path, body in [
        ("GET", f"/orders/{order['order_id']}", None),
        ("GET", f"/strategies/{sid}", None),
        ("GET", f"/strategies/{sid}/investments", None),
        ("POST", f"/strategies/{sid}/investments", {"amount_cents": 100_000}),
        ("GET", f"/investments/{investment['investment_id']}", None),
    ]:
        status, answer = await anna.call(method, path, json=body)
        assert status in (403, 404), (method, path, answer)
    assert (await anna.ok("GET", "/orders"))["orders"] == []
    assert (await anna.ok("GET", "/strategies"))["strategies"] == []
    assert (await anna.ok("GET", "/portfolio"))["positions"] == []
    kinds = {n["kind"] for n in (await anna.ok("GET", "/notifications"))["notifications"]}
    assert "order_filled" not in kinds
    # Ben's books are untouched by Anna's attempts.
    assert (await ben.ok("GET", f"/strategies/{sid}/investments"))["investments"][0][
        "investment_id"
    ] == investment["investment_id"]
    assert await anna.cash() == {"available_cents": 1_000_000, "reserved_cents": 0}


BAD_ORDERS: list[tuple[str, Any, int, str | None]] = [
    ("bad JSON", b'{"side": "buy",', 400, None),
    ("not an object", ["buy", "VTI", 1], 422, "invalid-body"),
    ("unknown symbol", {"side": "buy", "symbol": "ZZZZ", "quantity": 1}, 422, "unknown-symbol"),
    ("lower-case symbol", {"side": "buy", "symbol": "vti", "quantity": 1}, 422, None),
    ("negative quantity", {"side": "buy", "symbol": "VTI", "quantity": -5}, 422, None),
    ("zero quantity", {"side": "buy", "symbol": "VTI", "quantity": 0}, 422, None),
    ("huge quantity", {"side": "buy", "symbol": "VTI", "quantity": 10**15}, 422, None),
    ("string quantity", {"side": "buy", "symbol": "VTI", "quantity": "1"}, 422, None),
    ("fractional quantity", {"side": "buy", "symbol": "VTI", "quantity": 1.5}, 422, None),
    ("unknown side", {"side": "short", "symbol": "VTI", "quantity": 1}, 422, None),
    ("extra field", {"side": "buy", "symbol": "VTI", "quantity": 1, "price": 1}, 422, None),
    (
        "insufficient funds",
        {"side": "buy", "symbol": "VTI", "quantity": 100},
        409,
        "insufficient-funds",
    ),
    (
        "shares not held",
        {"side": "sell", "symbol": "BND", "quantity": 1},
        409,
        "insufficient-shares",
    ),
]


@pytest.mark.parametrize(
    ("why", "body", "status", "kind"), BAD_ORDERS, ids=[b[0] for b in BAD_ORDERS]
)
async def test_invalid_orders_get_a_problem_and_change_nothing(
    anna: Customer, why: str, body: Any, status: int, kind: str | None
) -> None:
    await anna.deposit(100_000)
    before = await anna.ok("GET", "/balances")
    if isinstance(body, bytes):
        got, answer = await anna.call(
            "POST", "/orders", data=body, headers={"Content-Type": "application/json"}
        )
    else:
        got, answer = await anna.call("POST", "/orders", json=body)
    assert got == status, answer
    assert answer["status"] == status and "title" in answer
    if kind is not None:
        assert answer["type"] == PROBLEM_BASE + kind
    assert await anna.ok("GET", "/balances") == before
    assert (await anna.ok("GET", "/orders"))["orders"] == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/deposits", {"amount_cents": -100}, 422),
        ("POST", "/deposits", {"amount_cents": 0}, 422),
        ("POST", "/deposits", {"amount_cents": 10**13}, 422),
        ("POST", "/deposits", {"amount_cents": "100"}, 422),
        ("POST", "/deposits", {"amount_cents": 100, "deposit_id": "not-a-uuid"}, 422),
        ("GET", "/orders?limit=1000", None, 422),
        ("GET", "/orders/not-a-uuid", None, 404),
        ("GET", "/orders/..%2Finternal%2Faudit", None, 404),
        ("GET", f"/orders/{new_id()}", None, 404),
        ("POST", "/signup", {"email": "not an email", "password": "long enough", "name": "X"}, 422),
        ("POST", "/signup", {"email": "x@example.com", "password": "short", "name": "X"}, 422),
        ("POST", "/login", {"email": "x@example.com"}, 422),
        (
            "POST",
            "/strategies",
            {"name": "", "allocations": [{"symbol": "VTI", "percent": 100}]},
            422,
        ),
        ("POST", f"/strategies/{new_id()}/investments", {"amount_cents": 100}, 404),
        ("GET", "/internal/audit", None, 404),
    ],
)
async def test_invalid_requests_get_a_problem_and_change_nothing(
    anna: Customer, method: str, path: str, body: Any, status: int
) -> None:
    before = await anna.ok("GET", "/balances")
    got, answer = await anna.call(method, path, json=body)
    assert got == status, answer
    assert answer["status"] == status
    assert await anna.ok("GET", "/balances") == before
