"""chassis.events.rabbitmq against a real broker: topology, retries, dead letters, restarts.

The broker is the Debian ``rabbitmq-server`` package, started once per session by the
``rabbitmq_broker`` fixture (see ``rabbitmq_server.py``); the restart test stops and
starts it. The delivery contract shared with the in-memory back end runs against it
too (``test_contract.py``, parameter ``rabbitmq``).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import aio_pika
import pytest

from chassis.config import EventsSettings
from chassis.events.base import DeadLetter, Delivery, new_event
from chassis.events.rabbitmq import (
    DEAD_REASON_HEADER,
    RabbitMQBackend,
    consumer_queue,
    dead_letter_queue,
    exchange_name,
)
from chassis.exceptions import EventError, InvalidEvent, PublishError
from tests.conftest import LogCapture

from .conftest import eventually, unique_name
from .rabbitmq_server import RabbitMQServer, free_port

pytestmark = pytest.mark.slow

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def quick_settings(**overrides: float) -> EventsSettings:
    values = {
        "publish_timeout_seconds": 30.0,
        "reconnect_initial_seconds": 0.1,
        "reconnect_max_seconds": 1.0,
        **overrides,
    }
    return EventsSettings(**values)


@pytest.fixture
async def backends(
    rabbitmq_broker: RabbitMQServer,
) -> AsyncIterator[Callable[..., Awaitable[RabbitMQBackend]]]:
    """Started back ends on the session's broker, closed at teardown."""
    rabbitmq_broker.start()  # a no-op unless a test left it stopped
    async with AsyncExitStack() as stack:

        async def make(**settings: float) -> RabbitMQBackend:
            backend = RabbitMQBackend(rabbitmq_broker.url, settings=quick_settings(**settings))
            stack.push_async_callback(backend.aclose)
            await backend.start()
            return backend

        yield make


async def raw_connection(server: RabbitMQServer) -> aio_pika.abc.AbstractConnection:
    return await aio_pika.connect(server.url)


async def test_published_event_is_a_persistent_message_with_trace_headers(
    rabbitmq_broker: RabbitMQServer, backends: Callable[..., Awaitable[RabbitMQBackend]]
) -> None:
    source = unique_name("orders")
    publisher = await backends()
    connection = await raw_connection(rabbitmq_broker)
    async with connection:
        channel = await connection.channel()
        probe = await channel.declare_queue(exclusive=True)
        # The exchange exists before anyone publishes: the consumer side declares it too.
        exchange = await channel.declare_exchange(
            exchange_name(source), aio_pika.ExchangeType.TOPIC, durable=True
        )
        await probe.bind(exchange, routing_key="#")
        event = new_event("order_created", {"id": 7}, source=source, traceparent=TRACEPARENT)
        await publisher.publish(event)
        message = await _get(probe)

    assert message.routing_key == "order_created"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.content_type == "application/json"
    assert message.message_id == event.id
    assert message.headers["traceparent"] == TRACEPARENT
    assert message.headers["event-source"] == source


async def test_failing_delivery_is_retried_with_its_attempt_then_dead_lettered(
    rabbitmq_broker: RabbitMQServer, backends: Callable[..., Awaitable[RabbitMQBackend]]
) -> None:
    source, consumer = unique_name("orders"), unique_name("ledger")
    publisher, ledger = await backends(), await backends()
    attempts: list[tuple[int, bool]] = []

    async def on_delivery(delivery: Delivery) -> None:
        attempts.append((delivery.attempt, delivery.redelivered))
        if delivery.attempt < 3:
            await delivery.retry(0.05 * delivery.attempt, "ValueError: no such account")
        else:
            await delivery.dead_letter("ValueError: no such account")

    await ledger.consume(consumer, [(source, "payment_requested")], on_delivery, prefetch=4)
    event = new_event("payment_requested", {"account": "x"}, source=source)
    await publisher.publish(event)
    await eventually(lambda: len(attempts) >= 3, what="three attempts")
    dead = await _wait_dead_letters(ledger, consumer, 1)
    again = await ledger.dead_letters(consumer)

    assert attempts == [(1, False), (2, False), (3, False)]
    assert [(d.event, d.reason) for d in dead] == [(event, "ValueError: no such account")]
    assert dead[0].event is not None and dead[0].event.attempt == 3
    assert dead[0].headers[DEAD_REASON_HEADER] == "ValueError: no such account"
    assert [d.event for d in again] == [event], "reading dead letters does not consume them"
    async with await raw_connection(rabbitmq_broker) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(dead_letter_queue(consumer), passive=True)
        assert queue.declaration_result.message_count == 1
        main = await channel.declare_queue(consumer_queue(consumer), passive=True)
        assert main.declaration_result.message_count == 0


async def test_short_retry_delay_is_not_held_up_by_a_longer_one(
    backends: Callable[..., Awaitable[RabbitMQBackend]],
) -> None:
    source, consumer = unique_name("orders"), unique_name("ledger")
    publisher, ledger = await backends(), await backends()
    delays = {"slow": 60.0, "quick": 0.1}  # slow comes back long after the test
    returned: list[str] = []

    async def on_delivery(delivery: Delivery) -> None:
        name = delivery.event.data["name"]
        if delivery.attempt == 1:
            await delivery.retry(delays[name], "again")
        else:
            returned.append(name)
            await delivery.ack()

    await ledger.consume(consumer, [(source, "*")], on_delivery, prefetch=1)
    await publisher.publish(new_event("a", {"name": "slow"}, source=source))
    await publisher.publish(new_event("b", {"name": "quick"}, source=source))
    await eventually(lambda: bool(returned), what="the quick retry")

    assert returned == ["quick"]


async def test_undecodable_message_is_dead_lettered_without_an_event(
    rabbitmq_broker: RabbitMQServer, backends: Callable[..., Awaitable[RabbitMQBackend]]
) -> None:
    source, consumer = unique_name("orders"), unique_name("ledger")
    ledger = await backends()
    errors: list[str] = []

    async def on_delivery(delivery: Delivery) -> None:
        try:
            delivery.event  # noqa: B018
        except InvalidEvent as exc:
            errors.append(str(exc))
            await delivery.dead_letter(f"InvalidEvent: {exc}")

    await ledger.consume(consumer, [(source, "order_created")], on_delivery, prefetch=1)
    async with await raw_connection(rabbitmq_broker) as connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(exchange_name(source))
        await exchange.publish(aio_pika.Message(b"not json"), routing_key="order_created")
    (dead,) = await _wait_dead_letters(ledger, consumer, 1)

    assert dead.event is None
    assert dead.body == b"not json"
    assert dead.reason == f"InvalidEvent: {errors[0]}"


async def test_stopped_consumer_takes_no_new_deliveries_but_settles_those_in_flight(
    rabbitmq_broker: RabbitMQServer, backends: Callable[..., Awaitable[RabbitMQBackend]]
) -> None:
    source, consumer = unique_name("orders"), unique_name("ledger")
    publisher, ledger = await backends(), await backends()
    held: list[Delivery] = []

    async def on_delivery(delivery: Delivery) -> None:
        held.append(delivery)

    await ledger.consume(consumer, [(source, "order_created")], on_delivery, prefetch=4)
    await publisher.publish(new_event("order_created", {"n": 1}, source=source))
    await eventually(lambda: len(held) == 1, what="the first delivery")
    await ledger.stop_consuming()
    await publisher.publish(new_event("order_created", {"n": 2}, source=source))
    await held[0].ack()
    await asyncio.sleep(0.3)  # room for a wrongful delivery to show up

    assert len(held) == 1
    assert ledger.healthy()
    async with await raw_connection(rabbitmq_broker) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(consumer_queue(consumer), passive=True)
        assert queue.declaration_result.message_count == 1, "the second one waits"


async def test_publish_without_a_broker_fails_after_the_timeout(logs: LogCapture) -> None:
    url = f"amqp://guest:s3cret@127.0.0.1:{free_port()}/"
    backend = RabbitMQBackend(
        url,
        settings=quick_settings(
            publish_timeout_seconds=0.3, reconnect_initial_seconds=0.05, reconnect_max_seconds=0.1
        ),
    )
    try:
        await backend.start()
        assert not backend.healthy()
        with pytest.raises(PublishError, match=r"not published within 0\.3s") as raised:
            await backend.publish(new_event("order_created", {}, source="orders"))
        with pytest.raises(EventError, match="unreachable"):
            await backend.dead_letters("ledger")
    finally:
        await backend.aclose()

    assert raised.value.event_type == "order_created"
    assert "s3cret" not in str(raised.value)
    logged = "\n".join(logs.lines)
    assert "cannot connect to RabbitMQ at 127.0.0.1" in logged
    assert "s3cret" not in logged


async def test_events_published_across_a_broker_restart_are_each_consumed(
    rabbitmq_broker: RabbitMQServer, backends: Callable[..., Awaitable[RabbitMQBackend]]
) -> None:
    server, n = rabbitmq_broker, 200
    source, consumer = unique_name("orders"), unique_name("ledger")
    publisher = await backends(publish_timeout_seconds=120.0)
    ledger = await backends()
    impatient = await backends(publish_timeout_seconds=0.5)
    deliveries: collections.Counter[str] = collections.Counter()
    retried_attempts: list[int] = []
    retry_scheduled = asyncio.Event()

    async def on_delivery(delivery: Delivery) -> None:  # idempotent: counts ids
        event = delivery.event
        if event.type == "retry_me":
            if delivery.attempt == 1:
                await delivery.retry(5.0, "later")  # waits in a delay queue over the restart
                retry_scheduled.set()
                return
            retried_attempts.append(delivery.attempt)
        deliveries[event.id] += 1
        await delivery.ack()

    await ledger.consume(consumer, [(source, "*")], on_delivery, prefetch=16)
    retried = new_event("retry_me", {}, source=source)
    await publisher.publish(retried)
    await asyncio.wait_for(retry_scheduled.wait(), 30)

    events = [new_event("order_created", {"n": i}, source=source) for i in range(n)]
    halfway, stopping = asyncio.Event(), asyncio.Event()

    async def produce() -> None:
        for i, event in enumerate(events):
            await publisher.publish(event)
            if i == n // 2:
                halfway.set()
                await stopping.wait()  # the second half races the broker going down

    producing = asyncio.create_task(produce())
    tasks = [producing]
    try:
        await asyncio.wait_for(halfway.wait(), 60)
        stopping.set()
        await asyncio.to_thread(server.stop)
        backends_now = (publisher, ledger, impatient)
        await eventually(lambda: not any(b.healthy() for b in backends_now), what="unready")
        with pytest.raises(PublishError, match="unreachable"):
            await impatient.publish(new_event("order_created", {}, source=source))
        during = new_event("order_created", {"n": "during"}, source=source)
        waiting = asyncio.create_task(publisher.publish(during))
        tasks.append(waiting)
        await asyncio.sleep(0.2)
        assert not waiting.done(), "a publish waits for the broker"

        await asyncio.to_thread(server.start)
        await eventually(lambda: publisher.healthy() and ledger.healthy(), timeout=60, what="ready")
        await asyncio.wait_for(asyncio.gather(producing, waiting), 120)
        expected = {e.id for e in [*events, during, retried]}
        await eventually(lambda: set(deliveries) >= expected, timeout=60, what="every event")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    assert set(deliveries) == expected
    assert retried_attempts and set(retried_attempts) == {2}


async def _get(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    for _ in range(200):
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing arrived on {queue.name}")


async def _wait_dead_letters(
    backend: RabbitMQBackend, consumer: str, count: int
) -> list[DeadLetter]:
    for _ in range(400):
        dead = await backend.dead_letters(consumer)
        if len(dead) >= count:
            return dead
        await asyncio.sleep(0.05)
    raise AssertionError(f"{consumer} has fewer than {count} dead letters")
