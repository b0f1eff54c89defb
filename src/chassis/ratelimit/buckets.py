"""Token buckets: one (:class:`TokenBucket`) or one per key in a bounded table
(:class:`KeyedLimiter`), and the :class:`Decision` they answer with."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import NamedTuple

from chassis.exceptions import RateLimited

__all__ = ["Clock", "Decision", "KeyedLimiter", "TokenBucket"]

Clock = Callable[[], float]
"""Monotonic seconds; inject one for deterministic tests."""

_new_tuple = tuple.__new__


def _check_rate(rate: float, burst: int | None) -> tuple[float, int]:
    if not rate > 0 or math.isinf(rate):
        raise ValueError(f"rate must be a positive number of calls per second, got {rate!r}")
    chosen = max(1, math.ceil(rate)) if burst is None else burst
    if chosen < 1:
        raise ValueError(f"burst must be at least 1, got {burst!r}")
    return float(rate), int(chosen)


class Decision(NamedTuple):
    """The outcome of one rate-limit decision, with what the answer headers need."""

    allowed: bool
    """Whether the call was admitted (and its tokens taken)."""
    limit: int
    """The bucket size: calls admitted at once after a quiet period."""
    remaining: int
    """Whole tokens left after this decision."""
    reset_seconds: float
    """Seconds until the bucket is full again."""
    retry_after_seconds: float
    """Seconds until the call would be admitted; 0 when it was."""

    @classmethod
    def from_balance(cls, balance: float, rate: float, burst: int, cost: float) -> Decision:
        """The decision a :meth:`KeyedLimiter.take` balance stands for."""
        if balance >= 0.0:
            return _new_tuple(cls, (True, burst, int(balance), (burst - balance) / rate, 0.0))
        tokens = balance + cost
        if tokens < 0.0:
            tokens = 0.0
        retry_after = -balance / rate
        return _new_tuple(cls, (False, burst, int(tokens), (burst - tokens) / rate, retry_after))

    @classmethod
    def of(cls, allowed: bool, tokens: float, rate: float, burst: int, cost: float) -> Decision:
        """The decision of a bucket of ``burst`` holding ``tokens`` after the call."""
        if tokens < 0.0:
            tokens = 0.0
        # tuple.__new__ skips NamedTuple's generated __new__: this runs per request.
        return _new_tuple(
            cls,
            (
                allowed,
                burst,
                int(tokens),
                (burst - tokens) / rate,
                0.0 if allowed else (cost - tokens) / rate,
            ),
        )

    def headers(self) -> dict[str, str]:
        """``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` (whole seconds,
        rounded up), plus ``Retry-After`` when refused."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_seconds)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_seconds)))
        return headers

    def refusal(self) -> RateLimited:
        """The :class:`~chassis.exceptions.RateLimited` error that answers a refusal."""
        wait = max(1, math.ceil(self.retry_after_seconds))
        return RateLimited(
            f"rate limit exceeded; retry in {wait} s",
            retry_after=self.retry_after_seconds,
            limit=self.limit,
            headers=self.headers(),
        )


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` tokens per second; a call takes ``cost`` tokens.

    Args:
        rate: tokens added per second (the sustained rate of calls).
        burst: bucket size (calls admitted at once); defaults to ``rate`` rounded up.
        clock: seconds from a monotonic clock; inject one for deterministic tests.
    """

    __slots__ = ("_clock", "burst", "rate", "tokens", "updated")

    def __init__(
        self, rate: float, burst: int | None = None, *, clock: Clock = time.monotonic
    ) -> None:
        self.rate, self.burst = _check_rate(rate, burst)
        self._clock = clock
        self.tokens = float(self.burst)
        self.updated = clock()

    def __repr__(self) -> str:
        return f"<TokenBucket rate={self.rate:g}/s burst={self.burst} tokens={self.tokens:.2f}>"

    def try_acquire(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are that many; the fast path of a decision."""
        now = self._clock()
        tokens = self.tokens + (now - self.updated) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.updated = now
        if tokens >= cost:
            self.tokens = tokens - cost
            return True
        self.tokens = tokens
        return False

    def decide(self, cost: float = 1.0) -> Decision:
        """Like :meth:`try_acquire`, with what the answer headers need.

        Raises:
            ValueError: ``cost`` exceeds the bucket size, so it could never be admitted.
        """
        if cost > self.burst:
            raise ValueError(f"cost {cost:g} exceeds the bucket size {self.burst}")
        allowed = self.try_acquire(cost)
        return Decision.of(allowed, self.tokens, self.rate, self.burst, cost)


class KeyedLimiter:
    """A token bucket per key, in a table of at most ``max_keys`` keys.

    When the table is full, the least recently used key is evicted (it starts
    again with a full bucket), so a flood of new keys cannot grow memory. Each
    key costs one small list of two floats; the decision is inlined here rather
    than delegated to a :class:`TokenBucket`, as it runs on every request.

    Args:
        rate, burst, clock: as for :class:`TokenBucket`, for every key.
        max_keys: bound of the key table.
    """

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        *,
        max_keys: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self.rate, self.burst = _check_rate(rate, burst)
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys!r}")
        self.max_keys = max_keys
        self._clock = clock
        # key -> [tokens, updated], least recently used first
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"<KeyedLimiter rate={self.rate:g}/s burst={self.burst} "
            f"keys={len(self._buckets)}/{self.max_keys}>"
        )

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._buckets

    def try_acquire(self, key: Hashable, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket if it has that many."""
        return self.take(key, cost) >= 0.0

    def take(self, key: Hashable, cost: float = 1.0) -> float:
        """The decision as one number, the fastest form: the middleware's hot path.

        Returns the tokens left in ``key``'s bucket after the call when it is
        admitted (``>= 0``), or minus the shortfall when it is refused (``< 0``, and
        nothing is taken). :meth:`Decision.from_balance` turns it into a
        :class:`Decision` when the answer headers are needed.
        """
        buckets = self._buckets
        now = self._clock()
        state = buckets.get(key)
        if state is None:
            if len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
            tokens: float = self.burst
            state = buckets[key] = [tokens, now]
        else:
            buckets.move_to_end(key)
            tokens = state[0] + (now - state[1]) * self.rate
            if tokens > self.burst:
                tokens = self.burst
            state[1] = now
        balance = tokens - cost
        state[0] = tokens if balance < 0.0 else balance
        return balance

    def decide(self, key: Hashable, cost: float = 1.0) -> Decision:
        """Like :meth:`try_acquire`, with what the answer headers need.

        Raises:
            ValueError: ``cost`` exceeds the bucket size, so it could never be admitted.
        """
        if cost > self.burst:
            raise ValueError(f"cost {cost:g} exceeds the bucket size {self.burst}")
        return Decision.from_balance(self.take(key, cost), self.rate, self.burst, cost)
