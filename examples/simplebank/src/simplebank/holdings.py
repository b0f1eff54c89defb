"""holdings: the portfolio read model (CQRS), built from events.

The write side is accounts (cash, positions) and orders (order states); holdings
follows their events and keeps, per customer, the cash, the positions with their cost,
the number of orders still in flight and a **version** bumped by every event applied.
A client that just acted polls ``GET /holdings`` (or the gateway's ``/portfolio``)
until the version is newer than the one it had.

Every handler is an idempotent subscriber (``idempotent=True``): the event id is
recorded in the same transaction as the change, so a redelivered or duplicated event
is applied once. The changes are additions, so events of different sources may arrive
in any order and still add up to the same portfolio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from chassis import ChassisSettings, Service
from chassis.db import Transaction
from chassis.events import Event

from .common import business_counter, customer_id, make_service, now

__all__ = ["SCHEMA", "create"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS portfolios (
    customer_id    TEXT PRIMARY KEY,
    version        INTEGER NOT NULL DEFAULT 0,
    cash_cents     INTEGER NOT NULL DEFAULT 0,
    pending_orders INTEGER NOT NULL DEFAULT 0,
    updated_at     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (
    customer_id     TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    quantity        INTEGER NOT NULL DEFAULT 0,
    bought_quantity INTEGER NOT NULL DEFAULT 0,
    bought_cents    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (customer_id, symbol)
);
"""


async def _touch(tx: Transaction, customer: str, *, cash: int = 0, pending: int = 0) -> None:
    """Apply a change to a customer's portfolio and bump its version."""
    await tx.execute(
        "INSERT INTO portfolios (customer_id, version, cash_cents, pending_orders, updated_at) "
        "VALUES (?, 1, ?, ?, ?) ON CONFLICT (customer_id) DO UPDATE SET "
        "version = version + 1, cash_cents = cash_cents + excluded.cash_cents, "
        "pending_orders = pending_orders + excluded.pending_orders, "
        "updated_at = excluded.updated_at",
        (customer, cash, pending, now()),
    )


def create(
    *, settings: ChassisSettings | None = None, database: str | Path | None = None
) -> Service:
    """The holdings service."""
    service, db = make_service("holdings", schema=SCHEMA, settings=settings, database=database)
    applied = business_counter(
        service,
        "simplebank_portfolio_updates_total",
        "Events applied to the portfolio read model, by type.",
        ("type",),
    )

    @service.events.subscribe("accounts", "deposit_made", idempotent=True)
    async def on_deposit(event: Event, tx: Transaction) -> None:
        await _touch(tx, event.data["customer_id"], cash=int(event.data["amount_cents"]))
        applied.labels(event.type).inc()

    @service.events.subscribe("accounts", "reservation_settled", idempotent=True)
    async def on_settled(event: Event, tx: Transaction) -> None:
        data = event.data
        customer, symbol, quantity = data["customer_id"], data["symbol"], int(data["quantity"])
        await _touch(tx, customer, cash=int(data["cash_delta_cents"]))
        if data["side"] == "buy":
            change = (quantity, quantity, int(data["gross_cents"]) + int(data["fee_cents"]))
        else:
            change = (-quantity, 0, 0)
        await tx.execute(
            "INSERT INTO positions VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (customer_id, symbol) DO UPDATE SET "
            "quantity = quantity + excluded.quantity, "
            "bought_quantity = bought_quantity + excluded.bought_quantity, "
            "bought_cents = bought_cents + excluded.bought_cents",
            (customer, symbol, *change),
        )
        applied.labels(event.type).inc()

    @service.events.subscribe("orders", "order_created", idempotent=True)
    async def on_created(event: Event, tx: Transaction) -> None:
        await _touch(tx, event.data["customer_id"], pending=1)
        applied.labels(event.type).inc()

    @service.events.subscribe("orders", "order_filled", idempotent=True, name="order-filled")
    @service.events.subscribe("orders", "order_failed", idempotent=True, name="order-failed")
    async def on_finished(event: Event, tx: Transaction) -> None:
        await _touch(tx, event.data["customer_id"], pending=-1)
        applied.labels(event.type).inc()

    async def holdings_of(customer: str) -> dict[str, Any]:
        row = await db.fetchone("SELECT * FROM portfolios WHERE customer_id = ?", (customer,))
        rows = await db.fetchall(
            "SELECT * FROM positions WHERE customer_id = ? AND quantity != 0 ORDER BY symbol",
            (customer,),
        )
        positions = []
        for p in rows:
            bought = p["bought_quantity"]
            # Average cost: what the shares bought cost (fees included), per share held.
            cost = -(-p["bought_cents"] * p["quantity"] // bought) if bought else 0
            positions.append(
                {"symbol": p["symbol"], "quantity": p["quantity"], "cost_basis_cents": cost}
            )
        return {
            "customer_id": customer,
            "version": row["version"] if row else 0,
            "cash_cents": row["cash_cents"] if row else 0,
            "pending_orders": max(0, row["pending_orders"]) if row else 0,
            "positions": positions,
            "updated_at": row["updated_at"] if row else None,
        }

    @service.get("/holdings")
    async def holdings(request: web.Request) -> web.Response:
        return web.json_response(await holdings_of(customer_id(request)))

    @service.get("/internal/audit")
    async def audit(request: web.Request) -> web.Response:
        totals = await db.fetchone(
            "SELECT count(*) AS customers, COALESCE(SUM(cash_cents), 0) AS cash, "
            "COALESCE(SUM(pending_orders), 0) AS pending FROM portfolios"
        )
        shares = await db.fetchall(
            "SELECT symbol, SUM(quantity) AS total FROM positions GROUP BY symbol ORDER BY symbol"
        )
        negative = await db.fetchall(
            "SELECT customer_id, symbol, quantity FROM positions WHERE quantity < 0"
        )
        poor = await db.fetchall(
            "SELECT customer_id, cash_cents FROM portfolios WHERE cash_cents < 0"
        )
        return web.json_response(
            {
                "customers": int(totals["customers"]) if totals else 0,
                "cash_cents": int(totals["cash"]) if totals else 0,
                "pending_orders": int(totals["pending"]) if totals else 0,
                "shares": {row["symbol"]: int(row["total"]) for row in shares if row["total"]},
                "negative": [dict(row) for row in negative] + [dict(row) for row in poor],
            }
        )

    return service
