"""The chassis' public test kit: real servers on loopback, no mocks of your own code.

* :class:`ConsulStandIn`: an in-process Consul agent speaking the subset of the
  HTTP API the chassis uses (registration, blocking health queries, HTTP and TTL
  checks it really runs, reaping, maintenance, ACL tokens), with outage knobs.
* :class:`FaultyUpstream`: an aiohttp upstream with knobs for latency, error rate,
  status codes, connection resets, slow bodies and full outage, with hit counters
  and a record of what it received.

Importing this module has no side effects; everything starts when awaited.
"""

from chassis._consul_standin import ConsulStandIn
from chassis._faulty_upstream import FaultyUpstream, ReceivedRequest

__all__ = ["ConsulStandIn", "FaultyUpstream", "ReceivedRequest"]
