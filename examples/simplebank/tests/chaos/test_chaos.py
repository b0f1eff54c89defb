"""The chaos suite: SimpleBank per process survives each fault under a steady load.

Short form by default (part of the SimpleBank test run); the full form with
``SIMPLEBANK_CHAOS_FULL=1`` (``nox -s chaos``). The table it prints is the one in
``docs/simplebank/chaos.md``; with ``SIMPLEBANK_CHAOS_TABLE=<file>`` it is also written there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from chaos_harness import (
    CI,
    FAULTS,
    FULL,
    bank_running,
    run_phase,
    scan_logs,
    secrets_of,
    table,
)

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "tests" / "events"))
from rabbitmq_server import require_rabbitmq, running_broker  # noqa: E402

# Read at import: the autouse fixture of conftest.py clears CHASSIS_* during tests.
FULL_FORM = os.environ.get("SIMPLEBANK_CHAOS_FULL") == "1"
TABLE_FILE = os.environ.get("SIMPLEBANK_CHAOS_TABLE")

pytestmark = pytest.mark.timeout(1800 if FULL_FORM else 300)


async def test_each_fault_under_load_settles_with_books_intact_and_no_secret_logged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_rabbitmq()
    plan = FULL if FULL_FORM else CI
    with running_broker() as broker:
        async with bank_running(tmp_path, broker, plan) as bank:
            faults = plan.faults or tuple(FAULTS)
            phases = [await run_phase(bank, name, FAULTS[name]) for name in faults]
            secrets = secrets_of(bank)
            startup = bank.startup_seconds
    # Every process has exited: its log file is complete.
    lines, leaks = scan_logs(sorted(tmp_path.glob("*.log")), secrets)
    report = (
        f"{table(phases)}\n\nLog lines scanned: {lines}; secrets found in them: {len(leaks)}; "
        f"the bank started in {startup:.0f} s"
    )
    with capsys.disabled():
        print(f"\n{'full' if FULL_FORM else 'short'} chaos run\n{report}")
    if TABLE_FILE:
        Path(TABLE_FILE).write_text(report + "\n")
    assert all(p.held for p in phases), {p.fault: p.violations for p in phases if not p.held}
    rolling = phases[-1]
    assert not rolling.failed, f"requests failed during the rolling restart: {rolling.failed}"
    assert lines > 0
    assert not leaks, leaks
