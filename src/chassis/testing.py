"""The chassis' public test kit: real servers on loopback, no mocks of your own code.

* :class:`ConsulStandIn`: an in-process Consul agent speaking the subset of the
  HTTP API the chassis uses (registration, blocking health queries, HTTP and TTL
  checks it really runs, reaping, maintenance, ACL tokens), with outage knobs.

Importing this module has no side effects; everything starts when awaited.
"""

from chassis._consul_standin import ConsulStandIn

__all__ = ["ConsulStandIn"]
