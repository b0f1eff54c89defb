"""orders: buy and sell orders, their state machine, and the saga that fills them.

Orders **orchestrates** the saga (why: ``docs/simplebank/design.md``). Each state
change is committed with the event announcing it (the outbox), and orders consumes
its own events to run the next step, so a crash between two steps loses nothing.
A delivery whose ``version`` is not the order's current one is a duplicate or stale:
it does nothing. Steps and compensations are commands to accounts, market and fees,
idempotent by order id::

    PENDING -> RESERVED -> PLACED -> FEE_CHARGED -> FILLED
         \\         \\          \\           \\
          FAILED    COMPENSATING (undo, newest first) -> FAILED
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from chassis import ChassisSettings, Service, read_json
from chassis.client import ServiceClient, remaining_seconds
from chassis.db import Database
from chassis.events import Event
from chassis.exceptions import UpstreamError

from .common import (
    CUSTOMER_HEADER,
    MAX_CENTS,
    Model,
    Quantity,
    Symbol,
    business_counter,
    business_histogram,
    customer_id,
    make_service,
    new_id,
    now,
    problem,
    problem_kind,
    query_limit,
)

__all__ = ["MAX_WAIT_SECONDS", "SCHEMA", "TERMINAL", "create"]

log = logging.getLogger("simplebank.orders")

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id          TEXT PRIMARY KEY,
    customer_id       TEXT NOT NULL,
    side              TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    symbol            TEXT NOT NULL,
    quantity          INTEGER NOT NULL CHECK (quantity > 0),
    state             TEXT NOT NULL CHECK (state IN ('PENDING', 'RESERVED', 'PLACED',
                        'FEE_CHARGED', 'FILLED', 'COMPENSATING', 'FAILED')),
    version           INTEGER NOT NULL,
    limit_price_cents INTEGER NOT NULL,
    reserved_asset    TEXT NOT NULL,
    reserved_amount   INTEGER NOT NULL,
    price_cents       INTEGER,
    gross_cents       INTEGER,
    fee_cents         INTEGER,
    exchange_order_id TEXT,
    failed_step       TEXT,
    failure_reason    TEXT,
    to_compensate     TEXT NOT NULL DEFAULT '[]',
    compensations     TEXT NOT NULL DEFAULT '[]',
    idempotency_key   TEXT,
    created_ts        REAL NOT NULL,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS orders_idempotency
    ON orders (customer_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_id, created_ts);
"""

TERMINAL = frozenset({"FILLED", "FAILED"})
"""States an order never leaves."""

MAX_WAIT_SECONDS = 10.0
"""Longest ``GET /orders/{order_id}?wait_seconds=`` a client may ask for."""

RECHECK_SECONDS = 1.0
"""A waiting read rereads the order this often (another replica may have moved it)."""

DEADLINE_MARGIN_SECONDS = 0.5
"""A waiting read answers this long before the caller's deadline."""

_NUMBER = re.compile(r"[0-9]{1,6}(\.[0-9]{1,3})?").fullmatch
_VERSION = re.compile(r"[1-9][0-9]{0,8}").fullmatch

JUST_COMMITTED_MAX = 10_000
"""Rows committed here whose event was not delivered here yet, kept at most (oldest go)."""

SLIPPAGE_PERCENT = 5
"""A buy is limited to the quote plus this much (a sell to the quote minus this much)."""

_STEP_EVENTS = ("order_created", "order_reserved", "order_placed", "order_fee_charged")
_PUBLIC_FIELDS = (
    "order_id",
    "customer_id",
    "side",
    "symbol",
    "quantity",
    "state",
    "version",
    "limit_price_cents",
    "reserved_asset",
    "reserved_amount",
    "price_cents",
    "gross_cents",
    "fee_cents",
    "exchange_order_id",
    "failed_step",
    "failure_reason",
    "created_at",
    "updated_at",
)


class NewOrder(Model):
    side: Literal["buy", "sell"]
    symbol: Symbol
    quantity: Quantity


class StepFailed(Exception):
    """A saga step did not happen: ``definite`` when refused, not when it may have."""

    def __init__(self, reason: str, *, definite: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.definite = definite


class StillTrying(RuntimeError):
    """A step that must not give up failed for now: the event is delivered again."""


def order_json(row: sqlite3.Row) -> dict[str, Any]:
    body = {name: row[name] for name in _PUBLIC_FIELDS}
    body["compensations"] = json.loads(row["compensations"])
    return body


async def command(
    client: ServiceClient, name: str, path: str, body: dict[str, Any], key: str
) -> Any:
    """POST a saga command with an idempotency key; its JSON answer.

    Raises:
        StepFailed: refused (4xx, definite) or not answered (a dependency failure).
    """
    try:
        response = await client.post(path, json=body, headers={"Idempotency-Key": key})
    except UpstreamError as exc:
        raise StepFailed(f"{name}-unavailable", definite=False) from exc
    if response.status >= 500:
        kind = problem_kind(response)
        raise StepFailed(
            kind if not kind.startswith("http-") else f"{name}-unavailable", definite=False
        )
    if response.status >= 400:
        raise StepFailed(problem_kind(response), definite=True)
    return response.json()


def _expire(waiter: asyncio.Future[sqlite3.Row | None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Watchers:
    """Readers waiting for an order to change (``GET /orders/{id}?wait_seconds=``)."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[sqlite3.Row | None]]] = {}

    def changed(self, row: sqlite3.Row) -> None:
        """Hand ``row``, an order's newly committed state, to every reader waiting on it."""
        for waiter in self._waiting.pop(row["order_id"], ()):
            if not waiter.done():
                waiter.set_result(row)

    async def read(
        self,
        order_id: str,
        read: Callable[[], Awaitable[sqlite3.Row]],
        version: int | None,
        wait_seconds: float,
    ) -> sqlite3.Row:
        """The order once its version is not ``version`` (or it is settled, or time is up).

        ``read()`` reads the order (and checks whose it is): first, then every
        :data:`RECHECK_SECONDS` while nothing wakes this reader. ``version`` None means
        the version read first. The reader is registered before each read, so a change
        committed in between still reaches it.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_seconds
        row: sqlite3.Row | None = None
        while True:
            waiter: asyncio.Future[sqlite3.Row | None] = loop.create_future()
            self._waiting.setdefault(order_id, set()).add(waiter)
            try:
                if row is None:
                    row = await read()
                if version is None:
                    version = row["version"]
                left = give_up - loop.time()
                if row["version"] != version or row["state"] in TERMINAL or left <= 0:
                    return row
                # A timer, not asyncio.wait: a waiting read is most of a saga's requests.
                timer = loop.call_later(min(left, RECHECK_SECONDS), _expire, waiter)
                try:
                    row = await waiter  # the committed row, or None: read it again
                finally:
                    timer.cancel()
            finally:
                waiting = self._waiting.get(order_id)
                if waiting is not None:
                    waiting.discard(waiter)
                    if not waiting:
                        del self._waiting[order_id]


class Saga:
    """Runs the next step of an order, or its compensations."""

    def __init__(self, service: Service, db: Database) -> None:
        self.db = db
        self.watchers = Watchers()
        # Each order's row as this process last committed it, until the event that
        # announces that version is delivered here (see on_event).
        self._just_committed: dict[str, sqlite3.Row] = {}
        self.accounts = service.client("accounts")
        self.market = service.client("market")
        self.fees = service.client("fees")
        self.orders_total = business_counter(
            service, "simplebank_orders_total", "Orders by side and outcome.", ("side", "outcome")
        )
        self.compensations_total = business_counter(
            service,
            "simplebank_saga_compensations_total",
            "Compensating actions the order saga ran, by step.",
            ("step",),
        )
        self.duration = business_histogram(
            service,
            "simplebank_saga_duration_seconds",
            "From order accepted to FILLED or FAILED.",
            ("side", "outcome"),
        )

    def committed(self, row: sqlite3.Row) -> None:
        """``row`` was just committed here: wake its readers, keep it for its event."""
        order_id = row["order_id"]
        remembered = self._just_committed
        remembered.pop(order_id, None)
        if row["state"] not in TERMINAL:
            if len(remembered) >= JUST_COMMITTED_MAX:
                del remembered[next(iter(remembered))]
            remembered[order_id] = row
        self.watchers.changed(row)

    async def on_event(self, event: Event) -> None:
        """Handler of orders' own events: advance the order if the event is current.

        The first delivery here of the event a commit here published takes the row
        that commit returned instead of reading it again (the step's update checks
        the version anyway); any other delivery, a redelivery included, reads it.
        """
        order_id, version = event.data.get("order_id"), event.data.get("version")
        row = self._just_committed.pop(order_id, None) if isinstance(order_id, str) else None
        if row is None or row["version"] != version:
            row = await self.db.fetchone("SELECT * FROM orders WHERE order_id = ?", (order_id,))
        if row is None or row["version"] != version:
            log.debug(
                "stale or duplicate %s for %s ignored",
                event.type,
                order_id,
                extra={"order_id": order_id},
            )
            return
        await self.advance(row)

    async def advance(self, row: sqlite3.Row) -> None:
        state = row["state"]
        if state == "COMPENSATING":
            await self.compensate(row)
            return
        step = {"PENDING": "reserve", "RESERVED": "place", "PLACED": "charge"}.get(state, "settle")
        if state in TERMINAL:
            return
        try:
            if state == "PENDING":
                await self.reserve(row)
            elif state == "RESERVED":
                await self.place(row)
            elif state == "PLACED":
                await self.charge(row)
            else:
                await self.settle(row)
        except StepFailed as failure:
            await self.failed(row, step, failure)

    # -- steps -----------------------------------------------------------------------
    async def reserve(self, row: sqlite3.Row) -> None:
        oid = row["order_id"]
        body = {
            "order_id": oid,
            "customer_id": row["customer_id"],
            "asset": row["reserved_asset"],
            "amount": row["reserved_amount"],
        }
        await command(self.accounts, "accounts", "/reservations", body, oid)
        await self.transition(
            row,
            "RESERVED",
            "order_reserved",
            event={"asset": row["reserved_asset"], "amount": row["reserved_amount"]},
        )

    async def place(self, row: sqlite3.Row) -> None:
        oid = row["order_id"]
        body = {
            "order_id": oid,
            "side": row["side"],
            "symbol": row["symbol"],
            "quantity": row["quantity"],
            "limit_price_cents": row["limit_price_cents"],
        }
        fill = await command(self.market, "market", "/exchange-orders", body, oid)
        price = int(fill["price_cents"])
        gross = price * row["quantity"]
        changes = {
            "price_cents": price,
            "gross_cents": gross,
            "exchange_order_id": fill["exchange_order_id"],
        }
        await self.transition(row, "PLACED", "order_placed", changes=changes, event=changes)

    async def charge(self, row: sqlite3.Row) -> None:
        oid = row["order_id"]
        body = {
            "order_id": oid,
            "customer_id": row["customer_id"],
            "side": row["side"],
            "symbol": row["symbol"],
            "gross_cents": row["gross_cents"],
        }
        charged = await command(self.fees, "fees", "/charges", body, oid)
        fee = int(charged["fee_cents"])
        await self.transition(
            row,
            "FEE_CHARGED",
            "order_fee_charged",
            changes={"fee_cents": fee},
            event={"fee_cents": fee},
        )

    async def settle(self, row: sqlite3.Row) -> None:
        oid = row["order_id"]
        body = {
            "customer_id": row["customer_id"],
            "side": row["side"],
            "symbol": row["symbol"],
            "quantity": row["quantity"],
            "price_cents": row["price_cents"],
            "fee_cents": row["fee_cents"],
        }
        try:
            settled = await command(
                self.accounts, "accounts", f"/reservations/{oid}/settle", body, oid
            )
        except StepFailed as failure:
            if failure.definite:
                raise
            # The pivot: after a fill, only move forward (retry until success).
            raise StillTrying(f"settling {oid}: {failure.reason}") from failure
        settlement = settled["settlement"]
        done = await self.transition(
            row,
            "FILLED",
            "order_filled",
            event={
                "price_cents": row["price_cents"],
                "gross_cents": row["gross_cents"],
                "fee_cents": row["fee_cents"],
                "cash_delta_cents": settlement["cash_delta_cents"],
            },
        )
        if done:
            self.finished(row, "filled")

    # -- failure and compensation ----------------------------------------------------
    async def failed(self, row: sqlite3.Row, step: str, failure: StepFailed) -> None:
        """Step ``step`` failed: fail the order, compensating what may have happened."""
        undo = {"reserve": [], "place": ["release"], "charge": ["cancel", "release"]}.get(
            step, ["refund", "cancel", "release"]
        )
        if not failure.definite or step == "place":
            # It may have happened after all: its own compensation runs first. A place
            # is always cancelled: a refusal answers one attempt, and another attempt
            # with the same key may have filled it; cancelling an order the exchange
            # never filled leaves a tombstone that refuses a late one.
            undo = [{"reserve": "release", "place": "cancel", "charge": "refund"}[step], *undo]
        log.info(
            "order %s failed at %s: %s",
            row["order_id"],
            step,
            failure.reason,
            extra={"order_id": row["order_id"], "step": step, "reason": failure.reason},
        )
        changes = {"failed_step": step, "failure_reason": failure.reason}
        if not undo:
            done = await self.transition(
                row,
                "FAILED",
                "order_failed",
                changes=changes,
                event={"reason": failure.reason, "compensations": []},
            )
            if done:
                self.finished(row, "failed")
            return
        changes["to_compensate"] = json.dumps(undo)
        await self.transition(
            row,
            "COMPENSATING",
            "order_compensating",
            changes=changes,
            event={"failed_step": step, "reason": failure.reason},
        )

    async def compensate(self, row: sqlite3.Row) -> None:
        """Run the compensations newest first; each is idempotent, so a rerun is safe."""
        oid, customer = row["order_id"], row["customer_id"]
        reason = row["failure_reason"] or "failed"
        undo: list[str] = json.loads(row["to_compensate"])
        for action in undo:
            if action == "release":
                client, name, path = self.accounts, "accounts", f"/reservations/{oid}/release"
                body: dict[str, Any] = {"customer_id": customer, "reason": reason}
            elif action == "cancel":
                client, name, path = self.market, "market", f"/exchange-orders/{oid}/cancel"
                body = {"reason": reason}
            else:
                client, name, path = self.fees, "fees", f"/charges/{oid}/refund"
                body = {"customer_id": customer, "reason": reason}
            try:
                await command(client, name, path, body, f"{action}-{oid}")
            except StepFailed as failure:
                if not failure.definite:
                    raise StillTrying(f"{action} of {oid}: {failure.reason}") from failure
                log.error(
                    "compensation %s of order %s was refused: %s",
                    action,
                    oid,
                    failure.reason,
                    extra={"order_id": oid, "step": action, "reason": failure.reason},
                )
        done = await self.transition(
            row,
            "FAILED",
            "order_failed",
            changes={"compensations": json.dumps(undo)},
            event={"reason": reason, "compensations": undo},
        )
        if done:
            for action in undo:
                self.compensations_total.labels(action).inc()
            self.finished(row, "failed")

    def finished(self, row: sqlite3.Row, outcome: str) -> None:
        self.orders_total.labels(row["side"], outcome).inc()
        self.duration.labels(row["side"], outcome).observe(
            max(0.0, time.time() - row["created_ts"])
        )

    # -- state ------------------------------------------------------------------------
    async def transition(
        self,
        row: sqlite3.Row,
        state: str,
        event_type: str,
        *,
        changes: dict[str, Any] | None = None,
        event: dict[str, Any] | None = None,
    ) -> bool:
        """Move ``row`` to ``state`` if nobody moved it first; publish ``event_type``."""
        changes = dict(changes or {})
        columns = "".join(f", {name} = ?" for name in changes)
        async with self.db.transaction() as tx:
            new = await tx.fetchone(
                f"UPDATE orders SET state = ?, version = version + 1, updated_at = ?{columns} "
                "WHERE order_id = ? AND version = ? RETURNING *",
                (state, now(), *changes.values(), row["order_id"], row["version"]),
            )
            if new is None:
                return False
            tx.publish(
                event_type,
                {
                    "order_id": row["order_id"],
                    "customer_id": row["customer_id"],
                    "side": row["side"],
                    "symbol": row["symbol"],
                    "quantity": row["quantity"],
                    "state": state,
                    "version": row["version"] + 1,
                    **(event or {}),
                },
                key=row["order_id"],
            )
        self.committed(new)
        log.info(
            "order %s is %s",
            row["order_id"],
            state,
            extra={"order_id": row["order_id"], "state": state},
        )
        return True


def create(
    *, settings: ChassisSettings | None = None, database: str | Path | None = None
) -> Service:
    """The orders service."""
    service, db = make_service("orders", schema=SCHEMA, settings=settings, database=database)
    saga = Saga(service, db)
    # The saga's own events are never dead-lettered: every order must reach FILLED or
    # FAILED, so a step that cannot run yet (a service down) is retried until it can.
    for event_type in (*_STEP_EVENTS, "order_compensating"):
        service.events.subscribe("orders", event_type, max_attempts=math.inf)(saga.on_event)

    async def owned(request: web.Request) -> sqlite3.Row:
        customer = customer_id(request)
        row = await db.fetchone(
            "SELECT * FROM orders WHERE order_id = ? AND customer_id = ?",
            (request.match_info["order_id"], customer),
        )
        if row is None:
            raise web.HTTPNotFound(text="no such order")
        return row

    @service.post("/orders")
    async def place_order(request: web.Request) -> web.Response:
        customer = customer_id(request)
        body = await read_json(request, NewOrder)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 0 < len(key) <= 128:
            raise problem(422, "invalid-idempotency-key", "Idempotency-Key: 1-128 characters")
        if key is not None:
            row = await db.fetchone(
                "SELECT * FROM orders WHERE customer_id = ? AND idempotency_key = ?",
                (customer, key),
            )
            if row is not None:
                if (row["side"], row["symbol"], row["quantity"]) != (
                    body.side,
                    body.symbol,
                    body.quantity,
                ):
                    raise problem(409, "conflict", "Idempotency-Key reused for another order")
                return web.json_response(order_json(row), status=200)
        quote = await saga.market.get(f"/quotes/{body.symbol}")
        if quote.status == 422:
            raise problem(422, "unknown-symbol", f"{body.symbol} is not traded", symbol=body.symbol)
        if quote.status >= 500:
            kind = problem_kind(quote)
            kind = "market-unavailable" if kind.startswith("http-") else kind
            raise problem(503, kind, "the order cannot be priced now; try again later")
        quote.raise_for_status()
        price = int(quote.json()["price_cents"])
        if body.side == "buy":
            limit = -(-price * (100 + SLIPPAGE_PERCENT) // 100)
            notional = limit * body.quantity
            if notional > MAX_CENTS:
                raise problem(422, "order-too-large", f"at most {MAX_CENTS} cents per order")
            fee = await saga.fees.get_json("/fees/quote", params={"gross_cents": str(notional)})
            asset, amount = "USD", notional + int(fee["fee_cents"])
        else:
            limit = max(1, price * (100 - SLIPPAGE_PERCENT) // 100)
            asset, amount = body.symbol, body.quantity
        balances = await saga.accounts.get_json("/balances", headers={CUSTOMER_HEADER: customer})
        if asset == "USD":
            have = int(balances["cash"]["available_cents"])
            if have < amount:
                saga.orders_total.labels(body.side, "rejected").inc()
                raise problem(
                    409,
                    "insufficient-funds",
                    f"{amount} cents needed (with a {SLIPPAGE_PERCENT}% price margin and the "
                    f"fee), {have} available",
                    available_cents=have,
                    required_cents=amount,
                )
        else:
            have = next((p["available"] for p in balances["positions"] if p["symbol"] == asset), 0)
            if have < amount:
                saga.orders_total.labels(body.side, "rejected").inc()
                raise problem(
                    409,
                    "insufficient-shares",
                    f"{amount} {asset} needed, {have} available",
                    available=have,
                    required=amount,
                )
        oid = new_id()
        stamp = now()
        async with db.transaction() as tx:
            if key is not None:
                # Checked again in the transaction: an attempt with this key that was
                # in flight during the check above may have stored the order since.
                row = await tx.fetchone(
                    "SELECT * FROM orders WHERE customer_id = ? AND idempotency_key = ?",
                    (customer, key),
                )
                if row is not None:
                    if (row["side"], row["symbol"], row["quantity"]) != (
                        body.side,
                        body.symbol,
                        body.quantity,
                    ):
                        raise problem(409, "conflict", "Idempotency-Key reused for another order")
                    return web.json_response(order_json(row), status=200)
            row = await tx.fetchone(
                "INSERT INTO orders (order_id, customer_id, side, symbol, quantity, state, "
                "version, limit_price_cents, reserved_asset, reserved_amount, idempotency_key, "
                "created_ts, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, 'PENDING', 1, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (
                    oid,
                    customer,
                    body.side,
                    body.symbol,
                    body.quantity,
                    limit,
                    asset,
                    amount,
                    key,
                    time.time(),
                    stamp,
                    stamp,
                ),
            )
            tx.publish(
                "order_created",
                {
                    "order_id": oid,
                    "customer_id": customer,
                    "side": body.side,
                    "symbol": body.symbol,
                    "quantity": body.quantity,
                    "state": "PENDING",
                    "version": 1,
                },
                key=oid,
            )
        assert row is not None
        saga.committed(row)
        log.info(
            "order %s is PENDING: %s %d %s",
            oid,
            body.side,
            body.quantity,
            body.symbol,
            extra={"order_id": oid, "state": "PENDING", "side": body.side, "symbol": body.symbol},
        )
        return web.json_response(
            order_json(row), status=202, headers={"Location": f"/orders/{oid}"}
        )

    @service.get("/orders/{order_id}")
    async def get_order(request: web.Request) -> web.Response:
        wait = request.query.get("wait_seconds")
        if wait is None:
            return web.json_response(order_json(await owned(request)))
        if not _NUMBER(wait) or float(wait) > MAX_WAIT_SECONDS:
            raise problem(422, "invalid-wait", f"wait_seconds must be 0..{MAX_WAIT_SECONDS:g}")
        seen = request.query.get("version")
        if seen is not None and not _VERSION(seen):
            raise problem(422, "invalid-version", "version must be a positive integer")
        seconds = float(wait)
        left = remaining_seconds()
        if left is not None:  # answer before the caller gives up, not after
            seconds = min(seconds, max(0.0, left - DEADLINE_MARGIN_SECONDS))
        row = await saga.watchers.read(
            request.match_info["order_id"],
            lambda: owned(request),
            None if seen is None else int(seen),
            seconds,
        )
        return web.json_response(order_json(row))

    @service.get("/orders")
    async def list_orders(request: web.Request) -> web.Response:
        customer = customer_id(request)
        limit = query_limit(request)
        state = request.query.get("state")
        sql = "SELECT * FROM orders WHERE customer_id = ?"
        params: list[Any] = [customer]
        if state:
            sql += " AND state = ?"
            params.append(state.upper())
        sql += " ORDER BY created_ts DESC LIMIT ?"
        params.append(limit)
        rows = await db.fetchall(sql, params)
        return web.json_response({"orders": [order_json(row) for row in rows]})

    @service.get("/internal/audit")
    async def audit(request: web.Request) -> web.Response:
        states = await db.fetchall("SELECT state, count(*) AS n FROM orders GROUP BY state")
        rows = await db.fetchall("SELECT order_id, state FROM orders ORDER BY created_ts")
        by_state = {row["state"]: int(row["n"]) for row in states}
        return web.json_response(
            {
                "by_state": by_state,
                "non_terminal": [r["order_id"] for r in rows if r["state"] not in TERMINAL],
                "filled": [r["order_id"] for r in rows if r["state"] == "FILLED"],
                "failed": [r["order_id"] for r in rows if r["state"] == "FAILED"],
                "total": sum(by_state.values()),
            }
        )

    return service
