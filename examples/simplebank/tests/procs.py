"""SimpleBank's services as real processes: one ``python -m chassis run`` each.

Shared by the per-process test, the chaos suite and the multi-host test. Each service
is configured only by ``CHASSIS_*`` variables (:func:`environment`), logs to a file of
its own (appended to across restarts) and is stopped by a signal::

    env = environment("accounts", data_dir, consul=consul.url, amqp=broker.url, secret=key)
    accounts = await start("accounts", env, log_dir=tmp_path)
    await accounts.wait_ready(consul.url)       # answering, and passing in Consul
    await accounts.stop(signal.SIGKILL)         # or SIGTERM: a graceful drain

:class:`Fleet` runs the whole bank that way, and restarts its services one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from simplebank.services import SERVICES, free_ports

__all__ = ["Fleet", "ServiceProcess", "environment", "processes", "start"]

READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 30.0


def environment(
    name: str,
    data_dir: Path,
    *,
    consul: str,
    amqp: str,
    secret: str,
    consul_token: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of service ``name``: this process' minus any ``CHASSIS_*``/``OTEL_*``.

    Consul discovery at ``consul``, RabbitMQ events at ``amqp``, the shared token
    ``secret``, a SQLite file ``<data_dir>/<name>.db``, quiet logs; ``extra`` last.
    """
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
            "CHASSIS_DATABASE__PATH": str(data_dir / f"{name}.db"),
            "CHASSIS_HEALTH__DRAIN_DELAY_SECONDS": "0",
            "CHASSIS_LOG__LEVEL": "WARNING",
            "CHASSIS_LOG__ACCESS_LOG": "false",
            "CHASSIS_TRACING__ENABLED": "false",
        }
    )
    if consul_token is not None:
        env["CHASSIS_DISCOVERY__CONSUL_TOKEN"] = consul_token
    env.update(extra or {})
    return env


@dataclass
class ServiceProcess:
    """One running (or exited) service process."""

    name: str
    port: int
    log_path: Path
    process: asyncio.subprocess.Process
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """Send ``sig`` and wait for the exit (SIGKILL after ``timeout``); the exit code."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:  # Python 3.10: not the built-in
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            return await self.process.wait()

    async def wait_ready(
        self,
        consul: str | None = None,
        *,
        consul_token: str | None = None,
        timeout: float = READY_TIMEOUT_SECONDS,
    ) -> None:
        """Until ``/health/ready`` answers ``pass`` (every check, the broker's included)
        and, with ``consul``, Consul lists this instance with a passing check (bounded
        by ``timeout``).

        Raises:
            RuntimeError: the process exited, or it is not ready in time.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        headers = {"X-Consul-Token": consul_token} if consul_token else {}
        probe = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=probe) as session:
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(
                        f"{self.name} exited {self.process.returncode}:\n{self.log_tail()}"
                    )
                if await self._ready(session, consul, headers):
                    return
                if loop.time() > give_up:
                    raise RuntimeError(f"{self.name} not ready after {timeout:g} s")
                await asyncio.sleep(0.1)

    async def _ready(
        self, session: aiohttp.ClientSession, consul: str | None, headers: dict[str, str]
    ) -> bool:
        try:
            async with session.get(self.url + "/health/ready") as response:
                # "pass", not just 200: a "degraded" service is ready without its broker
                # (non-critical), and events published before its queue is bound on the
                # broker's first start are not routed to it.
                if response.status != 200 or (await response.json())["status"] != "pass":
                    return False
            if consul is None:
                return True
            url = f"{consul}/v1/health/service/{self.name}?passing=true"
            async with session.get(url, headers=headers) as response:
                if response.status != 200:
                    return False
                entries = await response.json()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False
        return any(entry["Service"]["Port"] == self.port for entry in entries)


async def start(
    name: str,
    env: Mapping[str, str],
    *,
    log_dir: Path,
    port: int | None = None,
    target: str | None = None,
    host: str = "127.0.0.1",
) -> ServiceProcess:
    """Start ``python -m chassis run <target> --port <port>`` for service ``name``.

    ``target`` defaults to the service's factory (:data:`simplebank.services.SERVICES`);
    ``port`` to a free one. Output goes to ``<log_dir>/<name>.log`` (appended).
    """
    port = port or free_ports(1, host)[0]
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chassis",
            "run",
            target or SERVICES[name],
            "--host",
            host,
            "--port",
            str(port),
            env=dict(env),
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    return ServiceProcess(name=name, port=port, log_path=log_path, process=process, host=host)


@dataclass
class Fleet:
    """Every SimpleBank service in a process of its own, sharing one token secret."""

    data_dir: Path
    consul: str
    amqp: str
    consul_token: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    names: tuple[str, ...] = tuple(SERVICES)
    running: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def urls(self) -> dict[str, str]:
        """Service name -> base URL of its current process."""
        return {name: proc.url for name, proc in self.running.items()}

    def env(self, name: str) -> dict[str, str]:
        return environment(
            name,
            self.data_dir,
            consul=self.consul,
            amqp=self.amqp,
            secret=self.secret,
            consul_token=self.consul_token,
            extra=self.extra_env,
        )

    async def start(self, name: str, port: int | None = None) -> ServiceProcess:
        """Start (another process of) ``name``; it is not waited for."""
        return await start(name, self.env(name), log_dir=self.data_dir, port=port)

    async def wait_ready(self, proc: ServiceProcess) -> None:
        await proc.wait_ready(self.consul, consul_token=self.consul_token)

    async def start_all(self) -> None:
        """Start every service and wait until each is ready and passing in Consul."""
        ports = dict(zip(self.names, free_ports(len(self.names)), strict=True))
        for name in self.names:
            self.running[name] = await self.start(name, ports[name])
        for name in self.names:
            await self.wait_ready(self.running[name])

    async def restart(self, name: str, sig: int = signal.SIGTERM) -> ServiceProcess:
        """Stop ``name`` with ``sig``, start it again on the same port, wait until ready."""
        old = self.running[name]
        await old.stop(sig)
        new = await self.start(name, old.port)
        self.running[name] = new
        await self.wait_ready(new)
        return new

    async def replace(
        self, name: str, on_ready: Callable[[ServiceProcess], None] | None = None
    ) -> ServiceProcess:
        """A rolling restart's step: a new process on a new port, ready and passing in
        Consul, then (after ``on_ready(new)``) SIGTERM to the old one, which drains:
        deregisters, finishes what it was doing, exits."""
        old = self.running[name]
        new = await self.start(name)
        await self.wait_ready(new)
        self.running[name] = new
        if on_ready is not None:
            on_ready(new)
        code = await old.stop(signal.SIGTERM)
        if code != 0:
            raise RuntimeError(f"{name} exited {code} on SIGTERM:\n{old.log_tail()}")
        return new

    async def aclose(self) -> None:
        """SIGTERM every process (SIGKILL whichever does not exit in time)."""
        await asyncio.gather(*(proc.stop() for proc in self.running.values()))

    def logs(self) -> Iterable[Path]:
        return sorted(self.data_dir.glob("*.log"))


@contextlib.asynccontextmanager
async def processes(
    data_dir: Path, consul: str, amqp: str, *, consul_token: str | None = None
) -> AsyncIterator[Fleet]:
    """The whole bank, one process per service, ready; stopped on the way out."""
    fleet = Fleet(data_dir, consul, amqp, consul_token=consul_token)
    try:
        await fleet.start_all()
        yield fleet
    finally:
        await fleet.aclose()
