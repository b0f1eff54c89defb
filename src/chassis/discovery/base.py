"""The discovery contract every back end implements.

A :class:`Registry` registers this service's instance, resolves other services to
their healthy instances, and lets callers watch for changes. Back ends
(:mod:`chassis.discovery.static`, :mod:`chassis.discovery.consul`) are
interchangeable by configuration (``CHASSIS_DISCOVERY__BACKEND``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from chassis.exceptions import DiscoveryError

__all__ = ["DiscoveryError", "Instance", "Registration", "Registry"]


@dataclass(frozen=True, slots=True)
class Instance:
    """One reachable instance of a service."""

    service: str
    """The service's name (``market-data``)."""
    id: str
    """Unique id of the instance."""
    address: str
    """Host name or IP address."""
    port: int
    """TCP port."""
    scheme: str = "http"
    """URL scheme."""
    tags: tuple[str, ...] = ()
    """Free-form tags."""
    meta: Mapping[str, str] = field(default_factory=dict)
    """Key/value metadata (``version``, ...)."""

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://10.0.0.5:8080``."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Registration:
    """What a service registers about itself."""

    service: str
    id: str
    address: str
    port: int
    version: str
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    health_path: str = "/health/ready"


@runtime_checkable
class Registry(Protocol):
    """Registration and lookup of service instances."""

    async def register(self, registration: Registration) -> None:
        """Announce this instance (a no-op for back ends without registration)."""

    async def deregister(self, registration: Registration) -> None:
        """Withdraw this instance; called during the graceful drain."""

    async def resolve(self, service: str) -> list[Instance]:
        """The service's healthy instances (possibly a stale answer if the back end is down)."""

    def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        """Yield the healthy instances now and after every change."""

    async def aclose(self) -> None:
        """Release connections and background tasks; idempotent."""
