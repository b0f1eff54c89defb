"""notifications: tells customers what happened, and keeps the alert log.

Customer notifications come from events (idempotent subscribers, so one event makes
one notification however often it is delivered): a welcome at sign-up, deposits,
filled orders and failed ones with the reason. A lost notification undoes nothing
(the saga's *ignore* strategy).

``POST /alerts`` is an Alertmanager webhook receiver (the book's ``alerts`` service):
each alert of the payload is stored, keyed by its fingerprint and start, and its
status updated when it resolves.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from chassis import ChassisSettings, Service, read_json
from chassis.db import Transaction
from chassis.events import Event

from .common import business_counter, customer_id, make_service, now, problem, query_limit

__all__ = ["SCHEMA", "create", "describe"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    notification_id TEXT PRIMARY KEY,
    customer_id     TEXT NOT NULL,
    kind            TEXT NOT NULL,
    message         TEXT NOT NULL,
    data            TEXT NOT NULL,
    created_at      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_by_customer ON notifications (customer_id, created_at);
CREATE TABLE IF NOT EXISTS alerts (
    fingerprint TEXT NOT NULL,
    starts_at   TEXT NOT NULL,
    status      TEXT NOT NULL,
    alertname   TEXT NOT NULL,
    severity    TEXT,
    labels      TEXT NOT NULL,
    annotations TEXT NOT NULL,
    ends_at     TEXT,
    received_at TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (fingerprint, starts_at)
);
"""

_Labels = Annotated[dict[str, str], Field(max_length=64)]


class _Lenient(BaseModel):
    # Alertmanager may add fields in later versions: ignore what we do not use.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Alert(_Lenient):
    status: Literal["firing", "resolved"]
    labels: _Labels
    annotations: _Labels = {}
    startsAt: Annotated[str, Field(max_length=64)]  # Alertmanager's names
    endsAt: Annotated[str, Field(max_length=64)] | None = None
    fingerprint: Annotated[str, Field(max_length=64)] | None = None


class AlertmanagerWebhook(_Lenient):
    version: str = "4"
    status: Literal["firing", "resolved"]
    receiver: str = ""
    alerts: Annotated[list[Alert], Field(max_length=1000)]


def _dollars(cents: int) -> str:
    return f"${cents / 100:,.2f}"


def describe(event: Event) -> tuple[str, str] | None:
    """The notification kind and message for ``event``; None if it makes none."""
    d = event.data
    if event.type == "customer_signed_up":
        return "welcome", f"Welcome to SimpleBank, {d['name']}!"
    if event.type == "deposit_made":
        return "deposit", f"Deposit of {_dollars(int(d['amount_cents']))} received."
    if event.type == "order_filled":
        verb = "Bought" if d["side"] == "buy" else "Sold"
        return (
            "order_filled",
            f"{verb} {d['quantity']} {d['symbol']} at {_dollars(int(d['price_cents']))} "
            f"(fee {_dollars(int(d['fee_cents']))}).",
        )
    if event.type == "order_failed":
        undone = ", ".join(d.get("compensations") or []) or "nothing to undo"
        return (
            "order_failed",
            f"Your {d['side']} order of {d['quantity']} {d['symbol']} failed "
            f"({d.get('reason')}); undone: {undone}. No fee was kept.",
        )
    return None


def notification_json(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "notification_id": row["notification_id"],
        "kind": row["kind"],
        "message": row["message"],
        "data": json.loads(row["data"]),
        "created_at": row["created_at"],
    }


def alert_json(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "fingerprint": row["fingerprint"],
        "status": row["status"],
        "alertname": row["alertname"],
        "severity": row["severity"],
        "labels": json.loads(row["labels"]),
        "annotations": json.loads(row["annotations"]),
        "starts_at": row["starts_at"],
        "ends_at": row["ends_at"],
        "received_at": row["received_at"],
        "updated_at": row["updated_at"],
    }


def create(
    *, settings: ChassisSettings | None = None, database: str | Path | None = None
) -> Service:
    """The notifications service."""
    service, db = make_service("notifications", schema=SCHEMA, settings=settings, database=database)
    notifications_total = business_counter(
        service, "simplebank_notifications_total", "Customer notifications, by kind.", ("kind",)
    )
    alerts_total = business_counter(
        service,
        "simplebank_alerts_received_total",
        "Alerts received from Alertmanager, by status.",
        ("status",),
    )

    async def notify(event: Event, tx: Transaction) -> None:
        described = describe(event)
        if described is None:
            return
        kind, message = described
        # Keyed by the event id too: even without the inbox, one event is one notification.
        await tx.execute(
            "INSERT OR IGNORE INTO notifications VALUES (?, ?, ?, ?, ?, ?)",
            (
                event.id,
                event.data["customer_id"],
                kind,
                message,
                json.dumps(event.data),
                event.time.isoformat(),
            ),
        )
        notifications_total.labels(kind).inc()

    for source, event_type in (
        ("customers", "customer_signed_up"),
        ("accounts", "deposit_made"),
        ("orders", "order_filled"),
        ("orders", "order_failed"),
    ):
        service.events.subscribe(source, event_type, idempotent=True, name=f"notify-{event_type}")(
            notify
        )

    @service.get("/notifications")
    async def list_notifications(request: web.Request) -> web.Response:
        customer = customer_id(request)
        limit = query_limit(request)
        rows = await db.fetchall(
            "SELECT * FROM notifications WHERE customer_id = ? "
            "ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (customer, limit),
        )
        return web.json_response({"notifications": [notification_json(row) for row in rows]})

    @service.post("/alerts")
    async def receive_alerts(request: web.Request) -> web.Response:
        body = await read_json(request, AlertmanagerWebhook)
        stamp = now()
        async with db.transaction() as tx:
            for alert in body.alerts:
                fingerprint = (
                    alert.fingerprint
                    or hashlib.sha256(
                        json.dumps(alert.labels, sort_keys=True).encode()
                    ).hexdigest()[:16]
                )
                await tx.execute(
                    "INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (fingerprint, starts_at) DO UPDATE SET status = excluded.status, "
                    "ends_at = excluded.ends_at, annotations = excluded.annotations, "
                    "updated_at = excluded.updated_at",
                    (
                        fingerprint,
                        alert.startsAt,
                        alert.status,
                        alert.labels.get("alertname", "unnamed"),
                        alert.labels.get("severity"),
                        json.dumps(alert.labels, sort_keys=True),
                        json.dumps(alert.annotations, sort_keys=True),
                        alert.endsAt,
                        stamp,
                        stamp,
                    ),
                )
        for alert in body.alerts:
            alerts_total.labels(alert.status).inc()
        return web.json_response({"received": len(body.alerts)})

    @service.get("/alerts")
    async def list_alerts(request: web.Request) -> web.Response:
        status = request.query.get("status")
        if status not in (None, "firing", "resolved"):
            raise problem(422, "invalid-status", "status is firing or resolved")
        sql = "SELECT * FROM alerts"
        params: tuple[str, ...] = ()
        if status is not None:
            sql += " WHERE status = ?"
            params = (status,)
        rows = await db.fetchall(sql + " ORDER BY updated_at DESC LIMIT 200", params)
        return web.json_response({"alerts": [alert_json(row) for row in rows]})

    @service.get("/internal/audit")
    async def audit(request: web.Request) -> web.Response:
        kinds = await db.fetchall("SELECT kind, count(*) AS n FROM notifications GROUP BY kind")
        return web.json_response({"by_kind": {row["kind"]: int(row["n"]) for row in kinds}})

    return service
