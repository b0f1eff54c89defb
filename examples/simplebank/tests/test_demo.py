"""The one-command demo, run as a user would: ``python -m simplebank demo --once``."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
from simplebank.demo import table


def run(*args: str, timeout: float = 100.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simplebank", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_demo_runs_the_scenario_through_the_gateway_and_exits_0(tmp_path: Path) -> None:
    done = run("demo", "--once", "--port", "0", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for expected in (
        "sign up",
        "deposit",
        "buy 10 VTI -> FILLED",
        "sell 4 VTI -> FILLED",
        "(COMPLETED)",
        "buy 5 BND -> FAILED at step place (exchange-unavailable)",
        "cancel, release",
        "Balances (accounts)",
        "Portfolio (holdings x market-data prices",
        "Invariants hold",
    ):
        assert expected in out, (expected, out)
    assert "Serving the gateway" not in out  # --once: no serving after the scenario
    assert sorted(p.name for p in tmp_path.glob("*.db"))[:2] == ["accounts.db", "customers.db"]


def test_the_demo_runs_again_on_the_files_it_kept(tmp_path: Path) -> None:
    for _ in range(2):
        done = run("demo", "--once", "--port", "0", "--data-dir", str(tmp_path))
        assert done.returncode == 0, done.stdout + done.stderr
    assert "exists already (a kept --data-dir)" in done.stdout


def test_the_demo_refuses_a_bad_port() -> None:
    done = run("demo", "--once", "--port", "70000", timeout=30)
    assert done.returncode == 2 and "--port" in done.stderr


def test_tables_align_numbers_right() -> None:
    text = table(["asset", "available"], [["cash", "$1,000.00"], ["VTI", 7]])
    assert text.splitlines() == [
        "  asset  available",
        "  -----  ---------",
        "  cash   $1,000.00",
        "  VTI            7",
    ]


async def test_the_demo_keeps_serving_until_interrupted() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simplebank",
        "demo",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        url = None
        for _ in range(500):  # bounded: the scenario prints well under 500 lines
            line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
            assert line, "the demo exited before serving"
            if line.startswith("Serving the gateway at "):
                url = line.split()[4]
                break
        assert url is not None
        async with aiohttp.ClientSession() as session, session.get(url + "/") as response:
            assert response.status == 200
            assert (await response.json())["service"] == "SimpleBank gateway"
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 60) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
