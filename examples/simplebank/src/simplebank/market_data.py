"""market-data: the asset information service, instruments and their prices.

Seeded at startup with the instruments SimpleBank trades. Callers cache its answers
(a :class:`chassis.client.Fallback` with a TTL: the last good prices answer while it is
down). ``PUT /prices/{symbol}`` sets a price (an operator, the demo, the tests); a
change is announced with a ``price_changed`` event.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from chassis import ChassisSettings, Service, read_json

from .common import (
    MAX_CENTS,
    Cents,
    Model,
    business_counter,
    make_service,
    now,
    problem,
)
from .exchange import DEFAULT_PRICES

__all__ = ["INSTRUMENTS", "SCHEMA", "create"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS instruments (
    symbol      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    asset_class TEXT NOT NULL,
    currency    TEXT NOT NULL DEFAULT 'USD'
);
CREATE TABLE IF NOT EXISTS prices (
    symbol      TEXT PRIMARY KEY REFERENCES instruments (symbol),
    price_cents INTEGER NOT NULL CHECK (price_cents > 0),
    version     INTEGER NOT NULL,
    updated_at  TEXT NOT NULL
);
"""

INSTRUMENTS: dict[str, tuple[str, str]] = {
    "VTI": ("Vanguard Total Stock Market ETF", "equity-etf"),
    "BND": ("Vanguard Total Bond Market ETF", "bond-etf"),
    "VXUS": ("Vanguard Total International Stock ETF", "equity-etf"),
    "AAPL": ("Apple Inc.", "equity"),
    "MSFT": ("Microsoft Corporation", "equity"),
}
"""The instruments seeded by default: symbol -> (name, asset class)."""

_MAX_SYMBOLS = 50


class PriceIn(Model):
    price_cents: Cents


def instrument_json(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "symbol": row["symbol"],
        "name": row["name"],
        "asset_class": row["asset_class"],
        "currency": row["currency"],
        "price_cents": row["price_cents"],
        "price_updated_at": row["updated_at"],
    }


def _symbols(raw: str) -> list[str]:
    symbols = sorted({s.strip() for s in raw.split(",") if s.strip()})
    if len(symbols) > _MAX_SYMBOLS:
        raise problem(422, "invalid-symbols", f"at most {_MAX_SYMBOLS} symbols")
    return symbols


def create(
    *,
    settings: ChassisSettings | None = None,
    database: str | Path | None = None,
    prices: Mapping[str, int] | None = None,
) -> Service:
    """The market-data service.

    Args:
        prices: the seeded prices in cents (the exchange's defaults by default); only
            instruments without a price yet are seeded.
    """
    service, db = make_service("market-data", schema=SCHEMA, settings=settings, database=database)
    seed = dict(DEFAULT_PRICES if prices is None else prices)
    price_changes = business_counter(
        service, "simplebank_price_changes_total", "Prices set through the API."
    )

    @service.lifespan
    async def seeded(app: web.Application) -> AsyncIterator[None]:
        stamp = now()
        async with db.transaction() as tx:
            for symbol, price in seed.items():
                name, asset_class = INSTRUMENTS.get(symbol, (symbol, "equity"))
                await tx.execute(
                    "INSERT OR IGNORE INTO instruments (symbol, name, asset_class) "
                    "VALUES (?, ?, ?)",
                    (symbol, name, asset_class),
                )
                await tx.execute(
                    "INSERT OR IGNORE INTO prices VALUES (?, ?, 1, ?)", (symbol, price, stamp)
                )
        yield

    select = (
        "SELECT i.symbol, i.name, i.asset_class, i.currency, p.price_cents, p.updated_at "
        "FROM instruments i JOIN prices p ON p.symbol = i.symbol"
    )

    @service.get("/instruments")
    async def instruments(request: web.Request) -> web.Response:
        rows = await db.fetchall(select + " ORDER BY i.symbol")
        return web.json_response({"instruments": [instrument_json(row) for row in rows]})

    @service.get("/instruments/{symbol}")
    async def instrument(request: web.Request) -> web.Response:
        row = await db.fetchone(select + " WHERE i.symbol = ?", (request.match_info["symbol"],))
        if row is None:
            raise web.HTTPNotFound(text="no such instrument")
        return web.json_response(instrument_json(row))

    @service.get("/prices")
    async def all_prices(request: web.Request) -> web.Response:
        wanted = _symbols(request.query.get("symbols", ""))
        rows = await db.fetchall("SELECT symbol, price_cents, updated_at FROM prices")
        chosen = [row for row in rows if not wanted or row["symbol"] in wanted]
        return web.json_response(
            {
                "prices": {row["symbol"]: row["price_cents"] for row in chosen},
                "as_of": max((row["updated_at"] for row in chosen), default=None),
            }
        )

    @service.get("/prices/{symbol}")
    async def price(request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        row = await db.fetchone("SELECT * FROM prices WHERE symbol = ?", (symbol,))
        if row is None:
            raise problem(404, "unknown-symbol", f"{symbol} is not traded", symbol=symbol)
        return web.json_response(
            {"symbol": symbol, "price_cents": row["price_cents"], "updated_at": row["updated_at"]}
        )

    @service.put("/prices/{symbol}")
    async def set_price(request: web.Request) -> web.Response:
        # Internal (operators, the demo): the gateway never routes here.
        symbol = request.match_info["symbol"]
        body = await read_json(request, PriceIn)
        if body.price_cents > MAX_CENTS // 1000:
            raise problem(422, "invalid-price", "the price is out of range")
        async with db.transaction() as tx:
            updated = await tx.execute(
                "UPDATE prices SET price_cents = ?, version = version + 1, updated_at = ? "
                "WHERE symbol = ?",
                (body.price_cents, now(), symbol),
            )
            if updated.rowcount != 1:
                raise problem(404, "unknown-symbol", f"{symbol} is not traded", symbol=symbol)
            tx.publish(
                "price_changed", {"symbol": symbol, "price_cents": body.price_cents}, key=symbol
            )
        price_changes.inc()
        return await price(request)

    return service
