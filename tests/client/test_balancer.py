"""Load balancers on fabricated endpoints."""

from __future__ import annotations

import pytest

from chassis.client import CircuitBreaker, Endpoint, PowerOfTwoChoices, RoundRobin, make_balancer
from chassis.discovery.base import Instance


def endpoints(*outstanding: int) -> list[Endpoint]:
    made = []
    for i, n in enumerate(outstanding):
        instance = Instance(service="svc", id=f"svc-{i}", address="127.0.0.1", port=9000 + i)
        made.append(Endpoint(instance, CircuitBreaker(instance.id), outstanding=n))
    return made


def test_round_robin_takes_each_in_turn() -> None:
    eps = endpoints(0, 0, 0)
    balancer = RoundRobin()
    assert [balancer.choose(eps).instance.id for _ in range(4)] == [
        "svc-0",
        "svc-1",
        "svc-2",
        "svc-0",
    ]


def test_power_of_two_choices_takes_the_less_loaded_of_two() -> None:
    balancer = PowerOfTwoChoices(seed=7)
    eps = endpoints(5, 0)
    assert all(balancer.choose(eps) is eps[1] for _ in range(50))
    three = endpoints(9, 9, 0)
    picks = [balancer.choose(three).instance.id for _ in range(300)]
    # svc-2 wins every draw it is in (two of three pairs); never both of the others.
    assert picks.count("svc-2") == pytest.approx(200, abs=40)


def test_endpoint_url_comes_from_the_instance() -> None:
    (ep,) = endpoints(0)
    assert ep.base_url == "http://127.0.0.1:9000"


def test_make_balancer_names() -> None:
    assert isinstance(make_balancer("round_robin"), RoundRobin)
    assert isinstance(make_balancer("p2c"), PowerOfTwoChoices)
    with pytest.raises(ValueError, match="unknown"):
        make_balancer("random")  # type: ignore[arg-type]
