"""Bulkheads: a cap on concurrent calls to one dependency.

When a dependency slows down, calls to it pile up, and each holds memory, a
connection and a task. A :class:`Bulkhead` lets at most ``max_concurrency`` calls
in at once; the next ``max_queue`` wait for a slot (never past the deadline in
force), and any more fail at once with :class:`~chassis.exceptions.BulkheadFull`.
A slow upstream then costs a bounded share of the service, and the rest of it
keeps working.

::

    ledger = Bulkhead(20, max_queue=10, name="ledger-db")

    async with ledger:
        await write(entry)

    @ledger
    async def read(account: str) -> Balance: ...
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import ParamSpec, TypeVar

from chassis._slots import Slots
from chassis.exceptions import BulkheadFull

from .deadline import _deadline

__all__ = ["Bulkhead", "bulkhead"]

P = ParamSpec("P")
T = TypeVar("T")


class Bulkhead:
    """At most ``max_concurrency`` calls at once; ``max_queue`` more may wait for a slot.

    Slots are handed to waiters first come, first served. A waiter gives up with
    :class:`~chassis.exceptions.BulkheadFull` when ``max_wait_seconds`` or the
    deadline in force (whichever comes first) runs out.

    Args:
        max_concurrency: calls admitted at once.
        max_queue: calls that may wait for a slot; 0 rejects at once when full.
        max_wait_seconds: the longest wait for a slot; ``None``: the deadline's.
        name: the ``service`` of the errors raised.

    Attributes:
        active: calls holding a slot.
        rejected: calls refused since the bulkhead was made.
    """

    def __init__(
        self,
        max_concurrency: int,
        *,
        max_queue: int = 0,
        max_wait_seconds: float | None = None,
        name: str = "",
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, not {max_concurrency}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, not {max_queue}")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.max_wait_seconds = max_wait_seconds
        self.name = name
        self.rejected = 0
        self._slots = Slots(max_concurrency)

    def __repr__(self) -> str:
        return (
            f"<Bulkhead {self.name or '(unnamed)'} {self.active}/{self.max_concurrency} "
            f"waiting={self.waiting}>"
        )

    @property
    def active(self) -> int:
        """Calls holding a slot."""
        return self._slots.held

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot."""
        return self._slots.waiting

    def _full(self, why: str) -> BulkheadFull:
        self.rejected += 1
        return BulkheadFull(
            f"bulkhead {self.name or '(unnamed)'} is full ({self.max_concurrency} in flight, "
            f"{why})",
            service=self.name,
        )

    def try_acquire(self) -> bool:
        """Take a slot if one is free now, without waiting."""
        return self._slots.try_acquire()

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if there is room in it.

        Raises:
            BulkheadFull: no slot and no room to wait, or the wait ran out of time.
        """
        if self.try_acquire():
            return
        if self._slots.waiting >= self.max_queue:
            raise self._full(f"{self.max_queue} waiting")
        wait = self.max_wait_seconds
        deadline = _deadline.get()
        if deadline is not None:
            left = deadline - time.monotonic()
            wait = left if wait is None else min(wait, left)
        if wait is not None and wait <= 0:
            raise self._full("no time left to wait")
        try:
            await self._slots.wait(wait)
        except TimeoutError:
            raise self._full(f"no slot within {wait:.3f}s") from None

    def release(self) -> None:
        """Give a slot back (to the first waiter, if any)."""
        self._slots.release()

    async def __aenter__(self) -> Bulkhead:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._slots.release()

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` holding a slot."""
        async with self:
            return await fn(*args, **kwargs)

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate an async function; every decorated function shares these slots."""
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"a bulkhead decorates async functions, not {fn!r}")

        @functools.wraps(fn)
        async def bounded(*args: P.args, **kwargs: P.kwargs) -> T:
            async with self:
                return await fn(*args, **kwargs)

        bounded.bulkhead = self  # type: ignore[attr-defined]
        return bounded


def bulkhead(
    max_concurrency: int,
    *,
    max_queue: int = 0,
    max_wait_seconds: float | None = None,
    name: str = "",
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorator: a new :class:`Bulkhead` with these arguments around an async function."""
    return Bulkhead(
        max_concurrency, max_queue=max_queue, max_wait_seconds=max_wait_seconds, name=name
    )
