"""A stand-in for the external stock exchange, with knobs for latency, errors and outages.

Not a SimpleBank service: a third party that SimpleBank's market service calls. It is
a :class:`chassis.testing.FaultyUpstream` serving the exchange's routes, so every
fault of the test kit applies (``exchange.upstream.latency_seconds = 2``,
``exchange.upstream.error_rate = 0.3``, ``await exchange.outage()``). It fills orders
at its current price, market-style, within the order's limit::

    async with Exchange(prices={"VTI": 5000}) as exchange:
        exchange.set_price("VTI", 5100)
        exchange.fills()           # the orders filled and not cancelled
"""

from __future__ import annotations

import itertools
import re
from types import TracebackType
from typing import Any

from aiohttp import web

from chassis.testing import FaultyUpstream

__all__ = ["DEFAULT_PRICES", "Exchange"]

DEFAULT_PRICES = {"VTI": 25000, "BND": 7300, "VXUS": 6100, "AAPL": 19000, "MSFT": 41000}
"""Prices in cents of the instruments the exchange trades by default."""

_PROBLEMS = "https://simplebank.example/problems/"
_SYMBOL = re.compile(r"[A-Z][A-Z0-9.]{0,9}").fullmatch


def _problem(status: int, kind: str, detail: str) -> web.Response:
    return web.json_response(
        {"type": _PROBLEMS + kind, "title": kind, "status": status, "detail": detail},
        status=status,
        content_type="application/problem+json",
    )


class Exchange:
    """The exchange: prices, an order book keyed by the client's order id, faults.

    Args:
        prices: symbol -> price in cents (:data:`DEFAULT_PRICES` by default).
        port: the port (0 picks one; kept across outages).
        seed: seeds the upstream's random faults.
        knobs: initial :class:`~chassis.testing.FaultyUpstream` knobs.
    """

    def __init__(
        self, *, prices: dict[str, int] | None = None, port: int = 0, seed: int = 0, **knobs: Any
    ) -> None:
        self.prices = dict(DEFAULT_PRICES if prices is None else prices)
        self.orders: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        routes = [
            web.get("/prices", self._all_prices),
            web.get("/prices/{symbol}", self._price),
            web.post("/orders", self._place),
            web.get("/orders/{client_order_id}", self._order),
            web.post("/orders/{client_order_id}/cancel", self._cancel),
        ]
        self.upstream = FaultyUpstream(
            name="exchange", port=port, seed=seed, routes=routes, **knobs
        )

    def __repr__(self) -> str:
        return f"<Exchange {self.upstream.url} orders={len(self.orders)}>"

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:51234``."""
        return self.upstream.url

    def set_price(self, symbol: str, price_cents: int) -> None:
        """Trade ``symbol`` at ``price_cents`` from now on."""
        self.prices[symbol] = price_cents

    def fills(self) -> dict[str, dict[str, Any]]:
        """Orders filled and not cancelled, by client order id."""
        return {k: v for k, v in self.orders.items() if v["status"] == "FILLED"}

    async def outage(self) -> None:
        """Refuse connections until :meth:`recover`."""
        await self.upstream.outage()

    async def recover(self) -> None:
        """Answer again, on the same port."""
        await self.upstream.recover()

    async def start(self) -> None:
        """Start listening."""
        await self.upstream.start()

    async def aclose(self) -> None:
        """Stop listening; idempotent."""
        await self.upstream.aclose()

    async def __aenter__(self) -> Exchange:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- routes ----------------------------------------------------------------------
    async def _all_prices(self, request: web.Request) -> web.Response:
        return web.json_response({"prices": self.prices})

    async def _price(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        if symbol not in self.prices:
            return _problem(404, "unknown-symbol", f"{symbol} is not traded here")
        return web.json_response({"symbol": symbol, "price_cents": self.prices[symbol]})

    async def _order(self, request: web.Request) -> web.Response:
        order = self.orders.get(request.match_info["client_order_id"])
        if order is None:
            return _problem(404, "unknown-order", "no such order")
        return web.json_response(order)

    async def _place(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            client_order_id = str(body["client_order_id"])
            side, symbol = body["side"], body["symbol"]
            quantity, limit = int(body["quantity"]), int(body["limit_price_cents"])
        except (ValueError, KeyError, TypeError):
            return _problem(400, "bad-order", "client_order_id, side, symbol, quantity, limit")
        known = self.orders.get(client_order_id)
        if known is not None:
            if known["status"] == "CANCELLED":
                return _problem(409, "conflict", "the order was cancelled")
            return web.json_response(known, status=200)
        if side not in ("buy", "sell") or quantity <= 0 or not _SYMBOL(str(symbol)):
            return _problem(400, "bad-order", "invalid side, symbol or quantity")
        price = self.prices.get(symbol)
        if price is None:
            return _problem(422, "unknown-symbol", f"{symbol} is not traded here")
        if (side == "buy" and price > limit) or (side == "sell" and price < limit):
            return _problem(409, "limit-not-met", f"price {price} is past the limit {limit}")
        order = {
            "exchange_order_id": f"X{next(self._ids):08d}",
            "client_order_id": client_order_id,
            "status": "FILLED",
            "side": side,
            "symbol": symbol,
            "quantity": quantity,
            "price_cents": price,
        }
        self.orders[client_order_id] = order
        return web.json_response(order, status=201)

    async def _cancel(self, request: web.Request) -> web.Response:
        client_order_id = request.match_info["client_order_id"]
        order = self.orders.get(client_order_id)
        if order is None:
            # Cancelled before it arrived: a later placement with this id is refused.
            order = {"exchange_order_id": None, "client_order_id": client_order_id}
            self.orders[client_order_id] = order
        order["status"] = "CANCELLED"
        return web.json_response(order)
