"""SimpleBank spread over several hosts, on one machine: network namespaces.

Five hosts on a private bridge (``netns.Network``), nothing on the machine's own
network: ``infra`` runs RabbitMQ and the Consul stand-in, ``a`` the gateway and
customers, ``b`` accounts and orders, ``c`` the other services, and ``outside`` is the
world: the exchange and the customer (event loops of this process placed in that
namespace). Every service is ``ip netns exec <host> python -m chassis run ...``,
listens on all of its host's interfaces and advertises its host's address to Consul,
so each call between hosts crosses two veth cables and the bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from netns import NamespaceThread, Network, infra_urls
from procs import ServiceProcess, environment
from simplebank.exchange import Exchange
from simplebank.services import SERVICES
from simplebank.testing import check_invariants

pytestmark = pytest.mark.timeout(300)

HOSTS = {"infra": 2, "a": 11, "b": 12, "c": 13, "outside": 100}
PLACEMENT = {
    "a": ("gateway", "customers"),
    "b": ("accounts", "orders"),
    "c": ("market", "fees", "market-data", "holdings", "strategies", "notifications"),
}
HOST_OF = {name: host for host, names in PLACEMENT.items() for name in names}
PORTS = {name: 8001 + i for i, name in enumerate(SERVICES)}  # each host has its own ports
TOKEN_SECRET = "a token secret that customers and the gateway share"
EXCHANGE_PORT = 9100
READY_TIMEOUT_SECONDS = 120.0
INFRA_TIMEOUT_SECONDS = 120.0


def test_every_service_is_placed_on_a_host() -> None:
    assert sorted(HOST_OF) == sorted(SERVICES)


@pytest.mark.parametrize("ci", ["", "true"])
def test_without_the_ip_command_the_test_skips_locally_and_fails_on_ci(
    ci: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `ip` here
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="iproute2"):
        Network(HOSTS).create()


@pytest.fixture
def network() -> Iterator[Network]:
    with Network(HOSTS) as net:  # skips here (fails on CI) when namespaces are not allowed
        yield net


@pytest.fixture
def outside(network: Network) -> Iterator[NamespaceThread]:
    with NamespaceThread(network.namespaces["outside"]) as thread:
        yield thread


async def start_service(
    network: Network, name: str, urls: dict[str, str], log_dir: Path
) -> ServiceProcess:
    """``ip netns exec <host> python -m chassis run <target>``: listening on every
    interface of its host, advertising the host's address in Consul."""
    host = HOST_OF[name]
    env = environment(
        name,
        log_dir,
        consul=urls["consul"],
        amqp=urls["amqp"],
        secret=TOKEN_SECRET,
        extra={
            "CHASSIS_DISCOVERY__ADVERTISE_ADDRESS": network.addresses[host],
            # Started with Consul and RabbitMQ: short back-offs while they come up.
            "CHASSIS_DISCOVERY__WATCH_BACKOFF_MAX_SECONDS": "1",
            "CHASSIS_EVENTS__RECONNECT_MAX_SECONDS": "1",
        },
    )
    argv = network.exec_args(
        host, sys.executable, "-m", "chassis", "run", SERVICES[name],
        "--host", "0.0.0.0", "--port", str(PORTS[name]),
    )  # fmt: skip
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
        )
    return ServiceProcess(
        name=name,
        port=PORTS[name],
        log_path=log_path,
        process=process,
        host=network.addresses[host],
    )


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


async def register_exchange(consul: str, exchange: Exchange) -> None:
    registration = {
        "ID": "exchange-1",
        "Name": "exchange",
        "Address": exchange.upstream.host,
        "Port": exchange.upstream.port,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.put(consul + "/v1/agent/service/register", json=registration) as response,
    ):
        assert response.status == 200


async def catalog(consul: str) -> dict[str, set[str]]:
    """Service name -> the addresses Consul gives for its instances."""
    found: dict[str, set[str]] = {}
    async with aiohttp.ClientSession() as session:
        for name in [*SERVICES, "exchange"]:
            async with session.get(f"{consul}/v1/health/service/{name}") as response:
                assert response.status == 200, name
                found[name] = {entry["Service"]["Address"] for entry in await response.json()}
    return found


async def customer_buys_and_sells(gateway: str) -> dict[str, Any]:
    """Sign up, deposit, buy 4 VTI and sell 1; the orders' states and the portfolio."""
    async with aiohttp.ClientSession() as session:
        me = {"email": "erin@example.com", "password": "erin's password", "name": "Erin"}
        await call(session, "POST", gateway + "/signup", json=me, expect=201)
        login = await call(
            session, "POST", gateway + "/login", json={k: me[k] for k in ("email", "password")}
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
        states = []
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
            states.append(order["state"])
        portfolio = await poll(
            session,
            gateway + "/portfolio",
            token,
            lambda p: p["pending_orders"] == 0 and p["positions"],
        )
        return {"states": states, "portfolio": portfolio}


@contextlib.asynccontextmanager
async def bank_on_hosts(
    network: Network, outside: NamespaceThread, data_dir: Path
) -> AsyncIterator[dict[str, str]]:
    """The infra host's script and every service, all started at once (services retry
    Consul and RabbitMQ until they answer); yields service name -> URL once each is
    passing in Consul (as seen from ``outside``). Services are stopped first, while
    the broker is still up."""
    urls = infra_urls(network.addresses["infra"])
    script = Path(__file__).with_name("netns.py")
    log = data_dir / "infra.log"
    with log.open("ab") as err:
        infra = await asyncio.create_subprocess_exec(
            *network.exec_args("infra", sys.executable, str(script), "infra",
                               network.addresses["infra"]),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )  # fmt: skip
    running: dict[str, ServiceProcess] = {}
    try:
        for name in SERVICES:
            running[name] = await start_service(network, name, urls, data_dir)
        assert infra.stdout is not None  # it prints its URLs once both servers answer
        line = b""
        with contextlib.suppress(asyncio.TimeoutError):  # 3.10: not the built-in
            line = await asyncio.wait_for(infra.stdout.readline(), INFRA_TIMEOUT_SECONDS)
        if not line:
            pytest.fail(f"infra did not start:\n{log.read_text(errors='replace')[-4000:]}")
        for proc in running.values():
            await outside.run(proc.wait_ready(urls["consul"], timeout=READY_TIMEOUT_SECONDS))
        yield {name: proc.url for name, proc in running.items()}
    finally:
        await asyncio.gather(*(proc.stop() for proc in running.values()))
        if infra.returncode is None:
            infra.send_signal(signal.SIGTERM)  # stops the broker cleanly
        with contextlib.suppress(asyncio.TimeoutError):  # Network.delete() kills the rest
            await asyncio.wait_for(infra.wait(), INFRA_TIMEOUT_SECONDS)


async def test_sagas_complete_across_hosts_in_separate_network_namespaces(
    network: Network, outside: NamespaceThread, tmp_path: Path
) -> None:
    consul = infra_urls(network.addresses["infra"])["consul"]
    exchange = Exchange(port=EXCHANGE_PORT)
    exchange.upstream.host = network.addresses["outside"]  # the exchange is on the outside host
    await outside.run(exchange.start())
    try:
        async with bank_on_hosts(network, outside, tmp_path) as urls:
            await outside.run(register_exchange(consul, exchange))

            listed = await outside.run(catalog(consul))
            expected = {name: {network.addresses[HOST_OF[name]]} for name in SERVICES}
            assert listed == {**expected, "exchange": {network.addresses["outside"]}}

            before = {host: network.counters(host) for host in HOSTS}
            done = await outside.run(customer_buys_and_sells(urls["gateway"]))
            after = {host: network.counters(host) for host in HOSTS}

            assert done["states"] == ["FILLED", "FILLED"]
            portfolio = done["portfolio"]
            assert [(p["symbol"], p["quantity"]) for p in portfolio["positions"]] == [("VTI", 3)]
            assert portfolio["cash_cents"] == 1_000_000 - (4 * 25000 + 100) + (25000 - 100)
            report = await outside.run(check_invariants(urls, exchange))
            assert not report.violations, report.violations
            for host in HOSTS:  # each host received and sent on its eth0 meanwhile
                assert after[host][0] > before[host][0], (host, before[host], after[host])
                assert after[host][1] > before[host][1], (host, before[host], after[host])
    finally:
        await outside.run(exchange.aclose())
