"""strategies: investment strategies, and investing an amount by them.

A strategy is a set of allocations that sum to 100 % (``60 % VTI, 40 % BND``).
Investing an amount splits it by the allocations and places one buy order per
instrument through orders' API, for the customer (``X-Customer-Id``) and with an
``Idempotency-Key`` derived from the investment, so a retried call places nothing
twice. Each order's quantity is the largest whose reservation (quantity x the buy
limit, quote + 5 %, plus the fee) fits its share of the amount; what is left over stays
cash. Strategies follows orders' ``order_filled`` / ``order_failed`` events to report
how each investment ended.

A call to orders that got no answer (a timeout, a 5xx other than 503) has an unknown
outcome: orders may have accepted the order. The allocation is then ``UNCONFIRMED``
(shown ``PENDING``, without an order id), never ``REJECTED``, and a background
reconciler sends the same request again, with the same ``Idempotency-Key``, until
orders answers: with the order it already has (200), the order it accepts now (202),
or a refusal (4xx).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, StringConstraints

from chassis import ChassisSettings, Service, read_json
from chassis.db import Transaction
from chassis.events import Event
from chassis.exceptions import UpstreamError

from .common import (
    CUSTOMER_HEADER,
    Cents,
    Model,
    Symbol,
    business_counter,
    customer_id,
    make_service,
    new_id,
    now,
    problem,
    problem_kind,
)
from .orders import SLIPPAGE_PERCENT

__all__ = ["SCHEMA", "create"]

log = logging.getLogger("simplebank.strategies")

SCHEMA = """
CREATE TABLE IF NOT EXISTS strategies (
    strategy_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    name        TEXT NOT NULL,
    allocations TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS strategies_by_customer ON strategies (customer_id, created_at);
CREATE TABLE IF NOT EXISTS investments (
    investment_id   TEXT PRIMARY KEY,
    strategy_id     TEXT NOT NULL REFERENCES strategies (strategy_id),
    customer_id     TEXT NOT NULL,
    amount_cents    INTEGER NOT NULL,
    idempotency_key TEXT,
    created_at      TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS investments_idempotency
    ON investments (customer_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS investment_orders (
    investment_id TEXT NOT NULL REFERENCES investments (investment_id),
    symbol        TEXT NOT NULL,
    percent       INTEGER NOT NULL,
    budget_cents  INTEGER NOT NULL,
    quantity      INTEGER NOT NULL,
    order_id      TEXT,
    status        TEXT NOT NULL CHECK (status IN
                    ('PLACED', 'UNCONFIRMED', 'REJECTED', 'SKIPPED')),
    reason        TEXT,
    PRIMARY KEY (investment_id, symbol)
);
CREATE TABLE IF NOT EXISTS order_outcomes (
    order_id    TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    gross_cents INTEGER,
    fee_cents   INTEGER,
    reason      TEXT
);
"""

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class Allocation(Model):
    symbol: Symbol
    percent: Annotated[int, Field(ge=1, le=100)]


class NewStrategy(Model):
    name: Name
    allocations: Annotated[list[Allocation], Field(min_length=1, max_length=10)]


class Invest(Model):
    amount_cents: Cents


def strategy_json(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "strategy_id": row["strategy_id"],
        "customer_id": row["customer_id"],
        "name": row["name"],
        "allocations": json.loads(row["allocations"]),
        "created_at": row["created_at"],
    }


def _investment_state(orders: list[dict[str, Any]]) -> str:
    states = [o["state"] for o in orders]
    if "PENDING" in states:
        return "IN_PROGRESS"
    if states and all(s == "FILLED" for s in states):
        return "COMPLETED"
    return "PARTIAL" if "FILLED" in states else "FAILED"


def create(
    *,
    settings: ChassisSettings | None = None,
    database: str | Path | None = None,
    reconcile_interval_seconds: float = 2.0,
) -> Service:
    """The strategies service.

    Args:
        reconcile_interval_seconds: how often orders whose placing got no answer are
            sent again (same ``Idempotency-Key``) to learn their outcome.
    """
    service, db = make_service("strategies", schema=SCHEMA, settings=settings, database=database)
    orders = service.client("orders")
    market = service.client("market")
    market_data = service.client("market-data")
    fees = service.client("fees")
    investments_total = business_counter(
        service,
        "simplebank_investments_total",
        "Investments by strategy, by how many of their orders were placed.",
        ("outcome",),
    )
    invested_cents = business_counter(
        service,
        "simplebank_investment_orders_cents_total",
        "Cents budgeted to the buy orders that investments placed.",
    )

    @service.events.subscribe("orders", "order_filled", idempotent=True, name="order-filled")
    @service.events.subscribe("orders", "order_failed", idempotent=True, name="order-failed")
    async def on_order_finished(event: Event, tx: Transaction) -> None:
        data = event.data
        await tx.execute(
            "INSERT OR REPLACE INTO order_outcomes VALUES (?, ?, ?, ?, ?)",
            (
                data["order_id"],
                data["state"],
                data.get("gross_cents"),
                data.get("fee_cents"),
                data.get("reason"),
            ),
        )

    async def owned_strategy(customer: str, strategy_id: str) -> sqlite3.Row:
        row = await db.fetchone(
            "SELECT * FROM strategies WHERE strategy_id = ? AND customer_id = ?",
            (strategy_id, customer),
        )
        if row is None:
            raise web.HTTPNotFound(text="no such strategy")
        return row

    async def investment_json(row: sqlite3.Row) -> dict[str, Any]:
        rows = await db.fetchall(
            "SELECT o.*, x.state AS outcome, x.gross_cents, x.fee_cents, "
            "x.reason AS failure_reason FROM investment_orders o "
            "LEFT JOIN order_outcomes x ON x.order_id = o.order_id "
            "WHERE o.investment_id = ? ORDER BY o.percent DESC, o.symbol",
            (row["investment_id"],),
        )
        placed = []
        for o in rows:
            if o["status"] == "PLACED":
                state = o["outcome"] or "PENDING"
            elif o["status"] == "UNCONFIRMED":
                state = "PENDING"  # orders may have it: the reconciler finds out
            else:
                state = o["status"]
            placed.append(
                {
                    "symbol": o["symbol"],
                    "percent": o["percent"],
                    "budget_cents": o["budget_cents"],
                    "quantity": o["quantity"],
                    "order_id": o["order_id"],
                    "state": state,
                    "reason": o["reason"] or o["failure_reason"],
                    "spent_cents": (o["gross_cents"] or 0) + (o["fee_cents"] or 0)
                    if state == "FILLED"
                    else 0,
                }
            )
        return {
            "investment_id": row["investment_id"],
            "strategy_id": row["strategy_id"],
            "customer_id": row["customer_id"],
            "amount_cents": row["amount_cents"],
            "state": _investment_state(placed),
            "spent_cents": sum(o["spent_cents"] for o in placed),
            "orders": placed,
            "created_at": row["created_at"],
        }

    @service.post("/strategies")
    async def create_strategy(request: web.Request) -> web.Response:
        customer = customer_id(request)
        body = await read_json(request, NewStrategy)
        symbols = [a.symbol for a in body.allocations]
        if len(set(symbols)) != len(symbols):
            raise problem(422, "invalid-allocations", "each symbol may appear once")
        total = sum(a.percent for a in body.allocations)
        if total != 100:
            raise problem(
                422, "invalid-allocations", f"allocations sum to {total} %, not 100", total=total
            )
        for symbol in symbols:
            known = await market_data.get(f"/instruments/{symbol}")
            if known.status == 404:
                raise problem(422, "unknown-symbol", f"{symbol} is not traded", symbol=symbol)
            known.raise_for_status()
        sid = new_id()
        allocations = [a.model_dump() for a in body.allocations]
        async with db.transaction() as tx:
            await tx.execute(
                "INSERT INTO strategies VALUES (?, ?, ?, ?, ?)",
                (sid, customer, body.name, json.dumps(allocations), now()),
            )
        row = await owned_strategy(customer, sid)
        return web.json_response(
            strategy_json(row), status=201, headers={"Location": f"/strategies/{sid}"}
        )

    @service.get("/strategies")
    async def list_strategies(request: web.Request) -> web.Response:
        rows = await db.fetchall(
            "SELECT * FROM strategies WHERE customer_id = ? ORDER BY created_at DESC LIMIT 100",
            (customer_id(request),),
        )
        return web.json_response({"strategies": [strategy_json(row) for row in rows]})

    @service.get("/strategies/{strategy_id}")
    async def get_strategy(request: web.Request) -> web.Response:
        row = await owned_strategy(customer_id(request), request.match_info["strategy_id"])
        return web.json_response(strategy_json(row))

    async def size(symbol: str, budget: int) -> tuple[int, str | None]:
        """The quantity of ``symbol`` whose reservation fits ``budget``; or 0 and why not."""
        quote = await market.get(f"/quotes/{symbol}")
        if quote.status >= 400:
            return 0, problem_kind(quote)
        price = int(quote.json()["price_cents"])
        limit = -(-price * (100 + SLIPPAGE_PERCENT) // 100)
        most = budget // limit
        if most == 0:
            return 0, "amount-too-small"
        fee = await fees.get_json("/fees/quote", params={"gross_cents": str(most * limit)})
        quantity = (budget - int(fee["fee_cents"])) // limit
        return (quantity, None) if quantity > 0 else (0, "amount-too-small")

    async def place(customer: str, investment: str, symbol: str, quantity: int) -> dict[str, Any]:
        try:
            response = await orders.post(
                "/orders",
                json={"side": "buy", "symbol": symbol, "quantity": quantity},
                headers={
                    CUSTOMER_HEADER: customer,
                    "Idempotency-Key": f"investment-{investment}-{symbol}",
                },
            )
        except UpstreamError as exc:
            # No answer: orders may have accepted it. Unknown, not refused.
            log.info("placing %s of investment %s is unconfirmed: %s", symbol, investment, exc)
            return {"status": "UNCONFIRMED"}
        if response.status in (200, 202):
            return {"status": "PLACED", "order_id": response.json()["order_id"]}
        if response.status >= 500 and response.status != 503:
            # 500, 502, 504: the request may have been applied (503: it was not served).
            return {"status": "UNCONFIRMED"}
        return {"status": "REJECTED", "reason": problem_kind(response)}

    @service.post("/strategies/{strategy_id}/investments")
    async def invest(request: web.Request) -> web.Response:
        customer = customer_id(request)
        strategy = await owned_strategy(customer, request.match_info["strategy_id"])
        body = await read_json(request, Invest)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 0 < len(key) <= 128:
            raise problem(422, "invalid-idempotency-key", "Idempotency-Key: 1-128 characters")
        iid = new_id()
        async with db.transaction() as tx:
            if key is not None:
                known = await tx.fetchone(
                    "SELECT * FROM investments WHERE customer_id = ? AND idempotency_key = ?",
                    (customer, key),
                )
                if known is not None:
                    same = (known["strategy_id"], known["amount_cents"]) == (
                        strategy["strategy_id"],
                        body.amount_cents,
                    )
                    if not same:
                        raise problem(409, "conflict", "Idempotency-Key reused for another body")
                    return web.json_response(await investment_json(known), status=200)
            await tx.execute(
                "INSERT INTO investments VALUES (?, ?, ?, ?, ?, ?)",
                (iid, strategy["strategy_id"], customer, body.amount_cents, key, now()),
            )
        placed = 0
        for allocation in json.loads(strategy["allocations"]):
            symbol, percent = allocation["symbol"], allocation["percent"]
            budget = body.amount_cents * percent // 100
            quantity, why_not = await size(symbol, budget)
            skipped = "SKIPPED" if why_not == "amount-too-small" else "REJECTED"
            outcome: dict[str, Any] = {"status": skipped, "reason": why_not}
            if quantity > 0:
                outcome = await place(customer, iid, symbol, quantity)
            if outcome["status"] == "PLACED":
                placed += 1
                invested_cents.inc(budget)
            async with db.transaction() as tx:
                await tx.execute(
                    "INSERT INTO investment_orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        iid,
                        symbol,
                        percent,
                        budget,
                        quantity,
                        outcome.get("order_id"),
                        outcome["status"],
                        outcome.get("reason"),
                    ),
                )
        total = len(json.loads(strategy["allocations"]))
        investments_total.labels(
            "placed" if placed == total else "partial" if placed else "none"
        ).inc()
        row = await db.fetchone("SELECT * FROM investments WHERE investment_id = ?", (iid,))
        assert row is not None
        return web.json_response(
            await investment_json(row), status=202, headers={"Location": f"/investments/{iid}"}
        )

    async def reconcile_once() -> int:
        """Send each unconfirmed order again; how many are still unconfirmed."""
        rows = await db.fetchall(
            "SELECT o.investment_id, o.symbol, o.budget_cents, o.quantity, i.customer_id "
            "FROM investment_orders o JOIN investments i ON i.investment_id = o.investment_id "
            "WHERE o.status = 'UNCONFIRMED' ORDER BY i.created_at LIMIT 100"
        )
        for row in rows:
            outcome = await place(
                row["customer_id"], row["investment_id"], row["symbol"], row["quantity"]
            )
            if outcome["status"] == "UNCONFIRMED":
                continue
            async with db.transaction() as tx:
                updated = await tx.execute(
                    "UPDATE investment_orders SET status = ?, order_id = ?, reason = ? "
                    "WHERE investment_id = ? AND symbol = ? AND status = 'UNCONFIRMED'",
                    (
                        outcome["status"],
                        outcome.get("order_id"),
                        outcome.get("reason"),
                        row["investment_id"],
                        row["symbol"],
                    ),
                )
            if updated.rowcount == 1 and outcome["status"] == "PLACED":
                invested_cents.inc(row["budget_cents"])
        left = await db.fetchone(
            "SELECT count(*) AS n FROM investment_orders WHERE status = 'UNCONFIRMED'"
        )
        return int(left["n"]) if left is not None else 0

    @service.lifespan
    async def reconciler(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(reconcile_interval_seconds)
                try:
                    await reconcile_once()
                except Exception:
                    log.exception("reconciling unconfirmed investment orders failed")

        task = asyncio.get_running_loop().create_task(loop(), name="strategies-reconciler")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @service.post("/internal/reconcile")
    async def reconcile(request: web.Request) -> web.Response:
        return web.json_response({"unconfirmed_orders": await reconcile_once()})

    @service.get("/strategies/{strategy_id}/investments")
    async def list_investments(request: web.Request) -> web.Response:
        strategy = await owned_strategy(customer_id(request), request.match_info["strategy_id"])
        rows = await db.fetchall(
            "SELECT * FROM investments WHERE strategy_id = ? ORDER BY created_at DESC LIMIT 100",
            (strategy["strategy_id"],),
        )
        return web.json_response({"investments": [await investment_json(row) for row in rows]})

    @service.get("/investments/{investment_id}")
    async def get_investment(request: web.Request) -> web.Response:
        row = await db.fetchone(
            "SELECT * FROM investments WHERE investment_id = ? AND customer_id = ?",
            (request.match_info["investment_id"], customer_id(request)),
        )
        if row is None:
            raise web.HTTPNotFound(text="no such investment")
        return web.json_response(await investment_json(row))

    @service.get("/internal/audit")
    async def audit(request: web.Request) -> web.Response:
        counts = await db.fetchone(
            "SELECT (SELECT count(*) FROM strategies) AS strategies, "
            "(SELECT count(*) FROM investments) AS investments"
        )
        pending = await db.fetchall(
            "SELECT o.order_id FROM investment_orders o LEFT JOIN order_outcomes x "
            "ON x.order_id = o.order_id WHERE o.status = 'PLACED' AND x.order_id IS NULL"
        )
        unconfirmed = await db.fetchall(
            "SELECT investment_id, symbol FROM investment_orders WHERE status = 'UNCONFIRMED'"
        )
        return web.json_response(
            {
                "strategies": int(counts["strategies"]) if counts else 0,
                "investments": int(counts["investments"]) if counts else 0,
                # An unconfirmed order is listed by its idempotency key (no id yet).
                "orders_without_outcome": [row["order_id"] for row in pending]
                + [f"investment-{r['investment_id']}-{r['symbol']}" for r in unconfirmed],
            }
        )

    return service
