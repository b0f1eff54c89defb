"""Client overhead benchmark: ``ServiceClient`` against a bare aiohttp ``ClientSession``.

One run starts ``apps/bare_app.py`` (aiohttp alone, ``GET /hello`` returns a small
JSON document) as a subprocess on 127.0.0.1, pinned to CPU 1 with ``taskset``, and
pins itself to CPU 0. Then, in the same process and event loop, it sends ``--requests``
requests with ``--concurrency`` workers through each of:

* **bare**: one ``aiohttp.ClientSession``, ``async with session.get(url)`` and
  ``await response.read()``;
* **client**: a :class:`chassis.client.ServiceClient` over static discovery with
  every stage on: deadline and per-attempt timeout, bulkhead, retries with a retry
  budget, load balancing, a circuit breaker per instance (closed throughout),
  ``X-Request-ID``/deadline headers, a span per attempt (``--tracer``) and the
  ``http_client_*`` metrics on a Prometheus registry.

Rounds alternate (bare, client, then client, bare, ...) so drift on a busy machine
hits both alike. The report gives requests/s and client-process CPU per request of
each, their ratios (median over rounds), and the pipeline's overhead in µs per call;
``--profile`` adds where the client's time goes. A JSON file with everything is
written to ``benchmarks/results/``.

Usage::

    python benchmarks/client_bench.py                  # 5 rounds of 5000 requests
    python benchmarks/client_bench.py --quick          # a short smoke run
    python benchmarks/client_bench.py --tracer sdk     # spans recorded by an SDK provider
    python benchmarks/client_bench.py --profile        # top functions of the client rounds

Needs the chassis (installed), the standard library and ``taskset``. Linux only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import io
import json
import os
import platform
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
HOST = "127.0.0.1"
ROUTE = "/hello"
SERVER_CPU = 1
CLIENT_CPU = 0
UPSTREAM = "bench-upstream"
TARGET_RATIO = 0.70

MAX_REQUESTS = 1_000_000
MAX_ROUNDS = 50
MAX_CONCURRENCY = 1_000
ROUND_TIMEOUT_SECONDS = 300.0
READY_TIMEOUT_SECONDS = 30.0


class BenchError(Exception):
    """The benchmark could not run."""


@dataclass
class Round:
    """One measured run of one side."""

    side: str
    requests: int
    seconds: float
    cpu_seconds: float
    errors: int

    @property
    def rps(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        """CPU time of this process per request, in microseconds."""
        return self.cpu_seconds / self.requests * 1e6


@dataclass
class Report:
    """Everything a run measured."""

    started_at: str
    python: str
    aiohttp: str
    machine: str
    cpus: int
    requests: int
    concurrency: int
    tracer: str
    rounds: list[dict[str, Any]] = field(default_factory=list)
    rps_ratio_median: float = 0.0
    rps_ratio_quartiles: tuple[float, float] = (0.0, 0.0)
    cpu_ratio_median: float = 0.0
    overhead_us_per_call: float = 0.0
    bare_cpu_us_per_request: float = 0.0
    client_cpu_us_per_request: float = 0.0
    profile_top: str = ""


# -- the upstream -----------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def upstream_server() -> Iterator[str]:
    """Run ``apps/bare_app.py`` pinned to ``SERVER_CPU``; yield its base URL."""
    if shutil.which("taskset") is None:
        raise BenchError("taskset not found (Debian: apt-get install util-linux)")
    port = free_port()
    cmd = [
        "taskset",
        "-c",
        str(SERVER_CPU),
        sys.executable,
        str(HERE / "apps" / "bare_app.py"),
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            if proc.poll() is not None:
                raise BenchError(f"the upstream exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(url + ROUTE, timeout=1.0) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError("the upstream did not answer in time") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- the two sides ------------------------------------------------------------------------
async def drive(
    call: Callable[[], Awaitable[None]], requests: int, concurrency: int, side: str
) -> Round:
    """Send ``requests`` calls with ``concurrency`` workers; bounded by ROUND_TIMEOUT_SECONDS."""
    remaining = requests
    errors = 0

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            try:
                await call()
            except Exception:
                errors += 1

    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(worker() for _ in range(concurrency))), ROUND_TIMEOUT_SECONDS
    )
    seconds = time.perf_counter() - start
    return Round(side, requests, seconds, time.process_time() - cpu, errors)


def make_tracer(kind: str) -> tuple[Any, Callable[[], None]]:
    """The tracer of the client side and how to shut it down."""
    from opentelemetry import trace

    if kind == "none":
        return trace.NoOpTracer(), lambda: None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    return provider.get_tracer("client-bench"), provider.shutdown


async def run(args: argparse.Namespace, url: str) -> Report:
    """Warm up, then alternate measured rounds of both sides."""
    from prometheus_client import CollectorRegistry

    from chassis.client import ServiceClient
    from chassis.config import ClientSettings
    from chassis.discovery.static import StaticRegistry

    tracer, stop_tracer = make_tracer(args.tracer)
    settings = ClientSettings(
        bulkhead_max_concurrency=max(100, args.concurrency),
        load_balancer=args.balancer,
    )
    client = ServiceClient(
        UPSTREAM,
        registry=StaticRegistry({UPSTREAM: [url]}),
        settings=settings,
        metrics=CollectorRegistry(),
        tracer=tracer,
    )
    bare = aiohttp.ClientSession()
    target = url + ROUTE

    async def bare_call() -> None:
        async with bare.get(target) as response:
            await response.read()
            if response.status != 200:
                raise BenchError(f"bare: {response.status}")

    async def client_call() -> None:
        response = await client.get(ROUTE)
        if response.status != 200:
            raise BenchError(f"client: {response.status}")

    report = Report(
        started_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        python=platform.python_version(),
        aiohttp=aiohttp.__version__,
        machine=platform.machine(),
        cpus=os.cpu_count() or 0,
        requests=args.requests,
        concurrency=args.concurrency,
        tracer=args.tracer,
    )
    profiler = cProfile.Profile() if args.profile else None
    try:
        warm = max(200, args.requests // 10)
        await drive(bare_call, warm, args.concurrency, "bare")
        await drive(client_call, warm, args.concurrency, "client")
        pairs: list[tuple[Round, Round]] = []
        for i in range(args.rounds):
            order = ("bare", "client") if i % 2 == 0 else ("client", "bare")
            done: dict[str, Round] = {}
            for side in order:
                if side == "bare":
                    done[side] = await drive(bare_call, args.requests, args.concurrency, side)
                    continue
                if profiler is not None:
                    profiler.enable()
                done[side] = await drive(client_call, args.requests, args.concurrency, side)
                if profiler is not None:
                    profiler.disable()
            b, c = done["bare"], done["client"]
            pairs.append((b, c))
            print(
                f"round {i + 1}/{args.rounds}: bare {b.rps:8.0f} req/s {b.cpu_us_per_request:6.1f}"
                f" µs CPU | client {c.rps:8.0f} req/s {c.cpu_us_per_request:6.1f} µs CPU"
                f" | ratio {c.rps / b.rps:.3f}",
                flush=True,
            )
            if b.errors or c.errors:
                raise BenchError(f"errors in round {i + 1}: bare {b.errors}, client {c.errors}")
        report.rounds = [{"bare": asdict(b), "client": asdict(c)} for b, c in pairs]
        ratios = sorted(c.rps / b.rps for b, c in pairs)
        report.rps_ratio_median = statistics.median(ratios)
        if len(ratios) >= 4:
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            report.rps_ratio_quartiles = (q1, q3)
        report.cpu_ratio_median = statistics.median(
            b.cpu_us_per_request / c.cpu_us_per_request for b, c in pairs
        )
        report.bare_cpu_us_per_request = statistics.median(b.cpu_us_per_request for b, _ in pairs)
        report.client_cpu_us_per_request = statistics.median(c.cpu_us_per_request for _, c in pairs)
        report.overhead_us_per_call = statistics.median(
            c.cpu_us_per_request - b.cpu_us_per_request for b, c in pairs
        )
        if profiler is not None:
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(25)
            report.profile_top = out.getvalue()
    finally:
        await client.aclose()
        await bare.close()
        stop_tracer()
    return report


def main() -> int:
    """Parse arguments, run, print and save the report; exit 1 below the target ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per round and side")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tracer", choices=("none", "sdk"), default="none")
    parser.add_argument("--balancer", choices=("round_robin", "p2c"), default="round_robin")
    parser.add_argument("--profile", action="store_true", help="profile the client rounds")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 500 requests")
    parser.add_argument("--json", type=Path, help="where to write the report")
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 if the ratio is below {TARGET_RATIO}"
    )
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 500, 2
    if not (0 < args.requests <= MAX_REQUESTS and 0 < args.rounds <= MAX_ROUNDS):
        parser.error(f"--requests must be 1..{MAX_REQUESTS}, --rounds 1..{MAX_ROUNDS}")
    if not 0 < args.concurrency <= MAX_CONCURRENCY:
        parser.error(f"--concurrency must be 1..{MAX_CONCURRENCY}")
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > CLIENT_CPU:
        os.sched_setaffinity(0, {CLIENT_CPU})

    with upstream_server() as url:
        report = asyncio.run(run(args, url))

    print()
    print(
        f"requests per round: {report.requests}, concurrency {report.concurrency}, "
        f"tracer {report.tracer}, python {report.python}, aiohttp {report.aiohttp}"
    )
    print(
        f"client CPU per request: bare {report.bare_cpu_us_per_request:.1f} µs, "
        f"ServiceClient {report.client_cpu_us_per_request:.1f} µs "
        f"(pipeline overhead {report.overhead_us_per_call:.1f} µs per call)"
    )
    q1, q3 = report.rps_ratio_quartiles
    print(
        f"ratio ServiceClient/bare, requests/s (median): {report.rps_ratio_median:.3f} "
        f"(target >= {TARGET_RATIO}; middle half of rounds {q1:.3f}..{q3:.3f})"
    )
    print(f"ratio from CPU per request (median):           {report.cpu_ratio_median:.3f}")
    if report.profile_top:
        print()
        print(report.profile_top)

    path = args.json
    if path is None:
        RESULTS_DIR.mkdir(exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"client-{stamp}.json"
    path.write_text(json.dumps(asdict(report), indent=2) + "\n")
    print(f"report: {path}")
    if args.check and report.rps_ratio_median < TARGET_RATIO:
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"client_bench: {exc}", file=sys.stderr)
        sys.exit(2)
