"""What every SimpleBank service shares: how it is built, identity, money, problems.

The contract these helpers implement is ``docs/simplebank/design.md``. In short:

* money is integer cents, quantities integer shares, ids uuid4 strings;
* the gateway forwards the customer's identity in ``X-Customer-Id``, which internal
  services trust (:func:`customer_id`);
* errors are problem JSON with a ``type`` under :data:`PROBLEM_BASE`
  (:func:`problem`);
* every service is a :class:`chassis.Service` with its own SQLite database
  (:func:`make_service`).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints

from chassis import ChassisSettings, ProblemError, Service
from chassis.client import Response
from chassis.db import Database

__all__ = [
    "CUSTOMER_HEADER",
    "AuthSettings",
    "BankSettings",
    "MAX_CENTS",
    "MAX_QUANTITY",
    "PROBLEM_BASE",
    "VERSION",
    "Cents",
    "Id",
    "Model",
    "Quantity",
    "Symbol",
    "business_counter",
    "business_gauge",
    "business_histogram",
    "bank_settings_from",
    "customer_id",
    "make_service",
    "new_id",
    "now",
    "problem",
    "problem_kind",
    "query_limit",
]

VERSION = "0.1.0"
"""The version every SimpleBank service reports."""

PROBLEM_BASE = "https://simplebank.example/problems/"
"""Prefix of the ``type`` of SimpleBank's problem JSON answers."""

CUSTOMER_HEADER = "X-Customer-Id"
"""Set by the gateway only (it strips any a client sent); internal services trust it."""

MAX_QUANTITY = 1_000_000
"""Largest number of shares in one order or reservation."""

MAX_CENTS = 10**12
"""Largest amount of cents in one command (ten billion dollars)."""

_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_UUID_OK = re.compile(_UUID).fullmatch

Id = Annotated[str, StringConstraints(pattern=_UUID)]
"""A lower-case uuid string."""
Symbol = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9.]{0,9}$")]
"""A ticker symbol: ``VTI``, ``BRK.B``."""
Quantity = Annotated[int, Field(gt=0, le=MAX_QUANTITY)]
"""A positive number of shares, at most :data:`MAX_QUANTITY`."""
Cents = Annotated[int, Field(gt=0, le=MAX_CENTS)]
"""A positive amount of cents, at most :data:`MAX_CENTS`."""


class Model(BaseModel):
    """Base of request bodies: unknown fields refused, no type coercion (``"10"`` is not 10)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AuthSettings(BaseModel):
    """``CHASSIS_AUTH__*``: the customers' tokens (issued by customers, checked by the gateway)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token_secret: SecretStr | None = None
    """The HS256 key that signs and checks tokens; customers and gateway must share it.
    Required by those two services (the one-process runner generates one)."""
    token_ttl_seconds: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600)
    """How long a token is valid after login."""
    issuer: str = "simplebank-customers"
    """The ``iss`` claim of tokens."""


class BankSettings(ChassisSettings):
    """The chassis settings plus SimpleBank's own sections (read with the ``CHASSIS_`` prefix)."""

    auth: AuthSettings = AuthSettings()


def bank_settings_from(settings: ChassisSettings) -> BankSettings:
    """``settings`` as :class:`BankSettings` (the environment is not read again)."""
    if isinstance(settings, BankSettings):
        return settings
    return BankSettings.model_validate(settings.model_dump())


def new_id() -> str:
    """A fresh uuid4 string."""
    return str(uuid.uuid4())


def now() -> str:
    """The current UTC time, ISO 8601."""
    return dt.datetime.now(dt.timezone.utc).isoformat()


def problem(status: int, kind: str, detail: str, **extensions: Any) -> ProblemError:
    """A SimpleBank problem to raise: ``raise problem(409, "insufficient-funds", ...)``."""
    return ProblemError(
        detail,
        status=status,
        title=kind.replace("-", " ").capitalize(),
        type=PROBLEM_BASE + kind,
        extensions=extensions,
    )


def problem_kind(response: Response) -> str:
    """The SimpleBank problem kind of an error answer (``insufficient-funds``), or its status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        kind = body.get("type")
        if isinstance(kind, str) and kind.startswith(PROBLEM_BASE):
            return kind[len(PROBLEM_BASE) :]
    return f"http-{response.status}"


_LIMIT_OK = re.compile(r"[0-9]{1,3}").fullmatch


def query_limit(request: web.Request, *, default: int = 50, maximum: int = 100) -> int:
    """The ``?limit=`` of a list request: ASCII digits, 1..``maximum``.

    Raises:
        ProblemError: 422 for anything else (``-1``, ``abc``, ``²``, 5000 digits).
    """
    raw = request.query.get("limit")
    if raw is None:
        return default
    if not _LIMIT_OK(raw) or not 0 < int(raw) <= maximum:
        raise problem(422, "invalid-limit", f"limit must be 1..{maximum}")
    return int(raw)


def customer_id(request: web.Request) -> str:
    """The customer the gateway authenticated, from ``X-Customer-Id``.

    Raises:
        ProblemError: 401 when the header is missing or not a uuid.
    """
    value = request.headers.get(CUSTOMER_HEADER, "")
    if not _UUID_OK(value):
        raise problem(401, "unauthenticated", f"{CUSTOMER_HEADER} is missing or not a uuid")
    return value


def make_service(
    name: str,
    *,
    schema: str,
    settings: ChassisSettings | type[ChassisSettings] | None = None,
    database: str | Path | None = None,
) -> tuple[Service, Database]:
    """A SimpleBank service: a :class:`chassis.Service` and its own SQLite database.

    Args:
        name: the service name (also its discovery name and event source).
        schema: the service's tables (idempotent SQL, run at every start).
        settings: the chassis settings, or the class to read from the environment at
            start (:class:`~chassis.ChassisSettings` by default).
        database: the SQLite file; by default ``CHASSIS_DATABASE__PATH`` or ``<name>.db``.
    """
    service = Service(name, version=VERSION, settings=settings)
    db = service.database(database, schema=schema)
    return service, db


def business_counter(
    service: Service, name: str, documentation: str, labels: Sequence[str] = ()
) -> Counter:
    """A ``simplebank_*`` counter on ``service``'s registry (served at its ``/metrics``)."""
    return Counter(name, documentation, labels, registry=service.metrics.registry)


def business_gauge(
    service: Service, name: str, documentation: str, labels: Sequence[str] = ()
) -> Gauge:
    """A ``simplebank_*`` gauge on ``service``'s registry."""
    return Gauge(name, documentation, labels, registry=service.metrics.registry)


def business_histogram(
    service: Service,
    name: str,
    documentation: str,
    labels: Sequence[str] = (),
    buckets: Sequence[float] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
) -> Histogram:
    """A ``simplebank_*`` histogram on ``service``'s registry."""
    return Histogram(
        name, documentation, labels, registry=service.metrics.registry, buckets=buckets
    )
