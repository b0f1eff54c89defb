"""customers: sign-up, login, signed tokens, and customer lookup.

Passwords are stored only as scrypt hashes (:mod:`simplebank.auth`); a login answers a
JWT signed with ``CHASSIS_AUTH__TOKEN_SECRET`` that the gateway checks on every call.
Wrong email and wrong password get the same answer, after the same work.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, StringConstraints

from chassis import ChassisSettings, Service, read_json

from .auth import hash_password, issue_token, secret_of, verify_password
from .common import (
    BankSettings,
    Id,
    Model,
    bank_settings_from,
    business_counter,
    customer_id,
    make_service,
    new_id,
    now,
    problem,
)

__all__ = ["SCHEMA", "create"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    customer_id   TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL
);
"""

Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_lower=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    ),
]
Password = Annotated[str, Field(min_length=8, max_length=128)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SignUp(Model):
    email: Email
    password: Password
    name: Name


class Login(Model):
    email: Email
    password: Annotated[str, Field(max_length=128)]


class Lookup(Model):
    customer_id: Id


def customer_json(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "customer_id": row["customer_id"],
        "email": row["email"],
        "name": row["name"],
        "created_at": row["created_at"],
    }


def create(
    *, settings: ChassisSettings | None = None, database: str | Path | None = None
) -> Service:
    """The customers service (needs ``CHASSIS_AUTH__TOKEN_SECRET``)."""
    service, db = make_service(
        "customers",
        schema=SCHEMA,
        settings=bank_settings_from(settings) if settings is not None else BankSettings,
        database=database,
    )
    signups_total = business_counter(service, "simplebank_signups_total", "Customers signed up.")
    logins_total = business_counter(
        service, "simplebank_logins_total", "Login attempts by outcome.", ("outcome",)
    )

    def auth_settings() -> BankSettings:
        return bank_settings_from(service.settings)

    @service.lifespan
    async def check_secret(app: web.Application) -> AsyncIterator[None]:
        secret_of(auth_settings().auth)  # a missing key fails the start, not the first login
        yield

    async def fetch(customer: str) -> sqlite3.Row:
        row = await db.fetchone("SELECT * FROM customers WHERE customer_id = ?", (customer,))
        if row is None:
            raise web.HTTPNotFound(text="no such customer")
        return row

    @service.post("/customers")
    async def sign_up(request: web.Request) -> web.Response:
        body = await read_json(request, SignUp)
        if _CONTROL.search(body.name):
            raise problem(422, "invalid-name", "the name has control characters")
        password_hash = await hash_password(body.password)
        customer = new_id()
        async with db.transaction() as tx:
            taken = await tx.fetchone("SELECT 1 FROM customers WHERE email = ?", (body.email,))
            if taken is not None:
                raise problem(409, "email-taken", "a customer with this email exists")
            await tx.execute(
                "INSERT INTO customers VALUES (?, ?, ?, ?, ?)",
                (customer, body.email, body.name, password_hash, now()),
            )
            tx.publish(
                "customer_signed_up",
                {"customer_id": customer, "email": body.email, "name": body.name},
                key=customer,
            )
        signups_total.inc()
        row = await fetch(customer)
        return web.json_response(
            customer_json(row), status=201, headers={"Location": f"/customers/{customer}"}
        )

    @service.post("/tokens")
    async def log_in(request: web.Request) -> web.Response:
        body = await read_json(request, Login)
        row = await db.fetchone(
            "SELECT customer_id, password_hash FROM customers WHERE email = ?", (body.email,)
        )
        stored = row["password_hash"] if row is not None else None
        if row is None or not await verify_password(body.password, stored):
            logins_total.labels("refused").inc()
            raise problem(401, "invalid-credentials", "unknown email or wrong password")
        auth = auth_settings().auth
        token = issue_token(row["customer_id"], auth)
        logins_total.labels("success").inc()
        return web.json_response(
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": int(auth.token_ttl_seconds),
                "customer_id": row["customer_id"],
            }
        )

    @service.get("/customers/me")
    async def me(request: web.Request) -> web.Response:
        return web.json_response(customer_json(await fetch(customer_id(request))))

    @service.get("/customers/{customer_id}")
    async def lookup(request: web.Request) -> web.Response:
        # Internal: another service looking a customer up (the gateway never routes here).
        wanted = request.match_info["customer_id"]
        try:
            Lookup(customer_id=wanted)
        except ValueError:
            raise web.HTTPNotFound(text="no such customer") from None
        return web.json_response(customer_json(await fetch(wanted)))

    @service.get("/internal/audit")
    async def audit(request: web.Request) -> web.Response:
        row = await db.fetchone("SELECT count(*) AS n FROM customers")
        plain = await db.fetchone(
            "SELECT count(*) AS n FROM customers WHERE password_hash NOT LIKE 'scrypt$%'"
        )
        return web.json_response(
            {
                "customers": int(row["n"]) if row else 0,
                "unhashed_passwords": int(plain["n"]) if plain else 0,
            }
        )

    return service
