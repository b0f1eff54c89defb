"""The chaos harness: SimpleBank per process, a steady mixed load, one fault at a time.

The bank runs as in ``test_per_process.py`` (:class:`procs.Fleet`: one ``python -m
chassis run`` per service, the Consul stand-in with an ACL token, a real RabbitMQ, the
exchange stand-in in this process). Customers buy, sell and invest through the
gateway while a fault is injected, held and healed; then the load stops and the bank
must settle: every order terminal within a bound, the invariants of
:func:`simplebank.testing.check_invariants`, and each customer's books (accounts), read
model (holdings) and fills agreeing with the terminal states of the orders the load
placed, so no event was lost or applied twice.

The load's client behaves as a well-mannered client behind a load balancer: it picks a
gateway from the pool the harness keeps (the rolling restart swaps the gateway in it,
as an orchestrator would), resends a request that never reached a gateway (connection
refused), and resends a safe request (a GET, or a POST with an ``Idempotency-Key``) that
failed with a 502/503/504 or a dropped connection, a few times within a bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import random
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from json import loads as json_loads
from pathlib import Path
from typing import Any

import aiohttp
from procs import Fleet, ServiceProcess
from simplebank.exchange import Exchange
from simplebank.fees import fee_for
from simplebank.testing import check_invariants

from chassis.testing import ConsulStandIn

TERMINAL = ("FILLED", "FAILED")
SYMBOLS = ("VTI", "BND")
DEPOSIT_CENTS = 50_000_000

# The services' resilience settings for the run (every service, by environment).
CLIENT_TIMEOUT_SECONDS = 1.5
CLIENT_MAX_ATTEMPTS = 3
BREAKER_FAILURE_THRESHOLD = 5
BREAKER_RECOVERY_SECONDS = 1.0
CHAOS_ENV = {
    "CHASSIS_CLIENT__TIMEOUT_SECONDS": str(CLIENT_TIMEOUT_SECONDS),
    "CHASSIS_CLIENT__DEADLINE_SECONDS": "8",
    "CHASSIS_CLIENT__MAX_ATTEMPTS": str(CLIENT_MAX_ATTEMPTS),
    "CHASSIS_CLIENT__BACKOFF_BASE_SECONDS": "0.05",
    "CHASSIS_CLIENT__BACKOFF_MAX_SECONDS": "0.5",
    "CHASSIS_CLIENT__BREAKER_FAILURE_THRESHOLD": str(BREAKER_FAILURE_THRESHOLD),
    "CHASSIS_CLIENT__BREAKER_RECOVERY_SECONDS": str(BREAKER_RECOVERY_SECONDS),
    "CHASSIS_HEALTH__DRAIN_DELAY_SECONDS": "1",
    "CHASSIS_LOG__LEVEL": "INFO",
    "CHASSIS_LOG__ACCESS_LOG": "true",
}


@dataclass(frozen=True)
class Plan:
    """How hard and how long: the CI form and the full form differ only here."""

    customers: int
    requests_per_phase: int
    lead_seconds: float
    fault_seconds: float
    tail_seconds: float
    settle_seconds: float
    pace_seconds: float
    rolling: tuple[str, ...] | None
    """The services the rolling restart replaces (``None``: every one)."""
    faults: tuple[str, ...] | None = None
    """The faults injected, by name (``None``: all of :data:`FAULTS`)."""


CI = Plan(
    customers=3,
    requests_per_phase=40,
    lead_seconds=0.3,
    fault_seconds=3.0,
    tail_seconds=0.3,
    settle_seconds=60.0,
    pace_seconds=0.05,
    rolling=("gateway", "orders"),
    faults=(
        "exchange outage (503)",
        "exchange latency > timeout",
        "orders SIGKILLed + restarted",
        "Consul stand-in down",
        "rolling SIGTERM restart",
    ),
)
"""The short form, in the SimpleBank test run: one of each fault but the broker restart
(its ~10 s stop and start are the full form's), a rolling restart of two services."""

FULL = Plan(
    customers=6,
    requests_per_phase=600,
    lead_seconds=2.0,
    fault_seconds=8.0,
    tail_seconds=2.0,
    settle_seconds=90.0,
    pace_seconds=0.02,
    rolling=None,
)
"""The full form (``nox -s chaos``): every fault, every service restarted in turn."""


@dataclass
class Phase:
    """What happened to the load during one fault."""

    fault: str
    sent: int = 0
    succeeded: int = 0
    refused: int = 0
    """4xx answers: the bank said no (not enough shares...), not a failure."""
    retried: int = 0
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    orders: list[str] = field(default_factory=list)
    investments: list[tuple[Customer, str]] = field(default_factory=list)
    filled: int = 0
    failed_orders: int = 0
    settle_seconds: float = 0.0
    exchange_hits: int | None = None
    exchange_bound: int | None = None
    violations: list[str] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return not self.violations


class Customer:
    """A customer of the public API, with what the load did for it."""

    def __init__(self, number: int) -> None:
        self.name = f"Chaos{number}"
        self.email = f"chaos{number}-{uuid.uuid4().hex[:8]}@example.com"
        self.password = f"chaos password {uuid.uuid4().hex}"
        self.token = ""
        self.strategy = ""
        self.orders: set[str] = set()
        self.investments: set[str] = set()


class Load:
    """Sends the customers' requests to the gateways of the pool, with a client's retries."""

    def __init__(self, session: aiohttp.ClientSession, gateways: list[str], seed: int) -> None:
        self.session = session
        self.gateways = gateways
        self.random = random.Random(seed)
        self.phase = Phase("setup")
        self.tokens: list[str] = []

    async def request(
        self, method: str, path: str, *, json: Any = None, token: str = "", key: str = ""
    ) -> tuple[int, Any]:
        """One logical request, counted once in the current phase; (status, body), status
        0 when it failed without an answer."""
        phase = self.phase
        phase.sent += 1
        safe = method == "GET" or bool(key)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if key:
            headers["Idempotency-Key"] = key
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 20.0
        reason = ""
        for attempt in range(10):
            if attempt:
                phase.retried += 1
                await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
            url = self.gateways[attempt % len(self.gateways)] + path
            try:
                async with self.session.request(
                    method, url, json=json, headers=headers
                ) as response:
                    raw = await response.read()
                    status = response.status
            except aiohttp.ClientConnectorError:
                reason = "connection refused"  # never reached a gateway: always resent
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                reason = type(exc).__name__
                if not safe:
                    break
            else:
                if status in (502, 503, 504) and safe and loop.time() < give_up:
                    reason = f"http {status}"
                    continue
                body = json_loads(raw) if raw else None
                if status < 400:
                    phase.succeeded += 1
                elif status < 500:
                    phase.refused += 1
                else:
                    phase.failed[f"http {status}"] += 1
                return status, body
            if loop.time() >= give_up:
                break
        phase.failed[reason] += 1
        return 0, None

    async def sign_up(self, customer: Customer) -> None:
        """Sign up, log in, deposit, create a strategy; each step resent until it took
        (bounded), as the load's setup must not fail on a slow machine."""
        who = {"email": customer.email, "password": customer.password, "name": customer.name}
        await self._until("POST", "/signup", (201, 409), json=who)  # 409: an earlier try took
        login = {"email": customer.email, "password": customer.password}
        body = await self._until("POST", "/login", (200,), json=login)
        customer.token = body["access_token"]
        self.tokens.append(customer.token)
        deposit = {"amount_cents": DEPOSIT_CENTS}
        key = str(uuid.uuid4())
        await self._until(
            "POST", "/deposits", (200, 201), json=deposit, token=customer.token, key=key
        )
        mix = {
            "name": "mix",
            "allocations": [{"symbol": "VTI", "percent": 60}, {"symbol": "BND", "percent": 40}],
        }
        for _ in range(5):
            status, body = await self.request("POST", "/strategies", json=mix, token=customer.token)
            if status == 201:
                customer.strategy = body["strategy_id"]
                return
            mine = await self._until("GET", "/strategies", (200,), token=customer.token)
            if mine["strategies"]:  # created, though the answer was lost
                customer.strategy = mine["strategies"][0]["strategy_id"]
                return
        raise AssertionError(f"no strategy for {customer.name}: {status} {body}")

    async def _until(self, method: str, path: str, ok: tuple[int, ...], **kwargs: Any) -> Any:
        for _ in range(5):
            status, body = await self.request(method, path, **kwargs)
            if status in ok:
                return body
        raise AssertionError(f"{method} {path}: {status} {body}")

    async def act(self, customer: Customer) -> None:
        """One random action of ``customer``: buy, sell or invest."""
        choice = self.random.random()
        key = str(uuid.uuid4())
        if choice < 0.2:
            path = f"/strategies/{customer.strategy}/investments"
            status, body = await self.request(
                "POST", path, json={"amount_cents": 60_000}, token=customer.token, key=key
            )
            if status in (200, 202):
                customer.investments.add(body["investment_id"])
                self.phase.investments.append((customer, body["investment_id"]))
            return
        side = "buy" if choice < 0.65 else "sell"
        order = {
            "side": side,
            "symbol": self.random.choice(SYMBOLS),
            "quantity": 1 + (choice > 0.5),
        }
        status, body = await self.request(
            "POST", "/orders", json=order, token=customer.token, key=key
        )
        if status in (200, 202):
            customer.orders.add(body["order_id"])
            self.phase.orders.append(body["order_id"])

    async def run(self, customers: list[Customer], plan: Plan, stop: asyncio.Event) -> None:
        """Each customer acts in turn until ``stop`` or the phase's request budget."""
        phase = self.phase

        async def one(customer: Customer) -> None:
            while not stop.is_set() and phase.sent < plan.requests_per_phase:
                await self.act(customer)
                await asyncio.sleep(plan.pace_seconds)

        await asyncio.gather(*(one(c) for c in customers))


@dataclass
class Bank:
    """Everything the faults act on."""

    fleet: Fleet
    consul: ConsulStandIn
    broker: Any  # rabbitmq_server.RabbitMQServer
    exchange: Exchange
    load: Load
    customers: list[Customer]
    plan: Plan
    startup_seconds: float = 0.0


Fault = Callable[[Bank], Awaitable[None]]


async def exchange_outage(bank: Bank) -> None:
    """The exchange answers 503 to everything for the fault's length."""
    bank.exchange.upstream.error_rate = 1.0
    try:
        await asyncio.sleep(bank.plan.fault_seconds)
    finally:
        bank.exchange.upstream.error_rate = 0.0


async def exchange_latency(bank: Bank) -> None:
    """The exchange answers, but later than any caller's per-attempt timeout."""
    bank.exchange.upstream.latency_seconds = CLIENT_TIMEOUT_SECONDS + 1.5
    try:
        await asyncio.sleep(bank.plan.fault_seconds)
    finally:
        bank.exchange.upstream.latency_seconds = 0.0


def killed_and_restarted(name: str) -> Fault:
    async def fault(bank: Bank) -> None:
        proc = bank.fleet.running[name]
        await proc.stop(signal.SIGKILL)
        await asyncio.sleep(bank.plan.fault_seconds / 2)
        new = await bank.fleet.start(name, proc.port)
        bank.fleet.running[name] = new
        await bank.fleet.wait_ready(new)

    fault.__name__ = f"{name} SIGKILLed"
    return fault


async def consul_down(bank: Bank) -> None:
    """The Consul stand-in stops (connections drop) and comes back on the same port."""
    await bank.consul.stop()
    try:
        await asyncio.sleep(bank.plan.fault_seconds)
    finally:
        await bank.consul.start()


async def rabbitmq_restarted(bank: Bank) -> None:
    """The broker stops gracefully and starts again on the same port."""
    await asyncio.to_thread(bank.broker.stop)
    await asyncio.sleep(bank.plan.fault_seconds / 2)
    await asyncio.to_thread(bank.broker.start)


async def rolling_restart(bank: Bank) -> None:
    """Each service in turn: a new process, ready and passing in Consul, then SIGTERM to
    the old one (it drains); the gateway pool follows the gateway."""

    def follow(new: ServiceProcess) -> None:
        if new.name == "gateway":
            bank.load.gateways[:] = [new.url]

    for name in bank.plan.rolling or tuple(bank.fleet.running):
        await bank.fleet.replace(name, on_ready=follow)


FAULTS: dict[str, Fault] = {
    "exchange outage (503)": exchange_outage,
    "exchange latency > timeout": exchange_latency,
    "accounts SIGKILLed + restarted": killed_and_restarted("accounts"),
    "orders SIGKILLed + restarted": killed_and_restarted("orders"),
    "Consul stand-in down": consul_down,
    "RabbitMQ restarted": rabbitmq_restarted,
    "rolling SIGTERM restart": rolling_restart,
}


async def run_phase(bank: Bank, name: str, fault: Fault) -> Phase:
    """Load, fault, heal, load; then stop the load and check that the bank settles."""
    phase = Phase(name)
    bank.load.phase = phase
    stop = asyncio.Event()
    load = asyncio.create_task(bank.load.run(bank.customers, bank.plan, stop))
    loop = asyncio.get_running_loop()
    try:
        await asyncio.sleep(bank.plan.lead_seconds)
        # Counted from the fault's start: the lead's fills are ordinary traffic.
        hits_before = bank.exchange.upstream.hits
        started = loop.time()
        await fault(bank)
        if "exchange outage" in name:
            lasted = loop.time() - started
            phase.exchange_hits = bank.exchange.upstream.hits - hits_before
            phase.exchange_bound = exchange_bound(lasted, len(bank.customers))
        await asyncio.sleep(bank.plan.tail_seconds)
    finally:
        stop.set()
        await load
    healed = loop.time()
    await settle(bank, phase)
    phase.settle_seconds = loop.time() - healed
    hits, bound = phase.exchange_hits, phase.exchange_bound
    if hits is not None and bound is not None and hits > bound:  # the breaker did not hold
        phase.violations.append(f"{hits} exchange hits during the outage > {bound}")
    return phase


def exchange_bound(seconds: float, workers: int) -> int:
    """The most requests the market may send a failing exchange in ``seconds``.

    Until the breaker opens, at most ``threshold`` failures plus what was already in
    flight (one saga step per worker, and cancels), each with every attempt; then one
    half-open probe per recovery period, each with every attempt.
    """
    in_flight = BREAKER_FAILURE_THRESHOLD + 2 * workers
    probes = math.ceil(seconds / BREAKER_RECOVERY_SECONDS) + 1
    return CLIENT_MAX_ATTEMPTS * (in_flight + probes)


async def settle(bank: Bank, phase: Phase) -> None:
    """Every order the phase placed terminal, then the invariants, within the bound.

    The load's reads while settling are counted apart, not in the phase.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + bank.plan.settle_seconds
    bank.load.phase = Phase("settling")
    owner = {oid: c for c in bank.customers for oid in c.orders}
    for customer, iid in phase.investments:
        status, body = await bank.load.request("GET", f"/investments/{iid}", token=customer.token)
        assert status == 200, (status, body)
        for placed in body["orders"]:
            if placed.get("order_id"):
                owner[placed["order_id"]] = customer
                phase.orders.append(placed["order_id"])
    for oid in phase.orders:
        while True:
            status, body = await bank.load.request("GET", f"/orders/{oid}", token=owner[oid].token)
            if status == 200 and body["state"] in TERMINAL:
                phase.filled += body["state"] == "FILLED"
                phase.failed_orders += body["state"] == "FAILED"
                break
            if loop.time() > give_up:
                phase.violations.append(f"order {oid} not terminal: {body}")
                return
            await asyncio.sleep(0.1)
    problems: list[str] = ["not checked"]
    while loop.time() < give_up:
        problems = await books_problems(bank)
        if not problems:
            break
        await asyncio.sleep(0.5)
    phase.violations.extend(problems)


async def books_problems(bank: Bank) -> list[str]:
    """The bank's invariants, then each customer's books against its orders' outcomes."""
    deposits = DEPOSIT_CENTS * len(bank.customers)
    report = await check_invariants(bank.fleet.urls, bank.exchange, deposits_cents=deposits)
    if report.violations:
        return report.violations
    audit = report.audits["orders"]
    placed: dict[str, set[str]] = {}
    for customer in bank.customers:
        placed[customer.name] = customer.orders | await _investment_orders(bank, customer)
    problems: list[str] = []
    unknown = set(audit["filled"]) | set(audit["failed"])
    unknown -= set().union(*placed.values())
    if unknown:
        problems.append(f"{len(unknown)} orders the load never placed: {sorted(unknown)[:3]}")
    fills = bank.exchange.fills()
    filled = set(audit["filled"])
    for customer in bank.customers:
        mine = [fills[oid] for oid in placed[customer.name] & filled]
        problems += await _customer_problems(bank, customer, mine)
    return problems


async def _investment_orders(bank: Bank, customer: Customer) -> set[str]:
    found: set[str] = set()
    for iid in customer.investments:
        status, body = await bank.load.request("GET", f"/investments/{iid}", token=customer.token)
        assert status == 200, (status, body)
        found |= {o["order_id"] for o in body["orders"] if o.get("order_id")}
    return found


async def _customer_problems(bank: Bank, customer: Customer, fills: list[Any]) -> list[str]:
    """The customer's cash and shares, in accounts (books) and holdings (read model),
    equal what the fills of its FILLED orders say: no event lost or applied twice."""
    cash = DEPOSIT_CENTS
    shares: collections.Counter[str] = collections.Counter()
    for fill in fills:
        gross = fill["price_cents"] * fill["quantity"]
        sign = 1 if fill["side"] == "buy" else -1
        shares[fill["symbol"]] += sign * fill["quantity"]
        cash -= sign * gross + fee_for(gross)
    expected = {symbol: n for symbol, n in shares.items() if n}
    status, balances = await bank.load.request("GET", "/balances", token=customer.token)
    status2, portfolio = await bank.load.request("GET", "/portfolio", token=customer.token)
    if status != 200 or status2 != 200:
        return [f"{customer.name}: balances {status}, portfolio {status2}"]
    books_cash = balances["cash"]["available_cents"] + balances["cash"]["reserved_cents"]
    books = {p["symbol"]: p["available"] + p["reserved"] for p in balances["positions"]}
    read = {p["symbol"]: p["quantity"] for p in portfolio["positions"]}
    seen = {
        "accounts": (books_cash, {k: v for k, v in books.items() if v}),
        "holdings": (portfolio["cash_cents"], {k: v for k, v in read.items() if v}),
    }
    problems = [
        f"{customer.name}: {where} has cash {got_cash} and shares {got_shares}, "
        f"the fills say {cash} and {expected}"
        for where, (got_cash, got_shares) in seen.items()
        if (got_cash, got_shares) != (cash, expected)
    ]
    if portfolio["pending_orders"]:
        problems.append(f"{customer.name}: {portfolio['pending_orders']} pending orders")
    return problems


@contextlib.asynccontextmanager
async def bank_running(
    tmp_path: Path, broker: Any, plan: Plan, seed: int = 7
) -> AsyncIterator[Bank]:
    """The bank per process with its customers signed up; everything stopped after."""
    consul_token = str(uuid.uuid4())
    async with (
        ConsulStandIn(token=consul_token) as consul,
        Exchange() as exchange,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session,
    ):
        registration = {
            "ID": "exchange-1",
            "Name": "exchange",
            "Address": "127.0.0.1",
            "Port": exchange.upstream.port,
        }
        async with session.put(
            consul.url + "/v1/agent/service/register",
            json=registration,
            headers={"X-Consul-Token": consul_token},
        ) as response:
            assert response.status == 200
        fleet = Fleet(
            tmp_path, consul.url, broker.url, consul_token=consul_token, extra_env=dict(CHAOS_ENV)
        )
        try:
            started = asyncio.get_running_loop().time()
            await fleet.start_all()
            load = Load(session, [fleet.running["gateway"].url], seed)
            customers = [Customer(n) for n in range(plan.customers)]
            for customer in customers:
                await load.sign_up(customer)
            startup = asyncio.get_running_loop().time() - started
            yield Bank(fleet, consul, broker, exchange, load, customers, plan, startup)
        finally:
            await fleet.aclose()


def secrets_of(bank: Bank) -> dict[str, str]:
    """Every configured secret of the run, by what it is."""
    found = {
        "token secret": bank.fleet.secret,
        "Consul ACL token": bank.fleet.consul_token or "",
        "AMQP URL with password": bank.broker.url,
    }
    for customer in bank.customers:
        found[f"password of {customer.name}"] = customer.password
    for n, token in enumerate(bank.load.tokens):
        found[f"bearer token {n}"] = token
        found[f"bearer token {n} signature"] = token.rsplit(".", 1)[-1]
    return {what: value for what, value in found.items() if value}


def scan_logs(paths: list[Path], secrets: dict[str, str]) -> tuple[int, list[str]]:
    """(lines scanned, a message per log line holding a secret)."""
    lines = 0
    leaks = []
    for path in paths:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            lines += 1
            for what, value in secrets.items():
                if value in line:
                    leaks.append(f"{path.name}:{number}: {what}")
    return lines, leaks


def table(phases: list[Phase]) -> str:
    """The chaos table, in Markdown."""
    rows = [
        "| fault | requests sent | succeeded | refused (4xx) | failed (by reason) | retried "
        "| orders FILLED / FAILED | exchange hits (bound) | settled in | invariants held |",
        "|---|---:|---:|---:|---|---:|---|---|---:|---|",
    ]
    for p in phases:
        failed = ", ".join(f"{r}: {n}" for r, n in sorted(p.failed.items())) or "0"
        hits = "" if p.exchange_hits is None else f"{p.exchange_hits} (<= {p.exchange_bound})"
        rows.append(
            f"| {p.fault} | {p.sent} | {p.succeeded} | {p.refused} | {failed} | {p.retried} "
            f"| {p.filled} / {p.failed_orders} | {hits} | {p.settle_seconds:.1f} s "
            f"| {'yes' if p.held else 'NO: ' + '; '.join(p.violations[:3])} |"
        )
    return "\n".join(rows)
