"""The chassis' public test kit: real servers on loopback, no mocks of your own code.

* :class:`LiveService`: your service serving on a free loopback port, with an HTTP
  client bound to it, its spans and its metrics; :class:`ServiceLauncher` starts
  several and closes them all.
* :class:`ConsulStandIn`: an in-process Consul agent speaking the subset of the
  HTTP API the chassis uses (registration, blocking health queries, HTTP and TTL
  checks it really runs, reaping, maintenance, ACL tokens), with outage knobs.
* :class:`FaultyUpstream`: an aiohttp upstream with knobs for latency, error rate,
  status codes, connection resets, slow bodies and full outage, with hit counters
  and a record of what it received.
* :class:`RecordingBroker`: the in-memory events broker, keeping what is published
  and waiting for an event.
* :func:`capture_logs`, :func:`capture_spans`, :class:`MetricsWatch`: what a
  service logged (the JSON records, parsed), traced and measured.
* :class:`Launcher`: starts test servers on demand and closes them all at the end.

The pytest plugin :mod:`chassis.pytest_plugin` (registered when the chassis is
installed) turns these into fixtures: ``chassis_service``, ``chassis_upstream``,
``chassis_consul``, ``chassis_broker`` and ``chassis_logs``.

Importing this module has no side effects; everything starts when awaited.
"""

from chassis._consul_standin import ConsulStandIn
from chassis._faulty_upstream import FaultyUpstream, ReceivedRequest
from chassis._testkit_capture import (
    LogCapture,
    MetricsSnapshot,
    MetricsWatch,
    SpanCapture,
    capture_logs,
    capture_spans,
    scrape_metrics,
)
from chassis._testkit_live import Launcher, LiveService, RecordingBroker, ServiceLauncher

__all__ = [
    "ConsulStandIn",
    "FaultyUpstream",
    "Launcher",
    "LiveService",
    "LogCapture",
    "MetricsSnapshot",
    "MetricsWatch",
    "ReceivedRequest",
    "RecordingBroker",
    "ServiceLauncher",
    "SpanCapture",
    "capture_logs",
    "capture_spans",
    "scrape_metrics",
]
