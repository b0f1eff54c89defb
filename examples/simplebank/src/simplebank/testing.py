"""SimpleBank's invariants, read from each owning service's ``/internal/audit``.

Used by the test suite after every test, and by the demo at the end of its run::

    report = await check_invariants(bank.urls, exchange)
    assert not report.violations, report.violations
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .exchange import Exchange

__all__ = ["InvariantReport", "check_invariants", "wait_for_pending_cancels"]


@dataclass
class InvariantReport:
    """The audits read, and every invariant found broken (empty when all hold)."""

    audits: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def expect(self, ok: bool, message: str) -> None:
        if not ok:
            self.violations.append(message)


async def wait_for_pending_cancels(market_url: str, timeout: float = 15.0) -> int:
    """Ask market to retry its pending cancels until none is left or ``timeout`` passes.

    Returns how many are still pending (0 once the exchange confirmed them all).
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.post(market_url + "/internal/reconcile") as response:
                response.raise_for_status()
                pending = int((await response.json())["pending_cancels"])
            if pending == 0 or loop.time() >= give_up:
                return pending
            await asyncio.sleep(0.1)


def _check_read_model(
    report: InvariantReport,
    holdings: dict[str, Any],
    accounts: dict[str, Any],
    orders: dict[str, Any] | None,
) -> None:
    """The CQRS read model (holdings) agrees with the books (accounts) once settled."""
    totals = accounts["totals"]
    cash = totals["customers_available_cents"] + totals["customers_reserved_cents"]
    report.expect(
        holdings["cash_cents"] == cash,
        f"holdings cash {holdings['cash_cents']} != customers' cash {cash} in accounts",
    )
    shares = {
        symbol: buckets.get("customers_available", 0) + buckets.get("customers_reserved", 0)
        for symbol, buckets in accounts.get("shares", {}).items()
    }
    shares = {symbol: n for symbol, n in shares.items() if n}
    report.expect(
        holdings["shares"] == shares,
        f"holdings shares {holdings['shares']} != customers' shares {shares} in accounts",
    )
    if orders is not None and not orders["non_terminal"]:
        report.expect(
            holdings["pending_orders"] == 0,
            f"holdings counts {holdings['pending_orders']} pending orders, none is",
        )


async def check_invariants(
    urls: dict[str, str],
    exchange: Exchange | None = None,
    *,
    deposits_cents: int | None = None,
    across_services: bool = True,
) -> InvariantReport:
    """Read the audits of the services that own invariants and check them.

    Call it once the bank has settled (no event in flight). ``deposits_cents``, when
    given, is the total the caller deposited: money conservation is then checked
    against it too. ``across_services=False`` skips the checks that relate one
    service's books to another's (for tests that drive a single service directly).
    """
    report = InvariantReport()
    if "market" in urls and exchange is not None and exchange.upstream.listening:
        await wait_for_pending_cancels(urls["market"])
    async with aiohttp.ClientSession() as session:
        for name in ("accounts", "orders", "fees", "market", "holdings", "strategies"):
            if name in urls:
                async with session.get(urls[name] + "/internal/audit") as response:
                    response.raise_for_status()
                    report.audits[name] = await response.json()
    accounts = report.audits.get("accounts")
    orders = report.audits.get("orders")
    fees = report.audits.get("fees")
    market = report.audits.get("market")
    holdings = report.audits.get("holdings")
    strategies = report.audits.get("strategies")
    if accounts is not None:
        sums = accounts["ledger_sums"]
        report.expect(
            all(v == 0 for v in sums.values()), f"ledger does not balance to zero: {sums}"
        )
        report.expect(
            accounts["unbalanced_transactions"] == 0,
            f"{accounts['unbalanced_transactions']} unbalanced ledger transactions",
        )
        report.expect(not accounts["balance_drift"], f"balances drift: {accounts['balance_drift']}")
        report.expect(
            not accounts["negative_balances"],
            f"negative balances: {accounts['negative_balances']}",
        )
        report.expect(
            not accounts["reserved_mismatches"],
            f"reserved balances differ from HELD reservations: {accounts['reserved_mismatches']}",
        )
        totals = accounts["totals"]
        held = (
            totals["customers_available_cents"]
            + totals["customers_reserved_cents"]
            + totals["fees_cents"]
        )
        report.expect(
            held == totals["deposits_cents"] - totals["exchange_cents"],
            f"money not conserved: customers + fees = {held}, deposits - paid to the exchange "
            f"= {totals['deposits_cents'] - totals['exchange_cents']}",
        )
        if deposits_cents is not None:
            report.expect(
                totals["deposits_cents"] == deposits_cents,
                f"deposits {totals['deposits_cents']} != {deposits_cents} made",
            )
    if orders is not None:
        report.expect(not orders["non_terminal"], f"orders not terminal: {orders['non_terminal']}")
        if accounts is not None and not orders["non_terminal"]:
            held_count = accounts["reservations"].get("HELD", 0)
            report.expect(held_count == 0, f"{held_count} reservations HELD by finished orders")
    if holdings is not None:
        report.expect(not holdings["negative"], f"negative holdings: {holdings['negative']}")
    if not across_services:
        return report
    if holdings is not None and accounts is not None:
        _check_read_model(report, holdings, accounts, orders)
    if strategies is not None and orders is not None and not orders["non_terminal"]:
        report.expect(
            not strategies["orders_without_outcome"],
            f"investment orders without an outcome: {strategies['orders_without_outcome']}",
        )
    if fees is not None and accounts is not None:
        report.expect(
            fees["net_cents"] == accounts["totals"]["fees_cents"],
            f"fee ledger {fees['net_cents']} != bank:fees {accounts['totals']['fees_cents']}",
        )
    if market is not None and exchange is not None and exchange.upstream.listening:
        report.expect(
            market["pending_cancels"] == 0, f"{market['pending_cancels']} cancels still pending"
        )
    if exchange is not None and orders is not None:
        fills = exchange.fills()
        for oid in orders["filled"]:
            report.expect(oid in fills, f"FILLED order {oid} has no fill on the exchange")
        if market is None or market["pending_cancels"] == 0:
            for oid in orders["failed"]:
                report.expect(
                    oid not in fills, f"FAILED order {oid} is still filled on the exchange"
                )
        if accounts is not None:
            cash = sum(
                (1 if f["side"] == "buy" else -1) * f["price_cents"] * f["quantity"]
                for oid, f in fills.items()
                if oid in orders["filled"]
            )
            report.expect(
                cash == accounts["totals"]["exchange_cents"],
                f"cash paid to the exchange {accounts['totals']['exchange_cents']} != fills {cash}",
            )
    return report
