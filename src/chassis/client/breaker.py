"""Circuit breakers: stop calling a dependency that keeps failing, and find out when it is back.

A :class:`CircuitBreaker` is **closed** while calls succeed. After
``failure_threshold`` consecutive failures it **opens**: calls fail at once with
:class:`~chassis.exceptions.CircuitOpen`, without touching the network, which
spares both the caller (no waiting on timeouts) and the dependency (no load while
it recovers). After ``recovery_seconds`` it lets **one** call through, half-open:
success closes the circuit, failure opens it for another ``recovery_seconds``.

The state machine is `purgatory <https://github.com/mardiros/purgatory>`_'s
(in-memory unit of work); this module adds what a client needs on top: a
single probe while half-open, a verdict per exception (a cancelled call, or a
timeout the *caller's* deadline caused, says nothing about the dependency),
state-change callbacks, and errors from the chassis' hierarchy.
``recovery_seconds`` is measured on the wall clock, as purgatory does.

::

    breaker = CircuitBreaker("ledger-db", failure_threshold=5, recovery_seconds=30)

    async with breaker:
        await ledger.write(entry)

    @breaker                       # the same breaker guards every decorated function
    async def read(account: str) -> Balance: ...

The :class:`~chassis.client.ServiceClient` keeps one breaker per upstream
*instance*, so one bad instance is avoided while its siblings keep serving.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

from chassis.exceptions import CircuitOpen

if TYPE_CHECKING:
    from purgatory.service._async.circuitbreaker import AsyncCircuitBreaker

__all__ = [
    "CIRCUIT_STATE_VALUES",
    "CircuitBreaker",
    "CircuitState",
    "circuit_breaker",
    "count_every_exception",
]

P = ParamSpec("P")
T = TypeVar("T")

CircuitState = Literal["closed", "half_open", "open"]

CIRCUIT_STATE_VALUES: Mapping[CircuitState, int] = MappingProxyType(
    {"closed": 0, "half_open": 1, "open": 2}
)
"""How a state is exported as a metric value."""

_FROM_PURGATORY: dict[str, CircuitState] = {
    "closed": "closed",
    "half-opened": "half_open",
    "opened": "open",
}

log = logging.getLogger("chassis.client")


def count_every_exception(exc: BaseException) -> bool:
    """The default verdict: every ``Exception`` is a failure of the dependency."""
    return True


class CircuitBreaker:
    """Fails fast while a dependency keeps failing; one probe at a time finds out when it is back.

    Usable as ``async with breaker:``, as ``await breaker.call(fn, ...)`` and as a
    decorator; all uses of one object share its state.

    Args:
        name: names the circuit in errors, logs and metrics (``market-data/10.0.0.5:8080``).
        failure_threshold: consecutive failures that open the circuit.
        recovery_seconds: how long it stays open before a half-open probe.
        is_failure: the verdict on an exception: ``True`` counts a failure,
            ``False`` a success, ``None`` neither. Cancellation is always neither.
        on_state_change: called with the breaker and its new state.
        service: the ``service`` of the :class:`~chassis.exceptions.CircuitOpen`
            raised (defaults to ``name``).
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        recovery_seconds: float = 30.0,
        is_failure: Callable[[BaseException], bool | None] = count_every_exception,
        on_state_change: Callable[[CircuitBreaker, CircuitState], None] | None = None,
        service: str | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, not {failure_threshold}")
        if recovery_seconds <= 0:
            raise ValueError(f"recovery_seconds must be > 0, not {recovery_seconds}")
        self.name = name
        self.service = name if service is None else service
        self.failure_threshold = failure_threshold
        self.recovery_seconds = recovery_seconds
        self.is_failure = is_failure
        self.on_state_change = on_state_change
        # Imported here, not at module level: purgatory pulls in redis when it is
        # installed, and `import chassis` must not load optional dependencies.
        from purgatory import AsyncCircuitBreakerFactory
        from purgatory.domain.model import OpenedState

        self._opened_state: type[BaseException] = OpenedState
        self._factory = AsyncCircuitBreakerFactory(
            default_threshold=failure_threshold, default_ttl=recovery_seconds
        )
        self._factory.add_listener(self._on_event)
        self._breaker: AsyncCircuitBreaker | None = None
        self._probe: asyncio.Task[Any] | None = None

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name} {self.state}>"

    # -- state ----------------------------------------------------------------------
    @property
    def state(self) -> CircuitState:
        """``closed``, ``half_open`` or ``open``.

        An open circuit whose recovery time has passed reads ``open`` until the
        next call becomes its probe.
        """
        if self._breaker is None:
            return "closed"
        return _FROM_PURGATORY[self._breaker.context.state]

    @property
    def failure_count(self) -> int:
        """Consecutive failures counted while closed."""
        if self._breaker is None:
            return 0
        return self._breaker.context.failure_count or 0

    @property
    def allows_request(self) -> bool:
        """Whether a call would be let through now (without letting one through)."""
        breaker = self._breaker
        if breaker is None:
            return True
        context = breaker.context
        state = context.state
        if state == "closed":
            return True
        if state == "half-opened":
            return self._probe is None
        opened_at = context.opened_at
        return opened_at is None or time.time() > opened_at + context.ttl

    @property
    def retry_after(self) -> float | None:
        """Seconds until an open circuit lets a probe through; ``None`` unless open."""
        breaker = self._breaker
        if breaker is None or breaker.context.state != "opened":
            return None
        opened_at = breaker.context.opened_at or 0.0
        return max(0.0, opened_at + breaker.context.ttl - time.time())

    def _on_event(self, name: str, event_name: str, event: Any) -> None:
        if event_name != "state_changed":
            return
        state = _FROM_PURGATORY.get(getattr(event, "state", ""), "closed")
        if state == "open":
            log.warning(
                "circuit %s opened; failing fast for %.3gs",
                self.name,
                self.recovery_seconds,
                extra={"event": "circuit_opened", "circuit": self.name},
            )
        else:
            log.info(
                "circuit %s is %s",
                self.name,
                state.replace("_", "-"),
                extra={"event": f"circuit_{state}", "circuit": self.name},
            )
        if self.on_state_change is not None:
            self.on_state_change(self, state)

    # -- guarding a call ------------------------------------------------------------
    async def _get(self) -> AsyncCircuitBreaker:
        breaker = await self._factory.get_breaker(self.name)
        if self._breaker is None:
            self._breaker = breaker
        return self._breaker

    def _open_error(self, detail: str) -> CircuitOpen:
        return CircuitOpen(
            f"circuit {self.name} is {detail}; failing fast",
            service=self.service,
            retry_after=self.retry_after,
        )

    async def _flush(self, breaker: AsyncCircuitBreaker) -> None:
        messages = breaker.context.messages
        while messages:
            await breaker.messagebus.handle(messages.pop(0), breaker.uow)

    async def __aenter__(self) -> CircuitBreaker:
        breaker = self._breaker or await self._get()
        context = breaker.context
        if context.state == "half-opened" and self._probe is not None:
            raise self._open_error("half-open and its probe is in flight")
        try:
            await breaker.__aenter__()
        except self._opened_state as exc:
            # purgatory raises the state object itself, the same instance every time:
            # drop its traceback so frames do not pile up on it, and do not chain it.
            exc.__traceback__ = None
            raise self._open_error("open") from None
        if context.state == "half-opened":
            self._probe = asyncio.current_task()
        if context.messages:
            await self._flush(breaker)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        breaker = self._breaker
        assert breaker is not None, "__aexit__ without __aenter__"
        if self._probe is not None and self._probe is asyncio.current_task():
            self._probe = None
        if exc is None:
            await breaker.__aexit__(None, None, None)
            return
        verdict = self.is_failure(exc) if isinstance(exc, Exception) else None
        if verdict is None:
            await self._flush(breaker)
        elif verdict:
            await breaker.__aexit__(exc_type, exc, tb)
        else:
            await breaker.__aexit__(None, None, None)

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker.

        Raises:
            CircuitOpen: the circuit is open (or half-open with its probe in flight).
        """
        async with self:
            return await fn(*args, **kwargs)

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate an async function; every decorated function shares this breaker."""
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"a circuit breaker decorates async functions, not {fn!r}")

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            async with self:
                return await fn(*args, **kwargs)

        guarded.circuit_breaker = self  # type: ignore[attr-defined]
        return guarded


def circuit_breaker(
    name: str,
    *,
    failure_threshold: int = 5,
    recovery_seconds: float = 30.0,
    is_failure: Callable[[BaseException], bool | None] = count_every_exception,
    on_state_change: Callable[[CircuitBreaker, CircuitState], None] | None = None,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorator: a new :class:`CircuitBreaker` with these arguments around an async function."""
    return CircuitBreaker(
        name,
        failure_threshold=failure_threshold,
        recovery_seconds=recovery_seconds,
        is_failure=is_failure,
        on_state_change=on_state_change,
    )
