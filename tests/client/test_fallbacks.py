"""Fallback on its own: last good answer, handler, stub, what falls back."""

from __future__ import annotations

import pytest

from chassis.client import Fallback, fallback
from chassis.exceptions import UpstreamStatusError, UpstreamUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Source:
    def __init__(self) -> None:
        self.down = False

    async def quote(self, symbol: str) -> dict[str, object]:
        if self.down:
            raise UpstreamUnavailable("market-data is down", service="market-data")
        return {"symbol": symbol, "price": 100}


async def test_last_good_answer_within_its_ttl() -> None:
    clock = Clock()
    source = Source()
    prices = Fallback(cache_ttl_seconds=60, clock=clock)
    good = await prices.call(source.quote, "VTI")
    source.down = True
    assert await prices.call(source.quote, "VTI") == good
    with pytest.raises(UpstreamUnavailable):
        await prices.call(source.quote, "BND")  # never answered
    clock.now += 61
    with pytest.raises(UpstreamUnavailable):
        await prices.call(source.quote, "VTI")  # too old
    assert (prices.served, prices.cache_hits) == (1, 1)


async def test_cache_is_bounded() -> None:
    source = Source()
    prices = Fallback(cache_ttl_seconds=60, max_entries=2)
    for symbol in ("A", "B", "C"):
        await prices.call(source.quote, symbol)
    source.down = True
    with pytest.raises(UpstreamUnavailable):
        await prices.call(source.quote, "A")
    assert (await prices.call(source.quote, "C"))["symbol"] == "C"


async def test_stub_and_handler_decorators() -> None:
    source = Source()
    source.down = True

    @fallback(value=[])
    async def recommendations(user: str) -> list[str]:
        await source.quote(user)
        return ["VTI"]

    assert await recommendations("ana") == []

    @fallback(handler=lambda exc: {"degraded": type(exc).__name__})
    async def summary() -> dict[str, str]:
        await source.quote("VTI")
        return {}

    assert await summary() == {"degraded": "UpstreamUnavailable"}


async def test_bugs_and_client_errors_do_not_fall_back() -> None:
    stub = Fallback(value="stub")

    async def buggy() -> str:
        raise TypeError("bug")

    async def not_found() -> str:
        raise UpstreamStatusError("404", status=404)

    async def down() -> str:
        raise UpstreamStatusError("503", status=503)

    with pytest.raises(TypeError):
        await stub.call(buggy)
    with pytest.raises(UpstreamStatusError):
        await stub.call(not_found)
    assert await stub.call(down) == "stub"


async def test_unhashable_arguments_need_a_key() -> None:
    async def lookup(filters: dict[str, str]) -> int:
        return len(filters)

    with pytest.raises(TypeError, match="key="):
        await Fallback(cache_ttl_seconds=1).call(lookup, {"a": "b"})
    keyed = Fallback(cache_ttl_seconds=1, key=lambda filters: tuple(sorted(filters.items())))
    assert await keyed.call(lookup, {"a": "b"}) == 1
