"""The web client at ``GET /``: served by the gateway, driven in a real headless Chromium.

The browser test needs Debian's ``chromium`` and the ``playwright`` package (its
driver only: the browser is the system's, never ``playwright install``). It is skipped
when either is missing, and fails instead when ``CI`` is set.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from simplebank.exchange import Exchange
from simplebank.services import Bank

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PNG = b"\x89PNG\r\n\x1a\n"


def chromium() -> str:
    """The system's Chromium; skip (fail under CI) when it or Playwright is missing."""
    path = shutil.which("chromium")
    missing = [
        what
        for what, absent in (
            ("the Debian package chromium", path is None),
            ("the Python package playwright", importlib.util.find_spec("playwright") is None),
        )
        if absent
    ]
    if missing:
        message = f"the browser test needs {' and '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert path is not None
    return path


async def test_root_serves_the_page_to_browsers_and_the_routes_to_api_clients(
    session: aiohttp.ClientSession, bank: Bank
) -> None:
    url = bank.urls["gateway"]
    async with session.get(url + "/", headers={"Accept": "text/html,*/*;q=0.8"}) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        page = await response.text()
    assert '<script src="/web/app.js"' in page and 'href="/web/app.css"' in page
    for name, content_type in (("app.js", "text/javascript"), ("app.css", "text/css")):
        async with session.get(f"{url}/web/{name}") as response:
            assert response.status == 200 and response.content_type == content_type
            assert len(await response.read()) > 1000
    async with session.get(url + "/web/../gateway.py") as response:
        assert response.status == 404
    async with session.get(url + "/", headers={"Accept": "application/json"}) as response:
        assert response.status == 200 and "routes" in await response.json()


async def test_a_customer_signs_up_deposits_and_watches_orders_end_in_chromium(
    bank: Bank, exchange: Exchange, tmp_path: Path
) -> None:
    executable = chromium()
    from playwright.async_api import async_playwright, expect

    problems: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(20_000)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

            def console(message: Any) -> None:
                if message.type == "error":
                    problems.append(f"console: {message.text}")

            def response(answer: Any) -> None:
                if answer.status >= 400:
                    problems.append(f"{answer.status} {answer.request.method} {answer.url}")

            page.on("console", console)
            page.on("response", response)
            await page.goto(bank.urls["gateway"] + "/")

            # Sign up (the page logs in with the new credentials).
            await page.get_by_role("tab", name="Sign up").click()
            signup = page.locator("#signup-form")
            await signup.get_by_label("Name").fill("Dora")
            await signup.get_by_label("Email").fill("dora@example.com")
            await signup.get_by_label("Password").fill("dora has a long password")
            await signup.get_by_role("button", name="Create account").click()
            await expect(page.locator("#who-name")).to_contain_text("dora@example.com")
            await expect(page.locator("#orders-empty")).to_be_visible()

            # Deposit $10,000.
            await page.locator("#deposit-form").get_by_label("Amount (USD)").fill("10000")
            await page.get_by_role("button", name="Deposit").click()
            await expect(page.locator("#cash-available")).to_have_text("$10,000.00")
            await expect(page.locator("#notifications li.deposit")).to_have_count(1)

            # Buy 2 VTI at $250.00 and watch the order until it fills.
            trade = page.locator("#trade-form")
            await trade.get_by_label("Instrument").select_option("VTI")
            await trade.get_by_label("Quantity").fill("2")
            await expect(page.locator("#estimate")).to_contain_text("$500.00")
            await trade.get_by_role("button", name="Place order").click()
            tracker = page.locator("#tracker")
            await expect(tracker).to_have_attribute("data-state", "FILLED")
            await expect(page.locator("#orders tbody tr")).to_have_count(1)
            await expect(page.locator("#orders tbody tr").first).to_have_attribute(
                "data-state", "FILLED"
            )
            vti = page.locator("#portfolio tbody tr[data-symbol=VTI]")
            await expect(vti.locator(".quantity")).to_have_text("2")
            await expect(page.locator("#invested")).to_have_text("$500.00")
            # 10,000 - 2 x 250 - the $1 minimum fee
            await expect(page.locator("#cash-available")).to_have_text("$9,499.00")
            await expect(page.locator("#notifications li.order_filled")).to_have_count(1)

            # The exchange goes down: the next buy fails and the page says so.
            await exchange.outage()
            await trade.get_by_label("Quantity").fill("1")
            await trade.get_by_role("button", name="Place order").click()
            await expect(tracker).to_have_attribute("data-state", "FAILED", timeout=40_000)
            await expect(page.locator("#flash")).to_contain_text("The order failed")
            await expect(page.locator("#notifications li.order_failed")).to_have_count(1)
            await expect(page.locator("#cash-available")).to_have_text("$9,499.00")
            await expect(vti.locator(".quantity")).to_have_text("2")

            shot = tmp_path / "webclient.png"
            await page.screenshot(path=str(shot), full_page=True)
        finally:
            await browser.close()
    await exchange.recover()
    assert shot.is_file() and shot.read_bytes().startswith(PNG)
    assert not problems, problems
