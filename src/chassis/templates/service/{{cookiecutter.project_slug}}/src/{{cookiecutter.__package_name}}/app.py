"""The {{ cookiecutter.service_name }} service: ``chassis run {{ cookiecutter.__package_name }}.app:create_service``.

``GET /items/{item_id}`` answers how many units of an item are in stock. It asks
the ``inventory`` service, through a resilient client; when the inventory cannot
answer, the item is still served, marked ``degraded``, rather than failing.
Replace the example with your own routes and dependencies.
"""

from typing import cast

from aiohttp import web
from chassis import (
    SETTINGS_KEY,
    NotFound,
    Service,
    ServiceClient,
    UpstreamStatusError,
    traced,
)
from chassis.client import Fallback

from . import __version__
from .settings import Settings

SERVICE_NAME = "{{ cookiecutter.service_name }}"
INVENTORY = "inventory"
"""The upstream's service name; discovery maps it to instances."""


@traced("inventory.lookup")
async def lookup_stock(inventory: ServiceClient, item_id: str) -> int | None:
    """Units of ``item_id`` in stock, or ``None`` when the inventory cannot say.

    Raises:
        NotFound: the inventory does not know the item.
    """
    # When the inventory fails (after retries, or with its circuit open), answer None.
    unknown = Fallback(value=None)
    try:
        answer = await inventory.get_json(f"/stock/{item_id}", fallback=unknown)
    except UpstreamStatusError as exc:
        if exc.status == 404:
            raise NotFound(f"no item {item_id!r}") from None
        raise  # any other refusal answers 502
    if answer is None:
        return None
    return int(answer["available"])


def create_service(settings: Settings | None = None) -> Service:
    """Build the service; settings are read from the environment at startup by default."""
    service = Service(SERVICE_NAME, version=__version__, settings=settings or Settings)
    inventory = service.client(INVENTORY)
    lookups = service.metrics.counter(
        "item_lookups_total",
        "Item lookups answered, by where the stock figure came from.",
        labels=("source",),
    )

    @service.get("/items/{item_id:[A-Za-z0-9_-]{1,64}}")
    async def get_item(request: web.Request) -> web.Response:
        """How many units of an item are in stock."""
        settings = cast(Settings, request.app[SETTINGS_KEY])
        item_id = request.match_info["item_id"]
        available = await lookup_stock(inventory, item_id)
        if available is None:
            lookups.labels("fallback").inc()
            low_stock = None
        else:
            lookups.labels("inventory").inc()
            low_stock = available < settings.low_stock_threshold
        return web.json_response(
            {
                "item_id": item_id,
                "available": available,
                "low_stock": low_stock,
                "degraded": available is None,
            }
        )

    # Not critical: without the inventory the service still answers (degraded), so
    # it should keep its traffic; the probe reports "degraded" with 200.
    @service.health.check("inventory", critical=False, timeout_seconds=1.0)
    async def inventory_ready() -> bool:
        response = await inventory.get("/health/ready", deadline=1.0)
        return response.status == 200

    return service
