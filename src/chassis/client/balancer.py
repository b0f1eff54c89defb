"""Load balancing: which instance of an upstream gets the next attempt.

The client resolves an upstream to its healthy instances, drops those whose
circuit is open (and, on a retry, those already tried when others remain), and
asks a :class:`LoadBalancer` to choose among the rest:

* :class:`RoundRobin` (the default) takes them in turn;
* :class:`PowerOfTwoChoices` samples two at random and takes the one with fewer
  requests outstanding, which steers traffic away from a slow instance (its
  requests pile up) without the herding of "always the least loaded".

Any object with ``choose(endpoints) -> endpoint`` can be passed instead.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from chassis.discovery.base import Instance

from .breaker import CircuitBreaker

__all__ = [
    "Endpoint",
    "LoadBalancer",
    "PowerOfTwoChoices",
    "RoundRobin",
    "make_balancer",
]


@dataclass(eq=False, slots=True)
class Endpoint:
    """One instance of an upstream as the client sees it."""

    instance: Instance
    """The instance, as discovery last reported it."""
    breaker: CircuitBreaker
    """Its circuit breaker."""
    base_url: str = field(default="")
    """``instance.url``, computed once."""
    outstanding: int = 0
    """Requests sent to it and not answered yet."""

    def __post_init__(self) -> None:
        if not self.base_url:
            self.base_url = self.instance.url


class LoadBalancer(Protocol):
    """Chooses the endpoint of the next attempt."""

    def choose(self, endpoints: Sequence[Endpoint]) -> Endpoint:
        """One of ``endpoints`` (never empty)."""


class RoundRobin:
    """Each endpoint in turn."""

    def __init__(self) -> None:
        self._next = 0

    def __repr__(self) -> str:
        return "<RoundRobin>"

    def choose(self, endpoints: Sequence[Endpoint]) -> Endpoint:
        """The next endpoint in turn."""
        i = self._next
        self._next = i + 1 if i < 1 << 30 else 0
        return endpoints[i % len(endpoints)]


class PowerOfTwoChoices:
    """Of two endpoints sampled at random, the one with fewer outstanding requests.

    Args:
        seed: seeds the sampling (for tests); random by default.
    """

    def __init__(self, *, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    def __repr__(self) -> str:
        return "<PowerOfTwoChoices>"

    def choose(self, endpoints: Sequence[Endpoint]) -> Endpoint:
        """The less loaded of two random endpoints (ties: the first drawn)."""
        n = len(endpoints)
        if n == 1:
            return endpoints[0]
        i = self._random.randrange(n)
        j = self._random.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = endpoints[i], endpoints[j]
        return b if b.outstanding < a.outstanding else a


def make_balancer(name: Literal["round_robin", "p2c"]) -> LoadBalancer:
    """The balancer a setting names: ``round_robin`` or ``p2c``."""
    if name == "round_robin":
        return RoundRobin()
    if name == "p2c":
        return PowerOfTwoChoices()
    raise ValueError(f"unknown load balancer {name!r}; use 'round_robin' or 'p2c'")
