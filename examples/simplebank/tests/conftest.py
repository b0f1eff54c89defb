"""Fixtures: the exchange stand-in, the services on loopback, customers, invariants after tests."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from simplebank.common import CUSTOMER_HEADER, new_id
from simplebank.exchange import Exchange
from simplebank.services import Bank, run_services
from simplebank.testing import check_invariants

from chassis import ChassisSettings
from chassis.events import InMemoryBroker

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

PRICES = {"VTI": 25000, "BND": 7300}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CHASSIS_* or OTEL_* variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("CHASSIS_", "OTEL_")):
            monkeypatch.delenv(name)


def bank_settings(**overrides: Any) -> ChassisSettings:
    """Quick settings: no drain delay, short retries and breaker recovery, quiet logs."""
    sections: dict[str, Any] = {
        "health": {"drain_delay_seconds": 0, "lag_probe_interval_seconds": 0.05},
        "client": {
            "timeout_seconds": 2.0,
            "deadline_seconds": 6.0,
            "backoff_base_seconds": 0.01,
            "backoff_max_seconds": 0.1,
            "breaker_recovery_seconds": 0.3,
        },
        "events": {"retry_initial_seconds": 0.05, "retry_max_seconds": 0.5, "max_attempts": 40},
        "log": {"level": "WARNING", "access_log": False},
        "tracing": {"enabled": False},
    }
    for key, value in overrides.items():
        sections.setdefault(key, {}).update(value)
    return ChassisSettings(**sections)


@pytest.fixture
async def exchange() -> AsyncIterator[Exchange]:
    async with Exchange(prices=dict(PRICES)) as exchange:
        yield exchange


class Client:
    """Calls the internal services as the gateway does, for one customer."""

    def __init__(self, session: aiohttp.ClientSession, bank: Bank, customer: str) -> None:
        self.session = session
        self.bank = bank
        self.customer = customer
        self.deposited = 0

    @property
    def headers(self) -> dict[str, str]:
        return {CUSTOMER_HEADER: self.customer}

    async def call(
        self, service: str, method: str, path: str, *, json: Any = None, data: Any = None
    ) -> tuple[int, Any]:
        headers = dict(self.headers)
        async with self.session.request(
            method, self.bank.urls[service] + path, json=json, data=data, headers=headers
        ) as response:
            body = await response.json(content_type=None)
            return response.status, body

    async def deposit(self, amount_cents: int) -> dict[str, Any]:
        status, body = await self.call(
            "accounts",
            "POST",
            "/deposits",
            json={"deposit_id": new_id(), "amount_cents": amount_cents},
        )
        assert status == 201, body
        self.deposited += amount_cents
        return body  # type: ignore[no-any-return]

    async def balances(self) -> dict[str, Any]:
        status, body = await self.call("accounts", "GET", "/balances")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def position(self, symbol: str) -> dict[str, int]:
        for p in (await self.balances())["positions"]:
            if p["symbol"] == symbol:
                return {"available": p["available"], "reserved": p["reserved"]}
        return {"available": 0, "reserved": 0}

    async def order(self, side: str, symbol: str, quantity: int) -> dict[str, Any]:
        """Place an order and wait until it is FILLED or FAILED."""
        status, body = await self.call(
            "orders", "POST", "/orders", json={"side": side, "symbol": symbol, "quantity": quantity}
        )
        assert status == 202, body
        return await self.wait(body["order_id"])

    async def wait(self, order_id: str, timeout: float = 30.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while True:
            status, body = await self.call("orders", "GET", f"/orders/{order_id}")
            assert status == 200, body
            if body["state"] in ("FILLED", "FAILED"):
                return body  # type: ignore[no-any-return]
            assert loop.time() < give_up, f"order still {body['state']} after {timeout} s"
            await asyncio.sleep(0.02)


@pytest.fixture
def span_exporter() -> SpanExporter | None:
    """Where the bank's services export spans; a module overriding it turns tracing on."""
    return None


@pytest.fixture
async def bank(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    exchange: Exchange,
    span_exporter: SpanExporter | None,
) -> AsyncIterator[Bank]:
    """Every service on loopback; the invariants hold after the test.

    Tests marked ``one_service`` drive one service's commands outside a saga, so the
    books of the other services are not expected to agree with it. With a
    ``span_exporter``, every service traces every request (sampler ``always_on``) and
    writes access-log lines.
    """
    traced: dict[str, Any] = {}
    if span_exporter is not None:
        traced = {
            "tracing": {"enabled": True, "sampler": "always_on"},
            "log": {"access_log": True},
        }
    async with run_services(
        tmp_path,
        urls={"exchange": exchange.url},
        settings=bank_settings(**traced),
        options={"market": {"reconcile_interval_seconds": 0.1}},
        broker=InMemoryBroker(),
        span_exporter=span_exporter,
    ) as bank:
        yield bank
        await bank.settle(timeout=30)
        if not exchange.upstream.listening:
            await exchange.recover()
        exchange.upstream.clear_faults()
        across = request.node.get_closest_marker("one_service") is None
        report = await check_invariants(bank.urls, exchange, across_services=across)
        assert not report.violations, report.violations


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def alice(session: aiohttp.ClientSession, bank: Bank) -> Client:
    return Client(session, bank, new_id())


@pytest.fixture
async def bob(session: aiohttp.ClientSession, bank: Bank) -> Client:
    return Client(session, bank, new_id())


class Customer:
    """A customer of the public API: everything goes through the gateway over HTTP."""

    def __init__(self, session: aiohttp.ClientSession, bank: Bank, name: str) -> None:
        self.session = session
        self.bank = bank
        self.name = name
        self.email = f"{name.lower()}-{new_id()[:8]}@example.com"
        self.password = f"{name} has a long password"
        self.token: str | None = None
        self.customer_id: str | None = None

    @property
    def url(self) -> str:
        return self.bank.urls["gateway"]

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> tuple[int, Any]:
        sent = dict(headers or {})
        if auth and self.token is not None:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        async with self.session.request(
            method, self.url + path, json=json, data=data, headers=sent
        ) as response:
            body = await response.json(content_type=None) if await response.read() else None
            return response.status, body

    async def sign_up(self) -> Customer:
        status, body = await self.call(
            "POST",
            "/signup",
            json={"email": self.email, "password": self.password, "name": self.name},
        )
        assert status == 201, body
        self.customer_id = body["customer_id"]
        status, body = await self.call(
            "POST", "/login", json={"email": self.email, "password": self.password}
        )
        assert status == 200, body
        self.token = body["access_token"]
        return self

    async def ok(self, method: str, path: str, *, json: Any = None, status: int = 200) -> Any:
        got, body = await self.call(method, path, json=json)
        assert got == status, (got, body)
        return body

    async def deposit(self, amount_cents: int) -> dict[str, Any]:
        return await self.ok("POST", "/deposits", json={"amount_cents": amount_cents}, status=201)  # type: ignore[no-any-return]

    async def cash(self) -> dict[str, int]:
        return (await self.ok("GET", "/balances"))["cash"]  # type: ignore[no-any-return]

    async def position(self, symbol: str) -> dict[str, int]:
        for p in (await self.ok("GET", "/balances"))["positions"]:
            if p["symbol"] == symbol:
                return {"available": p["available"], "reserved": p["reserved"]}
        return {"available": 0, "reserved": 0}

    async def order(self, side: str, symbol: str, quantity: int) -> dict[str, Any]:
        """Place an order through the gateway; wait until it is FILLED or FAILED."""
        body = {"side": side, "symbol": symbol, "quantity": quantity}
        placed = await self.ok("POST", "/orders", json=body, status=202)
        return await self.wait_order(placed["order_id"])

    async def wait_order(self, order_id: str, timeout: float = 30.0) -> dict[str, Any]:
        return await self.poll(
            f"/orders/{order_id}", lambda o: o["state"] in ("FILLED", "FAILED"), timeout
        )

    async def portfolio_newer_than(self, version: int, timeout: float = 30.0) -> dict[str, Any]:
        """The client's polling pattern: ask until the read model's version is newer."""
        return await self.poll("/portfolio", lambda p: p["version"] > version, timeout)

    async def poll(self, path: str, done: Any, timeout: float = 30.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while True:
            body = await self.ok("GET", path)
            if done(body):
                return body  # type: ignore[no-any-return]
            assert loop.time() < give_up, f"{path} still {body} after {timeout} s"
            await asyncio.sleep(0.02)


@pytest.fixture
async def anna(session: aiohttp.ClientSession, bank: Bank) -> Customer:
    return await Customer(session, bank, "Anna").sign_up()


@pytest.fixture
async def ben(session: aiohttp.ClientSession, bank: Bank) -> Customer:
    return await Customer(session, bank, "Ben").sign_up()
