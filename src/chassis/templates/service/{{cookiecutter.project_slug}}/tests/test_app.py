"""The service in-process on a real socket, its dependency a fault-injecting upstream."""

from typing import Any

from chassis.testing import FaultyUpstream, LiveService, LogCapture, ServiceLauncher

from {{ cookiecutter.__package_name }}.app import create_service
from {{ cookiecutter.__package_name }}.settings import Settings

LOOKUPS = "{{ cookiecutter.__metric_prefix }}_item_lookups_total"


async def get(live: LiveService, path: str) -> tuple[int, Any]:
    """``GET path`` from the running service: the status and JSON body."""
    async with live.client.get(path) as response:
        return response.status, await response.json(content_type=None)


async def test_item_reports_the_inventory_stock(
    chassis_service: ServiceLauncher, inventory: FaultyUpstream, settings: Settings
) -> None:
    live = await chassis_service(create_service(settings))
    status, body = await get(live, "/items/apple")
    assert status == 200
    assert body == {"item_id": "apple", "available": 3, "low_stock": True, "degraded": False}
    assert inventory.hits_by_path["/stock/apple"] == 1
    assert live.metrics.delta(LOOKUPS, source="inventory") == 1


async def test_low_stock_threshold_is_a_setting(
    chassis_service: ServiceLauncher, settings: Settings
) -> None:
    settings = settings.model_copy(update={"low_stock_threshold": 2})
    live = await chassis_service(create_service(settings))
    status, body = await get(live, "/items/apple")
    assert (status, body["low_stock"]) == (200, False)


async def test_item_falls_back_when_the_inventory_fails(
    chassis_service: ServiceLauncher, inventory: FaultyUpstream, settings: Settings
) -> None:
    inventory.error_every = 1  # every request answers 503
    live = await chassis_service(create_service(settings))
    status, body = await get(live, "/items/apple")
    assert status == 200
    assert body == {"item_id": "apple", "available": None, "low_stock": None, "degraded": True}
    assert live.metrics.delta(LOOKUPS, source="fallback") == 1


async def test_item_falls_back_when_the_inventory_is_down(
    chassis_service: ServiceLauncher, inventory: FaultyUpstream, settings: Settings
) -> None:
    await inventory.outage()  # connections refused
    live = await chassis_service(create_service(settings))
    status, body = await get(live, "/items/pear")
    assert (status, body["degraded"]) == (200, True)


async def test_unknown_item_is_404(chassis_service: ServiceLauncher, settings: Settings) -> None:
    live = await chassis_service(create_service(settings))
    status, body = await get(live, "/items/plum")
    assert status == 404
    assert body["detail"] == "no item 'plum'"


async def test_readiness_is_degraded_not_failing_without_the_inventory(
    chassis_service: ServiceLauncher, inventory: FaultyUpstream, settings: Settings
) -> None:
    live = await chassis_service(create_service(settings))
    status, body = await get(live, "/health/ready")
    assert (status, body["status"]) == (200, "pass")

    await inventory.outage()
    status, body = await get(live, "/health/ready")
    assert (status, body["status"]) == (200, "degraded")
    assert body["checks"]["inventory"]["status"] == "fail"


async def test_the_lookup_is_traced(chassis_service: ServiceLauncher, settings: Settings) -> None:
    live = await chassis_service(create_service(settings))
    status, _ = await get(live, "/items/apple")
    assert status == 200
    [lookup] = live.spans.find("inventory.lookup")
    [request] = live.spans.find("GET /items/{item_id}")
    assert lookup.parent is not None
    assert lookup.parent.span_id == request.context.span_id


async def test_each_request_is_logged_with_its_request_id(
    chassis_service: ServiceLauncher, settings: Settings, chassis_logs: LogCapture
) -> None:
    live = await chassis_service(create_service(settings))
    async with live.client.get("/items/apple", headers={"X-Request-ID": "r-42"}) as response:
        assert response.status == 200
    [access] = chassis_logs.find(logger="chassis.access", route="/items/{item_id}")
    assert (access["status"], access["request_id"]) == (200, "r-42")
