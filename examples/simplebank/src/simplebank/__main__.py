"""The ``simplebank`` command (also ``python -m simplebank``).

::

    simplebank demo [--once] [--data-dir DIR] [--port N] [--log-level LEVEL]
    simplebank exchange [--port N] [--register CONSUL_URL]
    simplebank consul [--port N]

``demo`` runs every service in this process and a scripted scenario through the
gateway (:mod:`simplebank.demo`). For the one-process-per-service mode
(``docs/simplebank/running.md``): ``exchange`` serves the exchange stand-in alone
(registered in Consul with ``--register``), ``consul`` serves the chassis' Consul
stand-in (:class:`chassis.testing.ConsulStandIn`) when no real Consul agent runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from chassis.testing import ConsulStandIn

from .demo import run_demo
from .exchange import Exchange

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simplebank", description="SimpleBank on aiochassis.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run every service in one process and a scripted scenario"
    )
    demo.add_argument("--once", action="store_true", help="exit after the scenario")
    demo.add_argument("--data-dir", type=Path, help="keep the SQLite files here (default: temp)")
    demo.add_argument("--port", type=int, default=8080, help="gateway port (0: any free one)")
    demo.add_argument(
        "--log-level",
        default="ERROR",
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="the services' log level (logs go to stdout)",
    )
    exchange = commands.add_parser("exchange", help="serve the exchange stand-in")
    exchange.add_argument("--port", type=int, default=9100)
    exchange.add_argument(
        "--register", metavar="CONSUL_URL", help="register it in Consul as 'exchange'"
    )
    consul = commands.add_parser("consul", help="serve the chassis' Consul stand-in")
    consul.add_argument("--port", type=int, default=8500)
    return parser


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def _serve_exchange(port: int, consul: str | None) -> None:
    async with Exchange(port=port) as exchange:
        if consul is not None:
            registration = {
                "ID": f"exchange-{exchange.upstream.port}",
                "Name": "exchange",
                "Address": "127.0.0.1",
                "Port": exchange.upstream.port,
            }
            async with (
                aiohttp.ClientSession() as session,
                session.put(consul + "/v1/agent/service/register", json=registration) as answer,
            ):
                answer.raise_for_status()
        print(f"exchange stand-in at {exchange.url} (Ctrl-C to stop)", flush=True)
        await _until_signalled()


async def _serve_consul(port: int) -> None:
    async with ConsulStandIn(port=port) as consul:
        print(f"Consul stand-in at {consul.url} (Ctrl-C to stop)", flush=True)
        await _until_signalled()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``simplebank`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"simplebank: --port must be between 0 and 65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        if args.command == "exchange":
            asyncio.run(_serve_exchange(args.port, args.register))
            return 0
        if args.command == "consul":
            asyncio.run(_serve_consul(args.port))
            return 0

        def out(line: str) -> None:
            print(line, flush=True)

        return asyncio.run(
            run_demo(
                once=args.once,
                data_dir=args.data_dir,
                port=args.port,
                log_level=args.log_level,
                out=out,
            )
        )
    except OSError as exc:
        print(f"simplebank: cannot serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
