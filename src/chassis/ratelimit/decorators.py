"""Request keys and the decorators :func:`rate_limited` and :func:`concurrency_limited`."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, ParamSpec, TypeVar, cast

from aiohttp import web

from chassis.ratelimit.buckets import Clock, KeyedLimiter, TokenBucket
from chassis.ratelimit.concurrency import ConcurrencyLimiter, _require_coroutine_function

__all__ = ["RequestKey", "concurrency_limited", "rate_limited", "request_key"]

P = ParamSpec("P")
R = TypeVar("R")
RequestKey = Callable[[web.Request], str]
"""A function of a request naming its rate-limit bucket."""

_MAX_KEY_CHARS = 128


# -- request keys -----------------------------------------------------------------------
def _bounded(key: str) -> str:
    """``key``, or a digest of it when long, so the key table's memory stays bounded."""
    if len(key) <= _MAX_KEY_CHARS:
        return key
    return "sha:" + hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=16).hexdigest()


def _client_key(request: web.Request) -> str:
    return "c:" + (request.remote or "")


def _global_key(request: web.Request) -> str:
    return "*"


def request_key(spec: str) -> RequestKey:
    """The function of a request that a key spec names.

    ``client`` is the peer address, ``header:<Name>`` that header's value (the
    peer address when it is missing), ``global`` one key for every request.

    Raises:
        ValueError: the spec is none of these.
    """
    if spec == "client":
        return _client_key
    if spec == "global":
        return _global_key
    name = spec.removeprefix("header:").strip()
    if spec.startswith("header:") and name:

        def header_key(request: web.Request) -> str:
            value = request.headers.get(name)
            return _bounded("h:" + value) if value else _client_key(request)

        return header_key
    raise ValueError(f"unknown rate-limit key {spec!r}: use client, header:<Name> or global")


def _request_of(args: Sequence[Any]) -> web.BaseRequest:
    for arg in args:
        if isinstance(arg, web.BaseRequest):
            return arg
        if isinstance(arg, web.View):
            return arg.request
    raise TypeError("a request key needs a handler taking an aiohttp request")


def rate_limited(
    rate: float | None = None,
    burst: int | None = None,
    *,
    key: str | Callable[..., Hashable] | None = None,
    limiter: TokenBucket | KeyedLimiter | None = None,
    max_keys: int = 10_000,
    clock: Clock = time.monotonic,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorator refusing calls beyond ``rate`` per second with :class:`RateLimited` (429).

    Without ``key`` every call shares one :class:`TokenBucket`. With ``key``, a
    :class:`KeyedLimiter` keeps one bucket per key: a key spec (``client``,
    ``header:<Name>``, ``global``) on a handler, or a function of the call's
    arguments. Pass ``limiter`` to share an existing object. On a handler, admitted
    responses carry the ``RateLimit-*`` headers. The object is ``wrapper.limiter``.

    Raises:
        TypeError: the decorated function is not an ``async def``.
        ValueError: neither ``rate`` nor ``limiter`` is given, or both are.
    """
    if (rate is None) == (limiter is None):
        raise ValueError("pass either rate (and burst) or a limiter")
    if limiter is None:
        assert rate is not None
        limiter = (
            TokenBucket(rate, burst, clock=clock)
            if key is None
            else KeyedLimiter(rate, burst, max_keys=max_keys, clock=clock)
        )
    keyed: KeyedLimiter | None = limiter if isinstance(limiter, KeyedLimiter) else None
    if keyed is not None and key is None:
        raise ValueError("a KeyedLimiter needs a key")
    if keyed is None and key is not None:
        raise ValueError("a TokenBucket takes no key; use a KeyedLimiter")
    key_of: Callable[..., Hashable] | None = None
    if isinstance(key, str):
        of_request = request_key(key)

        def key_of(*args: Any, **kwargs: Any) -> Hashable:
            return of_request(cast(web.Request, _request_of(args)))

    elif key is not None:
        key_of = key
    bucket = limiter

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        _require_coroutine_function(fn, "rate_limited")

        @functools.wraps(fn)
        async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
            if keyed is not None:
                assert key_of is not None
                decision = keyed.decide(key_of(*args, **kwargs))
            else:
                decision = cast(TokenBucket, bucket).decide()
            if not decision.allowed:
                raise decision.refusal()
            result = await fn(*args, **kwargs)
            if isinstance(result, web.StreamResponse) and not result.prepared:
                result.headers.update(decision.headers())
            return result

        limited.__dict__["limiter"] = bucket
        return limited

    return decorate


def concurrency_limited(
    max_in_flight: int | None = None,
    *,
    queue: int = 0,
    queue_timeout_seconds: float = 1.0,
    limiter: ConcurrencyLimiter | None = None,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorator admitting ``max_in_flight`` calls at once (:class:`ConcurrencyLimiter`).

    Refused calls raise :class:`~chassis.exceptions.Overloaded` (503). Pass
    ``limiter`` to share one limit between functions. The object is ``wrapper.limiter``.

    Raises:
        TypeError: the decorated function is not an ``async def``.
        ValueError: neither ``max_in_flight`` nor ``limiter`` is given, or both are.
    """
    if (max_in_flight is None) == (limiter is None):
        raise ValueError("pass either max_in_flight (and queue) or a limiter")
    if limiter is None:
        assert max_in_flight is not None
        limiter = ConcurrencyLimiter(
            max_in_flight, queue=queue, queue_timeout_seconds=queue_timeout_seconds
        )
    return limiter
