"""One process per service: ``chassis run`` + env config, Consul discovery, RabbitMQ events.

The commands of ``docs/simplebank/running.md``, run for real: a RabbitMQ broker (the
repository's test fixture, ``tests/events/rabbitmq_server.py``), the Consul stand-in and
the exchange in the test, and the ten services as ``python -m chassis run
simplebank.<module>:create`` subprocesses configured only by ``CHASSIS_*`` variables.
A customer signs up, deposits, buys and sells through the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from simplebank.exchange import Exchange
from simplebank.services import SERVICES, free_ports
from simplebank.testing import check_invariants

from chassis.testing import ConsulStandIn

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "events"))
from rabbitmq_server import require_rabbitmq, running_broker  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def environment(name: str, data: Path, consul: str, amqp: str, secret: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHASSIS_", "OTEL_"))}
    env.update(
        {
            "CHASSIS_DISCOVERY__BACKEND": "consul",
            "CHASSIS_DISCOVERY__CONSUL_ADDR": consul,
            "CHASSIS_DISCOVERY__CHECK_INTERVAL_SECONDS": "1",
            "CHASSIS_EVENTS__BACKEND": "rabbitmq",
            "CHASSIS_EVENTS__URL": amqp,
            "CHASSIS_EVENTS__RETRY_INITIAL_SECONDS": "0.1",
            "CHASSIS_EVENTS__RETRY_MAX_SECONDS": "1",
            "CHASSIS_EVENTS__MAX_ATTEMPTS": "50",
            "CHASSIS_AUTH__TOKEN_SECRET": secret,
            "CHASSIS_DATABASE__PATH": str(data / f"{name}.db"),
            "CHASSIS_HEALTH__DRAIN_DELAY_SECONDS": "0",
            "CHASSIS_LOG__LEVEL": "WARNING",
            "CHASSIS_LOG__ACCESS_LOG": "false",
            "CHASSIS_TRACING__ENABLED": "false",
        }
    )
    return env


@contextlib.asynccontextmanager
async def processes(tmp_path: Path, consul: str, amqp: str) -> AsyncIterator[dict[str, str]]:
    """Every service in its own process; yields name -> base URL once all are ready."""
    secret = secrets.token_urlsafe(32)
    ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
    running: dict[str, asyncio.subprocess.Process] = {}
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in SERVICES}
    try:
        for name, target in SERVICES.items():
            running[name] = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "chassis",
                "run",
                target,
                "--port",
                str(ports[name]),
                env=environment(name, tmp_path, consul, amqp, secret),
                stdout=logs[name],
                stderr=asyncio.subprocess.STDOUT,
            )
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        await wait_until_discoverable(consul, running, tmp_path)
        yield urls
    finally:
        for process in running.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for name, process in running.items():
            try:
                await asyncio.wait_for(process.wait(), 30)
            except asyncio.TimeoutError:  # Python 3.10: not the built-in
                process.kill()
                await process.wait()
            logs[name].close()


async def wait_until_discoverable(
    consul: str, running: dict[str, asyncio.subprocess.Process], logs: Path
) -> None:
    """Until Consul lists every service with a passing check (bounded: 120 s)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 120
    async with aiohttp.ClientSession() as session:
        for name in SERVICES:
            while True:
                process = running[name]
                if process.returncode is not None:
                    log = (logs / f"{name}.log").read_text(errors="replace")[-3000:]
                    pytest.fail(f"{name} exited {process.returncode}:\n{log}")
                url = f"{consul}/v1/health/service/{name}?passing=true"
                async with session.get(url) as response:
                    if response.status == 200 and await response.json():
                        break
                assert loop.time() < give_up, f"{name} never became discoverable"
                await asyncio.sleep(0.2)


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    json: Any = None,
    token: str | None = None,
    expect: int = 200,
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(method, url, json=json, headers=headers) as response:
        body = await response.json(content_type=None)
        assert response.status == expect, (method, url, response.status, body)
        return body


async def poll(
    session: aiohttp.ClientSession, url: str, token: str, done: Any, timeout: float = 60.0
) -> Any:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while True:
        body = await call(session, "GET", url, token=token)
        if done(body):
            return body
        assert loop.time() < give_up, f"{url} still {body}"
        await asyncio.sleep(0.1)


async def test_each_service_in_its_own_process_completes_a_buy_and_a_sell(
    tmp_path: Path,
) -> None:
    require_rabbitmq()
    with running_broker() as broker:
        async with (
            ConsulStandIn() as consul,
            Exchange() as exchange,
            aiohttp.ClientSession() as session,
        ):
            registration = {
                "ID": "exchange-1",
                "Name": "exchange",
                "Address": "127.0.0.1",
                "Port": exchange.upstream.port,
            }
            async with session.put(
                consul.url + "/v1/agent/service/register", json=registration
            ) as response:
                assert response.status == 200
            async with processes(tmp_path, consul.url, broker.url) as urls:
                gateway = urls["gateway"]
                me = {"email": "dora@example.com", "password": "dora's password", "name": "Dora"}
                await call(session, "POST", gateway + "/signup", json=me, expect=201)
                login = await call(
                    session,
                    "POST",
                    gateway + "/login",
                    json={"email": me["email"], "password": me["password"]},
                )
                token = login["access_token"]
                await call(
                    session,
                    "POST",
                    gateway + "/deposits",
                    json={"amount_cents": 1_000_000},
                    token=token,
                    expect=201,
                )
                filled = []
                for side, quantity in (("buy", 4), ("sell", 1)):
                    placed = await call(
                        session,
                        "POST",
                        gateway + "/orders",
                        json={"side": side, "symbol": "VTI", "quantity": quantity},
                        token=token,
                        expect=202,
                    )
                    order = await poll(
                        session,
                        f"{gateway}/orders/{placed['order_id']}",
                        token,
                        lambda o: o["state"] in ("FILLED", "FAILED"),
                    )
                    filled.append(order["state"])
                assert filled == ["FILLED", "FILLED"]
                portfolio = await poll(
                    session,
                    gateway + "/portfolio",
                    token,
                    lambda p: p["pending_orders"] == 0 and p["positions"],
                )
                assert [(p["symbol"], p["quantity"]) for p in portfolio["positions"]] == [
                    ("VTI", 3)
                ]
                cash = 1_000_000 - (4 * 25000 + 100) + (25000 - 100)
                assert portfolio["cash_cents"] == cash
                report = await check_invariants(urls, exchange)
                assert not report.violations, report.violations
