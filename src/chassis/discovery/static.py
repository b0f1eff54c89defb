"""``StaticRegistry``: instances listed in configuration, the embedded default.

No network and no registration: every service name maps to a fixed list of base
URLs, from ``CHASSIS_DISCOVERY__STATIC`` or from code::

    registry = StaticRegistry({"market-data": ["http://127.0.0.1:8001"]})
    await registry.resolve("market-data")   # [Instance(service="market-data", ...)]

Every listed instance counts as healthy; an unknown service resolves to ``[]``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from yarl import URL

from chassis.config import DiscoverySettings
from chassis.discovery.base import Instance, Registration
from chassis.exceptions import ConfigError

__all__ = ["StaticRegistry"]

_ENV_VAR = "CHASSIS_DISCOVERY__STATIC"


class StaticRegistry:
    """A :class:`~chassis.discovery.Registry` over a fixed map of service name to URLs.

    Args:
        services: service name -> base URLs (``http://host:port``).

    Raises:
        ConfigError: a URL is not an ``http://`` or ``https://`` base URL.
    """

    def __init__(self, services: Mapping[str, Sequence[str]] | None = None) -> None:
        self._instances: dict[str, list[Instance]] = {
            name: [_instance(name, i, url) for i, url in enumerate(urls)]
            for name, urls in (services or {}).items()
        }
        self._closed = asyncio.Event()

    @classmethod
    def from_settings(cls, settings: DiscoverySettings) -> StaticRegistry:
        """The registry described by ``settings.static``."""
        return cls(settings.static)

    def __repr__(self) -> str:
        return f"<StaticRegistry {sorted(self._instances)}>"

    async def register(self, registration: Registration) -> None:
        """Nothing to do: static instances are configured, not registered."""

    async def deregister(self, registration: Registration) -> None:
        """Nothing to do: static instances are configured, not registered."""

    async def resolve(self, service: str) -> list[Instance]:
        """The configured instances of ``service`` (``[]`` if none are configured)."""
        return list(self._instances.get(service, ()))

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        """Yield the configured instances once, then wait until the registry is closed."""
        yield list(self._instances.get(service, ()))
        await self._closed.wait()

    def snapshot(self) -> dict[str, Any]:
        """The configured map: per service, its instances (a static map never ages)."""
        services = {
            name: {
                "instances": [i.url for i in instances],
                "cache_age_seconds": None,
                "watch": "static",
                "consecutive_errors": 0,
            }
            for name, instances in sorted(self._instances.items())
        }
        return {"backend": "static", "services": services}

    async def aclose(self) -> None:
        """End every watch; idempotent."""
        self._closed.set()


def _instance(service: str, position: int, url: str) -> Instance:
    problem = DiscoverySettings._base_url_problem(url)
    if problem is not None:
        raise ConfigError([(_ENV_VAR, f"{service!r}: {url!r} {problem}")])
    parsed = URL(url)
    host = parsed.host
    assert host is not None  # checked above
    port = parsed.port
    assert port is not None  # http and https have default ports
    return Instance(
        service=service,
        id=f"{service}-{position}",
        address=host,
        port=port,
        scheme=parsed.scheme,
    )
