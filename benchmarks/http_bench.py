"""HTTP overhead benchmark: a chassis service against a bare aiohttp app.

One run starts, as subprocesses on 127.0.0.1:

* ``apps/bare_app.py``: aiohttp alone, no middleware, no access log;
* ``apps/chassis_app.py`` under ``python -m chassis run``: the full chassis with the
  JSON access log on (written to a file by the chassis' background log thread),
  Prometheus metrics and OpenTelemetry tracing (``always_on`` sampler, batch
  processor, OTLP/HTTP export) when the installed chassis provides them;
* ``apps/otlp_sink.py``: a local OTLP/HTTP receiver that counts the spans exported.

Both servers return the same small JSON document from ``GET /hello`` and are pinned
to CPU 0; ``wrk``, the sink and this script run on CPU 1. After a warm-up, ``wrk``
drives the servers in alternating runs (bare, chassis, bare, chassis, ...). The
report gives requests/s, p50 and p99 latency, the server's CPU time per request and
share of a core (from ``/proc/<pid>/stat``), its resident memory (``VmRSS``), the
ratio chassis/bare of requests/s (median of the per-round ratios) and the same ratio
of requests per CPU-second. A JSON file with everything, including the evidence
that the chassis really logged, exported spans and served ``/metrics``, is written to
``benchmarks/results/``.

Usage::

    python benchmarks/http_bench.py                 # 3 rounds of 10 s each
    python benchmarks/http_bench.py --quick         # a short smoke run
    python benchmarks/http_bench.py --self-check    # no wrk: start, probe, compare, exit
    python benchmarks/http_bench.py --high-priority # on a busy machine (root)
    nox -s bench -- --rounds 5

The chassis server is configured through ``CHASSIS_*`` variables (see
``CHASSIS_DEFAULTS``); any ``CHASSIS_*`` variable in this script's environment
overrides them, e.g. ``CHASSIS_LOG__ACCESS_LOG=false`` to measure the chassis
without its access log. ``OTEL_*`` variables are not passed to the servers.

Needs only the chassis (installed), the standard library, ``wrk`` and ``taskset``;
Linux only. Results and how to read them: ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ctypes
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
RESULTS_DIR = HERE / "results"
HOST = "127.0.0.1"
ROUTE = "/hello"
SERVER_CPU = 0
LOAD_CPU = 1

# Upper bounds, so that no flag can make a load loop run unbounded.
MAX_ROUNDS = 50
MAX_DURATION_SECONDS = 600
MAX_CONNECTIONS = 10_000
READY_TIMEOUT_SECONDS = 30.0
HIGH_PRIORITY_NICE = -10
DEFAULT_TARGET = f"{APPS / 'chassis_app.py'}:service"
STOP_TIMEOUT_SECONDS = 15.0

CHASSIS_DEFAULTS: dict[str, str] = {
    "CHASSIS_ENVIRONMENT": "bench",
    "CHASSIS_LOG__LEVEL": "INFO",
    "CHASSIS_LOG__FORMAT": "json",
    "CHASSIS_LOG__ACCESS_LOG": "true",
    "CHASSIS_LOG__ACCESS_LOG_SAMPLE_RATE": "1.0",
    "CHASSIS_LOG__BACKGROUND_WRITES": "true",
    "CHASSIS_METRICS__ENABLED": "true",
    "CHASSIS_TRACING__ENABLED": "true",
    "CHASSIS_TRACING__PROTOCOL": "http/protobuf",
    "CHASSIS_TRACING__SAMPLER": "always_on",
    "CHASSIS_TRACING__SCHEDULE_DELAY_SECONDS": "1.0",
    # The rate limiter stays as by default (off): what is measured is the observability
    # the ratio is about. CHASSIS_RATELIMIT__ENABLED=true (and limits far above what one
    # core serves) in the caller's environment adds it: docs/performance.md.
    "CHASSIS_HEALTH__DRAIN_DELAY_SECONDS": "0",
    "CHASSIS_HEALTH__SHUTDOWN_TIMEOUT_SECONDS": "5",
}
"""How the chassis server runs; ``CHASSIS_TRACING__ENDPOINT`` is added (the sink)."""


class BenchError(Exception):
    """The benchmark could not run: a server did not start, wrk failed, ..."""


# -- subprocesses ---------------------------------------------------------------------

_children: list[subprocess.Popen[Any]] = []


def _stop_children() -> None:
    """Terminate every child still running, then kill what does not exit in 5 s."""
    alive = [p for p in _children if p.poll() is None]
    for proc in alive:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    deadline = time.monotonic() + 5.0
    for proc in alive:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)
    _children.clear()


atexit.register(_stop_children)


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


_PR_SET_PDEATHSIG = 1
_libc: Any = None


def _child_preexec(new_session: bool) -> Callable[[], None]:
    """What a child runs between fork and exec.

    It asks the kernel for SIGTERM when this script dies (so a ``kill -9`` of the
    script leaves no server behind) and, for ``--high-priority``, starts its own
    session: with autogroup scheduling, a session is the unit that competes for CPU.
    """
    global _libc
    if _libc is None and sys.platform == "linux":
        with contextlib.suppress(OSError):
            _libc = ctypes.CDLL(None, use_errno=True)
    libc = _libc

    def preexec() -> None:
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if new_session:
            os.setsid()

    return preexec


def _boost(pid: int) -> None:
    """Raise ``pid``'s priority (it must lead its own session, see :func:`_child_preexec`).

    Raises:
        BenchError: not permitted (needs root or CAP_SYS_NICE).
    """
    try:
        os.setpriority(os.PRIO_PROCESS, pid, HIGH_PRIORITY_NICE)
        autogroup = Path(f"/proc/{pid}/autogroup")
        if autogroup.exists():
            autogroup.write_text(str(HIGH_PRIORITY_NICE))
    except OSError as exc:
        raise BenchError(f"--high-priority: cannot raise the priority of pid {pid}: {exc}") from exc


@dataclass
class Server:
    """A server subprocess listening on ``127.0.0.1:port``."""

    name: str
    proc: subprocess.Popen[Any]
    port: int
    stderr_path: Path
    cpu: int | None

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://{HOST}:{self.port}"

    def stderr_tail(self, lines: int = 20) -> str:
        """The last lines the server wrote to stderr."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_server(
    name: str,
    argv: Sequence[str],
    *,
    port: int,
    env: Mapping[str, str],
    workdir: Path,
    cpu: int | None,
    stdout: IO[bytes] | int = subprocess.DEVNULL,
    boost: bool = False,
) -> Server:
    """Start ``argv`` (pinned to ``cpu`` with ``taskset``, which execs it: the pid is real).

    ``boost`` gives it a higher priority (see ``--high-priority``).
    """
    cmd = list(argv)
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    stderr_path = workdir / f"{name}.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env),
            cwd=workdir,  # not the repository: a stray .env there must not configure the server
            preexec_fn=_child_preexec(new_session=boost),
        )
    _children.append(proc)
    if boost:
        _boost(proc.pid)
    return Server(name, proc, port, stderr_path, cpu)


def wait_ready(server: Server, path: str, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """Poll ``GET path`` until it answers 200; fail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(
                f"{server.name} exited with {server.proc.returncode} before it was ready:\n"
                f"{server.stderr_tail()}"
            )
        try:
            with urllib.request.urlopen(server.url + path, timeout=1.0) as resp:
                if resp.status == 200:
                    return
                last_error = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(exc)
        time.sleep(0.05)
    raise BenchError(
        f"{server.name} not ready after {timeout:.0f}s ({last_error}):\n{server.stderr_tail()}"
    )


def stop_gracefully(server: Server, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
    """SIGTERM the server and wait for it to drain; its exit code, or None if it hung."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    try:
        return server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(5.0)
        return None


def process_info(pid: int) -> dict[str, Any]:
    """What the kernel says about ``pid``: executable, command line, memory (KiB)."""
    info: dict[str, Any] = {"pid": pid}
    proc = Path(f"/proc/{pid}")
    with contextlib.suppress(OSError):
        info["exe"] = os.readlink(proc / "exe")
    with contextlib.suppress(OSError):
        info["cmdline"] = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    with contextlib.suppress(OSError):
        for line in (proc / "status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in {"VmRSS", "VmHWM", "Cpus_allowed_list"}:
                info[key] = value.strip()
    return info


def _kib(pid: int, key: str) -> int | None:
    match = re.match(r"(\d+)\s*kB", process_info(pid).get(key, ""))
    return int(match.group(1)) if match else None


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` (``VmRSS`` in ``/proc/<pid>/status``), in KiB."""
    return _kib(pid, "VmRSS")


def hwm_kib(pid: int) -> int | None:
    """Peak resident set size of ``pid`` (``VmHWM``), in KiB."""
    return _kib(pid, "VmHWM")


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time used so far by every thread of ``pid``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    # Fields 14 and 15 of proc(5), counted from 1 with the pid and comm as 1 and 2.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def context_switches(pid: int) -> int | None:
    """Context switches so far, voluntary and not, summed over every thread of ``pid``."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.partition(":")[2])
    return total


def loadavg() -> float | None:
    """The one-minute load average."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """``GET url`` with the standard library; ``(status, body)``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


# -- the three processes --------------------------------------------------------------


def server_env(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` without ``CHASSIS_*`` and ``OTEL_*`` variables."""
    return {k: v for k, v in base.items() if not k.startswith(("CHASSIS_", "OTEL_"))}


def chassis_env(
    base: Mapping[str, str], sink_url: str, extra: Mapping[str, str] | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """The chassis server's environment, and the ``CHASSIS_*`` part of it (for the report).

    Precedence, lowest first: :data:`CHASSIS_DEFAULTS`, the sink endpoint, ``extra``,
    then ``CHASSIS_*`` variables of ``base`` (the caller's own overrides).
    """
    chassis: dict[str, str] = dict(CHASSIS_DEFAULTS)
    chassis["CHASSIS_TRACING__ENDPOINT"] = f"{sink_url}/v1/traces"
    chassis.update(extra or {})
    chassis.update({k: v for k, v in base.items() if k.startswith("CHASSIS_")})
    env = server_env(base)
    env.update(chassis)
    return env, chassis


@dataclass
class Servers:
    """The sink and the two servers under test."""

    sink: Server
    bare: Server
    chassis: Server
    chassis_env: dict[str, str]
    access_log: Path


def start_all(
    workdir: Path,
    *,
    pin: bool,
    boost: bool = False,
    chassis_extra: Mapping[str, str] | None = None,
    target: str = "",
) -> Servers:
    """Start the sink, the bare server and the chassis server; wait until all answer."""
    python = sys.executable  # the venv's interpreter; not resolved, or the venv is lost
    base = server_env(os.environ)
    sink_port, bare_port, chassis_port = free_port(), free_port(), free_port()
    sink = start_server(
        "sink",
        [python, str(APPS / "otlp_sink.py"), "--port", str(sink_port)],
        port=sink_port,
        env=base,
        workdir=workdir,
        cpu=LOAD_CPU if pin else None,
        boost=boost,
    )
    bare = start_server(
        "bare",
        [python, str(APPS / "bare_app.py"), "--port", str(bare_port)],
        port=bare_port,
        env=base,
        workdir=workdir,
        cpu=SERVER_CPU if pin else None,
        boost=boost,
    )
    env, chassis_vars = chassis_env(os.environ, sink.url, chassis_extra)
    access_log = workdir / "chassis-stdout.jsonl"
    with access_log.open("wb") as log_file:
        chassis = start_server(
            "chassis",
            [
                python,
                "-m",
                "chassis",
                "run",
                target or DEFAULT_TARGET,
                "--host",
                HOST,
                "--port",
                str(chassis_port),
            ],
            port=chassis_port,
            env=env,
            workdir=workdir,
            cpu=SERVER_CPU if pin else None,
            boost=boost,
            stdout=log_file,
        )
    wait_ready(sink, "/stats")
    wait_ready(bare, ROUTE)
    wait_ready(chassis, ROUTE)
    for server in (sink, bare, chassis):
        exe = process_info(server.proc.pid).get("exe", "")
        if "python" not in Path(exe).name:
            raise BenchError(f"pid {server.proc.pid} of {server.name} runs {exe!r}, not python")
    return Servers(sink, bare, chassis, chassis_vars, access_log)


def sink_stats(sink: Server) -> dict[str, Any]:
    """What the OTLP sink has received."""
    status, body = http_get(sink.url + "/stats")
    if status != 200:
        raise BenchError(f"sink /stats answered {status}")
    data: dict[str, Any] = json.loads(body)
    return data


def access_log_stats(path: Path) -> dict[str, Any]:
    """Size of the chassis' stdout file and how many of its lines are access-log records."""
    lines = access = bad = 0
    with contextlib.suppress(OSError), path.open("rb") as fh:
        for raw in fh:
            lines += 1
            try:
                record = json.loads(raw)
            except ValueError:
                bad += 1
                continue
            if isinstance(record, dict) and record.get("logger") == "chassis.access":
                access += 1
    size = path.stat().st_size if path.exists() else 0
    return {"bytes": size, "lines": lines, "access_lines": access, "non_json_lines": bad}


def detect_capabilities() -> dict[str, Any]:
    """Which chassis capabilities the installed package has (metrics, tracing)."""
    import chassis

    service = chassis.Service("bench-probe")
    return {
        "chassis_version": getattr(chassis, "__version__", "?"),
        "chassis_path": str(Path(chassis.__file__ or "?").parent),
        "metrics": getattr(service, "metrics", None) is not None,
        "tracing": getattr(service, "tracing", None) is not None,
        "metrics_module": importlib.util.find_spec("chassis.metrics") is not None,
        "tracing_module": importlib.util.find_spec("chassis.tracing") is not None,
        "capabilities": [type(c).__name__ for c in service.capabilities],
    }


def metrics_path(chassis_vars: Mapping[str, str]) -> str:
    """Where the chassis server serves its metrics."""
    return chassis_vars.get("CHASSIS_METRICS__PATH", "/metrics")


# -- wrk ------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _to_ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


@dataclass
class WrkResult:
    """One wrk run."""

    requests_per_second: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    seconds: float
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx: int = 0

    @property
    def errors(self) -> int:
        """Socket errors plus non-2xx/3xx responses."""
        return sum(self.socket_errors.values()) + self.non_2xx


def parse_wrk(output: str) -> WrkResult:
    """Parse ``wrk --latency`` output.

    Raises:
        BenchError: a figure is missing.
    """
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output, re.M)
    latency: dict[str, float] = {}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)", output, re.M):
        latency[pct] = _to_ms(value, unit)
    if rps is None or total is None or set(latency) != {"50", "75", "90", "99"}:
        raise BenchError(f"cannot parse wrk output:\n{output}")
    errors: dict[str, int] = {}
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sock:
        errors = dict(
            zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True)
        )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests_per_second=float(rps.group(1)),
        p50_ms=latency["50"],
        p75_ms=latency["75"],
        p90_ms=latency["90"],
        p99_ms=latency["99"],
        requests=int(total.group(1)),
        seconds=_to_ms(total.group(2), total.group(3)) / 1000,
        socket_errors=errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def wrk_command(url: str, *, duration: int, connections: int, threads: int, pin: bool) -> list[str]:
    """The wrk command line (pinned to :data:`LOAD_CPU` when ``pin``)."""
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "5s",
        "--latency",
        url,
    ]
    return ["taskset", "-c", str(LOAD_CPU), *cmd] if pin else cmd


def run_wrk(cmd: Sequence[str], duration: int, *, boost: bool = False) -> WrkResult:
    """Run wrk (bounded: killed after ``duration + 30`` s) and parse its output."""
    with subprocess.Popen(
        list(cmd),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_child_preexec(new_session=boost),
    ) as proc:
        _children.append(proc)
        try:
            if boost:
                _boost(proc.pid)
            out, err = proc.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"wrk did not finish within {duration + 30}s") from exc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            _children.remove(proc)
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with {proc.returncode}:\n{err}{out}")
    return parse_wrk(out)


# -- the benchmark --------------------------------------------------------------------


@dataclass
class Settings:
    """The resolved command line."""

    duration: int
    connections: int
    threads: int
    rounds: int
    warmup: int
    settle_seconds: float
    pin: bool
    quick: bool
    high_priority: bool
    target: str


def machine_info() -> dict[str, Any]:
    """CPU, kernel, interpreter and library versions of this machine."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    wrk_version = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5, check=False)
        wrk_version = (out.stdout + out.stderr).splitlines()[0].strip()
    import aiohttp

    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "kernel": platform.release(),
        "system": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "aiohttp": aiohttp.__version__,
        "wrk": wrk_version,
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]
        if Path("/proc/loadavg").exists()
        else [],
    }


def git_commit() -> dict[str, Any]:
    """The repository's commit and whether tracked files differ from it."""
    info: dict[str, Any] = {"commit": None, "dirty": None}
    if shutil.which("git") is None:
        return info
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if head.returncode == 0:
            info["commit"] = head.stdout.strip()
            status = subprocess.run(
                ["git", "-C", str(HERE.parent), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            info["dirty"] = bool(status.stdout.strip())
    return info


def run_benchmark(settings: Settings) -> dict[str, Any]:
    """Start everything, warm up, run the alternating rounds, collect the evidence."""
    started = dt.datetime.now(dt.timezone.utc)
    result: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "git": git_commit(),
        "machine": machine_info(),
        "settings": asdict(settings),
        "capabilities": detect_capabilities(),
    }
    if settings.pin:
        # Keep this script off the servers' CPU as well.
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {LOAD_CPU})
    if settings.high_priority:
        # Inherited by every process started from here on: servers, sink and wrk.
        try:
            os.setpriority(os.PRIO_PROCESS, 0, HIGH_PRIORITY_NICE)
        except OSError as exc:
            raise BenchError(f"--high-priority: cannot renice ({exc})") from exc
    result["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    with tempfile.TemporaryDirectory(prefix="chassis-bench-") as tmp:
        workdir = Path(tmp)
        try:
            servers = start_all(
                workdir, pin=settings.pin, boost=settings.high_priority, target=settings.target
            )
            result["chassis_env"] = servers.chassis_env
            result["processes"] = {
                s.name: process_info(s.proc.pid)
                for s in (servers.sink, servers.bare, servers.chassis)
            }
            targets = {"bare": servers.bare, "chassis": servers.chassis}
            served = {"bare": 0, "chassis": 0}

            def drive(name: str, duration: int, *, measured: bool = True) -> dict[str, Any]:
                server = targets[name]
                cmd = wrk_command(
                    server.url + ROUTE,
                    duration=duration,
                    connections=settings.connections,
                    threads=settings.threads,
                    pin=settings.pin,
                )
                if measured:
                    result.setdefault("wrk_command", " ".join(cmd))
                load = loadavg()
                cpu_before = cpu_seconds(server.proc.pid)
                switches_before = context_switches(server.proc.pid)
                wrk = run_wrk(cmd, duration, boost=settings.high_priority)
                cpu_after = cpu_seconds(server.proc.pid)
                switches_after = context_switches(server.proc.pid)
                served[name] += wrk.requests
                if server.proc.poll() is not None:
                    raise BenchError(f"{name} died during the run:\n{server.stderr_tail()}")
                run: dict[str, Any] = asdict(wrk)
                run["loadavg_before"] = load
                if cpu_before is not None and cpu_after is not None and wrk.requests:
                    cpu = cpu_after - cpu_before
                    run["cpu_seconds"] = round(cpu, 3)
                    run["cpu_share"] = round(cpu / wrk.seconds, 3)
                    run["cpu_us_per_request"] = round(cpu / wrk.requests * 1e6, 2)
                if switches_before is not None and switches_after is not None and wrk.requests:
                    run["context_switches_per_request"] = round(
                        (switches_after - switches_before) / wrk.requests, 3
                    )
                # Let the batch exporter and the log thread catch up before the next run.
                time.sleep(settings.settle_seconds)
                return run

            for name in targets:
                print(f"warming up {name} ({settings.warmup}s)", flush=True)
                drive(name, settings.warmup, measured=False)
            rounds: list[dict[str, Any]] = []
            for index in range(settings.rounds):
                pair: dict[str, Any] = {"round": index + 1}
                for name in targets:
                    run = drive(name, settings.duration)
                    pair[name] = run
                    errors = sum(run["socket_errors"].values()) + run["non_2xx"]
                    print(
                        f"round {index + 1}/{settings.rounds} {name:<8} "
                        f"{run['requests_per_second']:>9.1f} req/s  p50 {run['p50_ms']:6.2f} ms  "
                        f"p99 {run['p99_ms']:6.2f} ms  "
                        f"CPU {run.get('cpu_us_per_request', 0):6.1f} us/req "
                        f"(share {run.get('cpu_share', 0):.2f})"
                        + (f"  ERRORS {errors}" if errors else ""),
                        flush=True,
                    )
                pair["ratio"] = (
                    pair["chassis"]["requests_per_second"] / pair["bare"]["requests_per_second"]
                )
                if "cpu_us_per_request" in pair["bare"] and "cpu_us_per_request" in pair["chassis"]:
                    pair["cpu_ratio"] = (
                        pair["bare"]["cpu_us_per_request"] / pair["chassis"]["cpu_us_per_request"]
                    )
                rounds.append(pair)
            result["rounds"] = rounds
            result["memory_kib"] = {
                name: {"rss": rss_kib(server.proc.pid), "hwm": hwm_kib(server.proc.pid)}
                for name, server in targets.items()
            }
            evidence: dict[str, Any] = {"requests_served": served}
            path = metrics_path(servers.chassis_env)
            status, body = http_get(servers.chassis.url + path)
            evidence["metrics"] = {"path": path, "status": status, "bytes": len(body)}
            evidence["chassis_exit_code"] = stop_gracefully(servers.chassis)
            evidence["otlp_sink"] = sink_stats(servers.sink)
            evidence["chassis_stdout"] = access_log_stats(servers.access_log)
            evidence["chassis_stderr_tail"] = servers.chassis.stderr_tail()
            evidence["problems"] = evidence_problems(
                evidence, result["capabilities"], servers.chassis_env
            )
            result["evidence"] = evidence
        finally:
            _stop_children()
    result["summary"] = summarise(result)
    result["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return result


def _median(values: Iterator[float | None] | list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


CONTENDED_SHARE = 0.85
"""A server that got less CPU than this (of one core) during a run was competing for it."""


def _on(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def evidence_problems(
    evidence: Mapping[str, Any], caps: Mapping[str, Any], chassis_vars: Mapping[str, str]
) -> list[str]:
    """Work the chassis was configured to do but did not visibly do."""
    problems: list[str] = []
    served = evidence["requests_served"]["chassis"]
    if evidence["chassis_exit_code"] != 0:
        problems.append(f"the chassis exited with {evidence['chassis_exit_code']} on SIGTERM")
    if _on(chassis_vars.get("CHASSIS_LOG__ACCESS_LOG")) and (
        float(chassis_vars.get("CHASSIS_LOG__ACCESS_LOG_SAMPLE_RATE", "1")) >= 1.0
    ):
        lines = evidence["chassis_stdout"]["access_lines"]
        if lines < served:
            problems.append(f"access log on, but {lines} access lines for {served} requests")
    if caps["tracing"] and _on(chassis_vars.get("CHASSIS_TRACING__ENABLED")):
        spans = evidence["otlp_sink"]["spans"]
        if chassis_vars.get("CHASSIS_TRACING__SAMPLER") == "always_on" and spans < served:
            problems.append(f"always_on tracing, but {spans} spans exported for {served} requests")
    metrics_on = caps["metrics"] and _on(chassis_vars.get("CHASSIS_METRICS__ENABLED"))
    if metrics_on and evidence["metrics"]["status"] != 200:
        metrics = evidence["metrics"]
        problems.append(f"metrics on, but {metrics['path']} answered {metrics['status']}")
    return problems


def summarise(result: Mapping[str, Any]) -> dict[str, Any]:
    """Medians over rounds, the chassis/bare ratios, and whether any run had errors."""
    rounds = result["rounds"]
    summary: dict[str, Any] = {}
    for name in ("bare", "chassis"):
        runs = [r[name] for r in rounds]
        summary[name] = {
            "requests_per_second": statistics.median(r["requests_per_second"] for r in runs),
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "cpu_us_per_request": _median([r.get("cpu_us_per_request") for r in runs]),
            "cpu_share": _median([r.get("cpu_share") for r in runs]),
            "rss_kib": result["memory_kib"][name]["rss"],
            "errors": sum(sum(r["socket_errors"].values()) + r["non_2xx"] for r in runs),
        }
    ratios = [r["ratio"] for r in rounds]
    summary["ratio"] = statistics.median(ratios)
    summary["ratio_per_round"] = ratios
    summary["ratio_of_medians"] = (
        summary["chassis"]["requests_per_second"] / summary["bare"]["requests_per_second"]
    )
    cpu_ratios = [r["cpu_ratio"] for r in rounds if "cpu_ratio" in r]
    summary["cpu_ratio"] = statistics.median(cpu_ratios) if cpu_ratios else None
    summary["cpu_ratio_per_round"] = cpu_ratios
    summary["contended_runs"] = sum(
        1
        for r in rounds
        for name in ("bare", "chassis")
        if r[name].get("cpu_share", 1.0) < CONTENDED_SHARE
    )
    return summary


def _fmt(value: float | None, spec: str) -> str:
    return "?" if value is None else format(value, spec)


def report(result: Mapping[str, Any]) -> str:
    """The human-readable table."""
    summary = result["summary"]
    caps = result["capabilities"]
    evidence = result["evidence"]
    lines = [
        "",
        f"{'server':<9}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}"
        f"{'CPU share':>11}{'RSS MiB':>9}{'errors':>8}",
    ]
    for name in ("bare", "chassis"):
        s = summary[name]
        rss = s["rss_kib"] / 1024 if s["rss_kib"] else None
        lines.append(
            f"{name:<9}{s['requests_per_second']:>10.1f}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}"
            f"{_fmt(s['cpu_us_per_request'], '.1f'):>12}{_fmt(s['cpu_share'], '.2f'):>11}"
            f"{_fmt(rss, '.1f'):>9}{s['errors']:>8}"
        )
    rounds = len(summary["ratio_per_round"])
    per_round = " ".join(f"{r:.3f}" for r in summary["ratio_per_round"])
    cpu_per_round = " ".join(f"{r:.3f}" for r in summary["cpu_ratio_per_round"])
    sink = evidence["otlp_sink"]
    stdout = evidence["chassis_stdout"]
    metrics = evidence["metrics"]
    lines += [
        "",
        f"ratio chassis/bare, req/s (median of {rounds} rounds): "
        f"{summary['ratio']:.3f}   per round: {per_round}",
        f"ratio chassis/bare, requests per CPU-second: "
        f"{_fmt(summary['cpu_ratio'], '.3f')}   per round: {cpu_per_round}",
        "",
        f"chassis {caps['chassis_version']} from {caps['chassis_path']}; "
        f"metrics: {'yes' if caps['metrics'] else 'no'}, "
        f"tracing: {'yes' if caps['tracing'] else 'no'}; commit {result['git']['commit']}"
        + (" (with uncommitted changes)" if result["git"]["dirty"] else ""),
        f"requests served (warm-up included): bare {evidence['requests_served']['bare']}, "
        f"chassis {evidence['requests_served']['chassis']}",
        f"spans received by the OTLP sink: {sink['spans']} in {sink['requests']} exports",
        f"access-log lines in the chassis' stdout file: {stdout['access_lines']} "
        f"({stdout['bytes'] / 1e6:.1f} MB)",
        f"GET {metrics['path']}: HTTP {metrics['status']}, {metrics['bytes']} bytes",
    ]
    for problem in evidence["problems"]:
        lines.append(f"WARNING: {problem} (chassis stderr is in the JSON result)")
    if summary["contended_runs"]:
        lines.append(
            f"WARNING: in {summary['contended_runs']} run(s) a server got less than "
            f"{CONTENDED_SHARE:.0%} of a core: it or wrk competed with other processes "
            "(see docs/performance.md); req/s are unreliable, CPU us/req less so"
        )
    if summary["bare"]["errors"] or summary["chassis"]["errors"]:
        lines.append("WARNING: some requests failed; the numbers are not comparable")
    return "\n".join(lines)


# -- self-check -----------------------------------------------------------------------


async def _probe(servers: Servers, caps: Mapping[str, Any], count: int) -> list[str]:
    import aiohttp

    problems: list[str] = []
    timeout = aiohttp.ClientTimeout(total=10)
    bodies: dict[str, Any] = {}
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for name, server in (("bare", servers.bare), ("chassis", servers.chassis)):
            for _ in range(count):
                async with session.get(server.url + ROUTE) as resp:
                    if resp.status != 200:
                        problems.append(f"{name}: GET {ROUTE} answered {resp.status}")
                        break
                    if resp.content_type != "application/json":
                        problems.append(f"{name}: content type {resp.content_type}")
                    bodies[name] = await resp.json()
        if bodies.get("bare") != bodies.get("chassis"):
            problems.append(f"the servers' JSON differs: {bodies}")
        if caps["metrics"]:
            path = metrics_path(servers.chassis_env)
            async with session.get(servers.chassis.url + path) as resp:
                text = await resp.text()
                if resp.status != 200 or "# TYPE" not in text:
                    problems.append(f"chassis: GET {path} answered {resp.status} {text[:200]!r}")
    return problems


def self_check(target: str = DEFAULT_TARGET) -> int:
    """Start both servers and the sink, probe them with aiohttp (no wrk); 0 when all is well."""
    count = 10
    caps = detect_capabilities()
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="chassis-selfcheck-") as tmp:
        try:
            servers = start_all(
                Path(tmp),
                pin=False,
                chassis_extra={"CHASSIS_TRACING__SCHEDULE_DELAY_SECONDS": "0.2"},
                target=target,
            )
            problems += asyncio.run(_probe(servers, caps, count))
            code = stop_gracefully(servers.chassis)
            if code != 0:
                problems.append(
                    f"chassis exited with {code} on SIGTERM:\n{servers.chassis.stderr_tail()}"
                )
            logged = access_log_stats(servers.access_log)
            access_on = servers.chassis_env.get("CHASSIS_LOG__ACCESS_LOG", "true").lower()
            if access_on in {"1", "true", "yes", "on"} and logged["access_lines"] < count:
                problems.append(f"expected >= {count} access-log lines, found {logged}")
            spans = sink_stats(servers.sink)
            if caps["tracing"] and spans["spans"] < count:
                problems.append(f"expected >= {count} spans at the OTLP sink, got {spans}")
        except BenchError as exc:
            problems.append(str(exc))
        finally:
            _stop_children()
    present = ", ".join(k for k in ("metrics", "tracing") if caps[k]) or "neither"
    print(f"capabilities: {present}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("self-check: " + ("FAILED" if problems else "ok"))
    return 1 if problems else 0


# -- command line ---------------------------------------------------------------------


def _bounded(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="http_bench.py",
        description="Requests/s, latency and memory of a chassis service against bare aiohttp.",
    )
    parser.add_argument(
        "--duration", type=_bounded(1, MAX_DURATION_SECONDS), help="seconds per run (default 10)"
    )
    parser.add_argument(
        "--connections",
        type=_bounded(1, MAX_CONNECTIONS),
        default=32,
        help="open connections held by wrk (default 32)",
    )
    parser.add_argument(
        "--threads", type=_bounded(1, 64), default=1, help="wrk threads (default 1)"
    )
    parser.add_argument(
        "--rounds", type=_bounded(1, MAX_ROUNDS), help="bare+chassis pairs to run (default 3)"
    )
    parser.add_argument(
        "--warmup", type=_bounded(1, 60), help="seconds of warm-up per server (default 3)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="short runs for a smoke test (2 s, 2 rounds)"
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin processes to CPUs with taskset"
    )
    parser.add_argument(
        "--high-priority",
        action="store_true",
        help=f"run this script, the servers and wrk at nice {HIGH_PRIORITY_NICE} "
        "(needs root or CAP_SYS_NICE) so other processes on a busy machine disturb less",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="where to write the result (default benchmarks/results/<timestamp>.json)",
    )
    parser.add_argument(
        "--target",
        default=DEFAULT_TARGET,
        metavar="TARGET",
        help="the chassis service to measure, as for `chassis run` (default: apps/chassis_app.py); "
        f"it must answer GET {ROUTE} like apps/bare_app.py",
    )
    parser.add_argument(
        "--self-check",
        action="store_true",
        help="start both servers, probe them with a few requests (no wrk), exit 0 if all is well",
    )
    return parser


def resolve(args: argparse.Namespace) -> Settings:
    """Fill the defaults, which depend on ``--quick``."""
    quick = bool(args.quick)
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    can_pin = shutil.which("taskset") is not None and {SERVER_CPU, LOAD_CPU} <= cpus
    return Settings(
        duration=args.duration or (2 if quick else 10),
        connections=args.connections,
        threads=args.threads,
        rounds=args.rounds or (2 if quick else 3),
        warmup=args.warmup or (1 if quick else 3),
        settle_seconds=0.5 if quick else 1.5,
        pin=can_pin and not args.no_pin,
        high_priority=bool(args.high_priority),
        target=args.target,
        quick=quick,
    )


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    with _sigterm_exits():
        if args.self_check:
            return self_check(args.target)
        if shutil.which("wrk") is None:
            print(
                "http_bench.py: wrk is not on PATH (Debian: apt-get install wrk)", file=sys.stderr
            )
            return 2
        settings = resolve(args)
        if not settings.pin:
            print("note: not pinning processes to CPUs (needs taskset and CPUs 0 and 1)")
        try:
            result = run_benchmark(settings)
        except BenchError as exc:
            print(f"http_bench.py: {exc}", file=sys.stderr)
            return 1
    print(report(result))
    path = args.json
    if path is None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresult written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
