"""Deadlines: one time budget per request, carried from service to service.

A caller that will wait 300 ms for an answer gains nothing from work that finishes
after 300 ms, nor from the calls that work makes. So the budget travels with the
request:

* a chassis client sends what is left of its budget in the
  ``X-Request-Deadline-Ms`` header: the **remaining** milliseconds as an integer
  (relative, so the two hosts' clocks need not agree; rounded down, so a
  downstream never believes it has more time than it has);
* :class:`DeadlinePropagation`, a server middleware, reads that header into a
  context variable for the duration of the request;
* every :class:`~chassis.client.ServiceClient` call made while handling it is
  clipped to that deadline, and sends on what is left of it.

:func:`timeout` sets (or tightens) the deadline for a block or an async function
and enforces it::

    async with timeout(2.0):                 # clipped by an inbound deadline
        quote = await market.get_json("/prices/VTI")

    @timeout(2.0)
    async def refresh() -> None: ...

Deadlines are :func:`time.monotonic` instants; :func:`current_deadline` and
:func:`remaining_seconds` read the one in force.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import sys
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar

from aiohttp import web

from chassis.exceptions import DeadlineExceeded

__all__ = [
    "DEADLINE_HEADER",
    "DeadlinePropagation",
    "Timeout",
    "current_deadline",
    "format_deadline",
    "parse_deadline",
    "remaining_seconds",
    "timeout",
]

P = ParamSpec("P")
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEADLINE_HEADER = "X-Request-Deadline-Ms"
"""Header carrying the caller's remaining budget in whole milliseconds (e.g. ``2500``)."""

_MAX_HEADER_DIGITS = 10  # ~115 days: anything longer is not a deadline worth honouring

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "chassis_deadline", default=None
)


def current_deadline() -> float | None:
    """The deadline in force, as a :func:`time.monotonic` instant, or ``None``."""
    return _deadline.get()


def remaining_seconds() -> float | None:
    """Seconds left before the deadline in force (negative once past it), or ``None``."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def format_deadline(seconds: float) -> str:
    """The header value for a remaining budget: whole milliseconds, rounded down, at least 1."""
    return str(max(1, int(seconds * 1000)))


def parse_deadline(value: str) -> float | None:
    """Seconds from a header value (``"250"`` -> 0.25); ``None`` if it is not a valid budget."""
    value = value.strip()
    if not value or len(value) > _MAX_HEADER_DIGITS or not value.isdigit() or not value.isascii():
        return None
    return int(value) / 1000


class _Timer(Protocol):
    """The part of ``asyncio.Timeout`` the stages use."""

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...

    def expired(self) -> bool: ...


if sys.version_info >= (3, 11):

    def _timer(delay: float) -> _Timer:
        return asyncio.timeout(delay)

else:

    class _CancelTimer:
        """``asyncio.timeout`` for Python 3.10: raises the built-in ``TimeoutError``."""

        __slots__ = ("_delay", "_fired", "_handle", "_task")

        def __init__(self, delay: float) -> None:
            self._delay = delay
            self._fired = False
            self._handle: asyncio.TimerHandle | None = None
            self._task: asyncio.Task[Any] | None = None

        async def __aenter__(self) -> _CancelTimer:
            self._task = asyncio.current_task()
            if self._task is None:
                raise RuntimeError("a timeout needs a running task")
            self._handle = asyncio.get_running_loop().call_later(self._delay, self._fire)
            return self

        def _fire(self) -> None:
            self._fired = True
            assert self._task is not None
            self._task.cancel()

        async def __aexit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> bool | None:
            if self._handle is not None:
                self._handle.cancel()
            if self._fired and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
            return None

        def expired(self) -> bool:
            return self._fired

    def _timer(delay: float) -> _Timer:
        return _CancelTimer(delay)


class Timeout:
    """A time limit for a block or an async function, clipped by the deadline in force.

    Inside it, :func:`current_deadline` is the earlier of ``now + seconds`` and the
    enclosing deadline (an inbound request's, an outer :class:`Timeout`'s), so the
    calls made inside are clipped too. When it runs out the block is cancelled
    and :class:`~chassis.exceptions.DeadlineExceeded` is raised.

    One object guards one ``async with`` block at a time; used as a decorator it
    makes a fresh limit per call.

    Args:
        seconds: the limit; ``None`` only inherits (and enforces) the enclosing deadline.
    """

    __slots__ = ("_limit", "_timer", "_token", "seconds")

    def __init__(self, seconds: float | None) -> None:
        if seconds is not None and seconds < 0:
            raise ValueError(f"timeout must be >= 0 seconds, not {seconds!r}")
        self.seconds = seconds
        self._timer: _Timer | None = None
        self._token: contextvars.Token[float | None] | None = None
        self._limit: float | None = None

    def __repr__(self) -> str:
        return f"<Timeout {self.seconds}s>"

    async def __aenter__(self) -> Timeout:
        if self._token is not None:
            raise RuntimeError("this Timeout is already in use; make one per block")
        now = time.monotonic()
        deadline = None if self.seconds is None else now + self.seconds
        inbound = _deadline.get()
        if inbound is not None and (deadline is None or inbound < deadline):
            deadline = inbound
        self._token = _deadline.set(deadline)
        if deadline is not None:
            self._limit = max(0.0, deadline - now)
            self._timer = _timer(self._limit)
            await self._timer.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        timer, token = self._timer, self._token
        self._timer = self._token = None
        try:
            if timer is not None:
                await timer.__aexit__(exc_type, exc, tb)
        except TimeoutError as error:
            if timer is not None and timer.expired():
                raise DeadlineExceeded(
                    f"deadline exceeded after {self._limit:.3f}s", timeout_seconds=self._limit
                ) from error
            raise
        finally:
            if token is not None:
                _deadline.reset(token)

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` within a fresh limit of ``seconds``."""
        async with Timeout(self.seconds):
            return await fn(*args, **kwargs)

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate an async function: every call gets its own limit of ``seconds``."""
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"timeout() decorates async functions, not {fn!r}")

        @functools.wraps(fn)
        async def limited(*args: P.args, **kwargs: P.kwargs) -> T:
            async with Timeout(self.seconds):
                return await fn(*args, **kwargs)

        limited.timeout = self  # type: ignore[attr-defined]
        return limited


def timeout(seconds: float | None) -> Timeout:
    """A :class:`Timeout` of ``seconds``: ``async with timeout(2):`` or ``@timeout(2)``."""
    return Timeout(seconds)


class DeadlinePropagation:
    """Server middleware: an inbound ``X-Request-Deadline-Ms`` becomes the request's deadline.

    While the handler runs, :func:`current_deadline` is the caller's deadline, so
    every :class:`~chassis.client.ServiceClient` call (and every :func:`timeout`) made
    on the request's behalf is clipped to it. A missing or malformed header leaves
    no deadline; the handler itself is not cancelled (the caller's own timeout
    does that).

    Args:
        header: the header to read.
        max_seconds: the longest inbound budget honoured; longer ones are clipped.
    """

    def __init__(self, *, header: str = DEADLINE_HEADER, max_seconds: float | None = None) -> None:
        self.header = header
        self.max_seconds = max_seconds

    def __repr__(self) -> str:
        return f"<DeadlinePropagation {self.header}>"

    def setup(self, app: web.Application) -> None:
        """Put the middleware first in ``app``'s chain; it owns no resources."""
        app.middlewares.insert(0, self.middleware)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The aiohttp middleware."""
        raw = request.headers.get(self.header)
        if raw is None:
            return await handler(request)
        seconds = parse_deadline(raw)
        if seconds is None:
            return await handler(request)
        if self.max_seconds is not None and seconds > self.max_seconds:
            seconds = self.max_seconds
        token = _deadline.set(time.monotonic() + seconds)
        try:
            return await handler(request)
        finally:
            _deadline.reset(token)
