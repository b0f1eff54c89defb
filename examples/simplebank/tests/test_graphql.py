"""The gateway's ``/graphql``, black-box through the running bank.

It answers customer, portfolio (at live prices), orders and instruments in one query,
places orders, takes the REST bearer token, fetches a portfolio's prices in one
market-data call, and answers errors without internals.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from simplebank.exchange import DEFAULT_PRICES, Exchange
from simplebank.graphql_api import SCHEMA
from simplebank.services import Bank, free_ports, run_services

from chassis.events import InMemoryBroker
from conftest import Customer, bank_settings

HELD = ("AAPL", "BND", "VTI", "VXUS")


@pytest.fixture
async def exchange() -> AsyncIterator[Exchange]:
    """An exchange trading every instrument market-data lists (more than two to hold)."""
    async with Exchange(prices=dict(DEFAULT_PRICES)) as exchange:
        yield exchange


async def graphql(
    who: Customer, query: str, variables: dict[str, Any] | None = None, *, auth: bool = True
) -> dict[str, Any]:
    """POST a GraphQL request through the gateway; the answer (always HTTP 200)."""
    status, body = await who.call(
        "POST", "/graphql", json={"query": query, "variables": variables}, auth=auth
    )
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def prices_served(session: aiohttp.ClientSession, bank: Bank) -> float:
    """How many ``GET /prices`` market-data has answered (its own golden-signal metric)."""
    async with session.get(bank.urls["market-data"] + "/metrics") as response:
        text = await response.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "http_server_request_duration_seconds_count"
                and sample.labels.get("route") == "/prices"
                and sample.labels.get("method") == "GET"
            ):
                total += sample.value
    return total


PLACE = """
mutation Place($side: OrderSide!, $symbol: String!, $quantity: Int!) {
  placeOrder(side: $side, symbol: $symbol, quantity: $quantity) { id state side symbol quantity }
}
"""

EVERYTHING = """
{
  customer { id name email }
  portfolio {
    version cashCents pendingOrders pricesAvailable positionsValueCents totalValueCents
    positions {
      symbol quantity costBasisCents marketValueCents gainCents
      price { priceCents asOf }
      instrument { name assetClass }
    }
  }
  orders(limit: 10) { id side symbol quantity state feeCents }
  instruments { symbol listedPriceCents price { priceCents } }
}
"""


async def buy_all(anna: Customer) -> None:
    """Deposit, then buy one lot of each of HELD with ``placeOrder``; wait for the fills."""
    await anna.deposit(2_000_000)
    for quantity, symbol in enumerate(HELD, start=1):
        answer = await graphql(anna, PLACE, {"side": "BUY", "symbol": symbol, "quantity": quantity})
        assert "errors" not in answer, answer
        placed = answer["data"]["placeOrder"]
        assert placed["state"] == "PENDING" and placed["side"] == "BUY"
        assert (await anna.wait_order(placed["id"]))["state"] == "FILLED"
    await anna.poll("/portfolio", lambda p: p["pending_orders"] == 0 and len(p["positions"]) == 4)


async def test_one_query_answers_customer_portfolio_orders_and_instruments(
    anna: Customer,
) -> None:
    await buy_all(anna)
    answer = await graphql(anna, EVERYTHING)
    assert "errors" not in answer, answer
    data = answer["data"]
    assert data["customer"] == {"id": anna.customer_id, "name": "Anna", "email": anna.email}

    rest = await anna.ok("GET", "/portfolio")
    portfolio = data["portfolio"]
    assert portfolio["version"] == rest["version"]
    assert portfolio["cashCents"] == rest["cash_cents"]
    assert portfolio["totalValueCents"] == rest["total_value_cents"]
    assert portfolio["positionsValueCents"] == rest["positions_value_cents"]
    assert portfolio["pricesAvailable"] is True
    by_symbol = {p["symbol"]: p for p in rest["positions"]}
    assert [p["symbol"] for p in portfolio["positions"]] == sorted(by_symbol)
    for position in portfolio["positions"]:
        expected = by_symbol[position["symbol"]]
        assert position["quantity"] == expected["quantity"]
        assert position["price"]["priceCents"] == expected["price_cents"]
        assert position["marketValueCents"] == expected["market_value_cents"]
        assert position["gainCents"] == expected["gain_cents"]
        assert position["instrument"]["name"]

    assert len(data["orders"]) == 4
    assert {o["symbol"] for o in data["orders"]} == set(HELD)
    assert all(o["state"] == "FILLED" and o["feeCents"] > 0 for o in data["orders"])
    listed = {i["symbol"]: i for i in data["instruments"]}
    assert set(HELD) <= set(listed)
    assert listed["VTI"]["price"]["priceCents"] == listed["VTI"]["listedPriceCents"]


async def test_a_portfolio_of_n_holdings_costs_one_price_call(
    anna: Customer, session: aiohttp.ClientSession, bank: Bank
) -> None:
    await buy_all(anna)
    query = """{ portfolio { totalValueCents positions {
        symbol price { priceCents } marketValueCents gainCents } } }"""
    before = await prices_served(session, bank)
    answer = await graphql(anna, query)
    after = await prices_served(session, bank)
    assert "errors" not in answer, answer
    positions = answer["data"]["portfolio"]["positions"]
    assert len(positions) == len(HELD)
    assert all(p["price"]["priceCents"] == DEFAULT_PRICES[p["symbol"]] for p in positions)
    assert after - before == 1


async def test_customer_fields_need_the_rest_bearer_token(anna: Customer) -> None:
    for token in (None, "not-a-token"):
        anna_token, anna.token = anna.token, token
        try:
            answer = await graphql(anna, "{ portfolio { cashCents } }")
        finally:
            anna.token = anna_token
        assert answer["data"] is None
        [error] = answer["errors"]
        assert error["extensions"] == {"code": "UNAUTHENTICATED"}
        assert error["path"] == ["portfolio"]
    public = await graphql(anna, "{ instruments { symbol } }", auth=False)
    assert "errors" not in public and len(public["data"]["instruments"]) >= 2
    me = await graphql(anna, "{ customer { id } }")
    assert me["data"]["customer"]["id"] == anna.customer_id


async def test_another_customers_order_is_null(anna: Customer, ben: Customer) -> None:
    await anna.deposit(100_000)
    placed = await graphql(anna, PLACE, {"side": "BUY", "symbol": "BND", "quantity": 2})
    order_id = placed["data"]["placeOrder"]["id"]
    await anna.wait_order(order_id)
    query = "query One($id: ID!) { order(id: $id) { id state } }"
    mine = await graphql(anna, query, {"id": order_id})
    assert mine["data"]["order"] == {"id": order_id, "state": "FILLED"}
    theirs = await graphql(ben, query, {"id": order_id})
    assert theirs == {"data": {"order": None}}
    nonsense = await graphql(ben, query, {"id": "../internal/audit"})
    assert nonsense == {"data": {"order": None}}


async def test_a_refused_order_is_a_graphql_error_with_the_problem_code(
    anna: Customer,
) -> None:
    answer = await graphql(anna, PLACE, {"side": "BUY", "symbol": "VTI", "quantity": 5})
    [error] = answer["errors"]
    assert error["extensions"] == {"code": "INSUFFICIENT_FUNDS"}
    assert error["path"] == ["placeOrder"]
    unknown = await graphql(anna, PLACE, {"side": "SELL", "symbol": "NOPE", "quantity": 1})
    assert unknown["errors"][0]["extensions"]["code"] in {"UNKNOWN_SYMBOL", "INSUFFICIENT_SHARES"}


async def test_errors_leak_no_internals_when_an_upstream_is_down(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    [closed] = free_ports(1)  # nothing listens there: holdings is down
    async with run_services(
        tmp_path,
        names=["customers", "gateway"],
        urls={"holdings": f"http://127.0.0.1:{closed}"},
        settings=bank_settings(),
        broker=InMemoryBroker(),
    ) as small:
        dora = await Customer(session, small, "Dora").sign_up()
        answer = await graphql(dora, "{ customer { name } portfolio { cashCents } }")
    assert answer["data"] is None  # portfolio is non-null, so its error nulls the data
    [error] = answer["errors"]
    assert error["extensions"] == {"code": "UNAVAILABLE"} and error["path"] == ["portfolio"]
    text = str(answer)
    for internal in ("http", "127.0.0.1", str(closed), "Traceback", "holdings", "Upstream"):
        assert internal not in text


async def test_an_unexpected_failure_is_masked(
    anna: Customer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from simplebank import graphql_api

    def broken(body: dict[str, Any]) -> Any:
        raise RuntimeError("secret detail at http://127.0.0.1:1/internal")

    monkeypatch.setattr(graphql_api.Order, "of", staticmethod(broken))
    await anna.deposit(100_000)
    answer = await graphql(anna, PLACE, {"side": "BUY", "symbol": "BND", "quantity": 1})
    [error] = answer["errors"]
    assert error["message"] == "internal error"
    assert error["extensions"] == {"code": "INTERNAL"}
    assert "secret" not in str(answer) and "127.0.0.1" not in str(answer)
    await anna.poll(
        "/orders", lambda o: all(x["state"] in ("FILLED", "FAILED") for x in o["orders"])
    )


async def test_query_errors_and_bad_requests(anna: Customer) -> None:
    answer = await graphql(anna, "{ portfolio { noSuchField } }")
    assert answer["data"] is None and "noSuchField" in answer["errors"][0]["message"]
    deep = "{ customer { portfolio { positions { instrument { price { symbol } } } } } }"
    assert "errors" not in await graphql(anna, deep)
    status, body = await anna.call("POST", "/graphql", json={"no": "query"})
    assert status == 422 and body["type"].endswith("invalid-body")
    status, _ = await anna.call("POST", "/graphql", data=b"{not json")
    assert status == 400


def test_the_schema_has_the_issue_types_and_the_mutation() -> None:
    sdl = str(SCHEMA)
    for name in ("type Customer", "type Portfolio", "type Order", "type Instrument", "placeOrder"):
        assert name in sdl
