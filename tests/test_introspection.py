"""``/_chassis``: the live state, who may see it, and what it never shows."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from chassis import ChassisSettings, Service
from chassis.exceptions import ConfigError
from chassis.introspection import REDACTED, redact_settings

from .conftest import quick_settings

TOKEN = "intro-tok-SECRET-1"
SECRETS = (TOKEN, "consul-SECRET-2", "amqp-pw-SECRET-3", "db-pw-SECRET-4", "hdr-SECRET-5")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


class AppSettings(ChassisSettings):
    database_password: str = "db-pw-SECRET-4"


def secret_settings(**overrides: Any) -> AppSettings:
    sections: dict[str, Any] = {
        "introspection": {"token": TOKEN},
        "discovery": {"consul_token": "consul-SECRET-2"},
        "events": {"url": "amqp://bank:amqp-pw-SECRET-3@127.0.0.1:5672/"},
        "tracing": {"enabled": False, "headers": "api-key=hdr-SECRET-5"},
        "log": {"access_log": False},
    }
    for key, value in overrides.items():
        sections.setdefault(key, {}).update(value)
    base = quick_settings(environment="production", **sections)
    return AppSettings(**base.model_dump())


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """An upstream whose /fail answers 500 and whose /hang waits for the event."""
    release = asyncio.Event()

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500)

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/fail", fail)
    app.router.add_get("/hang", hang)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", release
    finally:
        release.set()
        await runner.cleanup()


async def test_development_serves_the_state_without_a_token(
    session: aiohttp.ClientSession,
) -> None:
    service = Service("svc", version="1.2.3", settings=quick_settings())
    async with (
        service.running("127.0.0.1", 0) as running,
        session.get(running.url + "/_chassis") as response,
    ):
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        data = await response.json()
    assert data["service"]["name"] == "svc" and data["service"]["version"] == "1.2.3"
    assert data["service"]["environment"] == "development"
    assert data["service"]["uptime_seconds"] >= 0
    assert data["event_loop"]["lag_seconds"] >= 0
    assert data["events"]["backend"] == "memory"
    assert data["discovery"]["backend"] == "static"
    assert data["settings"]["http"]["port"] == 8080


async def test_production_without_a_token_answers_404_with_no_data(
    session: aiohttp.ClientSession,
) -> None:
    service = Service("svc", settings=quick_settings(environment="production"))
    async with service.running("127.0.0.1", 0) as running:
        for path in ("/_chassis", "/_chassis/ui"):
            async with session.get(running.url + path) as response:
                assert response.status == 404
                body = await response.text()
            assert "svc" not in body.replace("/_chassis", "")
    assert service.introspection.access == "off"


async def test_unauthenticated_and_wrong_token_get_401_problem_and_no_data(
    session: aiohttp.ClientSession,
) -> None:
    service = Service("svc", settings=secret_settings())
    async with service.running("127.0.0.1", 0) as running:
        url = running.url + "/_chassis"
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"},
        ):
            async with session.get(url, headers=headers) as response:
                assert response.status == 401
                assert response.content_type == "application/problem+json"
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                problem = await response.json()
            assert set(problem) <= {"type", "title", "status", "detail", "instance", "request_id"}
            assert problem["status"] == 401
        async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200
            assert (await response.json())["service"]["environment"] == "production"


async def test_no_secret_value_appears_in_the_json_or_the_page(
    session: aiohttp.ClientSession,
) -> None:
    service = Service("svc", settings=secret_settings())
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with service.running("127.0.0.1", 0) as running:
        async with session.get(running.url + "/_chassis", headers=auth) as response:
            text = await response.text()
        async with session.get(running.url + "/_chassis/ui", headers=auth) as response:
            page = await response.text()
            csp = response.headers["Content-Security-Policy"]
    assert_no_secret(text)
    assert_no_secret(page)
    assert "'unsafe-inline'" not in csp and "default-src 'none'" in csp
    settings = (await _json(text))["settings"]
    assert settings["introspection"]["token"] == REDACTED
    assert settings["discovery"]["consul_token"] == REDACTED
    assert settings["database_password"] == REDACTED
    assert settings["events"]["url"] == REDACTED


async def _json(text: str) -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads(text)
    return data


def test_redaction_covers_names_secret_types_and_url_credentials() -> None:
    class Custom(ChassisSettings):
        api_key: str = "k1"
        upstream_url: str = "https://user:pw-in-url@127.0.0.1:9000/x"
        nested: dict[str, Any] = {"password": "p1", "ok": 1}

    data = redact_settings(Custom(tracing={"headers": SecretStr("h")}))
    assert data["api_key"] == REDACTED
    assert data["nested"] == {"password": REDACTED, "ok": 1}
    assert "pw-in-url" not in data["upstream_url"] and "127.0.0.1:9000/x" in data["upstream_url"]
    assert data["tracing"]["headers"] == REDACTED
    assert data["introspection"]["token"] is None


def test_redaction_covers_several_urls_in_one_value_query_secrets_and_bare_userinfo() -> None:
    class Custom(ChassisSettings):
        cluster: str = "amqp://u:pw-one@127.0.0.1,amqp://u:pw-two@127.0.0.2/v"
        hook: str = "https://127.0.0.1/h?access_token=q-tok&x=1"
        dsn: str = "host=127.0.0.1 password=kv-pw dbname=bank"
        bare: str = "bank:bare-pw@127.0.0.1:5432"
        auth: str = "Basic YmFuazpwdw=="

    data = redact_settings(Custom())
    assert data["cluster"] == "amqp://127.0.0.1,amqp://127.0.0.2/v"
    assert data["hook"] == f"https://127.0.0.1/h?access_token={REDACTED}&x=1"
    assert data["dsn"] == f"host=127.0.0.1 password={REDACTED} dbname=bank"
    assert data["bare"] == "127.0.0.1:5432"
    assert data["auth"] == REDACTED


async def test_secrets_set_through_the_environment_and_in_check_errors_never_appear(
    session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        "CHASSIS_INTROSPECTION__TOKEN": "env-tok-S1",
        "CHASSIS_DISCOVERY__CONSUL_TOKEN": "env-consul-S2",
        "CHASSIS_EVENTS__URL": "amqp://bank:env-amqp-S3@127.0.0.1:5672/",
        "CHASSIS_RATELIMIT__REDIS_URL": "redis://:env-redis-S4@127.0.0.1:6379/0",
        "CHASSIS_TRACING__HEADERS": "authorization=Bearer env-hdr-S5",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=env-otel-S6",
        "CHASSIS_TRACING__ENDPOINT": "http://otel:env-endpoint-S7@127.0.0.1:4318/v1/traces",
        "CHASSIS_DISCOVERY__CONSUL_ADDR": "http://c:env-addr-S8@127.0.0.1:8500",
        "CHASSIS_DISCOVERY__STATIC": '{"up": ["http://s:env-static-S9@127.0.0.1:9"]}',
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    settings = quick_settings(environment="production", tracing={"enabled": False})
    service = Service("svc", settings=settings)
    service.client("up")

    @service.health.check("db", critical=False)
    async def db() -> bool:
        raise OSError("cannot reach postgresql://bank:check-S10@127.0.0.1/db?password=q-S11")

    leaked = [value.split("@")[0].rpartition(":")[2] for value in secrets.values()]
    leaked = [*leaked[:4], "env-hdr-S5", "env-otel-S6", *leaked[6:], "check-S10", "q-S11"]
    auth = {"Authorization": "Bearer env-tok-S1"}
    async with service.running("127.0.0.1", 0) as running:
        async with session.get(running.url + "/health/ready") as response:
            assert response.status == 200
        async with session.get(running.url + "/_chassis", headers=auth) as response:
            assert response.status == 200
            text = await response.text()
    assert "cannot reach postgresql://127.0.0.1/db?password=" in text
    assert "127.0.0.1:4318/v1/traces" in text
    for secret in leaked:
        assert secret not in text, secret


async def test_an_open_breaker_and_an_occupied_bulkhead_show_in_the_state(
    session: aiohttp.ClientSession, upstream: tuple[str, asyncio.Event]
) -> None:
    url, release = upstream
    settings = quick_settings(discovery={"static": {"flaky": [url], "busy": [url]}})
    service = Service("svc", settings=settings)
    flaky = service.client("flaky", breaker_failure_threshold=1, max_attempts=1)
    busy = service.client("busy", bulkhead_max_concurrency=1, timeout_seconds=60)
    async with service.running("127.0.0.1", 0) as running:
        assert (await flaky.get("/fail")).status == 500  # counts as a failure: opens it
        hanging = asyncio.ensure_future(busy.get("/hang"))
        try:
            for _ in range(400):  # until the call holds the slot (bounded: 20 s)
                if busy.bulkhead.active:
                    break
                await asyncio.sleep(0.05)
            async with session.get(running.url + "/_chassis") as response:
                data = await response.json()
        finally:
            release.set()
            await hanging
    clients = {c["name"]: c for c in data["clients"]}
    [instance] = clients["flaky"]["instances"]
    assert instance["circuit"] == "open" and instance["url"] == url
    assert instance["retry_after_seconds"] > 0
    assert clients["busy"]["bulkhead"]["active"] == 1
    assert clients["busy"]["bulkhead"]["max_concurrency"] == 1
    assert clients["busy"]["in_flight"] == 1
    assert clients["busy"]["instances"][0]["circuit"] == "closed"
    assert clients["flaky"]["retry_budget"]["available"] > 0


async def test_readiness_checks_show_their_last_result(session: aiohttp.ClientSession) -> None:
    service = Service("svc", settings=quick_settings())

    @service.health.check("broken", critical=False)
    async def broken() -> bool:
        return False

    async with service.running("127.0.0.1", 0) as running:
        async with session.get(running.url + "/_chassis") as response:
            before = (await response.json())["health"]["checks"]["broken"]
        async with session.get(running.url + "/health/ready") as response:
            assert response.status == 200
        async with session.get(running.url + "/_chassis") as response:
            after = (await response.json())["health"]["checks"]["broken"]
    assert before["last"] is None
    assert after["last"]["status"] == "fail" and after["last"]["error"] == "check returned False"


async def test_disabled_explicitly_answers_404_even_with_a_token(
    session: aiohttp.ClientSession,
) -> None:
    service = Service("svc", settings=secret_settings())
    service.introspection.enabled = False
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        service.running("127.0.0.1", 0) as running,
        session.get(running.url + "/_chassis", headers=auth) as response,
    ):
        assert response.status == 404
        assert_no_secret(await response.text())


async def test_enabling_it_in_production_without_a_token_fails_the_start() -> None:
    service = Service("svc", settings=quick_settings(environment="production",
                                                     introspection={"enabled": True}))  # fmt: skip
    with pytest.raises(ConfigError, match="CHASSIS_INTROSPECTION__TOKEN"):
        async with service.running("127.0.0.1", 0):
            pass


async def test_an_empty_token_fails_the_start_rather_than_opening_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHASSIS_INTROSPECTION__TOKEN", " ")  # e.g. an unset ${OPS_TOKEN}
    service = Service("svc", settings=quick_settings(environment="production"))
    with pytest.raises(ConfigError, match="CHASSIS_INTROSPECTION__TOKEN"):
        async with service.running("127.0.0.1", 0):
            pass


async def test_a_custom_prefix_moves_it_and_other_underscore_paths_are_404(
    session: aiohttp.ClientSession,
) -> None:
    service = Service("svc", settings=quick_settings(introspection={"prefix": "/_ops"}))

    @service.get("/_mine")
    async def mine(request: web.Request) -> web.Response:
        return web.Response(text="mine")

    async with service.running("127.0.0.1", 0) as running:
        async with session.get(running.url + "/_ops") as response:
            assert response.status == 200
        async with session.get(running.url + "/_chassis") as response:
            assert response.status == 404
        async with session.get(running.url + "/_mine") as response:
            assert await response.text() == "mine"


def test_the_prefix_setting_is_validated() -> None:
    with pytest.raises(ValueError, match="prefix"):
        ChassisSettings(introspection={"prefix": "/ops/x"})


async def test_the_status_is_never_rate_limited(session: aiohttp.ClientSession) -> None:
    settings = quick_settings(ratelimit={"enabled": True, "rate_per_second": 1, "burst": 1})
    service = Service("svc", settings=settings)
    async with service.running("127.0.0.1", 0) as running:
        for _ in range(5):
            async with session.get(running.url + "/_chassis") as response:
                assert response.status == 200
                data = await response.json()
    assert data["ratelimit"]["enabled"] is True
    assert data["ratelimit"]["policies"][0]["rate_per_second"] == 1


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


async def test_the_status_page_asks_for_the_token_and_shows_an_open_breaker_in_red(
    upstream: tuple[str, asyncio.Event], tmp_path: Path
) -> None:
    executable = chromium()
    from playwright.async_api import async_playwright, expect

    url, _ = upstream
    version = '<b id="injected-1">1</b>'  # every value is shown as text, never as markup
    settings = secret_settings(discovery={"static": {"flaky": [url]}})
    service = Service("svc", version=version, settings=settings)
    flaky = service.client("flaky", breaker_failure_threshold=1, max_attempts=1)

    @service.health.check('<img src="x" id="injected-2">', critical=False)
    async def hostile() -> bool:
        raise RuntimeError('<img src="x" id="injected-3"><script>document.title="x"</script>')

    problems: list[str] = []
    async with service.running("127.0.0.1", 0) as running:
        assert (await flaky.get("/fail")).status == 500  # counts as a failure: opens it
        async with aiohttp.ClientSession() as session:  # runs the check
            await (await session.get(running.url + "/health/ready")).read()
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=executable, headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page()
                page.on("console", lambda m: m.type == "error" and problems.append(m.text))
                page.on("pageerror", lambda e: problems.append(str(e)))
                requested: list[str] = []
                page.on("request", lambda r: requested.append(r.url))
                await page.goto(running.url + "/_chassis/ui")
                await expect(page.locator("#status")).to_contain_text(
                    "enter the introspection token"
                )
                await page.fill("#token", TOKEN)
                await page.click("button[type=submit]")
                cell = page.locator("span.state-open").first
                await expect(cell).to_have_text("open", timeout=20_000)
                colour = await cell.evaluate("e => getComputedStyle(e).backgroundColor")
                assert colour == "rgb(198, 40, 40)"
                await expect(page.locator("h1")).to_have_text(f"svc {version}")
                await expect(page.locator("main")).to_contain_text('id="injected-3"><script>')
                assert await page.locator("[id^=injected]").count() == 0
                assert await page.title() == "chassis status"
                html = await page.content()
                await page.screenshot(path=str(tmp_path / "status.png"), full_page=True)
            finally:
                await browser.close()
    assert (tmp_path / "status.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert_no_secret(html)
    assert all(TOKEN not in r for r in requested)
    assert not problems, problems
