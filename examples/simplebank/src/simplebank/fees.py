"""fees: the fee policy and the fee ledger (charges and refunds, one per order).

The fee ledger records what was charged and refunded; the money itself moves in the
accounts ledger, into ``bank:fees``, when the order settles. Both sides must agree:
``fees.net_cents == accounts.totals.fees_cents`` (checked by the audits).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from chassis import ChassisSettings, Service, read_json

from .common import (
    MAX_CENTS,
    Cents,
    Id,
    Model,
    Symbol,
    business_counter,
    make_service,
    now,
    problem,
)

__all__ = ["MIN_FEE_CENTS", "SCHEMA", "create", "fee_for"]

MIN_FEE_CENTS = 100
"""The smallest fee: one dollar."""
FEE_BASIS_POINTS = 10
"""The fee's share of the gross, in hundredths of a percent."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    order_id    TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    side        TEXT,
    symbol      TEXT,
    gross_cents INTEGER NOT NULL,
    fee_cents   INTEGER NOT NULL CHECK (fee_cents >= 0),
    state       TEXT NOT NULL CHECK (state IN ('CHARGED', 'REFUNDED')),
    reason      TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
"""


def fee_for(gross_cents: int) -> int:
    """The fee of an order of ``gross_cents``: 10 bp, at least 1 USD, at most the gross."""
    proportional = -(-gross_cents * FEE_BASIS_POINTS // 10_000)  # rounded up
    return min(gross_cents, max(MIN_FEE_CENTS, proportional))


class ChargeIn(Model):
    order_id: Id
    customer_id: Id
    side: Literal["buy", "sell"]
    symbol: Symbol
    gross_cents: Cents


class RefundIn(Model):
    customer_id: Id
    reason: str = ""


def charge_json(row: sqlite3.Row) -> dict[str, Any]:
    return {key: row[key] for key in row.keys()}  # noqa: SIM118 (sqlite3.Row)


def create(
    *, settings: ChassisSettings | None = None, database: str | Path | None = None
) -> Service:
    """The fees service."""
    service, db = make_service("fees", schema=SCHEMA, settings=settings, database=database)
    fees_total = business_counter(
        service, "simplebank_fees_cents_total", "Fee cents charged and refunded.", ("kind",)
    )

    @service.get("/fees/quote")
    async def quote(request: web.Request) -> web.Response:
        raw = request.query.get("gross_cents", "")
        if not raw.isdigit() or not 0 < int(raw) <= MAX_CENTS:
            raise problem(422, "invalid-amount", f"gross_cents must be 1..{MAX_CENTS}")
        gross = int(raw)
        return web.json_response({"gross_cents": gross, "fee_cents": fee_for(gross)})

    @service.post("/charges")
    async def charge(request: web.Request) -> web.Response:
        body = await read_json(request, ChargeIn)
        fee = fee_for(body.gross_cents)
        stamp = now()
        async with db.transaction() as tx:
            charged = await tx.fetchone(
                "INSERT INTO charges VALUES (?, ?, ?, ?, ?, ?, 'CHARGED', NULL, ?, ?) "
                "ON CONFLICT (order_id) DO NOTHING RETURNING *",
                (
                    body.order_id,
                    body.customer_id,
                    body.side,
                    body.symbol,
                    body.gross_cents,
                    fee,
                    stamp,
                    stamp,
                ),
            )
            if charged is None:
                row = await tx.fetchone(
                    "SELECT * FROM charges WHERE order_id = ?", (body.order_id,)
                )
                assert row is not None
                if row["state"] == "REFUNDED":
                    raise problem(409, "conflict", f"the charge of {body.order_id} was refunded")
                if (row["customer_id"], row["gross_cents"]) != (body.customer_id, body.gross_cents):
                    raise problem(409, "conflict", "order already charged with other terms")
                return web.json_response(charge_json(row), status=200)
            tx.publish(
                "fee_charged",
                {"order_id": body.order_id, "customer_id": body.customer_id, "fee_cents": fee},
                key=body.order_id,
            )
        fees_total.labels("charged").inc(fee)
        return web.json_response(charge_json(charged), status=201)

    @service.post("/charges/{order_id}/refund")
    async def refund(request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        body = await read_json(request, RefundIn)
        refunded = 0
        async with db.transaction() as tx:
            row = await tx.fetchone("SELECT * FROM charges WHERE order_id = ?", (order_id,))
            stamp = now()
            if row is None:
                # A tombstone: nothing was charged; a late charge is refused.
                await tx.execute(
                    "INSERT INTO charges VALUES (?, ?, NULL, NULL, 0, 0, 'REFUNDED', ?, ?, ?)",
                    (order_id, body.customer_id, body.reason, stamp, stamp),
                )
            elif row["state"] == "CHARGED":
                await tx.execute(
                    "UPDATE charges SET state = 'REFUNDED', reason = ?, updated_at = ? "
                    "WHERE order_id = ?",
                    (body.reason, stamp, order_id),
                )
                refunded = int(row["fee_cents"])
                tx.publish(
                    "fee_refunded",
                    {
                        "order_id": order_id,
                        "customer_id": row["customer_id"],
                        "fee_cents": refunded,
                    },
                    key=order_id,
                )
            row = await tx.fetchone("SELECT * FROM charges WHERE order_id = ?", (order_id,))
        assert row is not None
        if refunded:
            fees_total.labels("refunded").inc(refunded)
        return web.json_response(charge_json(row))

    @service.get("/internal/audit")
    async def audit(request: web.Request) -> web.Response:
        total = await db.fetchone(
            "SELECT COALESCE(SUM(fee_cents), 0) AS charged, "
            "COALESCE(SUM(CASE WHEN state = 'REFUNDED' THEN fee_cents END), 0) AS refunded "
            "FROM charges"
        )
        states = await db.fetchall("SELECT state, count(*) AS n FROM charges GROUP BY state")
        charged = int(total["charged"]) if total else 0
        refunded = int(total["refunded"]) if total else 0
        return web.json_response(
            {
                "charged_cents": charged,
                "refunded_cents": refunded,
                "net_cents": charged - refunded,
                "by_state": {row["state"]: int(row["n"]) for row in states},
            }
        )

    return service
