"""The pytest plugin's fixtures, used the way a service's own tests use them.

The plugin is loaded through its ``pytest11`` entry point, as in any project that
installs the chassis; the last test runs a user's test file in a fresh pytest
process (``pytester``) to prove exactly that.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.trace import SpanKind

from chassis import ChassisSettings, Event, Service
from chassis.testing import (
    ConsulStandIn,
    FaultyUpstream,
    Launcher,
    LogCapture,
    RecordingBroker,
    ServiceLauncher,
    scrape_metrics,
)

pytest_plugins = ["pytester"]

log = logging.getLogger("shop")


def inventory_routes() -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.get("/stock/{item}")
    async def stock(request: web.Request) -> web.Response:
        return web.json_response({"item": request.match_info["item"], "available": 3})

    return routes


def create_shop(inventory_url: str = "http://127.0.0.1:9", **settings: Any) -> Service:
    """A small service as a user would write it: a route, an upstream, events, logs."""
    options: dict[str, Any] = {
        "health": {"drain_delay_seconds": 0},
        "discovery": {"static": {"inventory": [inventory_url]}},
        "client": {"max_attempts": 1, "timeout_seconds": 5},
    }
    options.update(settings)
    service = Service("shop", version="2.0.0", settings=ChassisSettings(**options))
    inventory = service.client("inventory")
    shipped: list[str] = []

    @service.get("/items/{item}")
    async def item(request: web.Request) -> web.Response:
        name = request.match_info["item"]
        log.info("looking up %s", name, extra={"item": name})
        stock = await inventory.get_json(f"/stock/{name}")
        await service.events.publish("item_viewed", {"item": name}, key=name)
        return web.json_response(stock)

    @service.get("/shipped")
    async def shipped_items(request: web.Request) -> web.Response:
        return web.json_response(shipped)

    @service.events.subscribe("warehouse", "item_shipped")
    async def on_shipped(event: Event) -> None:
        shipped.append(event.data["item"])
        await service.events.publish("shipment_noted", {"item": event.data["item"]})

    return service


# -- chassis_service ----------------------------------------------------------------------


async def test_service_fixture_serves_on_a_loopback_port_with_a_bound_client(
    chassis_service: ServiceLauncher,
) -> None:
    live = await chassis_service(create_shop)
    assert live.url.startswith("http://127.0.0.1:")
    assert live.url.rsplit(":", 1)[1] == str(live.port) != "0"
    async with live.client.get("/health/ready") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "pass"
    assert live.service.name == "shop"


async def test_service_fixture_takes_a_service_or_an_async_factory(
    chassis_service: ServiceLauncher,
) -> None:
    built = create_shop()

    async def create() -> Service:
        return create_shop()

    first, second = await chassis_service(built), await chassis_service(create)
    assert first.service is built
    assert second.service is not built
    assert first.port != second.port
    for live in (first, second):
        async with live.client.get("/health/live") as response:
            assert response.status == 200


async def test_closing_drains_the_service_without_waiting_out_the_drain_delay() -> None:
    launcher = ServiceLauncher()
    drained: list[bool] = []
    service = create_shop(health={"drain_delay_seconds": 600})

    class Watcher:
        def setup(self, app: web.Application) -> None:
            pass

        async def on_draining(self) -> None:
            drained.append(service.health.draining)

    service.install(Watcher())
    live = await launcher(service)
    client = live.client
    await launcher.aclose()  # a 600 s drain delay would hit the 120 s test timeout
    assert drained == [True]
    assert client.closed
    assert launcher.started == []
    with pytest.raises(Exception, match="not running"):
        _ = live.url


# -- chassis_upstream ---------------------------------------------------------------------


async def test_upstream_fixture_starts_fault_injecting_upstreams(
    chassis_service: ServiceLauncher, chassis_upstream: Launcher[FaultyUpstream]
) -> None:
    inventory = await chassis_upstream(name="inventory", routes=inventory_routes())
    live = await chassis_service(lambda: create_shop(inventory.url))
    async with live.client.get("/items/apple") as response:
        assert response.status == 200
        assert await response.json() == {"item": "apple", "available": 3}
    assert inventory.hits_by_path["/stock/apple"] == 1

    inventory.configure(error_every=1)  # every request answers 503 now
    async with live.client.get("/items/apple") as response:
        assert response.status == 502
    assert inventory.hits == 2


# -- chassis_consul -----------------------------------------------------------------------


async def test_consul_fixture_starts_a_stand_in_the_service_registers_with(
    chassis_service: ServiceLauncher, chassis_consul: Launcher[ConsulStandIn]
) -> None:
    consul = await chassis_consul()
    discovery = {"backend": "consul", "consul_addr": consul.url, "check_interval_seconds": 1}
    live = await chassis_service(lambda: create_shop(discovery=discovery))
    [service_id] = consul.service_ids("shop")
    assert service_id.startswith("shop-")
    await chassis_service.aclose()  # draining deregisters it
    assert consul.service_ids("shop") == []
    assert live.service.health.draining


# -- chassis_broker -----------------------------------------------------------------------


async def test_broker_fixture_records_what_services_publish(
    chassis_service: ServiceLauncher,
    chassis_upstream: Launcher[FaultyUpstream],
    chassis_broker: RecordingBroker,
) -> None:
    inventory = await chassis_upstream(routes=inventory_routes())
    live = await chassis_service(lambda: create_shop(inventory.url))
    for item in ("apple", "pear"):
        async with live.client.get(f"/items/{item}") as response:
            assert response.status == 200
    pear = await chassis_broker.wait_for("shop", "item_viewed", where=lambda e: e.key == "pear")
    assert pear.data == {"item": "pear"}
    viewed = chassis_broker.find("shop", "item_viewed")
    assert [e.key for e in viewed] == ["apple", "pear"]
    assert live.service.events.broker is chassis_broker


async def test_broker_fixture_delivers_events_to_the_services_and_waits_for_their_answer(
    chassis_service: ServiceLauncher, chassis_broker: RecordingBroker
) -> None:
    live = await chassis_service(create_shop)
    sent = await chassis_broker.publish("warehouse", "item_shipped", {"item": "plum"})
    noted = await chassis_broker.wait_for("shop", "shipment_noted", timeout=30)
    assert noted.data == {"item": "plum"}
    assert chassis_broker.find("warehouse") == [sent]
    async with live.client.get("/shipped") as response:
        assert await response.json() == ["plum"]


async def test_waiting_for_an_event_never_published_times_out_naming_what_was(
    chassis_broker: RecordingBroker,
) -> None:
    await chassis_broker.publish("warehouse", "item_shipped", {"item": "fig"})
    expected = r"no shop/\* event within 0.05s; published: \['warehouse/item_shipped'\]"
    with pytest.raises(TimeoutError, match=expected):
        await chassis_broker.wait_for("shop", "*", timeout=0.05)


# -- chassis_logs -------------------------------------------------------------------------


async def test_logs_fixture_gives_the_json_records_with_request_and_trace_ids(
    chassis_service: ServiceLauncher,
    chassis_upstream: Launcher[FaultyUpstream],
    chassis_logs: LogCapture,
) -> None:
    inventory = await chassis_upstream(routes=inventory_routes())
    live = await chassis_service(lambda: create_shop(inventory.url))
    async with live.client.get("/items/fig", headers={"X-Request-ID": "req-1"}) as response:
        assert response.status == 200
    [lookup] = chassis_logs.find(logger="shop", item="fig")
    assert lookup["message"] == "looking up fig"
    assert lookup["service"] == "shop"
    assert (lookup["version"], lookup["request_id"]) == ("2.0.0", "req-1")
    [access] = chassis_logs.find(logger="chassis.access", route="/items/{item}")
    assert access["status"] == 200
    assert access["trace_id"] == lookup["trace_id"] != ""
    [server] = live.spans.find("GET /items/{item}")
    assert f"{server.context.trace_id:032x}" == lookup["trace_id"]
    assert chassis_logs.messages(event="listening") == [f"shop listening on {live.url}"]


# -- spans and metrics of a live service --------------------------------------------------


async def test_live_service_captures_its_finished_spans_without_a_flush(
    chassis_service: ServiceLauncher, chassis_upstream: Launcher[FaultyUpstream]
) -> None:
    inventory = await chassis_upstream(routes=inventory_routes())
    live = await chassis_service(lambda: create_shop(inventory.url))
    async with live.client.get("/items/kiwi") as response:
        assert response.status == 200
    [server] = live.spans.find("GET /items/{item}", kind=SpanKind.SERVER)
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    span_id = server.context.span_id
    children = [s for s in live.spans.spans if s.parent and s.parent.span_id == span_id]
    assert {s.kind for s in children} >= {SpanKind.CLIENT, SpanKind.PRODUCER}
    live.spans.clear()
    assert live.spans.spans == []


async def test_live_service_metrics_count_from_its_start(
    chassis_service: ServiceLauncher, chassis_upstream: Launcher[FaultyUpstream]
) -> None:
    inventory = await chassis_upstream(routes=inventory_routes())
    live = await chassis_service(lambda: create_shop(inventory.url))
    requests = "http_server_request_duration_seconds_count"
    assert live.metrics.delta(requests, route="/items/{item}") == 0
    before = await scrape_metrics(live.client)
    for item in ("a", "b", "c"):
        async with live.client.get(f"/items/{item}") as response:
            assert response.status == 200
    assert live.metrics.delta(requests, route="/items/{item}") == 3
    assert live.metrics.delta(requests, route="/items/{item}", status_code="500") == 0
    assert live.metrics.delta("events_published_total", type="item_viewed") == 3
    after = await scrape_metrics(live.client)
    assert (after - before).value(requests, route="/items/{item}", method="GET") == 3
    live.metrics.reset()
    assert live.metrics.delta(requests) == 0


# -- through the entry point, in a user's project ---------------------------------------

USER_TESTS = """
import pytest
from aiohttp import web
from chassis import ChassisSettings, Service


def create_service() -> Service:
    service = Service("hello", settings=ChassisSettings(health={"drain_delay_seconds": 0}))

    @service.get("/hello")
    async def hello(request: web.Request) -> web.Response:
        await service.events.publish("greeted", {"who": "you"})
        return web.json_response({"hello": "world"})

    return service


@pytest.mark.asyncio
async def test_hello(chassis_service, chassis_broker, chassis_logs, chassis_upstream):
    live = await chassis_service(create_service)
    async with live.client.get("/hello") as response:
        assert await response.json() == {"hello": "world"}
    assert (await chassis_broker.wait_for("hello", "greeted")).data == {"who": "you"}
    assert chassis_logs.find(logger="chassis.access", route="/hello")
    assert live.spans.find("GET /hello")
    assert live.metrics.delta("http_server_request_duration_seconds_count", route="/hello") == 1
    upstream = await chassis_upstream(status=204)
    assert upstream.url.startswith("http://127.0.0.1:")


@pytest.mark.asyncio
async def test_consul(chassis_consul):
    consul = await chassis_consul()
    assert consul.running
"""


def test_a_user_project_gets_the_fixtures_from_the_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    # Strict mode, as pytest-asyncio defaults to: the fixtures are marked as its own.
    pytester.makeini(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    # In process: a fresh session that loads its plugins from the entry points again.
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    fixtures = pytester.runpytest("--fixtures", "-p", "no:cacheprovider")
    fixtures.stdout.fnmatch_lines(["*fixtures defined from chassis.pytest_plugin*"])
    disabled = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:chassis")
    disabled.assert_outcomes(errors=2)
    disabled.stdout.fnmatch_lines(["*fixture 'chassis_service' not found*"])
