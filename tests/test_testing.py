"""The test kit's helpers on their own: log and span capture, metrics diffs, live
services, the recording broker and launchers (the fixtures are in test_pytest_plugin.py)."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from chassis import ChassisSettings, LifecycleError, Service
from chassis.events.base import encode, new_event
from chassis.testing import (
    Launcher,
    LiveService,
    MetricsSnapshot,
    MetricsWatch,
    RecordingBroker,
    capture_logs,
    capture_spans,
)


def quick_service(name: str = "kit", **settings: Any) -> Service:
    health = {"drain_delay_seconds": 0}
    return Service(name, settings=ChassisSettings(health=health, **settings))


# -- capture_logs ---------------------------------------------------------------------


def test_capture_logs_keeps_json_records_at_or_above_its_level_and_restores_the_logger() -> None:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    with capture_logs("WARNING") as logs:
        logging.getLogger("kit").info("too quiet")
        logging.getLogger("kit").warning("heard %s", "this", extra={"order_id": "o-1"})
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("kit").exception("failed")
    assert [r["message"] for r in logs.records] == ["heard this", "failed"]
    [heard] = logs.find(order_id="o-1")
    assert (heard["level"], heard["logger"]) == ("WARNING", "kit")
    assert logs.find(level="ERROR")[0]["exception"]["type"] == "ValueError"
    assert logs.messages(logger="kit", level="WARNING") == ["heard this"]
    assert (root.level, root.handlers) == (level, handlers)
    logs.clear()
    assert logs.records == []


def test_capture_logs_of_one_logger_leaves_the_others_out() -> None:
    with capture_logs("DEBUG", logger="kit.orders") as logs:
        logging.getLogger("kit.orders.saga").debug("step")
        logging.getLogger("kit.other").error("elsewhere")
    assert logs.messages() == ["step"]


# -- metrics ------------------------------------------------------------------------------


def test_metrics_snapshot_sums_samples_whose_labels_include_the_given_ones() -> None:
    text = (
        "# TYPE requests_total counter\n"
        'requests_total{route="/a",status="200"} 3\n'
        'requests_total{route="/a",status="500"} 1\n'
        'requests_total{route="/b",status="200"} 5\n'
        "# TYPE temperature gauge\n"
        "temperature NaN\n"
    )
    snapshot = MetricsSnapshot.parse(text)
    assert snapshot.value("requests_total") == 9
    assert snapshot.value("requests_total", route="/a") == 4
    assert snapshot.value("requests_total", route="/a", status="500") == 1
    assert snapshot.value("requests_total", route="/c") == 0
    assert snapshot.value("temperature") == 0  # NaN counts as nothing
    later = MetricsSnapshot.parse(text.replace("} 5", "} 7") + 'requests_total{route="/c"} 2\n')
    diff = later - snapshot
    assert diff.value("requests_total", route="/b") == 2
    assert diff.value("requests_total", route="/c") == 2
    assert diff.value("requests_total", route="/a") == 0


def test_metrics_watch_reads_a_registry_against_its_baseline() -> None:
    registry = CollectorRegistry()
    sold = Counter("sold", "Sold.", ["side"], registry=registry)
    Gauge("queue_depth", "Depth.", registry=registry).set(4)
    sold.labels("buy").inc(2)
    watch = MetricsWatch(registry)
    sold.labels("buy").inc()
    sold.labels("sell").inc(5)
    assert watch.delta("sold_total") == 6
    assert watch.delta("sold_total", side="buy") == 1
    assert watch.value("sold_total", side="buy") == 3
    assert watch.delta("queue_depth") == 0
    watch.reset()
    assert watch.delta("sold_total") == 0
    assert not math.isnan(watch.snapshot().value("queue_depth"))


# -- capture_spans and LiveService ---------------------------------------------------


async def test_capture_spans_is_installed_once_and_only_before_startup() -> None:
    service = quick_service()
    spans = capture_spans(service)
    assert capture_spans(service) is spans
    async with LiveService(service) as live:
        assert live.spans is spans
        async with live.client.get("/nowhere") as response:
            assert response.status == 404
        [span] = spans.find(kind=None, **{"http.response.status_code": 404})
        assert span.name == "GET"
    other = quick_service()
    async with other.running("127.0.0.1", 0):
        with pytest.raises(LifecycleError, match="has started"):
            capture_spans(other)


async def test_spans_are_not_captured_while_tracing_is_disabled() -> None:
    async with LiveService(quick_service(tracing={"enabled": False})) as live:
        async with live.client.get("/health/live") as response:
            assert response.status == 200
        assert live.spans.spans == []


async def test_live_service_that_fails_to_start_raises_why_and_can_not_be_reused() -> None:
    service = quick_service()

    @service.lifespan
    async def broken(app: web.Application) -> AsyncIterator[None]:
        raise RuntimeError("no database")
        yield

    live = LiveService(service)
    with pytest.raises(RuntimeError, match="no database"):
        await live.start()
    with pytest.raises(LifecycleError, match="started already"):
        await live.start()
    await live.aclose()  # idempotent


async def test_live_service_builds_from_a_factory_and_refuses_what_is_not_a_service() -> None:
    with pytest.raises(TypeError, match="not a chassis Service"):
        await LiveService(lambda: "orders").start()  # type: ignore[arg-type,return-value]
    live = LiveService(quick_service)
    with pytest.raises(LifecycleError, match="await start"):
        _ = live.client
    async with live:
        assert live.service.name == "kit"
        assert repr(live).endswith(f"{live.url}>")


# -- RecordingBroker ----------------------------------------------------------------------


async def test_recording_broker_wakes_a_waiter_when_the_event_is_published_later() -> None:
    broker = RecordingBroker()
    service = quick_service("picker")
    seen: list[str] = []

    @service.events.subscribe("orders", "*")
    async def on_order(event: object) -> None:
        seen.append(getattr(event, "type", ""))

    async with LiveService(service, broker=broker) as live:
        assert live.service.events.broker is broker
        waiting = broker.wait_for("orders", "order_placed", where=lambda e: e.key == "o-2")
        for key in ("o-1", "o-2"):
            await broker.publish("orders", "order_placed", {"n": 1}, key=key)
        assert (await waiting).key == "o-2"
        await broker.wait_idle()
    assert seen == ["order_placed", "order_placed"]
    assert len(broker.find(type="order_placed")) == 2
    broker.clear()
    assert broker.events == []


async def test_recording_broker_routes_but_does_not_record_a_malformed_message() -> None:
    broker = RecordingBroker()
    body, headers = encode(new_event("ping", {}, source="probe"))
    assert broker.route("probe", "ping", b"not json", headers) == 0
    assert broker.route("probe", "ping", body, headers) == 0  # no queue is bound
    assert [e.type for e in broker.events] == ["ping"]
    assert broker.published == 2


# -- Launcher -----------------------------------------------------------------------------


class Server:
    def __init__(self, log: list[str], name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail

    async def start(self) -> None:
        self.log.append(f"start {self.name}")

    async def aclose(self) -> None:
        self.log.append(f"close {self.name}")
        if self.fail:
            raise OSError(f"{self.name} would not close")


async def test_launcher_closes_every_server_last_first_and_raises_after() -> None:
    log: list[str] = []
    launcher = Launcher(lambda **options: Server(log, **options))
    first = await launcher(name="a", fail=True)
    await launcher(name="b")
    assert launcher.started[0] is first
    with pytest.raises(OSError, match="a would not close"):
        await launcher.aclose()
    assert log == ["start a", "start b", "close b", "close a"]
    assert launcher.started == []
