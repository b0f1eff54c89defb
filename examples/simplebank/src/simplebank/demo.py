"""The one-command demo: every service in one process, a scripted scenario through the gateway.

``python -m simplebank demo`` (or ``simplebank demo``) starts the exchange stand-in and
the ten services on loopback with embedded defaults (static discovery, the in-memory
broker, one SQLite file per service under a temporary or given directory), seeds demo
customers, and then, **over HTTP through the gateway only**, signs a customer up,
deposits, buys, sells, invests by a strategy, and places an order while the exchange
is down (it fails and is compensated). It prints each step, the final balances,
portfolio, orders and notifications as tables, and checks the invariants (exit 1 if
one is broken). Then it keeps serving until Ctrl-C, or exits with ``--once``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from chassis.config import (
    ClientSettings,
    DiscoverySettings,
    EventsSettings,
    HealthSettings,
    LogSettings,
)

from .common import BankSettings
from .exchange import DEFAULT_PRICES, Exchange
from .services import Bank, run_services
from .testing import check_invariants

__all__ = ["DEMO_CUSTOMERS", "Scenario", "run_demo", "table"]

DEMO_CUSTOMERS = [
    ("Alice", "alice@demo.simplebank.example", "alice-demo-password", 10_000_000),
    ("Bob", "bob@demo.simplebank.example", "bob-demo-password", 2_500_000),
]
"""Seeded customers: name, email, password, cash deposited (cents)."""

_TERMINAL = ("FILLED", "FAILED")


def money(cents: int | None) -> str:
    """``$1,234.50``; ``-`` for None."""
    if cents is None:
        return "-"
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents) / 100:,.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table; numbers and money are right-aligned."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def right(text: str) -> bool:
        return bool(text) and (text[0] in "$-" or text.replace(",", "").isdigit())

    lines = []
    for n, row in enumerate(cells):
        parts = [
            c.rjust(w) if n and right(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)
        ]
        lines.append("  " + "  ".join(parts).rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class DemoError(Exception):
    """A step of the scenario did not go as scripted."""


class Scenario:
    """The scripted run, against the gateway's public API only (plus operator knobs)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        bank: Bank,
        exchange: Exchange,
        out: Callable[[str], None],
    ) -> None:
        self.session = session
        self.bank = bank
        self.exchange = exchange
        self.out = out
        self.gateway = bank.urls["gateway"]
        self.token = ""
        self.steps = 0

    def step(self, what: str, detail: str) -> None:
        self.steps += 1
        self.out(f"{self.steps:>3}. {what:<13} {detail}")

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        token: str | None = None,
        expect: tuple[int, ...] = (200, 201, 202),
    ) -> Any:
        headers = {}
        if token or self.token:
            headers["Authorization"] = f"Bearer {token or self.token}"
        async with self.session.request(
            method, self.gateway + path, json=json, headers=headers
        ) as response:
            body = await response.json(content_type=None)
            if response.status not in expect:
                raise DemoError(f"{method} {path} answered {response.status}: {body}")
            return body

    async def poll(
        self, path: str, done: Callable[[Any], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        """The client's polling pattern: ask again until the answer is what we wait for."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while True:
            body = await self.call("GET", path)
            if done(body):
                return body  # type: ignore[no-any-return]
            if loop.time() > give_up:
                raise DemoError(f"GET {path} still {body} after {timeout:g} s")
            await asyncio.sleep(0.05)

    async def order(self, side: str, symbol: str, quantity: int) -> dict[str, Any]:
        body = {"side": side, "symbol": symbol, "quantity": quantity}
        placed = await self.call("POST", "/orders", json=body)
        return await self.poll(f"/orders/{placed['order_id']}", lambda o: o["state"] in _TERMINAL)

    async def set_price(self, symbol: str, cents: int) -> None:
        """Operator knob: the market moves (the exchange and market-data agree)."""
        self.exchange.set_price(symbol, cents)
        url = f"{self.bank.urls['market-data']}/prices/{symbol}"
        async with self.session.put(url, json={"price_cents": cents}) as response:
            response.raise_for_status()

    # -- the script ----------------------------------------------------------------------
    async def run(self) -> int:
        """Run every step; the total the customers deposited."""
        deposited = await self.seed()
        me = {
            "name": "Carol",
            "email": "carol@demo.simplebank.example",
            "password": "carol-pw-1234",
        }
        carol = await self.call("POST", "/signup", json=me, expect=(201, 409))
        if "customer_id" in carol:
            who = f"{me['name']} <{me['email']}> is customer {carol['customer_id']}"
        else:
            who = f"{me['name']} <{me['email']}> exists already (a kept --data-dir)"
        self.step("sign up", who)
        login = await self.call(
            "POST", "/login", json={"email": me["email"], "password": me["password"]}
        )
        self.token = login["access_token"]
        self.step("log in", f"bearer token issued, valid {login['expires_in']} s")

        balances = await self.call("POST", "/deposits", json={"amount_cents": 1_000_000})
        deposited += 1_000_000
        self.step(
            "deposit",
            f"{money(1_000_000)} -> available {money(balances['cash']['available_cents'])}",
        )
        portfolio = await self.poll("/portfolio", lambda p: p["version"] > 0)

        order = await self.order("buy", "VTI", 10)
        self.describe(order)
        await self.set_price("VTI", 25_600)
        self.step("market", f"VTI moves to {money(25_600)}")
        order = await self.order("sell", "VTI", 4)
        self.describe(order)

        strategy = await self.call(
            "POST",
            "/strategies",
            json={
                "name": "Classic 60/40",
                "allocations": [{"symbol": "VTI", "percent": 60}, {"symbol": "BND", "percent": 40}],
            },
        )
        self.step("strategy", f"'{strategy['name']}': 60 % VTI, 40 % BND")
        invested = await self.call(
            "POST",
            f"/strategies/{strategy['strategy_id']}/investments",
            json={"amount_cents": 500_000},
        )
        invested = await self.poll(
            f"/investments/{invested['investment_id']}", lambda i: i["state"] != "IN_PROGRESS"
        )
        orders = ", ".join(
            f"{o['symbol']} x{o['quantity']} {o['state']}" for o in invested["orders"]
        )
        self.step(
            "invest",
            f"{money(500_000)} by the strategy -> {orders}; spent {money(invested['spent_cents'])}"
            f" ({invested['state']})",
        )

        # Operator: market answers quotes from its last good one while the exchange is down.
        async with self.session.get(self.bank.urls["market"] + "/quotes/BND") as response:
            response.raise_for_status()
        await self.exchange.outage()
        self.step("outage", "the exchange stops answering")
        before = (await self.call("GET", "/balances"))["cash"]
        order = await self.order("buy", "BND", 5)
        self.describe(order)
        after = (await self.call("GET", "/balances"))["cash"]
        if order["state"] != "FAILED" or after != before:
            raise DemoError(f"the order during the outage should fail and change nothing: {order}")
        self.step(
            "compensated",
            f"{', '.join(order['compensations'])}; cash {money(after['available_cents'])} "
            f"available, {money(after['reserved_cents'])} reserved, as before",
        )
        await self.exchange.recover()
        self.step("recover", "the exchange is back; market confirms its pending cancel")

        await self.bank.settle()
        portfolio = await self.poll(
            "/portfolio",
            lambda p: p["version"] > portfolio["version"] and p["pending_orders"] == 0,
        )
        await self.report(portfolio)
        return deposited

    async def seed(self) -> int:
        instruments = (await self.call("GET", "/instruments"))["instruments"]
        self.step("seed", f"market-data: {', '.join(i['symbol'] for i in instruments)}")
        total = 0
        for name, email, password, cents in DEMO_CUSTOMERS:
            await self.call(
                "POST",
                "/signup",
                json={"email": email, "password": password, "name": name},
                expect=(201, 409),  # a --data-dir kept from an earlier run has them already
            )
            login = await self.call("POST", "/login", json={"email": email, "password": password})
            balances = await self.call(
                "POST",
                "/deposits",
                json={"amount_cents": cents},
                token=login["access_token"],
            )
            total += cents
            self.step("seed", f"{name} <{email}> with {money(balances['cash']['available_cents'])}")
        return total

    def describe(self, order: dict[str, Any]) -> None:
        what = f"{order['side']} {order['quantity']} {order['symbol']}"
        if order["state"] == "FILLED":
            detail = (
                f"{what} -> FILLED at {money(order['price_cents'])}, gross "
                f"{money(order['gross_cents'])}, fee {money(order['fee_cents'])} "
                f"(order version {order['version']})"
            )
        else:
            detail = (
                f"{what} -> FAILED at step {order['failed_step']} ({order['failure_reason']}), "
                f"order version {order['version']}"
            )
        self.step(order["side"], detail)

    async def report(self, portfolio: dict[str, Any]) -> None:
        balances = await self.call("GET", "/balances")
        cash = balances["cash"]
        self.out("\nBalances (accounts)")
        rows: list[list[Any]] = [
            ["cash", money(cash["available_cents"]), money(cash["reserved_cents"])]
        ]
        rows += [[p["symbol"], p["available"], p["reserved"]] for p in balances["positions"]]
        self.out(table(["asset", "available", "reserved"], rows))

        self.out(f"\nPortfolio (holdings x market-data prices, version {portfolio['version']})")
        rows = [
            [
                p["symbol"],
                p["quantity"],
                money(p["price_cents"]),
                money(p["market_value_cents"]),
                money(p["cost_basis_cents"]),
                money(p["gain_cents"]),
            ]
            for p in portfolio["positions"]
        ]
        rows.append(["cash", "", "", money(portfolio["cash_cents"]), "", ""])
        rows.append(["total", "", "", money(portfolio["total_value_cents"]), "", ""])
        self.out(table(["symbol", "shares", "price", "value", "cost", "gain"], rows))

        orders = (await self.call("GET", "/orders"))["orders"]
        self.out("\nOrders (newest first)")
        rows = [
            [
                o["side"],
                o["symbol"],
                o["quantity"],
                o["state"],
                money(o["price_cents"]),
                money(o["fee_cents"]),
                o["failure_reason"] or "",
            ]
            for o in orders
        ]
        self.out(table(["side", "symbol", "qty", "state", "price", "fee", "reason"], rows))

        notes = await self.call("GET", "/notifications")
        self.out("\nNotifications (newest first)")
        self.out(
            table(["kind", "message"], [[n["kind"], n["message"]] for n in notes["notifications"]])
        )


def demo_settings(log_level: str = "ERROR") -> BankSettings:
    """Embedded defaults for one process: quick drains and retries, quiet console logs."""
    return BankSettings(
        log=LogSettings.model_validate(
            {"level": log_level, "format": "console", "access_log": False}
        ),
        health=HealthSettings(drain_delay_seconds=0),
        client=ClientSettings(breaker_recovery_seconds=1.0, backoff_max_seconds=0.5),
        events=EventsSettings(
            backend="memory", retry_initial_seconds=0.1, retry_max_seconds=1.0, max_attempts=50
        ),
        discovery=DiscoverySettings(backend="static"),
    )


@contextlib.asynccontextmanager
async def _data_dir(given: Path | None) -> AsyncIterator[Path]:
    if given is not None:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="simplebank-") as tmp:
        yield Path(tmp)


async def _until_interrupted() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signum)


async def run_demo(
    *,
    once: bool = False,
    data_dir: Path | None = None,
    port: int = 8080,
    log_level: str = "ERROR",
    out: Callable[[str], None] = print,
) -> int:
    """Run the demo; the exit code (0: the scenario ran and every invariant holds)."""
    async with _data_dir(data_dir) as where:
        # The exchange stand-in forgets its fills at exit: with the files of an earlier
        # run, only the books of this run's exchange can be compared with it.
        fresh = not (where / "accounts.db").exists()
        return await _run(where, fresh, once=once, port=port, log_level=log_level, out=out)


async def _run(
    where: Path,
    fresh: bool,
    *,
    once: bool,
    port: int,
    log_level: str,
    out: Callable[[str], None],
) -> int:
    async with (
        Exchange(prices=dict(DEFAULT_PRICES)) as exchange,
        run_services(
            where,
            urls={"exchange": exchange.url},
            settings=demo_settings(log_level),
            options={"market": {"reconcile_interval_seconds": 0.5}},
            ports={"gateway": port},
        ) as bank,
        aiohttp.ClientSession() as session,
    ):
        out(f"SimpleBank: {len(bank.services)} services and the exchange stand-in on loopback")
        out(f"data: {where}   gateway: {bank.urls['gateway']}   exchange: {exchange.url}\n")
        scenario = Scenario(session, bank, exchange, out)
        try:
            deposited = await scenario.run()
        except DemoError as exc:
            out(f"\nThe scenario failed: {exc}")
            return 1
        await bank.settle()
        report = await check_invariants(
            bank.urls,
            exchange if fresh else None,
            deposits_cents=deposited if fresh else None,
        )
        if report.violations:
            out("\nInvariants BROKEN:")
            for violation in report.violations:
                out(f"  - {violation}")
            return 1
        accounts = report.audits["accounts"]
        out(
            "\nInvariants hold: ledger balanced "
            f"({', '.join(f'{k}={v}' for k, v in accounts['ledger_sums'].items())}), money "
            f"conserved, nothing negative, no reservation left, every order terminal, fee "
            f"ledger = bank fees ({money(accounts['totals']['fees_cents'])}), read model = books."
        )
        if once:
            return 0
        out(f"\nServing the gateway at {bank.urls['gateway']}  (Ctrl-C to stop)")
        for name, email, password, _ in DEMO_CUSTOMERS:
            out(f'  {name}: POST /login {{"email": "{email}", "password": "{password}"}}')
        await _until_interrupted()
        out("stopping")
    return 0
