"""ConsulStandIn itself: Consul's status codes, ACL answers, check rules and outage knobs.

These always run against the stand-in: they pin down how it imitates Consul.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from chassis._consul_standin import parse_go_duration
from chassis.discovery import ConsulRegistry, DiscoveryError, Registration
from chassis.discovery.consul import _go_duration
from chassis.testing import ConsulStandIn
from tests.conftest import LogCapture

from .conftest import eventually


async def call(
    standin: ConsulStandIn,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    **params: str,
) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, standin.url + path, json=body, params=params, headers=headers) as resp,
    ):
        text = await resp.text()
        is_json = resp.content_type == "application/json"
        return resp.status, (await resp.json() if is_json else text), resp.headers


def test_go_durations_parse_and_format() -> None:
    assert parse_go_duration("10s") == 10
    assert parse_go_duration("1m30s") == 90
    assert parse_go_duration("500ms") == 0.5
    assert parse_go_duration("1.5h") == 5400
    assert parse_go_duration("0") == 0
    for bad in ("", "10", "s", "1x", "-1s"):
        with pytest.raises(ValueError, match="invalid duration"):
            parse_go_duration(bad)
    for seconds in (10, 0.5, 1.25, 60):
        assert parse_go_duration(_go_duration(seconds)) == seconds


async def test_consul_error_answers() -> None:
    async with ConsulStandIn() as standin:
        assert (await call(standin, "PUT", "/v1/agent/service/register", {"Port": 1}))[:2] == (
            400,
            "Missing service name",
        )
        status, text, _ = await call(
            standin,
            "PUT",
            "/v1/agent/service/register",
            {"Name": "x", "Check": {"HTTP": "http://h"}},
        )
        assert status == 400
        assert "Interval must be > 0" in text
        status, text, _ = await call(standin, "GET", "/v1/health/service/x", index="1", wait="ten")
        assert (status, text) == (400, "Invalid wait time")
        status, text, _ = await call(standin, "GET", "/v1/health/service/x", index="one")
        assert (status, text) == (400, "Invalid index")
        status, text, _ = await call(standin, "PUT", "/v1/agent/service/deregister/nope")
        assert status == 404
        assert "nope" in text
        status, text, _ = await call(standin, "PUT", "/v1/agent/service/maintenance/nope")
        assert (status, text) == (400, "Missing value for enable")
        status, _, _ = await call(standin, "GET", "/v1/agent/service/register")
        assert status == 405
        status, leader, _ = await call(standin, "GET", "/v1/status/leader")
        assert (status, leader) == (200, "127.0.0.1:8300")
        status, me, _ = await call(standin, "GET", "/v1/agent/self")
        assert me["Config"]["Datacenter"] == "dc1"


async def test_request_keys_match_case_insensitively_like_consul() -> None:
    async with ConsulStandIn() as standin:
        body = {
            "name": "lower",
            "id": "lower-1",
            "port": 7,
            "tags": ["t"],
            "meta": {"Version": "1"},
            "checks": [
                {"ttl": "10s", "deregister_critical_service_after": "90s", "status": "passing"}
            ],
        }
        assert (await call(standin, "PUT", "/v1/agent/service/register", body))[0] == 200
        _, services, _ = await call(standin, "GET", "/v1/agent/services")
        assert services["lower-1"]["Meta"] == {"Version": "1"}  # meta keys are data: untouched
        assert services["lower-1"]["Tags"] == ["t"]
        assert standin.check_status("service:lower-1") == "passing"


async def test_http_checks_map_statuses_and_respect_the_minimum_interval() -> None:
    answer = {"status": 200}

    async def probe(request: web.Request) -> web.Response:
        return web.Response(status=answer["status"], text="hi")

    app = web.Application()
    app.router.add_get("/probe", probe)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with ConsulStandIn(check_min_interval_seconds=0.2) as standin:
            check = {"HTTP": f"http://127.0.0.1:{port}/probe", "Interval": "50ms"}
            body = {"Name": "web", "ID": "web-1", "Port": port, "Check": check}
            assert (await call(standin, "PUT", "/v1/agent/service/register", body))[0] == 200
            _, checks, _ = await call(standin, "GET", "/v1/agent/checks")
            assert checks["service:web-1"]["Interval"] == "200ms"  # raised to the minimum
            assert checks["service:web-1"]["Status"] == "critical"  # before the first run

            for status, expected in ((200, "passing"), (429, "warning"), (500, "critical")):
                answer["status"] = status

                async def reached(expected: str = expected) -> bool:
                    return standin.check_status("service:web-1") == expected

                await eventually(reached, timeout=10)
            _, checks, _ = await call(standin, "GET", "/v1/agent/checks")
            output = checks["service:web-1"]["Output"]
            assert output.startswith(f"HTTP GET http://127.0.0.1:{port}/probe: 500")
            assert output.endswith("Output: hi")
    finally:
        await runner.cleanup()


async def test_acl_tokens_are_enforced_like_consul(logs: LogCapture) -> None:
    secret = "7b1c-very-secret"
    async with ConsulStandIn(token=secret) as standin:
        body = {"Name": "acl", "ID": "acl-1", "Port": 1, "Check": {"TTL": "10s"}}
        status, text, _ = await call(standin, "PUT", "/v1/agent/service/register", body)
        assert status == 403
        assert text.startswith("Permission denied")
        wrong = {"X-Consul-Token": "nope"}
        status, text, _ = await call(standin, "PUT", "/v1/agent/service/register", body, wrong)
        assert (status, text) == (403, "ACL not found")
        status, _, _ = await call(standin, "GET", "/v1/agent/self")
        assert status == 403
        assert (await call(standin, "GET", "/v1/status/leader"))[0] == 200  # needs no token

        me = Registration(service="acl", id="acl-2", address="127.0.0.1", port=2, version="1")
        denied = ConsulRegistry(addr=standin.url, metrics_registry=CollectorRegistry())
        allowed = ConsulRegistry(
            addr=standin.url, token=secret, metrics_registry=CollectorRegistry()
        )
        try:
            with pytest.raises(DiscoveryError, match="Permission denied"):
                await denied.register(me)
            await allowed.register(me)
            assert standin.service_ids() == ["acl-2"]
            # Anonymous reads are filtered, not refused.
            status, found, headers = await call(standin, "GET", "/v1/health/service/acl")
            assert (status, found) == (200, [])
            assert headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
            assert await denied.resolve("acl") == []
            await allowed.ping()
            assert secret not in repr(allowed)
        finally:
            await denied.aclose()
            await allowed.aclose()
    assert logs.lines  # registration and its failure were logged ...
    assert all(secret not in line for line in logs.lines)  # ... without the token


async def test_pause_holds_requests_and_hits_are_counted() -> None:
    async with ConsulStandIn() as standin:
        standin.pause()
        held = asyncio.ensure_future(call(standin, "GET", "/v1/status/leader"))
        await asyncio.sleep(0.3)
        assert not held.done()
        standin.resume()
        status, _, _ = await asyncio.wait_for(held, 10)
        assert status == 200
        await call(standin, "GET", "/v1/health/service/a")
        await call(standin, "GET", "/v1/health/service/b")
        assert standin.hits["GET /v1/status/leader"] == 1
        assert standin.hits["GET /v1/health/service/{name}"] == 2


async def test_stop_drops_blocking_queries_and_start_keeps_state_and_port() -> None:
    async with ConsulStandIn() as standin:
        body = {"Name": "kept", "ID": "kept-1", "Port": 1, "Check": {"TTL": "60s"}}
        await call(standin, "PUT", "/v1/agent/service/register", body)
        _, _, headers = await call(standin, "GET", "/v1/catalog/services")
        index = headers["X-Consul-Index"]
        blocked = asyncio.ensure_future(
            call(standin, "GET", "/v1/catalog/services", index=index, wait="60s")
        )
        await asyncio.sleep(0.2)
        url = standin.url
        started = time.monotonic()
        await standin.stop()
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(blocked, 10)
        assert time.monotonic() - started < 10
        with pytest.raises(aiohttp.ClientError):
            await call(standin, "GET", "/v1/status/leader")
        await standin.start()
        assert standin.url == url
        status, services, _ = await call(standin, "GET", "/v1/catalog/services")
        assert status == 200
        assert services == {"consul": [], "kept": []}
