"""Fallbacks: what to answer when a dependency cannot.

Graceful degradation beats an error page. A :class:`Fallback` answers a failed
call with, in this order of preference:

1. **the last good answer** to the same call, if it is younger than
   ``cache_ttl_seconds`` (a cache that is read only when the call fails);
2. the result of **a handler** given the exception (another source, a computed
   default; it may re-raise);
3. **a stub value** (an empty list, "price unavailable").

With none of them available the failure propagates. Only failures that ``on``
accepts fall back (by default dependency failures and timeouts, see
``is_dependency_failure``), never a bug such as a ``TypeError``, nor a
cancellation.

::

    prices = Fallback(cache_ttl_seconds=300)
    quote = await prices.call(fetch_quote, "VTI")       # keyed by function and arguments

    @fallback(value=[])
    async def recommendations(user: str) -> list[str]: ...

    @fallback(handler=lambda exc: {"status": "degraded", "reason": type(exc).__name__})
    async def summary() -> dict[str, str]: ...
"""

from __future__ import annotations

import collections
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, ParamSpec, TypeVar

from chassis.exceptions import UpstreamError, UpstreamStatusError

__all__ = ["Fallback", "fallback", "is_dependency_failure"]

P = ParamSpec("P")
T = TypeVar("T")


def is_dependency_failure(exc: BaseException) -> bool:
    """The default fallback condition: a dependency failed, not a bug and not a "no".

    Timeouts, connection errors and every :class:`~chassis.exceptions.UpstreamError`
    except an :class:`~chassis.exceptions.UpstreamStatusError` below 500 (a 404 is
    an answer, not a failure).
    """
    if isinstance(exc, UpstreamStatusError):
        return exc.status >= 500
    return isinstance(exc, UpstreamError | ConnectionError | TimeoutError)


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


class Fallback:
    """Answers a failed call from the last good answer, a handler, or a stub.

    Args:
        value: the stub answer.
        handler: called with the exception (sync or async); its result is the answer.
        cache_ttl_seconds: keep each call's last good answer this long, to answer
            with when the call fails; ``None`` keeps none.
        max_entries: bound of that cache (least recently stored entries go first).
        on: exception types that fall back, or a predicate;
            ``is_dependency_failure`` by default.
        key: the cache key of ``call(fn, *args, **kwargs)`` from ``(*args, **kwargs)``;
            by default the function and its (hashable) arguments.
        clock: a monotonic clock (for tests).

    Attributes:
        served: failures answered by this fallback.
        cache_hits: of which from the cache.
    """

    def __init__(
        self,
        *,
        value: Any = _UNSET,
        handler: Callable[[BaseException], Any] | None = None,
        cache_ttl_seconds: float | None = None,
        max_entries: int = 1024,
        on: type[BaseException]
        | tuple[type[BaseException], ...]
        | Callable[[BaseException], bool] = is_dependency_failure,
        key: Callable[..., Hashable] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cache_ttl_seconds is not None and cache_ttl_seconds <= 0:
            raise ValueError(f"cache_ttl_seconds must be > 0, not {cache_ttl_seconds}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, not {max_entries}")
        self.value = value
        self.handler = handler
        self.cache_ttl_seconds = cache_ttl_seconds
        self.max_entries = max_entries
        if isinstance(on, type | tuple):
            types = on
            self._falls_back: Callable[[BaseException], bool] = lambda exc: isinstance(exc, types)
        else:
            self._falls_back = on
        self.key = key
        self._clock = clock
        self._cache: collections.OrderedDict[Hashable, tuple[float, Any]] = (
            collections.OrderedDict()
        )
        self.served = 0
        self.cache_hits = 0

    def __repr__(self) -> str:
        kinds = [
            name
            for name, present in (
                ("cache", self.cache_ttl_seconds is not None),
                ("handler", self.handler is not None),
                ("value", self.value is not _UNSET),
            )
            if present
        ]
        return f"<Fallback {'+'.join(kinds) or 'empty'}>"

    @property
    def caches(self) -> bool:
        """Whether good answers are kept to fall back on."""
        return self.cache_ttl_seconds is not None

    def remember(self, key: Hashable, answer: Any) -> None:
        """Store ``answer`` as the last good answer for ``key`` (when caching)."""
        if self.cache_ttl_seconds is None:
            return
        cache = self._cache
        cache[key] = (self._clock(), answer)
        cache.move_to_end(key)
        while len(cache) > self.max_entries:
            cache.popitem(last=False)

    async def answer(self, key: Hashable, exc: BaseException) -> Any:
        """The fallback answer for a call keyed ``key`` that failed with ``exc``.

        Raises:
            BaseException: ``exc`` itself when there is no answer (or what the
                handler raised).
        """
        if self.cache_ttl_seconds is not None:
            entry = self._cache.get(key)
            if entry is not None:
                stored_at, answer = entry
                if self._clock() - stored_at <= self.cache_ttl_seconds:
                    self.served += 1
                    self.cache_hits += 1
                    return answer
                del self._cache[key]
        if self.handler is not None:
            result = self.handler(exc)
            if inspect.isawaitable(result):
                result = await result
            self.served += 1
            return result
        if self.value is not _UNSET:
            self.served += 1
            return self.value
        raise exc

    def _key(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.key is not None:
            return self.key(*args, **kwargs)
        key = (fn, args, tuple(sorted(kwargs.items())))
        try:
            hash(key)
        except TypeError:
            raise TypeError(
                "Fallback caches by the function and its arguments, and these are not "
                "hashable; pass key=... to Fallback"
            ) from None
        return key

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)``; if it fails with one of ``on``, the fallback answer."""
        key = self._key(fn, args, kwargs) if self.cache_ttl_seconds is not None else None
        return await self.run(key, fn, *args, **kwargs)

    async def run(
        self, key: Hashable, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Like :meth:`call`, with an explicit cache key."""
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            if not self._falls_back(exc):
                raise
            answer: T = await self.answer(key, exc)
            return answer
        self.remember(key, result)
        return result

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate an async function (its cache is keyed by the function and arguments)."""
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"fallback() decorates async functions, not {fn!r}")

        @functools.wraps(fn)
        async def degraded(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.call(fn, *args, **kwargs)

        degraded.fallback = self  # type: ignore[attr-defined]
        return degraded


def fallback(
    *,
    value: Any = _UNSET,
    handler: Callable[[BaseException], Any] | None = None,
    cache_ttl_seconds: float | None = None,
    max_entries: int = 1024,
    on: type[BaseException]
    | tuple[type[BaseException], ...]
    | Callable[[BaseException], bool] = is_dependency_failure,
    key: Callable[..., Hashable] | None = None,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorator: a new :class:`Fallback` with these arguments around an async function."""
    return Fallback(
        value=value,
        handler=handler,
        cache_ttl_seconds=cache_ttl_seconds,
        max_entries=max_entries,
        on=on,
        key=key,
    )
