"""market-data: seeded instruments and prices, setting a price, callers' cache."""

from __future__ import annotations

import aiohttp
from simplebank.services import Bank


async def test_instruments_are_seeded_with_prices(
    bank: Bank, session: aiohttp.ClientSession
) -> None:
    async with session.get(bank.urls["market-data"] + "/instruments") as response:
        symbols = [i["symbol"] for i in (await response.json())["instruments"]]
    assert symbols == ["AAPL", "BND", "MSFT", "VTI", "VXUS"]
    async with session.get(bank.urls["market-data"] + "/prices/VTI") as response:
        assert (await response.json())["price_cents"] == 25000


async def test_setting_a_price_validates_and_announces_it(
    bank: Bank, session: aiohttp.ClientSession
) -> None:
    url = bank.urls["market-data"]
    for symbol, body, status in (
        ("VTI", {"price_cents": 0}, 422),
        ("VTI", {"price_cents": "1"}, 422),
        ("NOPE", {"price_cents": 100}, 404),
        ("VTI", {"price_cents": 25500}, 200),
    ):
        async with session.put(f"{url}/prices/{symbol}", json=body) as response:
            assert response.status == status, await response.text()
    async with session.get(url + "/prices?symbols=VTI") as response:
        assert (await response.json())["prices"] == {"VTI": 25500}
    await bank.settle()
    db = bank.services["market-data"].events.database
    assert db is not None
    rows = await db.fetchall("SELECT type FROM chassis_outbox")
    assert [row["type"] for row in rows] == ["price_changed"]
