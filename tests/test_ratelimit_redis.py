"""chassis.ratelimit against a real redis-server: shared limits, fallback, recovery.

The tests start ``redis-server`` (Debian package ``redis-server``) on a free loopback
port and kill it at teardown. Without the binary they skip, or fail when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from chassis import Service
from chassis.config import RateLimitSettings
from chassis.ratelimit import RateLimiter, RedisLimiter
from chassis.ratelimit.redis import _close_redis, _open_redis
from tests.conftest import quick_settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

pytestmark = pytest.mark.slow


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"not installed: {what}")
    pytest.skip(f"not installed: {what}")


def require_redis_py() -> None:
    """Skip without the redis client library (fail on CI)."""
    if importlib.util.find_spec("redis") is None:
        _missing("redis-py (pip install 'aiochassis[redis]')")


def redis_binary() -> str:
    """The redis-server binary, and the client library; skip without them (fail on CI)."""
    require_redis_py()
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server (Debian package redis-server)")
    assert binary is not None
    return binary


@dataclass
class RedisServer:
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--daemonize",
                "yes",
                "--dir",
                str(self.directory),
                "--pidfile",
                str(self.directory / "redis.pid"),
                "--logfile",
                str(self.directory / "redis.log"),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            check=True,
            timeout=30,
        )
        deadline = time.monotonic() + 15
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")
                pytest.fail(f"redis-server did not answer on port {self.port}:\n{log}")
            time.sleep(0.02)

    def stop(self) -> None:
        pidfile = self.directory / "redis.pid"
        deadline = time.monotonic() + 5
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text().strip())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs; an exited daemon nobody reaped yet (a zombie) does not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stopped_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A port with no Redis on it yet; started by the test, stopped at teardown."""
    redis_binary()
    server = RedisServer(free_port(), tmp_path / "redis-later")
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def redis_client(url: str, timeout_seconds: float = 2.0) -> AsyncIterator[Redis]:
    client = _open_redis(url, timeout_seconds)
    try:
        yield client
    finally:
        await _close_redis(client)


def service_limiter(service: Service) -> RateLimiter:
    """The service's rate limiter: ``service.ratelimit`` once the Service builds one,
    else a new one installed here (outermost, which only makes exemptions stricter)."""
    existing = getattr(service, "ratelimit", None)
    if isinstance(existing, RateLimiter):
        return existing
    limiter = RateLimiter(
        service_name=service.name,
        registry=service.metrics.registry,
        lag_monitor=service.health.lag,
    )
    service.install(limiter)
    return limiter


def limited_service(url: str, **ratelimit: object) -> tuple[Service, RateLimiter]:
    settings = {
        "enabled": True,
        "redis_url": url,
        "redis_timeout_seconds": 2.0,
        "max_event_loop_lag_seconds": 60,  # a busy machine must not shed in this test
        **ratelimit,
    }
    service = Service("quotes", settings=quick_settings(ratelimit=settings))
    limiter = service_limiter(service)

    @service.get("/quote")
    async def quote(request: web.Request) -> web.Response:
        return web.json_response({"price": 1})

    return service, limiter


async def test_two_instances_sharing_redis_admit_the_shared_limit_not_twice_it(
    redis_server: RedisServer,
) -> None:
    rate, burst, per_instance = 0.5, 20, 40
    first, first_limiter = limited_service(
        redis_server.url, rate_per_second=rate, burst=burst, key="global"
    )
    second, second_limiter = limited_service(
        redis_server.url, rate_per_second=rate, burst=burst, key="global"
    )
    start = time.monotonic()
    async with (
        first.running(port=0) as a,
        second.running(port=0) as b,
        aiohttp.ClientSession() as http,
    ):

        async def status(url: str) -> int:
            async with http.get(url + "/quote") as response:
                return response.status

        statuses = await asyncio.gather(
            *(status(url) for _ in range(per_instance) for url in (a.url, b.url))
        )
    elapsed = time.monotonic() - start
    admitted = statuses.count(200)
    assert statuses.count(200) + statuses.count(429) == 2 * per_instance
    assert burst <= admitted <= burst + rate * elapsed + 1, (admitted, elapsed)
    assert first_limiter.redis_limiters == second_limiter.redis_limiters == []  # closed
    assert admitted < 2 * burst


async def test_redis_bucket_refills_by_time_and_expires_idle_keys(
    redis_server: RedisServer,
) -> None:
    async with redis_client(redis_server.url) as client:
        limiter = RedisLimiter(client, 20, burst=2, prefix="t:", timeout_seconds=2.0)
        assert [(await limiter.decide("k")).allowed for _ in range(3)] == [True, True, False]
        refused = await limiter.decide("k")
        assert 0 < refused.retry_after_seconds <= 0.05 + 1e-9
        assert refused.remaining == 0
        await asyncio.sleep(0.2)  # at least 4 tokens' worth; the bucket holds 2
        admitted = await limiter.decide("k")
        assert admitted.allowed
        assert admitted.remaining == 1
        ttl = await client.pttl("t:k")
        assert 0 < ttl <= 1100  # time to refill (100 ms) plus a second
        assert limiter.fallbacks == 0
        assert limiter.using_redis


async def test_unreachable_redis_falls_back_to_local_limits_then_recovers(
    stopped_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    registry = CollectorRegistry()
    settings = RateLimitSettings(
        enabled=True,
        rate_per_second=0.01,
        burst=2,
        key="global",
        redis_url=stopped_redis.url,  # type: ignore[arg-type]
        redis_timeout_seconds=2.0,
        redis_retry_interval_seconds=5.0,
    )
    limiter = RateLimiter(settings, service_name="quotes", registry=registry, clock=clock)
    app = web.Application()
    limiter.setup(app)

    async def quote(request: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_get("/quote", quote)
    caplog.set_level(logging.INFO, logger="chassis.ratelimit")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:

            async def status() -> int:
                async with http.get("/quote") as response:
                    return response.status

            # Redis is down: the local bucket still limits, and every decision is counted.
            assert [await status() for _ in range(5)] == [200, 200, 429, 429, 429]
            fallbacks = registry.get_sample_value("chassis_ratelimit_redis_fallbacks_total")
            assert fallbacks == 5
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1
            assert "limiting locally" in warnings[0].getMessage()
            assert "redis://" not in warnings[0].getMessage()

            # Redis comes up; nothing tries it before the retry interval is over.
            stopped_redis.start()
            await status()
            assert registry.get_sample_value("chassis_ratelimit_redis_fallbacks_total") == 6
            clock.advance(5.0)
            assert await status() == 200  # a fresh shared bucket in Redis
            assert await status() == 200
            assert await status() == 429
            assert registry.get_sample_value("chassis_ratelimit_redis_fallbacks_total") == 6
            assert any("reachable again" in r.getMessage() for r in caplog.records)
        async with redis_client(stopped_redis.url) as client:
            # the shared bucket of the global key ("*") of the service-wide limit
            assert await client.exists("chassis:ratelimit:quotes:service:*") == 1
    finally:
        await runner.cleanup()


class CountingServer:
    """A loopback TCP server that counts connections and answers nothing.

    ``mode="close"`` hangs up at once (Redis refusing); ``mode="silent"`` keeps the
    connection open without a byte (Redis hanging).
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "close":
            writer.close()
        else:
            self._writers.append(writer)

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._writers:
            writer.close()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.mark.parametrize("mode", ["close", "silent"])
async def test_failing_redis_is_retried_by_one_call_per_interval_not_hammered(mode: str) -> None:
    require_redis_py()
    clock = FakeClock()
    server = CountingServer(mode)
    async with server as url, redis_client(url, timeout_seconds=0.05) as client:
        limiter = RedisLimiter(
            client,
            0.01,
            burst=3,
            timeout_seconds=0.05,
            retry_interval_seconds=10.0,
            clock=clock,
        )
        decisions = [await limiter.decide("k") for _ in range(100)]
        assert [d.allowed for d in decisions[:4]] == [True, True, True, False]
        assert limiter.fallbacks == 100
        assert not limiter.using_redis
        assert server.connections == 1
        clock.advance(10.0)
        # Many calls at once after the interval: exactly one of them tries Redis.
        await asyncio.gather(*(limiter.decide("k") for _ in range(50)))
        assert server.connections == 2
        assert limiter.fallbacks == 150
