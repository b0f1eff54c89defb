"""The CPU floor of a saga's parts, with no chassis and no SimpleBank code.

Measures, in one process and on one event loop (as SimpleBank's embedded mode runs):

* a bare aiohttp round trip, client and server on the same loop, for a ``GET`` with a
  small JSON answer and a ``POST`` with a small JSON body;
* an aiosqlite write transaction (``BEGIN IMMEDIATE``, one ``INSERT``, ``COMMIT``) on a
  WAL database with ``synchronous=NORMAL``, as ``chassis.db`` opens its files.

Each figure is the process' CPU time per operation, the best of ``--repeat`` runs of
``--number`` operations. ``docs/performance.md`` multiplies them by what one saga
does to bound the sagas per second one core can serve whatever the code on top::

    python benchmarks/floor_bench.py [--number 1000] [--repeat 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp
import aiosqlite
from aiohttp import web

BODY = {"order_id": "0" * 36, "amount_cents": 10_000}


async def _best(op: Callable[[], Awaitable[object]], number: int, repeat: int) -> float:
    """The least CPU microseconds per ``op`` over ``repeat`` runs of ``number``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(number):
            await op()
        best = min(best, (time.process_time() - start) / number * 1e6)
    return best


async def http_round_trips(number: int, repeat: int) -> dict[str, float]:
    async def get(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def post(request: web.Request) -> web.Response:
        await request.json()
        return web.json_response({"ok": True}, status=201)

    app = web.Application()
    app.router.add_get("/x", get)
    app.router.add_post("/y", post)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:

            async def one_get() -> object:
                async with http.get("/x") as resp:
                    return await resp.json()

            async def one_post() -> object:
                async with http.post("/y", json=BODY) as resp:
                    return await resp.json()

            return {
                "http_get_round_trip_us": await _best(one_get, number, repeat),
                "http_post_round_trip_us": await _best(one_post, number, repeat),
            }
    finally:
        await runner.cleanup()


async def sqlite_transactions(number: int, repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with aiosqlite.connect(Path(tmp) / "floor.db", isolation_level=None) as db:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")

            async def one() -> object:
                await db.execute("BEGIN IMMEDIATE")
                await db.execute("INSERT INTO t (v) VALUES (?)", ("x",))
                return await db.execute("COMMIT")

            return {"sqlite_write_transaction_us": await _best(one, number, repeat)}


async def measure(number: int, repeat: int) -> dict[str, float]:
    return {
        **await http_round_trips(number, repeat),
        **await sqlite_transactions(number, repeat),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=1000, help="operations per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is kept")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.number < 1 or args.repeat < 1:
        parser.error("--number and --repeat must be at least 1")
    figures = asyncio.run(measure(args.number, args.repeat))
    for name, value in figures.items():
        print(f"{name:32s} {value:8.0f}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
