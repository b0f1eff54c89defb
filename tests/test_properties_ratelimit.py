"""Property-based (hypothesis) state-machine tests of the token buckets, on a fake clock.

Times are multiples of 1/8 s and rates binary fractions, so the arithmetic is exact
and a failure is a real bug, not rounding.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from chassis.ratelimit import KeyedLimiter, TokenBucket

SETTINGS = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TOLERANCE = 1e-9
RATES = st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 100.0])
STEPS = st.integers(min_value=0, max_value=40).map(lambda n: n / 8)  # 0 .. 5 s
COSTS = st.sampled_from([0.5, 1.0, 1.0, 1.0, 2.0, 3.0])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admitted_within_bounds(admitted: list[tuple[float, float]], rate: float, burst: int) -> None:
    """Over every window [s, t] between two admissions: cost <= rate * (t - s) + burst."""
    for i, (start, _) in enumerate(admitted):
        total = 0.0
        for at, cost in admitted[i:]:
            total += cost
            assert total <= rate * (at - start) + burst + TOLERANCE, (start, at, total)


class TokenBucketMachine(RuleBasedStateMachine):
    """Random calls and clock steps: tokens stay in [0, burst], admissions obey the rate."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.admitted: list[tuple[float, float]] = []

    @initialize(rate=RATES, burst=st.integers(min_value=1, max_value=10))
    def make_bucket(self, rate: float, burst: int) -> None:
        self.bucket = TokenBucket(rate, burst, clock=self.clock)

    @rule(seconds=STEPS)
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(cost=COSTS)
    def try_acquire(self, cost: float) -> None:
        before = min(self.bucket.burst, self.bucket.tokens + self._refill())
        allowed = self.bucket.try_acquire(cost)
        # It admits exactly when the refilled bucket holds the cost.
        assert allowed == (before >= cost)
        if allowed:
            self.admitted.append((self.clock.now, cost))

    @rule(cost=COSTS)
    def decide(self, cost: float) -> None:
        if cost > self.bucket.burst:
            return
        decision = self.bucket.decide(cost)
        assert decision.limit == self.bucket.burst
        assert 0 <= decision.remaining <= self.bucket.burst
        assert 0 <= decision.reset_seconds <= self.bucket.burst / self.bucket.rate + TOLERANCE
        if decision.allowed:
            assert decision.retry_after_seconds == 0
            self.admitted.append((self.clock.now, cost))
        else:
            # Waiting as long as it says is enough.
            assert decision.retry_after_seconds > 0
            needed = cost - self.bucket.tokens
            assert decision.retry_after_seconds * self.bucket.rate >= needed - TOLERANCE

    def _refill(self) -> float:
        return (self.clock.now - self.bucket.updated) * self.bucket.rate

    @invariant()
    def tokens_stay_between_zero_and_burst(self) -> None:
        if hasattr(self, "bucket"):
            assert -TOLERANCE <= self.bucket.tokens <= self.bucket.burst + TOLERANCE

    @invariant()
    def never_admits_more_than_rate_times_time_plus_burst(self) -> None:
        if hasattr(self, "bucket"):
            admitted_within_bounds(self.admitted, self.bucket.rate, self.bucket.burst)


class KeyedLimiterMachine(RuleBasedStateMachine):
    """Per key: the same bounds as one bucket; the table never exceeds ``max_keys``."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.admitted: dict[str, list[tuple[float, float]]] = {}
        self.evicted_at: dict[str, float] = {}

    @initialize(
        rate=RATES,
        burst=st.integers(min_value=1, max_value=6),
        max_keys=st.integers(min_value=1, max_value=4),
    )
    def make_limiter(self, rate: float, burst: int, max_keys: int) -> None:
        self.limiter = KeyedLimiter(rate, burst, max_keys=max_keys, clock=self.clock)

    @rule(seconds=STEPS)
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(key=st.sampled_from("abcdef"), cost=COSTS)
    def take(self, key: str, cost: float) -> None:
        known = key in self.limiter
        balance = self.limiter.take(key, cost)
        if not known:
            # A new (or evicted) key starts with a full bucket: its history restarts.
            self.admitted[key] = []
            assert balance == self.limiter.burst - cost
        if balance >= 0:
            self.admitted[key].append((self.clock.now, cost))
        assert len(self.limiter) <= self.limiter.max_keys

    @invariant()
    def every_key_obeys_its_rate(self) -> None:
        if not hasattr(self, "limiter"):
            return
        for admitted in self.admitted.values():
            admitted_within_bounds(admitted, self.limiter.rate, self.limiter.burst)
        for state in self.limiter._buckets.values():
            assert -TOLERANCE <= state[0] <= self.limiter.burst + TOLERANCE


class RefillMachine(RuleBasedStateMachine):
    """After a quiet spell the bucket is full again: it never loses refill."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.bucket = TokenBucket(2.0, 4, clock=self.clock)

    @rule(seconds=STEPS)
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def call(self) -> None:
        self.bucket.try_acquire()

    @rule()
    def quiet_then_burst(self) -> None:
        self.clock.now += self.bucket.burst / self.bucket.rate
        assert all(self.bucket.try_acquire() for _ in range(self.bucket.burst))
        assert not self.bucket.try_acquire()


def test_token_bucket_keeps_tokens_in_range_and_admits_at_most_rate_plus_burst() -> None:
    run_state_machine_as_test(TokenBucketMachine, settings=SETTINGS)


def test_keyed_limiter_bounds_every_key_and_the_table() -> None:
    run_state_machine_as_test(KeyedLimiterMachine, settings=SETTINGS)


def test_token_bucket_is_full_again_after_a_quiet_spell() -> None:
    run_state_machine_as_test(RefillMachine, settings=SETTINGS)
