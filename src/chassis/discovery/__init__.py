"""Service discovery: register this instance, resolve others to healthy instances.

Back ends are interchangeable by configuration (``CHASSIS_DISCOVERY__BACKEND``):

* :class:`StaticRegistry` (``static``, the default): a fixed map of service name to
  URLs from ``CHASSIS_DISCOVERY__STATIC``; no network;
* :class:`ConsulRegistry` (``consul``, needs the ``consul`` extra): self-registration
  with an HTTP check, lookups kept fresh by blocking-query watches and served from
  a stale cache while Consul is unreachable.

:class:`Discovery` is the capability a :class:`~chassis.Service` installs as
``service.discovery``; every back end implements the :class:`Registry` protocol.
"""

from chassis.discovery.base import DiscoveryError, Instance, Registration, Registry
from chassis.discovery.capability import DISCOVERY_KEY, Discovery
from chassis.discovery.consul import ConsulRegistry
from chassis.discovery.static import StaticRegistry

__all__ = [
    "ConsulRegistry",
    "DISCOVERY_KEY",
    "Discovery",
    "DiscoveryError",
    "Instance",
    "Registration",
    "Registry",
    "StaticRegistry",
]
