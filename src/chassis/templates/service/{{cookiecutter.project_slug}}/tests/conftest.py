"""Fixtures: the inventory as a real upstream on 127.0.0.1 that misbehaves on demand.

The ``chassis_*`` fixtures come from the chassis' pytest plugin, installed with it:
``chassis_upstream`` starts fault-injecting upstreams, ``chassis_service`` serves
the service on a free port, ``chassis_broker`` records its events and
``chassis_logs`` its log records. See the chassis' "Testing your service" guide.
"""

import pytest
from aiohttp import web
from chassis import ClientSettings, DiscoverySettings, HealthSettings
from chassis.testing import FaultyUpstream, Launcher

from {{ cookiecutter.__package_name }}.settings import Settings

STOCK = {"apple": 3, "pear": 12}


def _inventory_routes() -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.get("/stock/{item_id}")
    async def stock(request: web.Request) -> web.Response:
        item_id = request.match_info["item_id"]
        if item_id not in STOCK:
            raise web.HTTPNotFound()
        return web.json_response({"item_id": item_id, "available": STOCK[item_id]})

    return routes


@pytest.fixture
async def inventory(chassis_upstream: Launcher[FaultyUpstream]) -> FaultyUpstream:
    """The inventory service: ``GET /stock/{item_id}``, and 200 on every other path."""
    return await chassis_upstream(name="inventory", routes=_inventory_routes())


@pytest.fixture
def settings(inventory: FaultyUpstream) -> Settings:
    """Settings pointing at the fake inventory; one attempt per call, no drain delay."""
    return Settings(
        health=HealthSettings(drain_delay_seconds=0),
        discovery=DiscoverySettings(static={"inventory": [inventory.url]}),
        client=ClientSettings(max_attempts=1, timeout_seconds=2),
    )
