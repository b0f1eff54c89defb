"""FaultyUpstream: each knob does what it says, deterministically."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from chassis._faulty_upstream import FaultyUpstream
from chassis.client import new_session


async def statuses(session: aiohttp.ClientSession, url: str, n: int) -> list[int | str]:
    out: list[int | str] = []
    for _ in range(n):
        try:
            async with session.get(url) as response:
                await response.read()
                out.append(response.status)
        except aiohttp.ClientConnectionError as exc:
            out.append(type(exc).__name__)
    return out


async def test_counts_and_records_what_it_receives() -> None:
    async with FaultyUpstream(name="md") as up, aiohttp.ClientSession() as session:
        async with session.post(up.url + "/a?x=1", data=b"hi", headers={"X-Tag": "t"}) as r:
            assert (await r.json())["upstream"] == "md"
        await statuses(session, up.url + "/b", 2)
        assert up.hits == 3
        assert up.hits_by_path == {"/a": 1, "/b": 2}
        first = up.received[0]
        assert (first.method, first.path, first.query_string) == ("POST", "/a", "x=1")
        assert (first.body, first.headers["X-Tag"]) == (b"hi", "t")
        up.reset_counters()
        assert up.hits == 0 and not up.received


async def test_scripted_every_nth_and_seeded_errors() -> None:
    async with FaultyUpstream() as up, aiohttp.ClientSession() as session:
        up.script(500, 502)
        assert await statuses(session, up.url, 3) == [500, 502, 200]
        up.configure(error_every=2, error_status=504)
        assert await statuses(session, up.url, 4) == [504, 200, 504, 200]  # hits 4..7

    runs = []
    for _ in range(2):
        async with (
            FaultyUpstream(seed=42, error_rate=0.5) as up,
            aiohttp.ClientSession() as session,
        ):
            runs.append(await statuses(session, up.url, 20))
    assert runs[0] == runs[1]
    assert 3 < runs[0].count(503) < 17


async def test_retry_after_accompanies_injected_errors() -> None:
    async with (
        FaultyUpstream(error_every=1, retry_after=3) as up,
        aiohttp.ClientSession() as session,
        session.get(up.url) as response,
    ):
        assert response.status == 503
        assert response.headers["Retry-After"] == "3"
        assert response.content_type == "application/problem+json"


async def test_connection_resets() -> None:
    # The chassis' session: a bare aiohttp session would silently send the GET again.
    async with FaultyUpstream(reset_every=1) as up, new_session() as session:
        assert await statuses(session, up.url, 1) == ["ClientOSError"]
        assert up.hits == 1


async def test_latency_and_slow_bodies() -> None:
    async with FaultyUpstream(latency_seconds=0.1) as up, aiohttp.ClientSession() as session:
        start = time.monotonic()
        await statuses(session, up.url, 1)
        assert time.monotonic() - start >= 0.1
        up.configure(latency_seconds=0, slow_body_seconds=0.2)
        async with session.get(up.url) as response:
            headers_at = time.monotonic()
            body = await response.json()
            assert time.monotonic() - headers_at >= 0.15
        assert body["hit"] == 2


async def test_outage_refuses_connections_until_recovery() -> None:
    async with FaultyUpstream() as up, aiohttp.ClientSession() as session:
        port = up.port
        await up.outage()
        assert not up.listening
        assert await statuses(session, up.url, 1) == ["ClientConnectorError"]
        await up.recover()
        assert up.port == port
        assert await statuses(session, up.url, 1) == [200]
        assert up.hits == 1


async def test_in_flight_high_water_mark() -> None:
    async with FaultyUpstream(latency_seconds=0.1) as up, aiohttp.ClientSession() as session:
        await asyncio.gather(*(statuses(session, up.url, 1) for _ in range(3)))
        assert up.max_in_flight == 3
        assert up.in_flight == 0


async def test_custom_routes_get_the_faults_too() -> None:
    routes = web.RouteTableDef()

    @routes.get("/prices/{symbol}")
    async def price(request: web.Request) -> web.Response:
        return web.json_response({"symbol": request.match_info["symbol"], "price": 101.5})

    async with FaultyUpstream(routes=routes) as up, aiohttp.ClientSession() as session:
        async with session.get(up.url + "/prices/VTI") as response:
            assert (await response.json())["price"] == 101.5
        up.script(503)
        assert await statuses(session, up.url + "/prices/VTI", 1) == [503]
        instance = up.instance("exchange")
        assert (instance.service, instance.url) == ("exchange", up.url)


def test_unknown_knobs_are_refused() -> None:
    with pytest.raises(TypeError, match="no knob"):
        FaultyUpstream(latency=1)
