"""SimpleBank with the demo's embedded defaults, served for ``saga_bench.py``.

``python benchmarks/apps/simplebank_embedded.py DATA_DIR`` starts the exchange stand-in
and the ten services in this one process exactly as ``python -m simplebank demo``
does (:func:`simplebank.demo.demo_settings`: static discovery, the in-memory broker,
one SQLite file per service under ``DATA_DIR``; market reconciles every 0.5 s), but
runs no scenario. It prints one JSON line ``{"urls": {...}}`` once every service
listens, then serves until SIGTERM or SIGINT; then it waits until the bank is idle,
checks SimpleBank's invariants and prints ``{"violations": [...]}`` before exiting.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from simplebank.demo import demo_settings
from simplebank.exchange import DEFAULT_PRICES, Exchange
from simplebank.services import run_services
from simplebank.testing import check_invariants

from chassis.service import run_on_event_loop

SETTLE_TIMEOUT_SECONDS = 60.0


async def serve(data_dir: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with (
        Exchange(prices=dict(DEFAULT_PRICES)) as exchange,
        run_services(
            data_dir,
            urls={"exchange": exchange.url},
            settings=demo_settings("ERROR"),
            options={"market": {"reconcile_interval_seconds": 0.5}},
        ) as bank,
    ):
        print(json.dumps({"urls": bank.urls}), flush=True)
        await stop.wait()
        violations: list[str] = []
        try:
            await bank.settle(timeout=SETTLE_TIMEOUT_SECONDS)
        except TimeoutError as exc:
            violations.append(str(exc))
        report = await check_invariants(bank.urls, exchange)
        violations += report.violations
        print(json.dumps({"violations": violations}), flush=True)
    return 0


if __name__ == "__main__":
    # On the loop CHASSIS_RUNTIME__EVENT_LOOP names, as `chassis run` would serve.
    sys.exit(run_on_event_loop(serve(Path(sys.argv[1]))))
