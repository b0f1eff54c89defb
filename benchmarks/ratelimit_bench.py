"""Micro-benchmark: what one in-memory admission decision of ``chassis.ratelimit`` costs.

Each case is timed with :mod:`timeit` on the process' CPU clock (so time spent
descheduled on a busy machine is not counted), best of ``--repeat`` runs of
``--number`` calls, and reported in nanoseconds per decision. The cases, all on
the in-memory path (no Redis, no HTTP):

* ``TokenBucket.try_acquire``: one bucket;
* ``KeyedLimiter.try_acquire``: one key, and 10 000 keys in turn in a full table
  (every call moves a key to the recent end of the LRU table);
* ``KeyedLimiter.take``: the same, answering the balance (the middleware's decision);
* ``KeyedLimiter.decide``: the same, returning a ``Decision`` (what the answer headers need);
* ``KeyedLimiter.try_acquire`` on a flood of new keys: every call evicts one;
* ``PriorityShedder.shed_reason``: in-flight and event-loop lag thresholds;
* ``ConcurrencyLimiter`` ``try_acquire`` + ``release``.

Usage::

    python benchmarks/ratelimit_bench.py
    python benchmarks/ratelimit_bench.py --budget-ns 1000    # exit 1 if a decision costs more
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
import timeit
from collections.abc import Callable

from chassis.health import LoopLagMonitor
from chassis.ratelimit import (
    ConcurrencyLimiter,
    KeyedLimiter,
    Priority,
    PriorityShedder,
    TokenBucket,
)

KEYS = 10_000
DECISIONS = frozenset(
    {
        "TokenBucket.try_acquire",
        "KeyedLimiter.try_acquire, 1 key",
        f"KeyedLimiter.try_acquire, {KEYS} keys",
        f"KeyedLimiter.take, {KEYS} keys",
    }
)
"""The admission decisions ``--budget-ns`` holds to its budget. ``decide`` also builds
the numbers of the answer headers, and the new-key case evicts on every call (a key
flood); both are reported, not budgeted."""
CPU_CLOCK = time.process_time


def cases() -> dict[str, Callable[[], object]]:
    """Name -> a zero-argument call making one decision."""
    rate = 1e12  # always admitted: the common path of a healthy service
    bucket = TokenBucket(rate)
    one_key = KeyedLimiter(rate, max_keys=KEYS)
    many = KeyedLimiter(rate, max_keys=KEYS)
    keys = [f"c:10.0.{i // 256}.{i % 256}" for i in range(KEYS)]
    for key in keys:
        many.try_acquire(key)
    next_key = itertools.cycle(keys).__next__
    flood = KeyedLimiter(rate, max_keys=KEYS)
    new_key = itertools.count().__next__
    shedder = PriorityShedder(max_in_flight=100, lag_monitor=LoopLagMonitor())
    concurrency = ConcurrencyLimiter(100)

    def acquire_release() -> None:
        concurrency.try_acquire()
        concurrency.release()

    return {
        "TokenBucket.try_acquire": bucket.try_acquire,
        "KeyedLimiter.try_acquire, 1 key": lambda: one_key.try_acquire("c:127.0.0.1"),
        f"KeyedLimiter.try_acquire, {KEYS} keys": lambda: many.try_acquire(next_key()),
        f"KeyedLimiter.take, {KEYS} keys": lambda: many.take(next_key()),
        f"KeyedLimiter.decide, {KEYS} keys": lambda: many.decide(next_key()),
        "KeyedLimiter.try_acquire, new key (evicts)": lambda: flood.try_acquire(new_key()),
        "PriorityShedder.shed_reason": lambda: shedder.shed_reason(Priority.NORMAL, 10),
        "ConcurrencyLimiter acquire+release": acquire_release,
    }


def empty_call_ns(number: int, repeat: int) -> float:
    """The cost of calling a no-op lambda, which every case pays too."""
    noop: Callable[[], None] = lambda: None  # noqa: E731
    return min(timeit.repeat(noop, timer=CPU_CLOCK, number=number, repeat=repeat)) / number * 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=7, help="runs per case (best is kept)")
    parser.add_argument(
        "--budget-ns",
        type=float,
        default=None,
        help="exit 1 if an admission decision (see DECISIONS) costs more than this",
    )
    args = parser.parse_args(argv)
    print(f"Python {platform.python_version()} on {platform.machine()}, {platform.system()}")
    print(f"best of {args.repeat} x {args.number:,} calls; CPU ns per call\n")
    results: dict[str, float] = {}
    for name, call in cases().items():
        best = min(timeit.repeat(call, timer=CPU_CLOCK, number=args.number, repeat=args.repeat))
        results[name] = best / args.number * 1e9
        print(f"  {name:<45} {results[name]:8.0f} ns")
    baseline = empty_call_ns(args.number, args.repeat)
    print(f"  {'(an empty lambda call, included above)':<45} {baseline:8.0f} ns")
    if args.budget_ns is not None:
        over = {
            name: ns for name, ns in results.items() if name in DECISIONS and ns > args.budget_ns
        }
        if over:
            print(f"\nover the {args.budget_ns:g} ns budget: {', '.join(over)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
