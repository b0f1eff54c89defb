"""Tracing against a real OTLP receiver: two services in subprocesses, one trace across both."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout, web

from chassis import Service

from .conftest import quick_settings
from .otlp_sink import OtlpSink, ReceivedSpan

pytestmark = pytest.mark.slow

STARTUP_SECONDS = 30.0
EXIT_SECONDS = 30.0

SERVICE_B = """
    import logging

    from aiohttp import web
    from opentelemetry import baggage

    from chassis import Service

    service = Service("inventory", version="2.0.0")
    log = logging.getLogger("inventory")


    @service.get("/stock/{sku}")
    async def stock(request: web.Request) -> web.Response:
        log.info("counting stock")
        body = {"sku": request.match_info["sku"], "baggage": dict(baggage.get_all())}
        return web.json_response(body)
"""

SERVICE_A = """
    import logging

    from aiohttp import ClientSession, web
    from opentelemetry.trace import SpanKind

    from chassis import Service
    from chassis.tracing import inject_headers, traced

    INVENTORY = {inventory_url!r}
    service = Service("orders", version="1.0.0")
    log = logging.getLogger("orders")


    @traced("GET inventory", kind=SpanKind.CLIENT, attributes={{"peer.service": "inventory"}})
    async def check_stock(sku: str) -> dict:
        async with ClientSession() as session:
            url = f"{{INVENTORY}}/stock/{{sku}}"
            async with session.get(url, headers=inject_headers({{}})) as response:
                response.raise_for_status()
                return await response.json()


    @service.get("/orders/{{sku}}")
    async def order(request: web.Request) -> web.Response:
        log.info("placing order")
        return web.json_response({{"stock": await check_stock(request.match_info["sku"])}})
"""


class Process:
    """A ``chassis run`` subprocess whose stdout (JSON log lines) goes to a file."""

    def __init__(self, proc: asyncio.subprocess.Process, stdout: Path, stderr: Path) -> None:
        self.proc = proc
        self.stdout = stdout
        self.stderr = stderr

    def records(self) -> list[dict[str, Any]]:
        lines = self.stdout.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def output(self) -> str:
        return (
            f"stdout:\n{self.stdout.read_text(encoding='utf-8')}\n"
            f"stderr:\n{self.stderr.read_text(encoding='utf-8')}"
        )

    async def url(self) -> str:
        """Wait for the ``listening`` line and return the URL it names."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            for record in self.records():
                if record.get("event") == "listening":
                    return str(record["url"])
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"the service never listened\n{self.output()}")

    async def stop(self) -> int:
        """SIGTERM, then wait for the drained process to exit."""
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), EXIT_SECONDS)


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Any]:
    """Start ``chassis run file.py:service`` subprocesses; kill leftovers at teardown."""
    started: list[Process] = []

    async def start(name: str, source: str, env: dict[str, str]) -> Process:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source), encoding="utf-8")
        stdout, stderr = tmp_path / f"{name}.stdout", tmp_path / f"{name}.stderr"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "chassis",
                "run",
                f"{path}:service",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                cwd=tmp_path,
                env={**os.environ, **env},
                stdout=out,
                stderr=err,
            )
        process = Process(proc, stdout, stderr)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.proc.returncode is None:
                process.proc.kill()
                await process.proc.wait()


def one(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.resource.get("service.name") == service and s.name == name]
    assert len(found) == 1, [(s.resource.get("service.name"), s.name) for s in spans]
    return found[0]


async def test_trace_crosses_two_services_and_reaches_the_collector(spawn: Any) -> None:
    sink = OtlpSink()
    async with sink.http() as sink_url:
        env = {
            "CHASSIS_TRACING__ENDPOINT": f"{sink_url}/v1/traces",
            "CHASSIS_TRACING__SAMPLER": "always_on",
            "CHASSIS_TRACING__SCHEDULE_DELAY_SECONDS": "0.2",
            "CHASSIS_HEALTH__DRAIN_DELAY_SECONDS": "0",
            "CHASSIS_ENVIRONMENT": "test",
        }
        inventory = await spawn("inventory", SERVICE_B, env)
        inventory_url = await inventory.url()
        orders = await spawn("orders", SERVICE_A.format(inventory_url=inventory_url), env)
        orders_url = await orders.url()

        async with (
            ClientSession(timeout=ClientTimeout(total=30)) as session,
            session.get(f"{orders_url}/orders/sku-42", headers={"baggage": "tenant=acme"}) as r,
        ):
            assert r.status == 200, f"{orders.output()}\n{inventory.output()}"
            body = await r.json()
        assert body == {"stock": {"sku": "sku-42", "baggage": {"tenant": "acme"}}}

        assert await orders.stop() == 0, orders.output()
        assert await inventory.stop() == 0, inventory.output()

        spans = await sink.wait_for(
            lambda spans: (
                {s.name for s in spans}
                >= {"GET /orders/{sku}", "GET inventory", "GET /stock/{sku}"}
            )
        )

    a_server = one(spans, "orders", "GET /orders/{sku}")
    a_client = one(spans, "orders", "GET inventory")
    b_server = one(spans, "inventory", "GET /stock/{sku}")
    trace_id = a_server.trace_id
    assert len(trace_id) == 32
    assert a_client.trace_id == b_server.trace_id == trace_id
    assert a_server.parent_span_id == ""
    assert a_client.parent_span_id == a_server.span_id
    assert b_server.parent_span_id == a_client.span_id  # the span in A that made the call
    assert (a_server.kind, a_client.kind, b_server.kind) == ("SERVER", "CLIENT", "SERVER")
    assert a_client.attributes == {"peer.service": "inventory"}

    inventory_port = int(inventory_url.rsplit(":", 1)[1])
    assert b_server.attributes.pop("user_agent.original").startswith("Python/")
    assert b_server.attributes == {
        "http.request.method": "GET",
        "http.route": "/stock/{sku}",
        "http.response.status_code": 200,
        "url.path": "/stock/sku-42",
        "url.scheme": "http",
        "server.address": "127.0.0.1",
        "server.port": inventory_port,
        "client.address": "127.0.0.1",
    }
    assert b_server.status == a_server.status == "UNSET"
    for span, name, version in ((a_server, "orders", "1.0.0"), (b_server, "inventory", "2.0.0")):
        assert span.scope == "chassis"
        assert span.resource["service.name"] == name
        assert span.resource["service.version"] == version
        assert span.resource["deployment.environment"] == "test"
        assert span.resource["deployment.environment.name"] == "test"
        assert span.resource["host.name"]
    assert a_server.resource["service.instance.id"] != b_server.resource["service.instance.id"]

    for process, server, message in (
        (orders, a_server, "placing order"),
        (inventory, b_server, "counting stock"),
    ):
        records = process.records()
        (access,) = [r for r in records if r.get("logger") == "chassis.access"]
        (handler_line,) = [r for r in records if r.get("message") == message]
        for record in (access, handler_line):
            assert record["trace_id"] == trace_id, process.output()
            assert record["span_id"] == server.span_id
        assert access["request_id"] == handler_line["request_id"] != ""


async def test_http_endpoint_without_a_path_exports_to_v1_traces(
    aiohttp_client: Any,
) -> None:
    sink = OtlpSink()
    async with sink.http() as sink_url:
        service = Service("bare-url", settings=quick_settings(tracing={"endpoint": sink_url}))

        @service.get("/ping")
        async def ping(request: web.Request) -> web.Response:
            return web.Response(text="pong")

        client = await aiohttp_client(service.app)
        assert (await client.get("/ping")).status == 200
        assert await service.tracing.flush()
        spans = await sink.wait_for(lambda spans: any(s.name == "GET /ping" for s in spans))
        await client.close()
    assert set(sink.paths) == {"/v1/traces"}
    assert one(spans, "bare-url", "GET /ping").kind == "SERVER"


async def test_grpc_protocol_exports_to_an_otlp_grpc_receiver() -> None:
    try:
        import grpc  # noqa: F401
    except ImportError:  # an optional extra; CI installs every extra
        if os.environ.get("CI"):
            raise
        pytest.skip("grpcio is not installed")
    sink = OtlpSink()
    async with sink.grpc() as grpc_url:
        tracing = {"endpoint": grpc_url, "protocol": "grpc", "schedule_delay_seconds": 0.1}
        service = Service("over-grpc", settings=quick_settings(tracing=tracing))

        @service.get("/ping")
        async def ping(request: web.Request) -> web.Response:
            return web.Response(text="pong")

        async with (
            service.running(port=0) as running,
            ClientSession() as session,
            session.get(f"{running.url}/ping") as response,
        ):
            assert response.status == 200
        spans = await sink.wait_for(lambda spans: any(s.name == "GET /ping" for s in spans))
    span = one(spans, "over-grpc", "GET /ping")
    assert span.attributes["http.route"] == "/ping"
    assert sink.paths["grpc"] >= 1
