"""Property-based (hypothesis) state-machine tests of the retry budget and the circuit breaker.

Both run on a fake clock: the budget takes one (``clock=``); the breaker, like
purgatory under it, reads the wall clock through the ``time`` module, so the test
swaps that module reference in both modules for a fake one. Times are multiples of
1/8 s and ratios binary fractions, so the arithmetic is exact.
"""

from __future__ import annotations

import asyncio
import types

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from chassis.client import CircuitBreaker, CircuitState, RetryBudget
from chassis.client import breaker as breaker_module
from chassis.exceptions import CircuitOpen

SETTINGS = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
STEPS = st.integers(min_value=0, max_value=32).map(lambda n: n / 8)  # 0 .. 4 s


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- retry budget --------------------------------------------------------------------------
class RetryBudgetMachine(RuleBasedStateMachine):
    """Requests, retries and clock steps; every grant and refusal is checked against history.

    The budget counts in ten buckets, so its window is between ``window - width`` and
    ``window`` long. A granted retry therefore never makes the retries of the last
    ``window - width`` seconds exceed ``ratio * requests of the last window + floor``;
    and a refusal is only right when the retries of the last ``window`` seconds already
    reach ``ratio * requests of the last window - width seconds + floor``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.requests: list[float] = []
        self.retries: list[float] = []

    @initialize(
        ratio=st.sampled_from([0.0, 0.125, 0.25, 0.5, 1.0]),
        min_per_second=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
        window_seconds=st.sampled_from([2.0, 4.0, 8.0]),
    )
    def make_budget(self, ratio: float, min_per_second: float, window_seconds: float) -> None:
        self.budget = RetryBudget(
            ratio=ratio,
            min_per_second=min_per_second,
            window_seconds=window_seconds,
            clock=self.clock,
        )
        self.floor = min_per_second * window_seconds
        self.width = window_seconds / 10

    def _count(self, events: list[float], seconds: float) -> int:
        """Events in the last ``seconds`` (``(now - seconds, now]``)."""
        return sum(1 for at in events if at > self.clock.now - seconds)

    @rule(seconds=STEPS)
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(n=st.integers(min_value=1, max_value=8))
    def requests_arrive(self, n: int) -> None:
        for _ in range(n):
            self.budget.record_request()
            self.requests.append(self.clock.now)

    @rule()
    def a_retry_is_wanted(self) -> None:
        window = self.budget.window_seconds
        exhausted = self.budget.exhausted
        if self.budget.try_spend():
            self.retries.append(self.clock.now)
            recent = self._count(self.retries, window - self.width)
            allowed = self.budget.ratio * self._count(self.requests, window) + self.floor
            assert recent <= allowed, (recent, allowed)
            assert self.budget.exhausted == exhausted
        else:
            spent = self._count(self.retries, window)
            least = self.budget.ratio * self._count(self.requests, window - self.width)
            assert spent + 1 > least + self.floor, (spent, least, self.floor)
            assert self.budget.exhausted == exhausted + 1

    @invariant()
    def snapshot_is_consistent(self) -> None:
        if not hasattr(self, "budget"):
            return
        snap = self.budget.snapshot()
        assert 0 <= snap["retries"] <= snap["allowance"] + 1e-9
        assert snap["available"] >= 0
        assert snap["requests"] <= len(self.requests)


def test_retry_budget_never_grants_more_than_ratio_times_requests_plus_floor() -> None:
    run_state_machine_as_test(RetryBudgetMachine, settings=SETTINGS)


# -- circuit breaker -----------------------------------------------------------------------
ALLOWED_TRANSITIONS = {
    ("closed", "open"),
    ("open", "half_open"),
    ("half_open", "closed"),
    ("half_open", "open"),
}
WALL = FakeClock()


@pytest.fixture
def fake_wall_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """``time.time()`` as the breaker and purgatory see it, and nothing else."""
    from purgatory.domain import model

    fake_time = types.SimpleNamespace(time=WALL)
    monkeypatch.setattr(model, "time", fake_time)
    monkeypatch.setattr(breaker_module, "time", fake_time)
    return WALL


class Upstream:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, outcome: str) -> str:
        self.calls += 1
        if outcome == "fail":
            raise ConnectionError("down")
        if outcome == "ignored":
            raise LookupError("the caller's own error: neither success nor failure")
        return "ok"


class BreakerMachine(RuleBasedStateMachine):
    """Calls that succeed, fail or are ignored, slow calls, clock steps, against a model.

    The model is the specification: closed until ``failure_threshold`` consecutive
    failures; open (upstream untouched) until ``recovery_seconds`` have passed; then one
    probe, half-open, whose success closes and whose failure reopens. Every state
    change the breaker reports must be one of :data:`ALLOWED_TRANSITIONS`.
    """

    def __init__(self) -> None:
        super().__init__()
        WALL.now = 1000.0  # every example (and its replays) starts at the same time
        self.loop = asyncio.new_event_loop()
        self.upstream = Upstream()
        self.reported: list[CircuitState] = []
        self.slow: asyncio.Task[str] | None = None
        self.release: asyncio.Future[str] | None = None
        self.slow_is_probe = False
        # the model (the specification)
        self.state: CircuitState = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False

    def teardown(self) -> None:
        if self.slow is not None:
            self.slow.cancel()
            self.loop.run_until_complete(asyncio.gather(self.slow, return_exceptions=True))
        self.loop.close()

    @initialize(
        threshold=st.integers(min_value=1, max_value=4),
        recovery_eighths=st.integers(min_value=1, max_value=16),
    )
    def make_breaker(self, threshold: int, recovery_eighths: int) -> None:
        self.breaker = CircuitBreaker(
            "upstream",
            failure_threshold=threshold,
            recovery_seconds=recovery_eighths / 8,
            is_failure=lambda exc: None if isinstance(exc, LookupError) else True,
            on_state_change=lambda _, state: self.reported.append(state),
        )

    # -- the model ----------------------------------------------------------------------
    def _admits(self) -> bool:
        """Whether the model lets a call start now (open -> half-open when due)."""
        if self.state == "open" and WALL.now > self.opened_at + self.breaker.recovery_seconds:
            self.state = "half_open"
        if self.state == "closed":
            return True
        if self.state == "half_open" and not self.probing:
            self.probing = True  # this call is the probe
            return True
        return False  # open and not due, or half-open with its probe in flight

    def _settle(self, outcome: str, *, probe: bool) -> None:
        """The model's answer to a call that ended with ``outcome``."""
        if probe:
            self.probing = False
        if outcome == "ignored":
            return  # no verdict: a half-open circuit lets the next call probe
        if self.state == "closed":
            if outcome == "ok":
                self.failures = 0
            else:
                self.failures += 1
                if self.failures >= self.breaker.failure_threshold:
                    self.state, self.opened_at, self.failures = "open", WALL.now, 0
        elif self.state == "half_open":
            # The probe, or a call admitted before the circuit opened that ends now:
            # either is news of the upstream.
            if outcome == "ok":
                self.state = "closed"
            else:
                self.state, self.opened_at = "open", WALL.now
        # open: a late call's outcome changes nothing

    # -- rules --------------------------------------------------------------------------
    @rule(seconds=STEPS)
    def time_passes(self, seconds: float) -> None:
        WALL.now += seconds

    @precondition(lambda self: hasattr(self, "breaker"))
    @rule(outcome=st.sampled_from(["ok", "fail", "ignored"]))
    def call(self, outcome: str) -> None:
        calls = self.upstream.calls
        admitted = self._admits()
        probe = admitted and self.state == "half_open"
        try:
            self.loop.run_until_complete(self.breaker.call(self.upstream, outcome))
        except CircuitOpen:
            assert not admitted, f"refused a call the model admits ({self.state})"
            assert self.upstream.calls == calls, "an open circuit touched the upstream"
            return
        except (ConnectionError, LookupError):
            pass
        assert admitted, f"admitted a call while {self.state}"
        assert self.upstream.calls == calls + 1
        self._settle(outcome, probe=probe)

    @precondition(lambda self: self.slow is None and hasattr(self, "breaker"))
    @rule()
    def a_slow_call_starts(self) -> None:
        admitted = self._admits()
        self.release = self.loop.create_future()

        async def slow() -> str:
            assert self.release is not None
            return await self.upstream(await self.release)

        self.slow = self.loop.create_task(self.breaker.call(slow))
        self.loop.run_until_complete(asyncio.sleep(0))  # it enters the breaker
        if admitted:
            assert not self.slow.done(), self.slow
            self.slow_is_probe = self.state == "half_open"
        else:
            assert self.slow.done() and isinstance(self.slow.exception(), CircuitOpen)
            self.slow = None

    @precondition(lambda self: self.slow is not None)
    @rule(outcome=st.sampled_from(["ok", "fail", "ignored"]))
    def the_slow_call_ends(self, outcome: str) -> None:
        assert self.slow is not None and self.release is not None
        self.release.set_result(outcome)
        self.loop.run_until_complete(asyncio.gather(self.slow, return_exceptions=True))
        self.slow = None
        self._settle(outcome, probe=self.slow_is_probe)
        self.slow_is_probe = False

    # -- invariants ---------------------------------------------------------------------
    @invariant()
    def state_matches_the_model(self) -> None:
        if not hasattr(self, "breaker"):
            return
        assert self.breaker.state == self.state
        if self.state == "closed":
            assert self.breaker.failure_count == self.failures
        assert self.breaker.allows_request == (
            self.state == "closed"
            or (self.state == "half_open" and not self.probing)
            or (self.state == "open" and WALL.now > self.opened_at + self.breaker.recovery_seconds)
        )

    @invariant()
    def only_allowed_transitions_are_reported(self) -> None:
        previous: CircuitState = "closed"
        for state in self.reported:
            assert (previous, state) in ALLOWED_TRANSITIONS, (previous, state)
            previous = state


def test_breaker_follows_its_state_machine(fake_wall_clock: FakeClock) -> None:
    run_state_machine_as_test(BreakerMachine, settings=SETTINGS)
