"""``benchmarks/saga_bench.py``: its command line, and a tiny embedded run that writes its JSON.

No speed is asserted: ``--quick`` starts the demo's one-process bank in a subprocess,
runs a few sagas through the gateway and checks SimpleBank's invariants afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "benchmarks" / "saga_bench.py"

pytestmark = pytest.mark.skipif(
    not SCRIPT.exists(), reason="benchmarks/ is not shipped in the sdist"
)


def test_help_exits_0_and_names_the_flags() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for flag in (
        "--mode",
        "--customers",
        "--orders",
        "--duration",
        "--rounds",
        "--quick",
        "--wait-seconds",
        "--poll-interval",
        "--json",
    ):
        assert flag in proc.stdout


def test_percentile_is_nearest_rank() -> None:
    spec = importlib.util.spec_from_file_location("saga_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["saga_bench"] = bench  # dataclasses look their module up while being built
    try:
        spec.loader.exec_module(bench)
    finally:
        del sys.modules["saga_bench"]
    values = [float(n) for n in range(1, 101)]
    assert bench.percentile(values, 50) == 50.0
    assert bench.percentile(values, 99) == 99.0
    assert bench.percentile([7.0], 99) == 7.0
    assert bench.percentile([], 50) is None


def test_quick_run_completes_sagas_and_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "saga.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--orders", "16", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    (mode,) = result["modes"]
    assert mode["mode"] == "embedded"
    assert mode["violations"] == []
    assert mode["totals"]["completed"] >= 1
    assert mode["totals"]["timed_out"] == 0
    assert mode["median"]["sagas_per_second"] > 0
    assert "sagas/s" in proc.stdout
    # Requests and event deliveries per saga, counted from the services' /metrics.
    (measured,) = mode["rounds"]
    per_saga = measured["per_saga"]
    assert per_saga["gateway POST /orders"] >= 1
    assert per_saga["orders event order_created"] >= 1
    assert mode["median"]["requests_per_saga"] > mode["median"]["events_per_saga"] > 0
