"""Resilient calls to other services: :class:`ServiceClient` and its pipeline stages.

Each stage is a plain object that also works alone, and as a decorator on any
async function:

========================  ===============================  ==========================
stage                     object                           decorator
========================  ===============================  ==========================
deadline                  :class:`Timeout`                 ``@timeout(2.0)``
retries                   :class:`Retry`, :class:`RetryBudget`  ``@retry(max_attempts=3)``
circuit breaker           :class:`CircuitBreaker`          ``@circuit_breaker("db")``
bulkhead                  :class:`Bulkhead`                ``@bulkhead(20)``
fallback                  :class:`Fallback`                ``@fallback(value=[])``
load balancing            :class:`RoundRobin`, :class:`PowerOfTwoChoices`
========================  ===============================  ==========================

:class:`Clients` is the capability a service installs; :class:`DeadlinePropagation`
is the server middleware that turns an inbound ``X-Request-Deadline-Ms`` into the
deadline of the calls made while handling the request.
"""

from chassis.client.balancer import (
    Endpoint,
    LoadBalancer,
    PowerOfTwoChoices,
    RoundRobin,
    make_balancer,
)
from chassis.client.breaker import (
    CIRCUIT_STATE_VALUES,
    CircuitBreaker,
    CircuitState,
    circuit_breaker,
)
from chassis.client.bulkheads import Bulkhead, bulkhead
from chassis.client.capability import CLIENTS_KEY, Clients
from chassis.client.client import (
    IDEMPOTENCY_KEY_HEADER,
    Resolver,
    Response,
    ServiceClient,
    new_session,
)
from chassis.client.deadline import (
    DEADLINE_HEADER,
    DeadlinePropagation,
    Timeout,
    current_deadline,
    remaining_seconds,
    timeout,
)
from chassis.client.fallbacks import Fallback, fallback
from chassis.client.retries import (
    IDEMPOTENT_METHODS,
    RETRYABLE_STATUSES,
    Retry,
    RetryBudget,
    retry,
)
from chassis.client.telemetry import ClientMetrics

__all__ = [
    "Bulkhead",
    "CIRCUIT_STATE_VALUES",
    "CLIENTS_KEY",
    "CircuitBreaker",
    "CircuitState",
    "ClientMetrics",
    "Clients",
    "DEADLINE_HEADER",
    "DeadlinePropagation",
    "Endpoint",
    "Fallback",
    "IDEMPOTENCY_KEY_HEADER",
    "IDEMPOTENT_METHODS",
    "LoadBalancer",
    "PowerOfTwoChoices",
    "RETRYABLE_STATUSES",
    "Resolver",
    "Response",
    "Retry",
    "RetryBudget",
    "RoundRobin",
    "ServiceClient",
    "Timeout",
    "bulkhead",
    "circuit_breaker",
    "current_deadline",
    "fallback",
    "make_balancer",
    "new_session",
    "remaining_seconds",
    "retry",
    "timeout",
]
