"""accounts: cash, share positions, reservations and the double-entry ledger.

Every change is a ledger transaction whose postings sum to zero per asset (``USD``
in cents, or a symbol in shares). Reservations (the saga's *tentative* step) move
cash or shares from ``available`` to ``reserved``; a reservation is then released or
settled, exactly once, keyed by the order id. See ``docs/simplebank/design.md``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from chassis import ChassisSettings, Service, read_json
from chassis.db import Transaction

from .common import (
    Cents,
    Id,
    Model,
    Quantity,
    Symbol,
    business_counter,
    customer_id,
    make_service,
    now,
    problem,
)

__all__ = ["SCHEMA", "create"]

USD = "USD"

SCHEMA = """
CREATE TABLE IF NOT EXISTS balances (
    account TEXT NOT NULL,
    asset   TEXT NOT NULL,
    amount  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account, asset),
    CHECK (amount >= 0 OR account LIKE 'external:%')
);
CREATE TABLE IF NOT EXISTS ledger_transactions (
    txn_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    ref        TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_entries (
    entry_id INTEGER PRIMARY KEY AUTOINCREMENT,
    txn_id   INTEGER NOT NULL REFERENCES ledger_transactions (txn_id),
    account  TEXT NOT NULL,
    asset    TEXT NOT NULL,
    amount   INTEGER NOT NULL
);
-- A ledger entry is applied to its balance as it is written, in its statement: a
-- missing balance starts at 0 (an upsert would check the CHECK on the bare delta).
CREATE TRIGGER IF NOT EXISTS ledger_entries_apply AFTER INSERT ON ledger_entries
BEGIN
    INSERT OR IGNORE INTO balances (account, asset, amount) VALUES (NEW.account, NEW.asset, 0);
    UPDATE balances SET amount = amount + NEW.amount
        WHERE account = NEW.account AND asset = NEW.asset;
END;
CREATE TABLE IF NOT EXISTS customers (
    customer_id TEXT PRIMARY KEY,
    version     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deposits (
    deposit_id   TEXT PRIMARY KEY,
    customer_id  TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    created_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reservations (
    order_id    TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    asset       TEXT NOT NULL,
    amount      INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('HELD', 'RELEASED', 'SETTLED')),
    settlement  TEXT,
    reason      TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
"""


class DepositIn(Model):
    deposit_id: Id
    amount_cents: Cents


class ReserveIn(Model):
    order_id: Id
    customer_id: Id
    asset: Symbol
    amount: Cents


class ReleaseIn(Model):
    customer_id: Id
    reason: str = ""


class SettleIn(Model):
    customer_id: Id
    side: Literal["buy", "sell"]
    symbol: Symbol
    quantity: Quantity
    price_cents: Cents
    fee_cents: int


def available(customer: str) -> str:
    """The ledger account of what ``customer`` may use."""
    return f"customer:{customer}:available"


def reserved(customer: str) -> str:
    """The ledger account of what reservations hold for ``customer``."""
    return f"customer:{customer}:reserved"


FEES = "bank:fees"
DEPOSITS = "external:deposits"
EXCHANGE = "external:exchange"

Posting = tuple[str, str, int]


async def post(tx: Transaction, kind: str, ref: str, postings: Sequence[Posting]) -> None:
    """Write one balanced ledger transaction and apply it to the balances.

    Two statements, whatever the number of moves: the transaction, then its entries
    (the ``ledger_entries_apply`` trigger applies each entry to its balance).

    Raises:
        ValueError: the postings do not sum to zero per asset (a bug).
    """
    sums: dict[str, int] = {}
    for _, asset, amount in postings:
        sums[asset] = sums.get(asset, 0) + amount
    if any(sums.values()):
        raise ValueError(f"unbalanced ledger transaction {kind} {ref}: {sums}")
    result = await tx.execute(
        "INSERT INTO ledger_transactions (kind, ref, created_at) VALUES (?, ?, ?)",
        (kind, ref, now()),
    )
    txn = result.lastrowid
    await tx.executemany(
        "INSERT INTO ledger_entries (txn_id, account, asset, amount) VALUES (?, ?, ?, ?)",
        [(txn, account, asset, amount) for account, asset, amount in postings if amount],
    )


async def balance(tx: Transaction, account: str, asset: str) -> int:
    row = await tx.fetchone(
        "SELECT amount FROM balances WHERE account = ? AND asset = ?", (account, asset)
    )
    return int(row["amount"]) if row is not None else 0


async def bump(tx: Transaction, customer: str) -> int:
    """Increment the customer's balance version; return the new one."""
    row = await tx.fetchone(
        "INSERT INTO customers (customer_id, version) VALUES (?, 1) "
        "ON CONFLICT (customer_id) DO UPDATE SET version = version + 1 RETURNING version",
        (customer,),
    )
    assert row is not None
    return int(row["version"])


def reservation_json(row: sqlite3.Row) -> dict[str, Any]:
    settlement = row["settlement"]
    return {
        "order_id": row["order_id"],
        "customer_id": row["customer_id"],
        "asset": row["asset"],
        "amount": row["amount"],
        "state": row["state"],
        "settlement": json.loads(settlement) if settlement else None,
        "reason": row["reason"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def create(
    *, settings: ChassisSettings | None = None, database: str | Path | None = None
) -> Service:
    """The accounts service."""
    service, db = make_service("accounts", schema=SCHEMA, settings=settings, database=database)
    reservations_total = business_counter(
        service,
        "simplebank_reservations_total",
        "Reservation commands by kind of asset and outcome.",
        ("asset_kind", "outcome"),
    )
    deposits_total = business_counter(
        service, "simplebank_deposits_cents_total", "Cents deposited by customers."
    )

    async def balances_of(customer: str) -> dict[str, Any]:
        # One query, so one snapshot: the version and the balances agree. At least one
        # row (the balance columns are NULL when the customer has none).
        rows = await db.fetchall(
            "SELECT c.version, b.account, b.asset, b.amount FROM (SELECT ? AS customer_id) k "
            "LEFT JOIN customers c ON c.customer_id = k.customer_id "
            "LEFT JOIN balances b ON b.account IN (?, ?)",
            (customer, available(customer), reserved(customer)),
        )
        version = rows[0]["version"]
        cash = {"available_cents": 0, "reserved_cents": 0}
        positions: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row["account"] is None:
                continue
            which = "available" if row["account"] == available(customer) else "reserved"
            if row["asset"] == USD:
                cash[f"{which}_cents"] = row["amount"]
            else:
                pos = positions.setdefault(
                    row["asset"], {"symbol": row["asset"], "available": 0, "reserved": 0}
                )
                pos[which] = row["amount"]
        return {
            "customer_id": customer,
            "version": int(version) if version is not None else 0,
            "cash": cash,
            "positions": [
                p for _, p in sorted(positions.items()) if p["available"] or p["reserved"]
            ],
        }

    @service.get("/balances")
    async def get_balances(request: web.Request) -> web.Response:
        return web.json_response(await balances_of(customer_id(request)))

    @service.post("/deposits")
    async def deposit(request: web.Request) -> web.Response:
        customer = customer_id(request)
        body = await read_json(request, DepositIn)
        async with db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT * FROM deposits WHERE deposit_id = ?", (body.deposit_id,)
            )
            if row is not None:
                if row["customer_id"] != customer or row["amount_cents"] != body.amount_cents:
                    raise problem(409, "conflict", "deposit_id already used for another deposit")
                status = 200
            else:
                await tx.execute(
                    "INSERT INTO deposits VALUES (?, ?, ?, ?)",
                    (body.deposit_id, customer, body.amount_cents, now()),
                )
                await post(
                    tx,
                    "deposit",
                    body.deposit_id,
                    [
                        (DEPOSITS, USD, -body.amount_cents),
                        (available(customer), USD, body.amount_cents),
                    ],
                )
                version = await bump(tx, customer)
                tx.publish(
                    "deposit_made",
                    {
                        "customer_id": customer,
                        "deposit_id": body.deposit_id,
                        "amount_cents": body.amount_cents,
                        "version": version,
                    },
                    key=customer,
                )
                status = 201
        if status == 201:
            deposits_total.inc(body.amount_cents)
        return web.json_response(await balances_of(customer), status=status)

    @service.post("/reservations")
    async def reserve(request: web.Request) -> web.Response:
        body = await read_json(request, ReserveIn)
        kind = "cash" if body.asset == USD else "shares"
        stamp = now()
        async with db.transaction() as tx:
            # Held first: a refusal below rolls it back with the rest.
            held = await tx.fetchone(
                "INSERT INTO reservations VALUES (?, ?, ?, ?, 'HELD', NULL, NULL, ?, ?) "
                "ON CONFLICT (order_id) DO NOTHING RETURNING *",
                (body.order_id, body.customer_id, body.asset, body.amount, stamp, stamp),
            )
            if held is None:
                row = await tx.fetchone(
                    "SELECT * FROM reservations WHERE order_id = ?", (body.order_id,)
                )
                assert row is not None
                same = (row["customer_id"], row["asset"], row["amount"]) == (
                    body.customer_id,
                    body.asset,
                    body.amount,
                )
                if not same or row["state"] != "HELD":
                    raise problem(
                        409,
                        "conflict",
                        f"reservation {body.order_id} is {row['state']} with other terms"
                        if not same
                        else f"reservation {body.order_id} is already {row['state']}",
                        state=row["state"],
                    )
                return web.json_response(reservation_json(row), status=200)
            have = await balance(tx, available(body.customer_id), body.asset)
            if have < body.amount:
                reservations_total.labels(kind, "refused").inc()
                if kind == "cash":
                    raise problem(
                        409,
                        "insufficient-funds",
                        f"{body.amount} cents needed, {have} available",
                        available_cents=have,
                        required_cents=body.amount,
                    )
                raise problem(
                    409,
                    "insufficient-shares",
                    f"{body.amount} {body.asset} needed, {have} available",
                    available=have,
                    required=body.amount,
                )
            await post(
                tx,
                "reserve",
                body.order_id,
                [
                    (available(body.customer_id), body.asset, -body.amount),
                    (reserved(body.customer_id), body.asset, body.amount),
                ],
            )
            await bump(tx, body.customer_id)
        reservations_total.labels(kind, "held").inc()
        return web.json_response(reservation_json(held), status=201)

    @service.get("/reservations/{order_id}")
    async def get_reservation(request: web.Request) -> web.Response:
        row = await db.fetchone(
            "SELECT * FROM reservations WHERE order_id = ?", (request.match_info["order_id"],)
        )
        if row is None:
            raise web.HTTPNotFound(text="no such reservation")
        return web.json_response(reservation_json(row))

    @service.post("/reservations/{order_id}/release")
    async def release(request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        body = await read_json(request, ReleaseIn)
        async with db.transaction() as tx:
            row = await tx.fetchone("SELECT * FROM reservations WHERE order_id = ?", (order_id,))
            stamp = now()
            if row is None:
                # A tombstone: the reserve never arrived (or not yet); a late one is refused.
                await tx.execute(
                    "INSERT INTO reservations VALUES (?, ?, '', 0, 'RELEASED', NULL, ?, ?, ?)",
                    (order_id, body.customer_id, body.reason, stamp, stamp),
                )
            elif row["state"] == "SETTLED":
                raise problem(409, "conflict", f"reservation {order_id} is already SETTLED")
            elif row["state"] == "HELD":
                customer, asset, amount = row["customer_id"], row["asset"], row["amount"]
                await post(
                    tx,
                    "release",
                    order_id,
                    [(reserved(customer), asset, -amount), (available(customer), asset, amount)],
                )
                await tx.execute(
                    "UPDATE reservations SET state = 'RELEASED', reason = ?, updated_at = ? "
                    "WHERE order_id = ?",
                    (body.reason, stamp, order_id),
                )
                await bump(tx, customer)
                reservations_total.labels("cash" if asset == USD else "shares", "released").inc()
            row = await tx.fetchone("SELECT * FROM reservations WHERE order_id = ?", (order_id,))
        assert row is not None
        return web.json_response(reservation_json(row))

    @service.post("/reservations/{order_id}/settle")
    async def settle(request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        body = await read_json(request, SettleIn)
        gross = body.quantity * body.price_cents
        fee = body.fee_cents
        if not 0 <= fee <= gross:
            raise problem(422, "invalid-fee", "fee_cents must be between 0 and the gross")
        async with db.transaction() as tx:
            row = await tx.fetchone("SELECT * FROM reservations WHERE order_id = ?", (order_id,))
            if row is None:
                raise web.HTTPNotFound(text="no such reservation")
            if row["customer_id"] != body.customer_id:
                raise problem(409, "conflict", "the reservation belongs to another customer")
            if row["state"] == "SETTLED":
                return web.json_response(reservation_json(row))
            if row["state"] == "RELEASED":
                raise problem(409, "conflict", f"reservation {order_id} is already RELEASED")
            customer, asset, amount = body.customer_id, row["asset"], row["amount"]
            sym, qty = body.symbol, body.quantity
            if body.side == "buy":
                if asset != USD or gross + fee > amount:
                    raise problem(
                        409, "conflict", f"a fill of {gross + fee} cents does not fit {amount}"
                    )
                cash_delta = -(gross + fee)
                postings = [
                    (reserved(customer), USD, -amount),
                    (available(customer), USD, amount - gross - fee),
                    (EXCHANGE, USD, gross),
                    (FEES, USD, fee),
                    (EXCHANGE, sym, -qty),
                    (available(customer), sym, qty),
                ]
            else:
                if asset != sym or amount != qty:
                    raise problem(409, "conflict", f"the reservation holds {amount} {asset}")
                cash_delta = gross - fee
                postings = [
                    (reserved(customer), sym, -qty),
                    (EXCHANGE, sym, qty),
                    (EXCHANGE, USD, -gross),
                    (available(customer), USD, gross - fee),
                    (FEES, USD, fee),
                ]
            await post(tx, "settle", order_id, postings)
            settlement = {
                "side": body.side,
                "symbol": sym,
                "quantity": qty,
                "price_cents": body.price_cents,
                "gross_cents": gross,
                "fee_cents": fee,
                "cash_delta_cents": cash_delta,
            }
            row = await tx.fetchone(
                "UPDATE reservations SET state = 'SETTLED', settlement = ?, updated_at = ? "
                "WHERE order_id = ? RETURNING *",
                (json.dumps(settlement), now(), order_id),
            )
            version = await bump(tx, customer)
            tx.publish(
                "reservation_settled",
                {"order_id": order_id, "customer_id": customer, "version": version, **settlement},
                key=order_id,
            )
        reservations_total.labels("cash" if asset == USD else "shares", "settled").inc()
        assert row is not None
        return web.json_response(reservation_json(row))

    @service.get("/internal/audit")
    async def audit(request: web.Request) -> web.Response:
        sums = await db.fetchall(
            "SELECT asset, SUM(amount) AS total FROM ledger_entries GROUP BY asset ORDER BY asset"
        )
        unbalanced = await db.fetchone(
            "SELECT count(*) AS n FROM (SELECT txn_id FROM ledger_entries "
            "GROUP BY txn_id, asset HAVING SUM(amount) != 0)"
        )
        drift = await db.fetchall(
            "SELECT b.account, b.asset, b.amount, COALESCE(e.total, 0) AS ledger "
            "FROM balances b LEFT JOIN (SELECT account, asset, SUM(amount) AS total "
            "FROM ledger_entries GROUP BY account, asset) e "
            "ON e.account = b.account AND e.asset = b.asset "
            "WHERE b.amount != COALESCE(e.total, 0)"
        )
        negative = await db.fetchall(
            "SELECT account, asset, amount FROM balances "
            "WHERE amount < 0 AND account NOT LIKE 'external:%'"
        )
        states = await db.fetchall(
            "SELECT state, count(*) AS n FROM reservations GROUP BY state ORDER BY state"
        )
        mismatches = await db.fetchall(
            "SELECT b.account, b.asset, b.amount, COALESCE(h.held, 0) AS held FROM balances b "
            "LEFT JOIN (SELECT 'customer:' || customer_id || ':reserved' AS account, asset, "
            "SUM(amount) AS held FROM reservations WHERE state = 'HELD' "
            "GROUP BY customer_id, asset) h ON h.account = b.account AND h.asset = b.asset "
            "WHERE b.account LIKE '%:reserved' AND b.amount != COALESCE(h.held, 0)"
        )
        totals = await db.fetchall(
            "SELECT CASE WHEN account LIKE '%:available' THEN 'customers_available' "
            "WHEN account LIKE '%:reserved' THEN 'customers_reserved' "
            "ELSE account END AS bucket, asset, SUM(amount) AS total "
            "FROM balances GROUP BY bucket, asset"
        )
        by_bucket: dict[str, int] = {}
        shares: dict[str, dict[str, int]] = {}
        names = {FEES: "fees", DEPOSITS: "deposits", EXCHANGE: "exchange"}
        for row in totals:
            bucket = names.get(row["bucket"], row["bucket"])
            if row["asset"] == USD:
                by_bucket[f"{bucket}_cents"] = int(row["total"])
            else:
                shares.setdefault(row["asset"], {})[bucket] = int(row["total"])
        return web.json_response(
            {
                "ledger_sums": {row["asset"]: int(row["total"]) for row in sums},
                "unbalanced_transactions": int(unbalanced["n"]) if unbalanced else 0,
                "balance_drift": [dict(row) for row in drift],
                "negative_balances": [dict(row) for row in negative],
                "reservations": {row["state"]: int(row["n"]) for row in states},
                "reserved_mismatches": [dict(row) for row in mismatches],
                "totals": {
                    "customers_available_cents": by_bucket.get("customers_available_cents", 0),
                    "customers_reserved_cents": by_bucket.get("customers_reserved_cents", 0),
                    "fees_cents": by_bucket.get("fees_cents", 0),
                    "deposits_cents": -by_bucket.get("deposits_cents", 0),
                    "exchange_cents": by_bucket.get("exchange_cents", 0),
                },
                "shares": shares,
            }
        )

    return service
