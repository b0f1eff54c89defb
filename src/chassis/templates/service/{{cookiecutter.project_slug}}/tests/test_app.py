"""The service in-process on a real socket, its dependency a fault-injecting upstream."""

from typing import Any

import aiohttp
from chassis import Service
from chassis.testing import FaultyUpstream
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from {{ cookiecutter.__package_name }}.app import create_service
from {{ cookiecutter.__package_name }}.settings import Settings

LOOKUPS = "{{ cookiecutter.__metric_prefix }}_item_lookups_total"


async def get(service: Service, path: str) -> tuple[int, Any]:
    """Start ``service`` on a free port, ``GET path``, stop it: the status and JSON body."""
    async with (
        service.running(port=0) as running,
        aiohttp.ClientSession() as http,
        http.get(running.url + path) as response,
    ):
        return response.status, await response.json(content_type=None)


async def test_item_reports_the_inventory_stock(
    inventory: FaultyUpstream, settings: Settings
) -> None:
    service = create_service(settings)
    status, body = await get(service, "/items/apple")
    assert status == 200
    assert body == {"item_id": "apple", "available": 3, "low_stock": True, "degraded": False}
    assert inventory.hits_by_path["/stock/apple"] == 1
    assert service.metrics.registry.get_sample_value(LOOKUPS, {"source": "inventory"}) == 1


async def test_low_stock_threshold_is_a_setting(
    inventory: FaultyUpstream, settings: Settings
) -> None:
    settings = settings.model_copy(update={"low_stock_threshold": 2})
    status, body = await get(create_service(settings), "/items/apple")
    assert (status, body["low_stock"]) == (200, False)


async def test_item_falls_back_when_the_inventory_fails(
    inventory: FaultyUpstream, settings: Settings
) -> None:
    inventory.error_every = 1  # every request answers 503
    service = create_service(settings)
    status, body = await get(service, "/items/apple")
    assert status == 200
    assert body == {"item_id": "apple", "available": None, "low_stock": None, "degraded": True}
    assert service.metrics.registry.get_sample_value(LOOKUPS, {"source": "fallback"}) == 1


async def test_item_falls_back_when_the_inventory_is_down(
    inventory: FaultyUpstream, settings: Settings
) -> None:
    await inventory.outage()  # connections refused
    status, body = await get(create_service(settings), "/items/pear")
    assert (status, body["degraded"]) == (200, True)


async def test_unknown_item_is_404(inventory: FaultyUpstream, settings: Settings) -> None:
    status, body = await get(create_service(settings), "/items/plum")
    assert status == 404
    assert body["detail"] == "no item 'plum'"


async def test_readiness_is_degraded_not_failing_without_the_inventory(
    inventory: FaultyUpstream, settings: Settings
) -> None:
    status, body = await get(create_service(settings), "/health/ready")
    assert (status, body["status"]) == (200, "pass")

    await inventory.outage()
    status, body = await get(create_service(settings), "/health/ready")
    assert (status, body["status"]) == (200, "degraded")
    assert body["checks"]["inventory"]["status"] == "fail"


async def test_the_lookup_is_traced(inventory: FaultyUpstream, settings: Settings) -> None:
    service = create_service(settings)
    spans = InMemorySpanExporter()
    service.tracing.exporter = spans  # before it starts: export here, not over OTLP
    async with service.running(port=0) as running, aiohttp.ClientSession() as http:
        async with http.get(running.url + "/items/apple") as response:
            assert response.status == 200
        await service.tracing.flush()
    by_name = {span.name: span for span in spans.get_finished_spans()}
    lookup, request = by_name["inventory.lookup"], by_name["GET /items/{item_id}"]
    assert lookup.parent is not None
    assert lookup.parent.span_id == request.context.span_id
