"""The in-memory broker: what it guarantees beyond the shared contract."""

from __future__ import annotations

import asyncio

import pytest

from chassis import ChassisSettings, Event, InMemoryBroker, Service
from chassis.events import PublishError

from .conftest import eventually


def make(name: str, broker: InMemoryBroker, **events: object) -> Service:
    settings = ChassisSettings(
        health={"drain_delay_seconds": 0},
        events={"retry_initial_seconds": 0.01, "retry_max_seconds": 0.05, **events},
    )
    service = Service(name, settings=settings)
    service.events.broker = broker
    return service


async def test_a_malformed_message_is_dead_lettered_with_a_reason_not_a_crash(
    broker: InMemoryBroker,
) -> None:
    ledger = make("ledger", broker)
    received: list[Event] = []

    @ledger.events.subscribe("orders", "order_created")
    async def on_created(event: Event) -> None:
        received.append(event)

    async with ledger.running(port=0):
        broker.route("orders", "order_created", b"{not json", {"event-type": "order_created"})
        broker.route("orders", "order_created", b'{"id": "x"}', {})
        publisher = make("orders", broker)
        async with publisher.running(port=0):
            await publisher.events.publish("order_created", {"ok": True})
            await broker.wait_idle(timeout=20)

    assert [e.data for e in received] == [{"ok": True}]
    dead = broker.dead_letters("ledger")
    assert [d.event for d in dead] == [None, None]
    assert dead[0].reason.startswith("InvalidEvent: message body is not JSON")
    assert dead[0].body == b"{not json"
    assert dead[1].reason == "InvalidEvent: envelope lacks type, source, time, data"
    value = ledger.metrics.registry.get_sample_value(
        "events_consumed_total",
        {"source": "unknown", "type": "invalid", "outcome": "dead_lettered"},
    )
    assert value == 2


async def test_events_wait_in_the_queue_while_their_consumer_is_down(
    broker: InMemoryBroker,
) -> None:
    received: list[Event] = []

    def consumer() -> Service:
        service = make("ledger", broker)
        service.events.add_handler("orders", "order_created", _collect(received))
        return service

    publisher = make("orders", broker)
    async with publisher.running(port=0):
        await publisher.events.publish("order_created", {"n": 0})  # no queue bound yet: dropped
        async with consumer().running(port=0):
            await publisher.events.publish("order_created", {"n": 1})
            await broker.wait_idle(timeout=20)
        await publisher.events.publish("order_created", {"n": 2})  # the queue keeps it
        assert broker.queued("ledger") == 1
        await broker.wait_idle(timeout=20)  # a queue nobody consumes does not count as busy
        async with consumer().running(port=0):
            await broker.wait_idle(timeout=20)
    assert [e.data["n"] for e in received] == [1, 2]


async def test_a_handler_cut_off_at_shutdown_is_redelivered_marked_as_such(
    broker: InMemoryBroker,
) -> None:
    stuck = make("ledger", broker, stop_timeout_seconds=0.05)
    started = asyncio.Event()

    @stuck.events.subscribe("orders", "order_created")
    async def hangs(event: Event) -> None:
        started.set()
        await asyncio.sleep(3600)

    publisher = make("orders", broker)
    async with publisher.running(port=0):
        async with stuck.running(port=0):
            event = await publisher.events.publish("order_created", {})
            await asyncio.wait_for(started.wait(), 20)
        assert broker.queued("ledger") == 1

        received: list[Event] = []
        again = make("ledger", broker)
        again.events.add_handler("orders", "order_created", _collect(received))
        async with again.running(port=0):
            await broker.wait_idle(timeout=20)
    assert [(e.id, e.redelivered, e.attempt) for e in received] == [(event.id, True, 1)]
    value = again.metrics.registry.get_sample_value(
        "events_redelivered_total", {"source": "orders", "type": "order_created"}
    )
    assert value == 1


async def test_prefetch_bounds_the_deliveries_in_flight(broker: InMemoryBroker) -> None:
    ledger = make("ledger", broker, prefetch=2)
    running = peak = 0

    @ledger.events.subscribe("orders")
    async def slow(event: Event) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    publisher = make("orders", broker)
    async with ledger.running(port=0), publisher.running(port=0):
        for i in range(10):
            await publisher.events.publish("order_created" if i % 2 else "order_paid", {})
        await broker.wait_idle(timeout=20)
    assert peak == 2


async def test_wait_idle_times_out_while_a_handler_runs(broker: InMemoryBroker) -> None:
    ledger = make("ledger", broker)
    gate = asyncio.Event()

    @ledger.events.subscribe("orders", "order_created")
    async def waits(event: Event) -> None:
        await gate.wait()

    publisher = make("orders", broker)
    async with ledger.running(port=0), publisher.running(port=0):
        await publisher.events.publish("order_created", {})
        await eventually(lambda: not ledger.events.is_idle(), what="the handler")
        with pytest.raises(TimeoutError, match="ledger"):
            await broker.wait_idle(timeout=0.05)
        with pytest.raises(TimeoutError, match="handlers: 1"):
            await ledger.events.drained(timeout=0.05)
        gate.set()
        await ledger.events.drained(timeout=20)


async def test_services_share_the_process_default_broker_unless_given_one() -> None:
    assert InMemoryBroker.default() is InMemoryBroker.default()
    a, b = Service("svc-a"), Service("svc-b")
    received: list[Event] = []
    b.events.add_handler("svc-a", "ping", _collect(received))
    settings = ChassisSettings(health={"drain_delay_seconds": 0})
    a._settings = b._settings = settings
    async with b.running(port=0), a.running(port=0):
        await a.events.publish("ping", {})
        await b.events.drained(timeout=20)
    assert len(received) == 1


async def test_a_closed_back_end_refuses_to_publish(broker: InMemoryBroker) -> None:
    backend = broker.connect()
    event = Event(id="1", type="t", source="s", time=__import__("datetime").datetime.now(), data={})
    with pytest.raises(PublishError, match="not started"):
        await backend.publish(event)
    await backend.start()
    assert backend.healthy()
    await backend.aclose()
    await backend.aclose()
    assert not backend.healthy()
    with pytest.raises(PublishError):
        await backend.publish(event)


def _collect(into: list[Event]):  # type: ignore[no-untyped-def]
    async def collect(event: Event) -> None:
        into.append(event)

    return collect
