"""The delivery contract, run against every back end in ``conftest.BACKENDS``."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from chassis import Event, Transaction

from .conftest import EventsEnv, eventually

N = 20


def sample(service: object, name: str, **labels: str) -> float:
    value = service.metrics.registry.get_sample_value(name, labels)  # type: ignore[attr-defined]
    return value or 0.0


async def test_each_published_event_is_consumed_once(events_env: EventsEnv) -> None:
    orders, ledger = events_env.unique("orders"), events_env.unique("ledger")
    publisher, consumer = events_env.service(orders), events_env.service(ledger)
    seen: list[str] = []

    @consumer.events.subscribe(orders, "order_created")
    async def on_created(event: Event) -> None:
        seen.append(event.data["n"])

    async with consumer.running(port=0), publisher.running(port=0):
        sent = [await publisher.events.publish("order_created", {"n": i}) for i in range(N)]
        await eventually(lambda: len(seen) >= N, what=f"{N} events")
        await asyncio.sleep(0.2)  # room for a wrongful duplicate to show up

    assert sorted(seen) == list(range(N))
    assert all(e.source == orders and e.type == "order_created" for e in sent)
    assert sample(publisher, "events_published_total", type="order_created") == N
    assert (
        sample(
            consumer,
            "events_consumed_total",
            source=orders,
            type="order_created",
            outcome="success",
        )
        == N
    )
    assert (
        sample(
            consumer, "event_handler_duration_seconds_count", source=orders, type="order_created"
        )
        == N
    )


async def test_failing_handler_is_retried_then_dead_lettered_with_the_reason(
    events_env: EventsEnv,
) -> None:
    orders, ledger = events_env.unique("orders"), events_env.unique("ledger")
    publisher = events_env.service(orders)
    consumer = events_env.service(ledger, max_attempts=3)
    attempts: list[int] = []

    @consumer.events.subscribe(orders, "payment_requested")
    async def on_payment(event: Event) -> None:
        attempts.append(event.attempt)
        raise ValueError("no such account")

    async with consumer.running(port=0), publisher.running(port=0):
        event = await publisher.events.publish("payment_requested", {"account": "x"})
        dead = []

        async def poll() -> None:
            dead[:] = await events_env.dead_letters(consumer)

        for _ in range(2000):
            await poll()
            if dead:
                break
            await asyncio.sleep(0.01)

    assert attempts == [1, 2, 3]
    assert len(dead) == 1
    assert dead[0].event is not None and dead[0].event.id == event.id
    assert dead[0].reason == "ValueError: no such account"
    labels = {"source": orders, "type": "payment_requested"}
    assert sample(consumer, "events_consumed_total", outcome="retried", **labels) == 2
    assert sample(consumer, "events_consumed_total", outcome="dead_lettered", **labels) == 1
    assert sample(consumer, "events_dead_lettered_total", **labels) == 1
    assert sample(consumer, "events_redelivered_total", **labels) == 2


async def test_duplicate_delivery_is_applied_once_by_an_idempotent_handler(
    events_env: EventsEnv, tmp_path: Path
) -> None:
    orders, ledger = events_env.unique("orders"), events_env.unique("ledger")
    publisher, consumer = events_env.service(orders), events_env.service(ledger)
    db = consumer.database(
        tmp_path / "ledger.db",
        schema="CREATE TABLE IF NOT EXISTS credits (order_id TEXT, amount INTEGER);",
    )
    calls = 0

    @consumer.events.subscribe(orders, "order_placed", idempotent=True)
    async def on_placed(event: Event, tx: Transaction) -> None:
        nonlocal calls
        calls += 1
        await tx.execute(
            "INSERT INTO credits VALUES (?, ?)", (event.data["order_id"], event.data["amount"])
        )

    def handled() -> float:
        return sum(
            sample(consumer, "events_consumed_total", source=orders, type="order_placed", outcome=o)
            for o in ("success", "duplicate")
        )

    async with consumer.running(port=0), publisher.running(port=0):
        event = await publisher.events.publish("order_placed", {"order_id": "o1", "amount": 5})
        await publisher.events.publish_event(event)  # the same event (same id) again
        await eventually(lambda: handled() >= 2, what="both deliveries")
        rows = await db.fetchall("SELECT * FROM credits")

    assert calls == 1
    assert [tuple(r) for r in rows] == [("o1", 5)]
    labels = {"source": orders, "type": "order_placed"}
    assert sample(consumer, "events_consumed_total", outcome="duplicate", **labels) == 1


async def test_two_instances_of_one_consumer_split_the_load(events_env: EventsEnv) -> None:
    orders, ledger = events_env.unique("orders"), events_env.unique("ledger")
    publisher = events_env.service(orders)
    instances = [events_env.service(ledger, prefetch=2) for _ in range(2)]
    got: dict[int, list[int]] = collections.defaultdict(list)
    for index, instance in enumerate(instances):

        async def handler(event: Event, index: int = index) -> None:
            await asyncio.sleep(0.005)  # slow enough that both instances have work
            got[index].append(event.data["n"])

        instance.events.add_handler(orders, "order_created", handler)

    async with (
        instances[0].running(port=0),
        instances[1].running(port=0),
        publisher.running(port=0),
    ):
        for i in range(2 * N):
            await publisher.events.publish("order_created", {"n": i})
        await eventually(lambda: sum(map(len, got.values())) >= 2 * N, what="all events")
        await asyncio.sleep(0.2)

    assert got[0] and got[1], "both instances got a share"
    assert sorted(got[0] + got[1]) == list(range(2 * N)), "each event went to one instance"


async def test_consumer_span_continues_the_producer_trace(events_env: EventsEnv) -> None:
    orders, ledger = events_env.unique("orders"), events_env.unique("ledger")
    publisher, consumer = events_env.service(orders), events_env.service(ledger)
    producer_spans, consumer_spans = InMemorySpanExporter(), InMemorySpanExporter()
    publisher.tracing.exporter = producer_spans
    consumer.tracing.exporter = consumer_spans
    received: list[Event] = []

    @consumer.events.subscribe(orders, "order_created")
    async def on_created(event: Event) -> None:
        received.append(event)

    async with consumer.running(port=0), publisher.running(port=0):
        with publisher.tracing.tracer.start_as_current_span("POST /orders") as request_span:
            await publisher.events.publish("order_created", {"id": 1})
        await eventually(lambda: bool(received), what="the event")
        await asyncio.sleep(0.05)  # the consumer span ends right after the handler
        assert await publisher.tracing.flush() and await consumer.tracing.flush()

    trace_id = request_span.get_span_context().trace_id
    (produce,) = [s for s in producer_spans.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    (process,) = consumer_spans.get_finished_spans()
    assert produce.name == "publish order_created"
    assert produce.context.trace_id == trace_id
    assert (
        produce.parent is not None
        and produce.parent.span_id == request_span.get_span_context().span_id
    )
    assert process.kind == SpanKind.CONSUMER
    assert process.name == "process order_created"
    assert process.context.trace_id == trace_id
    assert process.parent is not None and process.parent.span_id == produce.context.span_id
    assert process.attributes is not None
    assert process.attributes["messaging.consumer.group.name"] == ledger
    assert received[0].traceparent is not None
    assert received[0].traceparent.split("-")[1] == format(trace_id, "032x")


async def test_graceful_stop_finishes_the_handler_in_flight(events_env: EventsEnv) -> None:
    orders, ledger = events_env.unique("orders"), events_env.unique("ledger")
    publisher, consumer = events_env.service(orders), events_env.service(ledger)
    started, finished = asyncio.Event(), []

    @consumer.events.subscribe(orders, "order_created")
    async def slow(event: Event) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.append(event.id)

    async with publisher.running(port=0):
        async with consumer.running(port=0):
            event = await publisher.events.publish("order_created", {"id": 1})
            await asyncio.wait_for(started.wait(), 20)
        # Leaving the block drained the consumer: the handler had to finish first.
        assert finished == [event.id]
        assert (
            sample(
                consumer,
                "events_consumed_total",
                source=orders,
                type="order_created",
                outcome="success",
            )
            == 1
        )

    # Acked: a new instance of the consumer is not given the event again.
    again = events_env.service(ledger)
    redelivered: list[Event] = []
    again.events.add_handler(orders, "order_created", _collect(redelivered))
    async with again.running(port=0):
        await asyncio.sleep(0.3)
    assert redelivered == []


def _collect(into: list[Event]):  # type: ignore[no-untyped-def]
    async def collect(event: Event) -> None:
        into.append(event)

    return collect


CRASHING_PUBLISHER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from chassis import ChassisSettings, Service

    async def main() -> None:
        settings = ChassisSettings(health={"drain_delay_seconds": 0})
        service = Service(sys.argv[1], settings=settings)
        db = service.database(sys.argv[2], schema="CREATE TABLE IF NOT EXISTS accounts (id TEXT);")
        async with service.running(port=0):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO accounts VALUES ('a')")
                event = tx.publish("account_opened", {"account": "a"})
            # Committed; the relay has not run yet (no await since the commit).
            print(event.id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_killing_the_publisher_between_commit_and_publish_loses_nothing(
    events_env: EventsEnv, tmp_path: Path
) -> None:
    bank, audit_name = events_env.unique("bank"), events_env.unique("audit")
    path = tmp_path / "bank.db"
    audit = events_env.service(audit_name)
    received: list[str] = []

    @audit.events.subscribe(bank, "account_opened")
    async def on_opened(event: Event) -> None:
        received.append(event.id)

    async with audit.running(port=0):  # its queue is bound before anything is published
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CRASHING_PUBLISHER,
            bank,
            str(path),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "CHASSIS_LOG__LEVEL": "WARNING", **events_env.environ()},
        )
        stdout, _ = await asyncio.wait_for(process.communicate(), 90)
        assert process.returncode == -signal.SIGKILL
        event_id = stdout.decode().split()[0]
        await asyncio.sleep(0.3)
        assert received == []  # the process died before its relay ran

        restarted = events_env.service(bank)
        restarted.database(path, schema="CREATE TABLE IF NOT EXISTS accounts (id TEXT);")
        async with restarted.running(port=0):
            await restarted.events.drained(timeout=30)
            await eventually(lambda: received == [event_id], what="the event from the outbox")
        await asyncio.sleep(0.2)  # room for a wrongful duplicate to show up
    assert received == [event_id]
