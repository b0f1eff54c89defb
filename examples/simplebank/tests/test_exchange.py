"""The exchange stand-in: fills at its price within the limit, cancels, faults of the test kit."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from simplebank.exchange import Exchange


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def order(oid: str = "o-1", **overrides: object) -> dict:
    body = {
        "client_order_id": oid,
        "side": "buy",
        "symbol": "VTI",
        "quantity": 2,
        "limit_price_cents": 5000,
    }
    body.update(overrides)
    return body


async def test_fills_at_its_current_price_once_per_client_order_id(
    http: aiohttp.ClientSession,
) -> None:
    async with Exchange(prices={"VTI": 4900}) as exchange:
        async with http.post(exchange.url + "/orders", json=order()) as response:
            assert response.status == 201
            fill = await response.json()
        assert (fill["status"], fill["price_cents"], fill["quantity"]) == ("FILLED", 4900, 2)
        exchange.set_price("VTI", 4950)
        async with http.post(exchange.url + "/orders", json=order()) as response:
            assert response.status == 200
            assert (await response.json()) == fill
        assert list(exchange.fills()) == ["o-1"]


async def test_refuses_past_the_limit_and_unknown_symbols(http: aiohttp.ClientSession) -> None:
    async with Exchange(prices={"VTI": 5100}) as exchange:
        async with http.post(exchange.url + "/orders", json=order()) as response:
            assert response.status == 409
        async with http.post(exchange.url + "/orders", json=order(side="sell")) as response:
            assert response.status == 201
        async with http.post(exchange.url + "/orders", json=order("o-2", symbol="ZZZ")) as r:
            assert r.status == 422
        async with http.get(exchange.url + "/prices/ZZZ") as response:
            assert response.status == 404


async def test_a_cancel_busts_a_fill_and_blocks_a_later_one(http: aiohttp.ClientSession) -> None:
    async with Exchange(prices={"VTI": 4900}) as exchange:
        await http.post(exchange.url + "/orders", json=order())
        async with http.post(exchange.url + "/orders/o-1/cancel") as response:
            assert (await response.json())["status"] == "CANCELLED"
        async with http.post(exchange.url + "/orders/o-2/cancel") as response:
            assert response.status == 200
        async with http.post(exchange.url + "/orders", json=order("o-2")) as response:
            assert response.status == 409
        assert exchange.fills() == {}


async def test_an_outage_refuses_connections_until_it_recovers(http: aiohttp.ClientSession) -> None:
    async with Exchange() as exchange:
        await exchange.outage()
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(exchange.url + "/prices")
        await exchange.recover()
        async with http.get(exchange.url + "/prices") as response:
            assert "VTI" in (await response.json())["prices"]
