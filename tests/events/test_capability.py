"""service.events: publishing, subscribing, settings and lifecycle."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from chassis import (
    ChassisSettings,
    ConfigError,
    Event,
    InMemoryBroker,
    InvalidEvent,
    LifecycleError,
    Service,
    Transaction,
    load_settings,
)
from chassis.events import capability
from chassis.tracing import current_tracer


def make(name: str, broker: InMemoryBroker, **events: object) -> Service:
    settings = ChassisSettings(
        health={"drain_delay_seconds": 0},
        events={"retry_initial_seconds": 0.01, "retry_max_seconds": 0.05, **events},
    )
    service = Service(name, settings=settings)
    service.events.broker = broker
    return service


async def test_publishing_data_that_is_not_json_fails_and_sends_nothing(
    broker: InMemoryBroker,
) -> None:
    orders = make("orders", broker)
    async with orders.running(port=0):
        with pytest.raises(InvalidEvent, match="'order_created' is not JSON-serialisable"):
            await orders.events.publish("order_created", {"at": object()})
        with pytest.raises(InvalidEvent, match="invalid event type"):
            await orders.events.publish("order created", {})
    assert broker.published == 0
    assert (
        orders.metrics.registry.get_sample_value(
            "events_published_total", {"type": "order_created"}
        )
        is None
    )


async def test_publishing_outside_the_running_service_is_refused(broker: InMemoryBroker) -> None:
    orders = make("orders", broker)
    with pytest.raises(LifecycleError, match="from startup to shutdown"):
        await orders.events.publish("order_created", {})
    with pytest.raises(LifecycleError, match="not running"):
        await orders.events.dead_letters()


async def test_subscriptions_are_checked_when_made(broker: InMemoryBroker) -> None:
    ledger = make("ledger", broker)

    def not_async(event: Event) -> None: ...

    with pytest.raises(TypeError, match="async def"):
        ledger.events.add_handler("orders", "order_created", not_async)  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match="source"):
        ledger.events.subscribe("Orders Service", "x")
    ledger.events.add_handler("orders", "x", _collect([]), idempotent=True, name="h")
    with pytest.raises(ValueError, match="pass name="):
        ledger.events.add_handler("orders", "y", _collect([]), idempotent=True, name="h")


async def test_subscribing_after_startup_is_refused(broker: InMemoryBroker) -> None:
    ledger = make("ledger", broker)
    async with ledger.running(port=0):
        with pytest.raises(LifecycleError, match="before the service starts"):
            ledger.events.add_handler("orders", "x", _collect([]))
        with pytest.raises(LifecycleError):
            ledger.events.backend = broker.connect()


async def test_an_idempotent_subscriber_without_a_database_fails_startup(
    broker: InMemoryBroker,
) -> None:
    ledger = make("ledger", broker)
    ledger.events.add_handler("orders", "x", _collect_tx(), idempotent=True)
    with pytest.raises(LifecycleError, match=r"service\.database"):
        async with ledger.running(port=0):
            pass


async def test_a_wildcard_subscription_gets_every_type_of_its_source(
    broker: InMemoryBroker,
) -> None:
    ledger = make("ledger", broker)
    received: list[Event] = []
    ledger.events.add_handler("orders", "*", _collect(received))
    orders, other = make("orders", broker), make("billing", broker)
    async with ledger.running(port=0), orders.running(port=0), other.running(port=0):
        await orders.events.publish("order_created", {})
        await orders.events.publish("order_paid", {})
        await other.events.publish("order_created", {})
        await broker.wait_idle(timeout=20)
    assert sorted(e.type for e in received) == ["order_created", "order_paid"]
    assert ledger.events.bindings == [("orders", "*")]


async def test_a_handler_may_ask_for_more_attempts_or_to_be_retried_until_it_succeeds(
    broker: InMemoryBroker,
) -> None:
    settle = make("settle", broker, max_attempts=2)
    attempts: list[int] = []

    @settle.events.subscribe("orders", "order_filled", max_attempts=math.inf)
    async def must_settle(event: Event) -> None:
        attempts.append(event.attempt)
        if event.attempt < 6:  # three times the setting's limit
            raise ConnectionError("ledger busy")

    orders = make("orders", broker)
    async with settle.running(port=0), orders.running(port=0):
        await orders.events.publish("order_filled", {})
        await broker.wait_idle(timeout=20)
        assert broker.dead_letters("settle") == []
    assert attempts == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="at least 1"):
        settle.events.add_handler("orders", "x", must_settle, max_attempts=0)


async def test_a_failing_handler_reruns_the_others_but_not_applied_idempotent_ones(
    broker: InMemoryBroker, tmp_path: Path
) -> None:
    ledger = make("ledger", broker)
    ledger.database(tmp_path / "ledger.db")
    plain: list[int] = []
    once: list[int] = []
    failures = iter([True, True, False])

    @ledger.events.subscribe("orders", "order_created", idempotent=True)
    async def record(event: Event, tx: Transaction) -> None:
        once.append(event.attempt)

    @ledger.events.subscribe("orders", "order_created")
    async def notify(event: Event) -> None:
        plain.append(event.attempt)
        if next(failures):
            raise ConnectionError("mail server down")

    orders = make("orders", broker)
    async with ledger.running(port=0), orders.running(port=0):
        await orders.events.publish("order_created", {})
        await broker.wait_idle(timeout=20)
    assert once == [1]
    assert plain == [1, 2, 3]


async def test_handlers_run_with_the_services_tracer_current(broker: InMemoryBroker) -> None:
    ledger = make("ledger", broker)
    tracers: list[object] = []

    @ledger.events.subscribe("orders", "order_created")
    async def which(event: Event) -> None:
        tracers.append(current_tracer())

    orders = make("orders", broker)
    async with ledger.running(port=0), orders.running(port=0):
        await orders.events.publish("order_created", {})
        await broker.wait_idle(timeout=20)
        assert tracers == [ledger.tracing.tracer]


async def test_draining_stops_consumption_and_readiness_reports_the_back_end(
    broker: InMemoryBroker,
) -> None:
    ledger = make("ledger", broker)
    received: list[Event] = []
    ledger.events.add_handler("orders", "order_created", _collect(received))
    orders = make("orders", broker)
    assert not await ledger.events.check()
    async with orders.running(port=0):
        async with ledger.running(port=0):
            assert await ledger.events.check()
            await ledger.events.on_draining()
            await orders.events.publish("order_created", {})
            await asyncio.sleep(0.05)
            assert received == []
        assert not await ledger.events.check()
    assert broker.queued("ledger") == 1


def test_events_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHASSIS_EVENTS__MAX_ATTEMPTS", "7")
    monkeypatch.setenv("CHASSIS_EVENTS__URL", "amqp://app:s3cret@127.0.0.1:5672/")
    monkeypatch.setenv("CHASSIS_DATABASE__PATH", "/tmp/x.db")
    settings = load_settings()
    assert settings.events.max_attempts == 7
    assert settings.events.url.get_secret_value().endswith("@127.0.0.1:5672/")
    assert "s3cret" not in repr(settings.events)
    assert settings.database.path == "/tmp/x.db"
    monkeypatch.setenv("CHASSIS_EVENTS__BACKEND", "kafka")
    with pytest.raises(ConfigError, match="CHASSIS_EVENTS__BACKEND"):
        load_settings()


def test_the_rabbitmq_back_end_without_its_extra_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(capability.importlib.util, "find_spec", lambda name: None)
    events = capability.Events(service_name="orders")
    with pytest.raises(ConfigError, match=r"CHASSIS_EVENTS__BACKEND: .*aiochassis\[rabbitmq\]"):
        events.configure(ChassisSettings(events={"backend": "rabbitmq"}))


async def test_an_explicit_back_end_is_used_then_closed(broker: InMemoryBroker) -> None:
    orders = make("orders", broker)
    backend = broker.connect()
    orders.events.backend = backend
    async with orders.running(port=0):
        assert orders.events.backend is backend
        await orders.events.publish("order_created", {})
    assert not backend.healthy()
    assert orders.events.backend is None


def _collect(into: list[Event]):  # type: ignore[no-untyped-def]
    async def collect(event: Event) -> None:
        into.append(event)

    return collect


def _collect_tx():  # type: ignore[no-untyped-def]
    async def collect(event: Event, tx: Transaction) -> None:
        pass

    return collect
