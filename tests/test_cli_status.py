"""``chassis status URL``: tables, --json, --watch, tokens and exit codes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from chassis import Service
from chassis._status import render
from chassis.cli import main
from chassis.testing import FaultyUpstream

from .test_introspection import TOKEN, assert_no_secret, secret_settings

# Lists a fully equipped service still answers empty (Redis-shared limits need Redis);
# every other list must have an element, so that its fields are compared too.
EMPTY_WITHOUT_SERVERS = {"ratelimit.shared"}


def repeats_a_printed_field(path: str) -> bool:
    """A check's last result repeats the check's own ``critical`` (printed once)."""
    return path.startswith("health.checks.") and path.endswith(".last.critical")


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_status_prints_tables_without_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    service = Service("svc", version="4.5.6", settings=secret_settings())
    service.client("ledger")
    async with service.running("127.0.0.1", 0) as running:
        code, out, err = await run(capsys, "status", running.url, "--token", TOKEN, "--settings")
        assert code == 0, err
        assert "svc 4.5.6" in out and "production" in out
        assert "Upstream clients" in out and "ledger" in out
        assert "introspection.token" in out
        assert_no_secret(out + err)
        code, out, err = await run(capsys, "status", running.url, "--token", TOKEN, "--json")
        assert code == 0 and json.loads(out)["service"]["name"] == "svc"
        assert_no_secret(out)


def with_markers(value: Any, path: str, found: dict[str, str], empty: set[str]) -> Any:
    """``value`` with every scalar replaced by a unique marker (``found``: marker -> path)."""
    if isinstance(value, dict):
        if not value:
            empty.add(path)
        return {
            k: with_markers(v, f"{path}.{k}" if path else k, found, empty) for k, v in value.items()
        }
    if isinstance(value, list):
        if not value:
            empty.add(path)
        return [with_markers(v, path, found, empty) for v in value]
    marker = f"<{len(found)}>"
    found[marker] = path
    return marker


async def full_state(upstream_url: str) -> dict[str, Any]:
    """The state of a service using every capability the state shows, each busy once."""
    settings = secret_settings(
        discovery={"static": {"ledger": [upstream_url]}},
        ratelimit={"enabled": True, "rate_per_second": 1000, "burst": 1000},
    )
    service = Service("svc", version="4.5.6", settings=settings)
    ledger = service.client("ledger", max_attempts=1)
    service.ratelimit.limit_route("/slow", max_in_flight=2, queue=1, priority="sheddable")

    @service.events.subscribe("orders", "order_placed", max_attempts=3)
    async def on_order(event: Any) -> None:
        return None

    @service.get("/slow")
    async def slow(request: web.Request) -> web.Response:
        return web.Response(text="done")

    @service.health.check("db")
    async def db() -> bool:
        return True

    async with service.running("127.0.0.1", 0) as running:
        await ledger.get("/")
        async with aiohttp.ClientSession() as session:
            await (await session.get(running.url + "/health/ready")).read()
            assert (await session.get(running.url + "/slow")).status == 200  # admitted
        data = await service.introspection.snapshot()
    return data


async def test_every_field_of_the_state_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    async with FaultyUpstream(name="ledger") as ledger:
        data = await full_state(ledger.url)
    # Every section the endpoint answers (the page shows a part of each) is there.
    assert {k for k, v in data.items() if v} == {
        "service", "health", "event_loop", "http", "ratelimit", "clients", "discovery",
        "events", "settings",
    }  # fmt: skip
    found: dict[str, str] = {}
    empty: set[str] = set()
    marked = with_markers(data, "", found, empty)
    empty = {path for path in empty if not path.startswith("settings.")}
    assert empty == EMPTY_WITHOUT_SERVERS, "equip the service so that no list is empty"
    text = render(marked, settings=True)
    missing = sorted(
        {
            path
            for marker, path in found.items()
            if marker not in text and not repeats_a_printed_field(path)
        }
    )
    assert not missing, f"chassis status does not print {missing}"
    # Names that are keys (checks, cached services, priorities, outcomes) are printed too.
    for name in (*data["health"]["checks"], *data["discovery"]["cache"]["services"]):
        assert name in text
    for name in (*data["ratelimit"]["shedding"], *data["ratelimit"]["decisions"]):
        assert name in text
    for title in ("Rate-limit policies", "Event subscriptions", "Retry budgets", "exhausted"):
        assert title in text


def test_terminal_control_characters_in_values_are_not_printed() -> None:
    hostile = "\x1b]0;owned\x07\x1b[2J"
    data = {
        "service": {"name": "svc", "version": hostile},
        "health": {"checks": {"db": {"critical": True, "last": {"error": hostile}}}},
        "discovery": {"backend": hostile, "registration": {"id": hostile}},
        "events": {"backend": hostile, "subscriptions": [{"handler": hostile}]},
        "ratelimit": {
            "policies": [{"name": hostile}],
            "shared": [{"using_redis": False, "fallbacks": 3}],
        },
    }
    text = render(data)
    assert "\x1b" not in text and "\x07" not in text
    assert "svc ?]0;owned??[2J" in text
    assert "Event subscriptions" in text and "Rate-limit policies" in text
    assert "Shared limits (Redis)" in text  # (a service with Redis-shared limits)


async def test_status_takes_the_token_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHASSIS_STATUS_TOKEN", TOKEN)
    service = Service("svc", settings=secret_settings())
    async with service.running("127.0.0.1", 0) as running:
        code, out, _ = await run(capsys, "status", running.url + "/_chassis")
    assert code == 0 and "svc 0.0.0" in out


async def test_status_without_or_with_a_wrong_token_exits_3_with_no_data(
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = Service("svc", settings=secret_settings())
    async with service.running("127.0.0.1", 0) as running:
        for extra in ((), ("--token", "wrong")):
            code, out, err = await run(capsys, "status", running.url, *extra)
            assert code == 3 and out == ""
            assert "401" in err
            assert_no_secret(err)


async def test_watch_refreshes_count_times(capsys: pytest.CaptureFixture[str]) -> None:
    service = Service("svc", settings=secret_settings())
    async with service.running("127.0.0.1", 0) as running:
        code, out, _ = await run(
            capsys, "status", running.url, "--token", TOKEN, "--watch", "--interval", "0.05",
            "--count", "3",
        )  # fmt: skip
    assert code == 0 and out.count("svc 0.0.0") == 3


async def test_an_unreachable_service_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run(capsys, "status", "http://127.0.0.1:9", "--timeout", "5")
    assert code == 1 and "unreachable" in err and out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ("status",),
        ("status", "ftp://127.0.0.1:1"),
        ("status", "http://127.0.0.1:1", "--count", "2"),
        ("status", "http://127.0.0.1:1", "--watch", "--interval", "0"),
    ],
)
def test_usage_errors_exit_2(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    assert code == 2
