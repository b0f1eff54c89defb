"""market: places orders on the external exchange, and cancels them.

Every call to the exchange goes through ``service.client("exchange")``: a deadline,
retries with ``Idempotency-Key: <order id>``, the circuit breaker and a fallback
that turns any dependency failure into a clean ``exchange-unavailable`` problem (503),
so the saga's step fails and is compensated instead of hanging.

A cancel that cannot reach the exchange is not lost: it is recorded as
``CANCEL_PENDING`` (answered 202) and a background reconciler retries it until the
exchange confirms (the *retry* consistency strategy), so the saga's compensation
never waits on the exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, NoReturn

from aiohttp import web

from chassis import ChassisSettings, ProblemError, Service, read_json
from chassis.client import Fallback, remaining_seconds
from chassis.exceptions import UpstreamError

from .common import (
    Cents,
    Id,
    Model,
    Quantity,
    Symbol,
    business_counter,
    business_gauge,
    make_service,
    now,
    problem,
    problem_kind,
)

__all__ = ["SCHEMA", "create"]

log = logging.getLogger("simplebank.market")

SCHEMA = """
CREATE TABLE IF NOT EXISTS exchange_orders (
    order_id          TEXT PRIMARY KEY,
    side              TEXT,
    symbol            TEXT,
    quantity          INTEGER,
    limit_price_cents INTEGER,
    status            TEXT NOT NULL CHECK (status IN
                        ('PLACING', 'FILLED', 'REJECTED', 'CANCEL_PENDING', 'CANCELLED')),
    exchange_order_id TEXT,
    price_cents       INTEGER,
    reason            TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);
"""


class PlaceIn(Model):
    order_id: Id
    side: Literal["buy", "sell"]
    symbol: Symbol
    quantity: Quantity
    limit_price_cents: Cents


class CancelIn(Model):
    reason: str = ""


def _unavailable(exc: BaseException) -> NoReturn:
    """The fallback: the exchange could not be reached; fail the step cleanly."""
    raise problem(
        503,
        "exchange-unavailable",
        f"the exchange could not be reached ({type(exc).__name__})",
    ) from exc


def order_json(row: sqlite3.Row) -> dict[str, Any]:
    return {key: row[key] for key in row.keys()}  # noqa: SIM118 (sqlite3.Row)


def create(
    *,
    settings: ChassisSettings | None = None,
    database: str | Path | None = None,
    reconcile_interval_seconds: float = 2.0,
    quote_cache_seconds: float = 30.0,
    quote_timeout_seconds: float = 1.0,
    cancel_timeout_seconds: float = 1.0,
    answer_margin_seconds: float = 0.25,
) -> Service:
    """The market service.

    Args:
        reconcile_interval_seconds: how often pending cancels are retried.
        quote_cache_seconds: how long the last good quote answers when the exchange
            is down.
        quote_timeout_seconds: how long a quote waits for the exchange before the
            last good one answers (one attempt: a quote must be quick).
        cancel_timeout_seconds: how long a cancel waits for the exchange before it
            is left to the reconciler (answered 202).
        answer_margin_seconds: placing an order stops retrying the exchange this long
            before the caller's deadline, so the caller gets a clean
            ``exchange-unavailable`` rather than a timeout of its own.
    """
    service, db = make_service("market", schema=SCHEMA, settings=settings, database=database)
    exchange = service.client("exchange")
    fail_cleanly = Fallback(handler=_unavailable)
    last_good_quote = Fallback(cache_ttl_seconds=quote_cache_seconds, handler=_unavailable)
    orders_total = business_counter(
        service,
        "simplebank_exchange_orders_total",
        "Orders sent to the exchange, by side and outcome.",
        ("side", "outcome"),
    )
    pending_gauge = business_gauge(
        service, "simplebank_exchange_pending_cancels", "Cancels waiting for the exchange."
    )

    async def fetch(order_id: str) -> sqlite3.Row | None:
        return await db.fetchone("SELECT * FROM exchange_orders WHERE order_id = ?", (order_id,))

    @service.get("/quotes/{symbol}")
    async def quote(request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        response = await exchange.get(
            f"/prices/{symbol}",
            timeout=quote_timeout_seconds,
            deadline=quote_timeout_seconds,
            fallback=last_good_quote,
        )
        if response.status in (404, 422):
            raise problem(422, "unknown-symbol", f"{symbol} is not traded", symbol=symbol)
        response.raise_for_status()
        data = response.json()
        return web.json_response({"symbol": symbol, "price_cents": int(data["price_cents"])})

    @service.post("/exchange-orders")
    async def place(request: web.Request) -> web.Response:
        body = await read_json(request, PlaceIn)
        oid = body.order_id
        async with db.transaction() as tx:
            stamp = now()
            inserted = await tx.execute(
                "INSERT INTO exchange_orders (order_id, side, symbol, quantity, "
                "limit_price_cents, status, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, 'PLACING', ?, ?) ON CONFLICT (order_id) DO NOTHING",
                (oid, body.side, body.symbol, body.quantity, body.limit_price_cents, stamp, stamp),
            )
            if inserted.rowcount != 1:
                row = await tx.fetchone("SELECT * FROM exchange_orders WHERE order_id = ?", (oid,))
                assert row is not None
                # PLACING: an earlier attempt with this key is in flight, or died with
                # the process; asking the exchange again with the same key is safe and
                # gets the one outcome the exchange has for it.
                if row["status"] == "FILLED":
                    return web.json_response(order_json(row), status=200)
                if row["status"] in ("CANCEL_PENDING", "CANCELLED"):
                    raise problem(409, "conflict", f"order {oid} was cancelled")
                if row["status"] == "REJECTED":
                    raise problem(409, row["reason"] or "conflict", f"order {oid} was rejected")
        left = remaining_seconds()
        budget = None if left is None else max(0.05, left - answer_margin_seconds)
        try:
            response = await exchange.post(
                "/orders",
                json={
                    "client_order_id": oid,
                    "side": body.side,
                    "symbol": body.symbol,
                    "quantity": body.quantity,
                    "limit_price_cents": body.limit_price_cents,
                },
                headers={"Idempotency-Key": oid},
                deadline=budget,
                fallback=fail_cleanly,
            )
        except ProblemError:
            orders_total.labels(body.side, "unavailable").inc()
            raise
        if response.status >= 400:
            kind = problem_kind(response)
            kind = kind if kind in ("limit-not-met", "unknown-symbol") else "conflict"
            async with db.transaction() as tx:
                await tx.execute(
                    "UPDATE exchange_orders SET status = 'REJECTED', reason = ?, updated_at = ? "
                    "WHERE order_id = ? AND status = 'PLACING'",
                    (kind, now(), oid),
                )
                row = await tx.fetchone("SELECT * FROM exchange_orders WHERE order_id = ?", (oid,))
            if row is not None and row["status"] == "FILLED":
                # Another attempt with this key filled it meanwhile: its answer stands.
                return web.json_response(order_json(row), status=200)
            orders_total.labels(body.side, "rejected").inc()
            raise problem(422 if kind == "unknown-symbol" else 409, kind, response.text())
        fill = response.json()
        async with db.transaction() as tx:
            # The exchange's fill is the truth: it wins over a refusal another attempt
            # with this key recorded (a cancel, if one was asked, still reaches it).
            # The answer is decided on the row this transaction wrote or read, never
            # on a read that may predate the fill.
            row = await tx.fetchone(
                "UPDATE exchange_orders SET status = 'FILLED', exchange_order_id = ?, "
                "price_cents = ?, reason = NULL, updated_at = ? "
                "WHERE order_id = ? AND status IN ('PLACING', 'REJECTED') RETURNING *",
                (fill["exchange_order_id"], fill["price_cents"], now(), oid),
            )
            if row is not None:
                tx.publish(
                    "exchange_order_placed",
                    {
                        "order_id": oid,
                        "exchange_order_id": fill["exchange_order_id"],
                        "symbol": body.symbol,
                        "side": body.side,
                        "quantity": body.quantity,
                        "price_cents": fill["price_cents"],
                    },
                    key=oid,
                )
            else:
                row = await tx.fetchone("SELECT * FROM exchange_orders WHERE order_id = ?", (oid,))
        assert row is not None
        if row["status"] != "FILLED":
            # Cancelled while we were placing it: the cancel reaches the exchange too.
            raise problem(409, "conflict", f"order {oid} was cancelled")
        orders_total.labels(body.side, "filled").inc()
        return web.json_response(order_json(row), status=201)

    async def cancel_on_exchange(oid: str) -> bool:
        """Ask the exchange to cancel ``oid``; True once it confirmed."""
        try:
            response = await exchange.post(
                f"/orders/{oid}/cancel",
                headers={"Idempotency-Key": f"cancel-{oid}"},
                timeout=cancel_timeout_seconds,
                deadline=cancel_timeout_seconds,
            )
        except UpstreamError as exc:
            log.info("cancel of %s is pending: %s", oid, exc, extra={"order_id": oid})
            return False
        if response.status >= 400:
            log.info("cancel of %s is pending: %s", oid, response.status, extra={"order_id": oid})
            return False
        async with db.transaction() as tx:
            updated = await tx.execute(
                "UPDATE exchange_orders SET status = 'CANCELLED', updated_at = ? "
                "WHERE order_id = ? AND status = 'CANCEL_PENDING'",
                (now(), oid),
            )
            if updated.rowcount == 1:
                tx.publish("exchange_order_cancelled", {"order_id": oid}, key=oid)
        return True

    async def count_pending() -> int:
        row = await db.fetchone(
            "SELECT count(*) AS n FROM exchange_orders WHERE status = 'CANCEL_PENDING'"
        )
        return int(row["n"]) if row is not None else 0

    @service.post("/exchange-orders/{order_id}/cancel")
    async def cancel(request: web.Request) -> web.Response:
        oid = request.match_info["order_id"]
        body = await read_json(request, CancelIn)
        async with db.transaction() as tx:
            row = await tx.fetchone("SELECT * FROM exchange_orders WHERE order_id = ?", (oid,))
            stamp = now()
            if row is None:
                await tx.execute(
                    "INSERT INTO exchange_orders (order_id, status, reason, created_at, "
                    "updated_at) VALUES (?, 'CANCEL_PENDING', ?, ?, ?)",
                    (oid, body.reason, stamp, stamp),
                )
            elif row["status"] != "CANCELLED":
                await tx.execute(
                    "UPDATE exchange_orders SET status = 'CANCEL_PENDING', reason = ?, "
                    "updated_at = ? WHERE order_id = ?",
                    (body.reason, stamp, oid),
                )
        row = await fetch(oid)
        assert row is not None
        if row["status"] == "CANCELLED" or await cancel_on_exchange(oid):
            row = await fetch(oid)
            assert row is not None
            pending_gauge.set(await count_pending())
            return web.json_response(order_json(row), status=200)
        pending_gauge.set(await count_pending())
        return web.json_response(order_json(row), status=202)

    async def reconcile_once() -> int:
        """Retry every pending cancel once; return how many are still pending."""
        rows = await db.fetchall(
            "SELECT order_id FROM exchange_orders WHERE status = 'CANCEL_PENDING' "
            "ORDER BY updated_at LIMIT 100"
        )
        for row in rows:
            await cancel_on_exchange(row["order_id"])
        left = await count_pending()
        pending_gauge.set(left)
        return left

    @service.lifespan
    async def reconciler(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(reconcile_interval_seconds)
                try:
                    await reconcile_once()
                except Exception:
                    log.exception("reconciling pending cancels failed")

        task = asyncio.get_running_loop().create_task(loop(), name="market-reconciler")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @service.get("/internal/audit")
    async def audit(request: web.Request) -> web.Response:
        rows = await db.fetchall(
            "SELECT status, count(*) AS n FROM exchange_orders GROUP BY status ORDER BY status"
        )
        return web.json_response(
            {
                "by_status": {row["status"]: int(row["n"]) for row in rows},
                "pending_cancels": await count_pending(),
            }
        )

    @service.post("/internal/reconcile")
    async def reconcile(request: web.Request) -> web.Response:
        return web.json_response({"pending_cancels": await reconcile_once()})

    return service
