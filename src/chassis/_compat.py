"""Small shims over differences between the supported Python versions."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

__all__ = ["timeout"]

if sys.version_info >= (3, 11):
    timeout = asyncio.timeout
else:

    @contextlib.asynccontextmanager
    async def timeout(delay: float | None) -> AsyncIterator[None]:
        """``asyncio.timeout`` for Python 3.10: raises the built-in ``TimeoutError``."""
        if delay is None:
            yield
            return
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        fired = False

        def fire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        handle = loop.call_later(delay, fire)
        try:
            yield
        except asyncio.CancelledError:
            if fired:
                raise TimeoutError from None
            raise
        finally:
            handle.cancel()
