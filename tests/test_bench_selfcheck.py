"""``benchmarks/http_bench.py``: the command line, wrk parsing, and ``--self-check``.

No speed is asserted here: ``--self-check`` starts the bare server, the chassis server
and the OTLP sink, sends a handful of requests with aiohttp and checks that both
servers answer the same JSON (and that the chassis serves metrics and exports spans
when it has those capabilities).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from .conftest import REPO

SCRIPT = REPO / "benchmarks" / "http_bench.py"

pytestmark = pytest.mark.skipif(
    not SCRIPT.exists(), reason="benchmarks/ is not shipped in the sdist"
)

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:40000/hello
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.61ms  605.12us  21.07ms   93.27%
    Req/Sec     8.92k   411.24     9.40k    90.00%
  Latency Distribution
     50%  850.00us
     75%    3.70ms
     90%    4.01ms
     99%    1.20s
  88763 requests in 10.00s, 14.73MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   8874.32
Transfer/sec:      1.47MB
"""


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("http_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["http_bench"] = module  # dataclasses look their module up while being built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["http_bench"]
    return module


def test_help_exits_0_and_names_the_flags() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for flag in ("--duration", "--connections", "--rounds", "--quick", "--json", "--self-check"):
        assert flag in proc.stdout


def test_wrk_output_is_parsed_with_its_units() -> None:
    bench = _load_script()
    result = bench.parse_wrk(WRK_OUTPUT)
    assert result.requests_per_second == pytest.approx(8874.32)
    assert result.p50_ms == pytest.approx(0.85)
    assert result.p75_ms == pytest.approx(3.70)
    assert result.p99_ms == pytest.approx(1200.0)
    assert result.requests == 88763
    assert result.seconds == pytest.approx(10.0)
    assert result.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 1}
    assert result.errors == 7


def test_unparseable_wrk_output_is_an_error() -> None:
    bench = _load_script()
    with pytest.raises(bench.BenchError, match="cannot parse"):
        bench.parse_wrk("wrk: connection refused\n")


@pytest.mark.slow
def test_self_check_starts_both_servers_and_they_agree() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--self-check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "self-check: ok" in proc.stdout


def test_floor_bench_measures_each_part(tmp_path: Path) -> None:
    """``benchmarks/floor_bench.py`` runs and writes one positive figure per part."""
    out = tmp_path / "floor.json"
    script = REPO / "benchmarks" / "floor_bench.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--number", "5", "--repeat", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert set(figures) == {
        "http_get_round_trip_us",
        "http_post_round_trip_us",
        "sqlite_write_transaction_us",
    }
    assert all(value > 0 for value in figures.values())
    assert "sqlite_write_transaction_us" in proc.stdout
