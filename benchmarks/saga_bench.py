"""End-to-end benchmark: SimpleBank order sagas per second through the gateway.

Customers sign up, log in and deposit through the gateway; then one worker per
customer places orders (buy 1 VTI, then sell it, and so on) and follows each with
waiting reads, ``GET /orders/{id}?version=V&wait_seconds=N``, which answer when the
order changes (``--wait-seconds 0``: polls every ``--poll-interval`` instead), until
it is FILLED or FAILED. A saga is *completed* when that terminal state is observed;
its latency runs from the ``POST /orders`` to that observation. Each round also counts,
from every service's ``/metrics``, the requests served (by service and route) and the
event deliveries per saga. Two deployments:

* ``embedded``: ``apps/simplebank_embedded.py``, the ten services and the exchange
  stand-in in one process with the demo's defaults (what ``python -m simplebank
  demo`` runs: SQLite, in-memory events, static discovery). The load runs in this
  script's process, never on the server's event loop.
* ``multiprocess``: each service a ``python -m chassis run simplebank.<module>:create``
  process configured by ``CHASSIS_*`` variables, Consul discovery (the chassis'
  stand-in, ``python -m simplebank consul``), the exchange stand-in in its own
  process, and a real RabbitMQ broker (Debian ``rabbitmq-server``, started here on
  free loopback ports unless ``--amqp-url`` names one).

Every round is bounded: ``--orders`` sagas at most, no new order after
``--duration`` seconds, and every order must end within ``--order-timeout`` seconds.
After the last round the bank is left to settle and SimpleBank's invariants are
checked. The script prints a table and writes ``benchmarks/results/saga-<UTC>.json``
(or ``--json PATH``)::

    python benchmarks/saga_bench.py                      # both modes, 3 rounds each
    python benchmarks/saga_bench.py --mode embedded --rounds 5
    python benchmarks/saga_bench.py --quick              # a tiny embedded run
    nox -s bench -- saga --rounds 5                     # via nox (see noxfile.py)

Needs the chassis with its ``rabbitmq`` extra and ``examples/simplebank`` installed;
Linux only (it reads ``/proc``). How to read the figures: ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
EMBEDDED_APP = HERE / "apps" / "simplebank_embedded.py"
HOST = "127.0.0.1"
MODES = ("embedded", "multiprocess")
TERMINAL = ("FILLED", "FAILED")

MAX_ROUNDS = 20
MAX_DURATION_SECONDS = 600
MAX_CUSTOMERS = 1000
MAX_ORDERS = 1_000_000
READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 60.0
DEPOSIT_CENTS = 100_000_000  # $1,000,000 each: a buy of 1 VTI never runs short
SYMBOL = "VTI"
SETUP_ATTEMPTS = 5
SETUP_CONCURRENCY = 4  # sign-ups hash passwords (scrypt): a few at a time


class BenchError(Exception):
    """The benchmark could not run (a server did not start, a setup call failed)."""


# -- measuring --------------------------------------------------------------------------


@dataclass
class Round:
    """One measured round of load."""

    seconds: float = 0.0
    placed: int = 0
    filled: int = 0
    failed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    timed_out: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    server_cpu_seconds: float | None = None
    counts: dict[str, float] = field(default_factory=dict)

    @property
    def completed(self) -> int:
        return self.filled + self.failed

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "seconds": round(self.seconds, 3),
            "placed": self.placed,
            "completed": self.completed,
            "filled": self.filled,
            "failed": self.failed,
            "rejected": self.rejected,
            "timed_out": self.timed_out,
            "failures": self.failures,
            "sagas_per_second": self.completed / self.seconds if self.seconds else 0.0,
            "filled_per_second": self.filled / self.seconds if self.seconds else 0.0,
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "max_ms": lat[-1] if lat else None,
            "server_cpu_seconds": self.server_cpu_seconds,
            "server_cpu_ms_per_saga": 1000 * self.server_cpu_seconds / self.completed
            if self.server_cpu_seconds is not None and self.completed
            else None,
            "server_cores": self.server_cpu_seconds / self.seconds
            if self.server_cpu_seconds is not None and self.seconds
            else None,
            "requests_per_saga": self.per_saga(" event ", exclude=True),
            "events_per_saga": self.per_saga(" event "),
            "per_saga": {
                key: round(value / self.completed, 2)
                for key, value in sorted(self.counts.items())
                if self.completed
            },
        }

    def per_saga(self, marker: str, *, exclude: bool = False) -> float | None:
        """Counted samples whose key has (or, ``exclude``, lacks) ``marker``, per saga."""
        if not self.completed or not self.counts:
            return None
        total = sum(v for k, v in self.counts.items() if (marker in k) != exclude)
        return total / self.completed


def percentile(ordered: Sequence[float], pct: float) -> float | None:
    """The nearest-rank percentile of an ascending list (None when empty)."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def cpu_seconds(pids: Sequence[int]) -> float | None:
    """User plus system CPU time of ``pids`` so far (None if one cannot be read)."""
    total = 0.0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class Customer:
    """A customer of the public API, driven through the gateway."""

    def __init__(self, session: aiohttp.ClientSession, gateway: str, n: int) -> None:
        self.session = session
        self.gateway = gateway
        self.email = f"bench-{n}-{secrets.token_hex(4)}@example.com"
        self.headers: dict[str, str] = {}
        self.shares = 0

    async def call(
        self, method: str, path: str, json_body: Any = None, expect: int = 200
    ) -> tuple[int, Any]:
        async with self.session.request(
            method, self.gateway + path, json=json_body, headers=self.headers
        ) as response:
            body = await response.json(content_type=None)
            return response.status, body

    async def setup(self) -> None:
        me = {"email": self.email, "password": "a long bench password", "name": "Bench"}
        for method, path, body, want in (
            ("POST", "/signup", me, 201),
            ("POST", "/login", {k: me[k] for k in ("email", "password")}, 200),
            ("POST", "/deposits", {"amount_cents": DEPOSIT_CENTS}, 201),
        ):
            for _attempt in range(SETUP_ATTEMPTS):  # a busy machine may time a call out
                status, answer = await self.call(method, path, body)
                # A sign-up whose own read-back failed (404) or timed out may have
                # happened: the next attempt answers 409, taken as done below.
                if status < 500 and not (path == "/signup" and status == 404):
                    break
                await asyncio.sleep(1.0)
            if path == "/signup" and status == 409:
                continue  # an earlier attempt did sign up after all
            if status != want:
                raise BenchError(f"{method} {path} answered {status}: {answer}")
            if path == "/login":
                self.headers = {"Authorization": f"Bearer {answer['access_token']}"}


@dataclass
class Load:
    """How hard and how long one round pushes."""

    orders: int
    duration: float
    poll_interval: float
    order_timeout: float
    wait_seconds: float = 0.0


async def worker(customer: Customer, load: Load, result: Round, budget: list[int]) -> None:
    """Orders one at a time until the budget or the time is spent (a sell after a buy)."""
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + load.duration
    while budget[0] > 0 and loop.time() < stop_at:
        budget[0] -= 1
        side = "sell" if customer.shares > 0 else "buy"
        started = loop.time()
        status, body = await customer.call(
            "POST", "/orders", {"side": side, "symbol": SYMBOL, "quantity": 1}
        )
        if status != 202:
            kind = body.get("type", "").rpartition("/")[2] if isinstance(body, dict) else ""
            key = f"{status} {kind}".strip()
            result.rejected[key] = result.rejected.get(key, 0) + 1
            await asyncio.sleep(load.poll_interval)
            continue
        result.placed += 1
        path = f"/orders/{body['order_id']}"
        give_up = started + load.order_timeout
        state = body["state"]
        while state not in TERMINAL and loop.time() < give_up:
            if load.wait_seconds:  # a waiting read: answers when the version moves on
                wait = min(load.wait_seconds, max(0.0, give_up - loop.time()))
                status, answer = await customer.call(
                    "GET", f"{path}?version={body['version']}&wait_seconds={wait:.3f}"
                )
            else:
                await asyncio.sleep(load.poll_interval)
                status, answer = await customer.call("GET", path)
            if status == 200:
                body, state = answer, answer["state"]
            elif load.wait_seconds:
                await asyncio.sleep(load.poll_interval)  # an error: do not spin on it
        if state not in TERMINAL:
            result.timed_out += 1
            continue
        result.latencies_ms.append(1000 * (loop.time() - started))
        if state == "FILLED":
            result.filled += 1
            customer.shares += 1 if side == "buy" else -1
        else:
            result.failed += 1
            why = f"{body.get('failed_step')}: {body.get('failure_reason')}"
            result.failures[why] = result.failures.get(why, 0) + 1


COUNTED = ("http_server_request_duration_seconds_count", "events_consumed_total")
"""The /metrics samples counted per saga (requests served, event deliveries handled)."""


async def scrape(session: aiohttp.ClientSession, urls: dict[str, str]) -> dict[str, float]:
    """Requests served (by service, method, route) and events consumed, summed so far."""
    counts: dict[str, float] = {}
    for name, url in urls.items():
        if name == "exchange":
            continue
        async with session.get(url + "/metrics") as response:
            text = await response.text()
        for line in text.splitlines():
            metric, _, rest = line.partition("{")
            if metric not in COUNTED:
                continue
            labels, _, value = rest.rpartition("} ")
            found = {k: v.strip('"') for k, _, v in (p.partition("=") for p in labels.split(","))}
            if found.get("route") == "/metrics":
                continue
            if metric.startswith("http"):
                key = f"{name} {found.get('method')} {found.get('route')}"
            else:
                key = f"{name} event {found.get('type')}"
            counts[key] = counts.get(key, 0.0) + float(value)
    return counts


async def run_round(
    customers: Sequence[Customer], load: Load, pids: Sequence[int], urls: dict[str, str]
) -> Round:
    result = Round()
    budget = [load.orders]
    session = customers[0].session
    counts_before = await scrape(session, urls)
    cpu_before = cpu_seconds(pids)
    started = time.perf_counter()
    await asyncio.gather(*(worker(c, load, result, budget) for c in customers))
    result.seconds = time.perf_counter() - started
    cpu_after = cpu_seconds(pids)
    if cpu_before is not None and cpu_after is not None:
        result.server_cpu_seconds = cpu_after - cpu_before
    counts_after = await scrape(session, urls)
    for key, value in counts_after.items():
        if value - counts_before.get(key, 0.0) > 0:
            result.counts[key] = value - counts_before.get(key, 0.0)
    return result


async def drive(
    urls: dict[str, str],
    pids: Sequence[int],
    *,
    customers: int,
    rounds: int,
    load: Load,
    warmup: int,
) -> list[Round]:
    """Set the customers up, warm up, then run ``rounds`` measured rounds."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=load.order_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        people = [Customer(session, urls["gateway"], n) for n in range(customers)]
        for start in range(0, customers, SETUP_CONCURRENCY):
            batch = people[start : start + SETUP_CONCURRENCY]
            await asyncio.gather(*(c.setup() for c in batch))
        print(f"  {customers} customers ready; warming up", flush=True)
        if warmup:
            warm = Load(warmup, load.duration, load.poll_interval, 60.0, load.wait_seconds)
            await run_round(people, warm, pids, urls)
        results = []
        for n in range(rounds):
            print(f"  round {n + 1} of {rounds}", flush=True)
            results.append(await run_round(people, load, pids, urls))
        return results


# -- processes --------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def clean_env(event_loop: str = "asyncio") -> dict[str, str]:
    """This environment without CHASSIS_* and OTEL_* (the servers get theirs from here),
    with the servers' event loop (``CHASSIS_RUNTIME__EVENT_LOOP``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHASSIS_", "OTEL_"))}
    env["CHASSIS_RUNTIME__EVENT_LOOP"] = event_loop
    return env


@contextlib.contextmanager
def children() -> Iterator[list[subprocess.Popen[Any]]]:
    """Processes started in the block get SIGTERM at its end, SIGKILL if they linger."""
    started: list[subprocess.Popen[Any]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for proc in started:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_until(what: str, ready: Any, procs: Sequence[subprocess.Popen[Any]], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while not ready():
        dead = [p for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise BenchError(f"{what} did not start:\n{tail}")
        time.sleep(0.1)


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200 and json.loads(response.read()))
    except (OSError, ValueError):
        return False


@contextlib.asynccontextmanager
async def embedded(
    work: Path, event_loop: str
) -> AsyncIterator[tuple[dict[str, str], list[int], dict[str, Any]]]:
    """The demo's one-process bank; yields its URLs, server pids, a dict for its verdict."""
    verdict: dict[str, Any] = {}
    log = work / "embedded.log"
    with children() as procs, log.open("wb") as err:
        cmd = [sys.executable, str(EMBEDDED_APP), str(work / "data")]
        spawn = {
            "env": clean_env(event_loop),
            "stdout": subprocess.PIPE,
            "stderr": err,
            "text": True,
        }
        proc = await asyncio.to_thread(subprocess.Popen, cmd, **spawn)
        procs.append(proc)
        assert proc.stdout is not None
        line = await asyncio.wait_for(
            asyncio.to_thread(proc.stdout.readline), READY_TIMEOUT_SECONDS
        )
        if not line:
            raise BenchError("the embedded bank did not start:\n" + log.read_text()[-3000:])
        urls = json.loads(line)["urls"]
        yield urls, [proc.pid], verdict
        proc.terminate()
        out = await asyncio.to_thread(_read_rest, proc.stdout)
        verdict.update(json.loads(out.strip().splitlines()[-1]) if out.strip() else {})


def _read_rest(stream: IO[str]) -> str:
    return stream.read()


def start_rabbitmq(work: Path, procs: list[subprocess.Popen[Any]]) -> str:
    """A private broker on free loopback ports (Debian's script); its AMQP URL."""
    script = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    if not script.exists():
        found = shutil.which("rabbitmq-server")
        if found is None or shutil.which("epmd") is None:
            raise BenchError("rabbitmq-server is not installed (Debian: rabbitmq-server)")
        script = Path(found)
    port, dist, epmd = free_ports(3)
    home = work / "rabbitmq"
    home.mkdir()
    (home / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = {HOST}:{port}\ndistribution.listener.interface = {HOST}\n"
        "log.console = false\n"
    )
    (home / "enabled_plugins").write_text("[].\n")
    (home / "rabbitmq-env.conf").write_text("")
    user = None
    if os.geteuid() == 0:
        import pwd

        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam("rabbitmq")
            user = "rabbitmq"
            for path in [work, home, *home.iterdir()]:
                os.chown(path, entry.pw_uid, entry.pw_gid)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
    env.update(
        HOME=str(home),
        RABBITMQ_NODENAME="rabbit@localhost",
        RABBITMQ_CONF_ENV_FILE=str(home / "rabbitmq-env.conf"),
        RABBITMQ_CONFIG_FILE=str(home / "rabbitmq.conf"),
        RABBITMQ_ADVANCED_CONFIG_FILE=str(home / "advanced.config"),
        RABBITMQ_ENABLED_PLUGINS_FILE=str(home / "enabled_plugins"),
        RABBITMQ_MNESIA_BASE=str(home / "mnesia"),
        RABBITMQ_LOG_BASE=str(home / "log"),
        RABBITMQ_PID_FILE=str(home / "rabbit.pid"),
        RABBITMQ_DIST_PORT=str(dist),
        ERL_EPMD_PORT=str(epmd),
        ERL_EPMD_ADDRESS=HOST,
    )
    log = home / "console.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(script)],
            cwd=home,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
    procs.append(proc)

    def answers() -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=2) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return sock.recv(1) == b"\x01"
        except OSError:
            return False

    wait_until("rabbitmq-server", answers, [proc], log)
    return f"amqp://guest:guest@{HOST}:{port}/"


def service_env(
    name: str, data: Path, consul: str, amqp: str, secret: str, event_loop: str
) -> dict[str, str]:
    """The demo's settings as ``CHASSIS_*`` variables, with Consul and RabbitMQ."""
    env = clean_env(event_loop)
    env.update(
        {
            "CHASSIS_DISCOVERY__BACKEND": "consul",
            "CHASSIS_DISCOVERY__CONSUL_ADDR": consul,
            "CHASSIS_EVENTS__BACKEND": "rabbitmq",
            "CHASSIS_EVENTS__URL": amqp,
            "CHASSIS_EVENTS__RETRY_INITIAL_SECONDS": "0.1",
            "CHASSIS_EVENTS__RETRY_MAX_SECONDS": "1",
            "CHASSIS_EVENTS__MAX_ATTEMPTS": "50",
            "CHASSIS_CLIENT__BREAKER_RECOVERY_SECONDS": "1",
            "CHASSIS_CLIENT__BACKOFF_MAX_SECONDS": "0.5",
            "CHASSIS_AUTH__TOKEN_SECRET": secret,
            "CHASSIS_DATABASE__PATH": str(data / f"{name}.db"),
            "CHASSIS_HEALTH__DRAIN_DELAY_SECONDS": "0",
            "CHASSIS_LOG__LEVEL": "ERROR",
            "CHASSIS_LOG__ACCESS_LOG": "false",
        }
    )
    return env


@contextlib.asynccontextmanager
async def multiprocess(
    work: Path, amqp_url: str | None, event_loop: str
) -> AsyncIterator[tuple[dict[str, str], list[int], dict[str, Any]]]:
    """One process per service; yields their URLs, server pids, a dict for the verdict."""
    verdict: dict[str, Any] = {}
    with children() as procs:
        urls, pids = await asyncio.to_thread(start_services, work, amqp_url, procs, event_loop)
        yield urls, pids, verdict
        verdict.update(await _settled_invariants(urls))


def start_services(
    work: Path, amqp_url: str | None, procs: list[subprocess.Popen[Any]], event_loop: str
) -> tuple[dict[str, str], list[int]]:
    """Broker, Consul stand-in, exchange and every service; their URLs and pids."""
    from simplebank.services import SERVICES

    data = work / "data"
    data.mkdir()
    amqp = amqp_url or start_rabbitmq(work, procs)
    consul_port, exchange_port, *ports = free_ports(2 + len(SERVICES))
    consul = f"http://{HOST}:{consul_port}"
    bank = [sys.executable, "-m", "simplebank"]
    log = work / "services.log"
    with log.open("ab") as out:
        spawn = {"env": clean_env(event_loop), "stdout": out, "stderr": subprocess.STDOUT}
        procs.append(subprocess.Popen([*bank, "consul", "--port", str(consul_port)], **spawn))
        pids = [procs[-1].pid]
        wait_until("consul stand-in", lambda: _answers(consul + "/v1/catalog/services"), procs, log)
        procs.append(
            subprocess.Popen(
                [*bank, "exchange", "--port", str(exchange_port), "--register", consul],
                **spawn,
            )
        )
        pids.append(procs[-1].pid)
        secret = secrets.token_urlsafe(32)
        urls = {}
        for (name, target), port in zip(SERVICES.items(), ports, strict=True):
            cmd = [sys.executable, "-m", "chassis", "run", target, "--port", str(port)]
            env = service_env(name, data, consul, amqp, secret, event_loop)
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
            pids.append(procs[-1].pid)
            urls[name] = f"http://{HOST}:{port}"
    for name in ["exchange", *SERVICES]:
        url = f"{consul}/v1/health/service/{name}?passing=true"
        wait_until(name, lambda u=url: _answers(u), procs, log)
    return urls, pids


async def _settled_invariants(urls: dict[str, str]) -> dict[str, Any]:
    """SimpleBank's invariants once the events settle (retried for up to 60 s)."""
    from simplebank.testing import check_invariants

    give_up = time.monotonic() + 60
    while True:
        report = await check_invariants(urls)
        if not report.violations or time.monotonic() > give_up:
            return {"violations": report.violations}
        await asyncio.sleep(0.5)


# -- the run ----------------------------------------------------------------------------


async def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    load = Load(
        args.orders, args.duration, args.poll_interval, args.order_timeout, args.wait_seconds
    )
    with tempfile.TemporaryDirectory(prefix=f"saga-bench-{mode}-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # the broker's user must reach its directory under it
        deployment = (
            embedded(work, args.event_loop)
            if mode == "embedded"
            else multiprocess(work, args.amqp_url, args.event_loop)
        )
        async with deployment as (urls, pids, verdict):
            rounds = await drive(
                urls,
                pids,
                customers=args.customers,
                rounds=args.rounds,
                load=load,
                warmup=args.warmup,
            )
    summaries = [r.summary() for r in rounds]
    return {
        "mode": mode,
        "server_processes": len(pids),
        "rounds": summaries,
        "median": {
            key: _median([s[key] for s in summaries])
            for key in (
                "sagas_per_second",
                "filled_per_second",
                "p50_ms",
                "p99_ms",
                "server_cpu_ms_per_saga",
                "server_cores",
                "requests_per_saga",
                "events_per_saga",
            )
        },
        "totals": {
            key: sum(s[key] for s in summaries)
            for key in ("placed", "completed", "filled", "failed", "timed_out")
        },
        "violations": verdict.get("violations", ["no verdict: the bank did not report"]),
    }


def _median(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(result: dict[str, Any]) -> str:
    head = (
        f"{'mode':<13}{'round':>6}{'sagas/s':>9}{'FILLED':>8}{'FAILED':>8}{'rejected':>9}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/saga':>12}{'cores':>7}{'req/saga':>9}"
    )
    lines = [head, "-" * len(head)]
    for mode in result["modes"]:
        rows = [(str(n + 1), r) for n, r in enumerate(mode["rounds"])]
        rows.append(("median", {**mode["median"], "filled": None, "failed": None}))
        for label, r in rows:
            rejected = sum(r["rejected"].values()) if "rejected" in r else None
            lines.append(
                f"{mode['mode']:<13}{label:>6}{_fmt(r['sagas_per_second'], '.1f'):>9}"
                f"{_fmt(r['filled'], 'd'):>8}{_fmt(r['failed'], 'd'):>8}"
                f"{_fmt(rejected, 'd'):>9}{_fmt(r['p50_ms'], '.0f'):>9}"
                f"{_fmt(r['p99_ms'], '.0f'):>9}{_fmt(r['server_cpu_ms_per_saga'], '.1f'):>12}"
                f"{_fmt(r['server_cores'], '.2f'):>7}"
                f"{_fmt(r['requests_per_saga'], '.1f'):>9}"
            )
        held = "held" if not mode["violations"] else f"BROKEN: {mode['violations']}"
        lines.append(f"{'':<13}invariants {held}; timed out: {mode['totals']['timed_out']}")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    loadavg = Path("/proc/loadavg")
    return {
        "cpu_count": os.cpu_count(),
        "system": platform.platform(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "loadavg_before": loadavg.read_text().split()[:3] if loadavg.exists() else [],
    }


def _bounded(low: float, high: float, kind: type = int) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saga_bench.py", description="SimpleBank sagas/s and order latency, end to end."
    )
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both")
    parser.add_argument(
        "--customers",
        type=_bounded(1, MAX_CUSTOMERS),
        default=64,
        help="customers, each with one order in flight (default 64)",
    )
    parser.add_argument(
        "--orders",
        type=_bounded(1, MAX_ORDERS),
        default=4000,
        help="at most this many orders per round (default 4000)",
    )
    parser.add_argument(
        "--duration",
        type=_bounded(1, MAX_DURATION_SECONDS, float),
        default=15.0,
        help="no new order after this many seconds of a round (default 15)",
    )
    parser.add_argument("--rounds", type=_bounded(1, MAX_ROUNDS), default=3)
    parser.add_argument(
        "--warmup",
        type=_bounded(0, MAX_ORDERS),
        default=200,
        help="orders before the measured rounds (default 200)",
    )
    parser.add_argument(
        "--wait-seconds",
        type=_bounded(0, 10, float),
        default=10.0,
        help="follow an order with waiting reads, GET /orders/{id}?version=V&wait_seconds=N,"
        " that answer when it changes (default 10); 0: poll every --poll-interval instead",
    )
    parser.add_argument(
        "--poll-interval",
        type=_bounded(0.001, 5.0, float),
        default=0.05,
        help="with --wait-seconds 0, seconds between two GET /orders/{id} (default 0.05)",
    )
    parser.add_argument(
        "--order-timeout",
        type=_bounded(1, 600, float),
        default=60.0,
        help="an order not terminal after this long counts as timed out",
    )
    parser.add_argument("--amqp-url", help="use this RabbitMQ instead of starting one")
    parser.add_argument(
        "--event-loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="the servers' event loop (CHASSIS_RUNTIME__EVENT_LOOP; uvloop needs the extra)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny embedded run: 8 customers, 1 round of at most 60 orders",
    )
    parser.add_argument("--json", type=Path, help="where to write the result")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.customers, args.orders = min(args.customers, 8), min(args.orders, 60)
        args.rounds, args.warmup = 1, 0
        args.duration = min(args.duration, 10.0)
        if args.mode == "both":
            args.mode = "embedded"
    modes = MODES if args.mode == "both" else (args.mode,)
    result: dict[str, Any] = {
        "benchmark": "saga",
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
        "machine": machine_info(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "amqp_url")},
        "modes": [],
    }
    try:
        for mode in modes:
            print(f"saga bench: {mode} ...", flush=True)
            result["modes"].append(asyncio.run(run_mode(mode, args)))
    except BenchError as exc:
        print(f"saga bench: {exc}", file=sys.stderr)
        return 1
    path = args.json or RESULTS_DIR / f"saga-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"written: {path}")
    broken = any(mode["violations"] for mode in result["modes"])
    return 1 if broken else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
