"""The Redis back end: token buckets shared by every instance of a service."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from chassis import _compat
from chassis.ratelimit.buckets import Clock, Decision, KeyedLimiter, _check_rate

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisLimiter"]

log = logging.getLogger("chassis.ratelimit")

_REDIS_MAX_CONNECTIONS = 32

# KEYS[1]: the bucket. ARGV: rate, burst, cost. Redis' own clock, so instances agree.
_TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1])
local updated = tonumber(state[2])
if tokens == nil or updated == nil then
  tokens = burst
  updated = now
end
if now > updated then
  tokens = math.min(burst, tokens + (now - updated) * rate)
  updated = now
end
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'updated', string.format('%.6f', updated))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, string.format('%.17g', tokens)}
"""


class RedisLimiter:
    """A token bucket per key kept in Redis, shared by every instance using the same prefix.

    One atomic Lua script per decision refills and takes tokens by Redis' clock.
    When Redis fails or answers slower than ``timeout_seconds``, decisions fall
    back to ``fallback`` (a local :class:`KeyedLimiter`, so each instance then
    admits the full limit), the failure is logged once, and every local decision
    is counted in :attr:`fallbacks`. Redis is tried again by one decision after
    ``retry_interval_seconds``, never by every request.

    Args:
        client: a ``redis.asyncio.Redis`` client; its owner closes it.
        rate, burst: as for :class:`TokenBucket`.
        prefix: prepended to every key in Redis.
        fallback: the local limiter used while Redis is unreachable; by default one
            with the same rate and burst.
        timeout_seconds: budget of one Redis decision.
        retry_interval_seconds: how long to limit locally after a failure.
        clock: monotonic seconds, for the retry interval.
    """

    def __init__(
        self,
        client: Redis,
        rate: float,
        burst: int | None = None,
        *,
        prefix: str = "chassis:ratelimit:",
        fallback: KeyedLimiter | None = None,
        timeout_seconds: float = 0.1,
        retry_interval_seconds: float = 2.0,
        clock: Clock = time.monotonic,
    ) -> None:
        from redis.exceptions import RedisError

        self.rate, self.burst = _check_rate(rate, burst)
        self.prefix = prefix
        self.fallback = KeyedLimiter(rate, burst, clock=clock) if fallback is None else fallback
        self.timeout_seconds = timeout_seconds
        self.retry_interval_seconds = retry_interval_seconds
        self.fallbacks = 0
        """Decisions made locally because Redis was unreachable."""
        self._clock = clock
        self._script = client.register_script(_TOKEN_BUCKET_LUA)
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._down_until: float | None = None
        self._probing = False

    def __repr__(self) -> str:
        state = "local" if self._down_until is not None else "redis"
        return f"<RedisLimiter {self.prefix!r} rate={self.rate:g}/s burst={self.burst} {state}>"

    @property
    def using_redis(self) -> bool:
        """False while decisions fall back to local limiting."""
        return self._down_until is None

    async def decide(self, key: str, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens from ``key``'s shared bucket if it has that many."""
        down_until = self._down_until
        probe = False
        if down_until is not None:
            if self._probing or self._clock() < down_until:
                return self._local(key, cost)
            probe = self._probing = True
        try:
            async with _compat.timeout(self.timeout_seconds):
                allowed, tokens = await self._script(
                    keys=[self.prefix + key], args=[self.rate, self.burst, cost]
                )
        except self._errors as exc:
            self._mark_down(exc)
            return self._local(key, cost)
        finally:
            if probe:
                self._probing = False
        if down_until is not None:
            self._down_until = None
            log.info("Redis is reachable again: rate limits are shared", extra={"event": "redis"})
        return Decision.of(int(allowed) == 1, float(tokens), self.rate, self.burst, cost)

    def _local(self, key: str, cost: float) -> Decision:
        self.fallbacks += 1
        return self.fallback.decide(key, cost)

    def _mark_down(self, exc: BaseException) -> None:
        if self._down_until is None:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning(
                "Redis is unreachable (%s): limiting locally, retrying in %gs",
                reason,
                self.retry_interval_seconds,
                extra={"event": "redis_fallback"},
            )
        self._down_until = self._clock() + self.retry_interval_seconds


def _open_redis(url: str, timeout_seconds: float) -> Redis:
    """A client with a bounded pool and no retries of its own (we fall back instead).

    Close it with :func:`_close_redis`.
    """
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=_REDIS_MAX_CONNECTIONS,
        timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), 0),
    )
    return Redis(connection_pool=pool)


async def _close_redis(client: Redis) -> None:
    """Close a client from :func:`_open_redis` and its pool (redis-py 5.0.0 has no ``aclose``)."""
    close = getattr(client, "aclose", None) or client.close
    await close()
    await client.connection_pool.disconnect()
