"""``chassis status URL``: tables, --json, --watch, tokens and exit codes."""

from __future__ import annotations

import asyncio
import json

import pytest

from chassis import Service
from chassis._status import render
from chassis.cli import main

from .test_introspection import TOKEN, assert_no_secret, secret_settings


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


def test_terminal_control_characters_in_values_are_not_printed() -> None:
    hostile = "\x1b]0;owned\x07\x1b[2J"
    data = {
        "service": {"name": "svc", "version": hostile},
        "health": {"checks": {"db": {"critical": True, "last": {"error": hostile}}}},
        "discovery": {"backend": hostile, "registration": {"id": hostile}},
        "events": {"backend": hostile},
    }
    text = render(data)
    assert "\x1b" not in text and "\x07" not in text
    assert "svc ?]0;owned??[2J" in text


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
