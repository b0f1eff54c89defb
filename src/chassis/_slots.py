"""``Slots``: the FIFO admission core shared by the bulkhead and the concurrency limiter.

At most ``limit`` holders at once. Waiters are served first come, first served: a
released slot passes straight to the oldest waiter (the holder count is unchanged),
so a newcomer can never overtake the queue. What a full queue or an expired wait
means (``BulkheadFull``, ``Overloaded``) is for the caller to say.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from chassis import _compat

__all__ = ["Slots"]


class Slots:
    """``limit`` slots with a FIFO hand-off queue."""

    __slots__ = ("_waiters", "held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        """Slots held now."""
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot now."""
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits for it."""
        if self.held < self.limit and not self._waiters:
            self.held += 1
            return True
        return False

    async def wait(self, timeout_seconds: float | None) -> None:
        """Queue for a slot; it is ours when this returns.

        Raises:
            TimeoutError: no slot was handed over within ``timeout_seconds``.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with _compat.timeout(timeout_seconds):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as we gave up: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back: to the oldest waiter if any, else to the pool."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter
                return
        self.held -= 1
