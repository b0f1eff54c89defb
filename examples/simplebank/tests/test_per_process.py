"""One process per service: ``chassis run`` + env config, Consul discovery, RabbitMQ events.

The commands of ``docs/simplebank/running.md``, run for real: a RabbitMQ broker (the
repository's test fixture, ``tests/events/rabbitmq_server.py``), the Consul stand-in and
the exchange in the test, and the ten services as ``python -m chassis run
simplebank.<module>:create`` subprocesses configured only by ``CHASSIS_*`` variables.
A customer signs up, deposits, buys and sells through the gateway.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from procs import processes
from simplebank.exchange import Exchange
from simplebank.testing import check_invariants

from chassis.testing import ConsulStandIn

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "events"))
from rabbitmq_server import require_rabbitmq, running_broker  # noqa: E402

pytestmark = pytest.mark.timeout(300)


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
            async with processes(tmp_path, consul.url, broker.url) as fleet:
                urls = fleet.urls
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
