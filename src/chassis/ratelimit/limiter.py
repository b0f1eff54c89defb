"""The :class:`RateLimiter` capability: the configured limits as one middleware."""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from aiohttp import web

from chassis.config import ChassisSettings, RateLimitSettings, RouteLimitSettings, env_var_name
from chassis.exceptions import ConfigError, Overloaded, ProblemError, RateLimited
from chassis.http import problem_response, route_template
from chassis.logging import current_request_id
from chassis.ratelimit.buckets import Clock, Decision, KeyedLimiter
from chassis.ratelimit.concurrency import ConcurrencyLimiter
from chassis.ratelimit.decorators import RequestKey, request_key
from chassis.ratelimit.redis import RedisLimiter, _close_redis, _open_redis
from chassis.ratelimit.shedding import LagSource, Priority, PriorityShedder

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.metrics_core import Metric
    from redis.asyncio import Redis

__all__ = ["RATELIMIT_KEY", "RateLimiter"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger("chassis.ratelimit")

_WAIT_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, math.inf)
_WAIT_LES = tuple("+Inf" if math.isinf(b) else repr(b) for b in _WAIT_BOUNDS)


@dataclass(slots=True, eq=False)
class _Policy:
    """The limits of the whole service or of one route."""

    name: str
    key: RequestKey
    local: KeyedLimiter | None
    concurrency: ConcurrencyLimiter | None
    priority: Priority | None
    redis: RedisLimiter | None = None


class _Stats:
    """The limiter's metrics, kept as plain numbers and exported by a custom collector."""

    def __init__(self, owner: RateLimiter) -> None:
        self.owner = owner
        self.decisions: dict[tuple[str, str], int] = {}
        self.waits = [0] * len(_WAIT_BOUNDS)
        self.wait_sum = 0.0

    def count(self, route: str, outcome: str) -> None:
        key = (route, outcome)
        self.decisions[key] = self.decisions.get(key, 0) + 1

    def observe_wait(self, seconds: float) -> None:
        self.waits[bisect_left(_WAIT_BOUNDS, seconds)] += 1
        self.wait_sum += seconds

    def _families(
        self,
    ) -> tuple[CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, CounterMetricFamily]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        return (
            CounterMetricFamily(
                "chassis_ratelimit_decisions",
                "Admission decisions by route and outcome (admitted, limited, shed).",
                labels=("route", "outcome"),
            ),
            GaugeMetricFamily(
                "chassis_ratelimit_in_flight", "Requests admitted by the limiter and not finished."
            ),
            HistogramMetricFamily(
                "chassis_ratelimit_queue_wait_seconds",
                "Time requests waited for a concurrency slot, in seconds.",
            ),
            CounterMetricFamily(
                "chassis_ratelimit_redis_fallbacks",
                "Rate-limit decisions made locally because Redis was unreachable.",
            ),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        decisions, in_flight, wait, fallbacks = self._families()
        for labels, value in list(self.decisions.items()):
            decisions.add_metric(labels, value)
        in_flight.add_metric((), self.owner.in_flight)
        wait.add_metric(
            (), list(zip(_WAIT_LES, accumulate(self.waits), strict=True)), self.wait_sum
        )
        fallbacks.add_metric((), sum(r.fallbacks for r in self.owner.redis_limiters))
        yield from (decisions, in_flight, wait, fallbacks)


class RateLimiter:
    """Admission control for a service: the :class:`RateLimitSettings` limits as middleware.

    For each request that is not a probe or ``/metrics``, in this order:

    1. its priority is read from the priority header (``critical``, ``normal``,
       ``sheddable``), else the route's configured priority, else ``normal``; the
       :class:`PriorityShedder` may shed it (503, ``Retry-After``);
    2. the route's rate limit, then the service-wide one, may refuse it (429 with
       ``Retry-After`` and the ``RateLimit-*`` headers, which admitted responses
       carry too);
    3. the service-wide, then the route's concurrency limit admit it, perhaps
       after a wait in their queue, or shed it (503).

    Every request the limits apply to counts once in
    ``chassis_ratelimit_decisions_total`` as ``admitted``, ``limited`` or ``shed``;
    refusals raised by :func:`rate_limited` and :func:`concurrency_limited` inside
    handlers count too.

    Args:
        settings: the limits; when omitted, the service's settings are used at startup.
        service_name: namespaces the shared buckets in Redis.
        registry: where to register the limiter's metrics at startup; none keeps them
            unexported, and so do the service's settings when they disable metrics.
        lag_monitor: reports event-loop lag for shedding (a service passes its
            ``health.lag``); none sheds by in-flight only.
        exempt_paths: path prefixes never limited.
        clock: monotonic seconds, injectable for deterministic tests.
    """

    def __init__(
        self,
        settings: RateLimitSettings | None = None,
        *,
        service_name: str = "",
        registry: CollectorRegistry | None = None,
        lag_monitor: LagSource | None = None,
        exempt_paths: Sequence[str] = ("/health/", "/metrics"),
        clock: Clock = time.monotonic,
    ) -> None:
        self._explicit_settings = settings
        self.settings = settings or RateLimitSettings()
        self.service_name = service_name
        self.registry = registry
        self.lag_monitor = lag_monitor
        self.exempt_paths = tuple(exempt_paths)
        self.in_flight = 0
        """Requests past shedding and not finished (queued ones included)."""
        self.redis_limiters: list[RedisLimiter] = []
        self._clock = clock
        self._extra_routes: dict[str, RouteLimitSettings] = {}
        self._stats = _Stats(self)
        self._registered = False
        self._export = True
        self._active = False
        self._service: _Policy | None = None
        self._routes: dict[str, _Policy] = {}
        self._shedder: PriorityShedder | None = None

    def __repr__(self) -> str:
        return f"<RateLimiter {self.service_name or '(unnamed)'} active={self._active}>"

    def limit_route(
        self,
        route: str,
        *,
        rate_per_second: float | None = None,
        burst: int | None = None,
        key: str | None = None,
        max_in_flight: int | None = None,
        queue: int = 0,
        priority: str | None = None,
    ) -> None:
        """Limit the route with template ``route`` (``/orders/{id}``) on top of the settings.

        Takes effect at startup, whether or not ``settings.enabled`` is set.

        Raises:
            pydantic.ValidationError: an argument is out of range.
        """
        self._extra_routes[route] = RouteLimitSettings(
            rate_per_second=rate_per_second,
            burst=burst,
            key=key,
            max_in_flight=max_in_flight,
            queue=queue,
            priority=priority,  # type: ignore[arg-type]
        )

    # -- wiring -----------------------------------------------------------------------
    def configure(self, settings: ChassisSettings) -> None:
        """Adopt a service's rate-limit settings unless explicit ones were given.

        Raises:
            ConfigError: a key spec is invalid.
        """
        if self._explicit_settings is None:
            self.settings = settings.ratelimit
        self._export = settings.metrics.enabled
        path = settings.metrics.path
        if path not in self.exempt_paths:
            self.exempt_paths = (*self.exempt_paths, path)
        self._build()

    def setup(self, app: web.Application) -> None:
        """Put the middleware first in ``app``'s chain and add one cleanup context."""
        app.middlewares.insert(0, self.middleware)
        app.cleanup_ctx.append(self._lifespan)
        app[RATELIMIT_KEY] = self

    def _build(self) -> None:
        s = self.settings
        policies: dict[str, _Policy] = {}
        routes = {**s.routes, **self._extra_routes} if s.enabled else dict(self._extra_routes)
        for route, r in routes.items():
            var = env_var_name(("ratelimit", "routes"))
            policies[route] = self._policy(route, r.key or s.key, r.rate_per_second, r.burst, var)
            if r.max_in_flight is not None:
                policies[route].concurrency = self._concurrency(r.max_in_flight, r.queue)
            if r.priority is not None:
                policies[route].priority = Priority.parse(r.priority)
        service = None
        shedder = None
        if s.enabled:
            rate = s.rate_per_second
            service = self._policy(
                "service", s.key, rate, s.burst, env_var_name(("ratelimit", "key"))
            )
            if s.max_in_flight is not None:
                service.concurrency = self._concurrency(s.max_in_flight, s.queue)
            if s.max_in_flight is not None or self.lag_monitor is not None:
                shedder = PriorityShedder(
                    max_in_flight=s.max_in_flight,
                    sheddable_share=s.sheddable_share,
                    normal_share=s.normal_share,
                    lag_monitor=self.lag_monitor,
                    max_event_loop_lag_seconds=s.max_event_loop_lag_seconds,
                )
        self._routes, self._service, self._shedder = policies, service, shedder
        self._active = bool(policies) or service is not None

    def _policy(
        self, name: str, key: str, rate: float | None, burst: int | None, var: str
    ) -> _Policy:
        try:
            key_fn = request_key(key)
        except ValueError as exc:
            reason = f"{exc} (route {name})" if name != "service" else str(exc)
            raise ConfigError([(var, reason)]) from None
        local = None
        if rate is not None:
            local = KeyedLimiter(rate, burst, max_keys=self.settings.max_keys, clock=self._clock)
        return _Policy(name, key_fn, local, None, None)

    def _concurrency(self, max_in_flight: int, queue: int) -> ConcurrencyLimiter:
        return ConcurrencyLimiter(
            max_in_flight,
            queue=queue,
            queue_timeout_seconds=self.settings.queue_timeout_seconds,
            retry_after_seconds=self.settings.retry_after_seconds,
            clock=self._clock,
        )

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        self._build()  # settings and extra routes are final now
        if self.registry is not None and self._export and not self._registered:
            self.registry.register(self._stats)
            self._registered = True
        client = self._open_shared_limits()
        try:
            yield
        finally:
            self.redis_limiters = []
            for policy in (self._service, *self._routes.values()):
                if policy is not None:
                    policy.redis = None
            if client is not None:
                await _close_redis(client)

    def _open_shared_limits(self) -> Redis | None:
        url = self.settings.redis_url
        policies = [
            p
            for p in (self._service, *self._routes.values())
            if p is not None and p.local is not None
        ]
        if url is None or not policies:
            return None
        try:
            client = _open_redis(url.get_secret_value(), self.settings.redis_timeout_seconds)
        except ImportError:
            var = env_var_name(("ratelimit", "redis_url"))
            reason = "needs the redis extra: pip install 'aiochassis[redis]'"
            raise ConfigError([(var, reason)]) from None
        except ValueError as exc:
            raise ConfigError([(env_var_name(("ratelimit", "redis_url")), str(exc))]) from None
        prefix = f"chassis:ratelimit:{self.service_name}:"
        for policy in policies:
            assert policy.local is not None
            policy.redis = RedisLimiter(
                client,
                policy.local.rate,
                policy.local.burst,
                prefix=f"{prefix}{policy.name}:",
                fallback=policy.local,
                timeout_seconds=self.settings.redis_timeout_seconds,
                retry_interval_seconds=self.settings.redis_retry_interval_seconds,
                clock=self._clock,
            )
            self.redis_limiters.append(policy.redis)
        log.info("rate limits are shared through Redis", extra={"event": "redis"})
        return client

    # -- request path -----------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The limits in force and their state now, for introspection: admitted
        requests in flight, each policy's keys and concurrency, whether each priority
        would be shed at this moment, the shared (Redis) limits and decision counts."""
        shedder = self._shedder
        shedding: dict[str, str | None] | None = None
        if shedder is not None:
            shedding = {p.label: shedder.shed_reason(p, self.in_flight) for p in Priority}
        decisions: dict[str, int] = {}
        for (_route, outcome), count in list(self._stats.decisions.items()):
            decisions[outcome] = decisions.get(outcome, 0) + count
        policies = [p for p in (self._service, *self._routes.values()) if p is not None]
        return {
            "enabled": self.settings.enabled,
            "active": self._active,
            "in_flight": self.in_flight,
            "policies": [_describe_policy(p) for p in policies],
            "shedding": shedding,
            "shared": [
                {"using_redis": r.using_redis, "fallbacks": r.fallbacks}
                for r in self.redis_limiters
            ],
            "decisions": decisions,
        }

    def priority_of(self, request: web.Request, route: str | None = None) -> Priority:
        """The request's priority: its header, else its route's, else ``normal``."""
        header = self.settings.priority_header
        if header:
            found = Priority.parse(request.headers.get(header))
            if found is not None:
                return found
        policy = self._routes.get(route if route is not None else route_template(request))
        if policy is not None and policy.priority is not None:
            return policy.priority
        return Priority.NORMAL

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The aiohttp middleware."""
        if request.path.startswith(self.exempt_paths):
            return await handler(request)
        stats = self._stats
        if not self._active:
            try:
                return await handler(request)
            except RateLimited:
                stats.count(route_template(request), "limited")
                raise
            except Overloaded:
                stats.count(route_template(request), "shed")
                raise
        route = route_template(request)
        shedder = self._shedder
        if shedder is not None:
            priority = self.priority_of(request, route)
            reason = shedder.shed_reason(priority, self.in_flight)
            if reason is not None:
                stats.count(route, "shed")
                return _answer(
                    request,
                    Overloaded(
                        f"the service is saturated ({reason.replace('_', ' ')}): "
                        f"{priority.label} requests are shed",
                        reason=reason,
                        retry_after=self.settings.retry_after_seconds,
                        priority=priority.label,
                    ),
                )
        policy = self._routes.get(route)
        service = self._service
        acquired: list[ConcurrencyLimiter] = []
        shown: Decision | None = None
        self.in_flight += 1
        try:
            try:
                for p in (policy, service):
                    if p is None or (local := p.local) is None:
                        continue
                    if p.redis is not None:
                        decision = await p.redis.decide(p.key(request))
                    else:
                        # The in-memory path: one number, a Decision only for the headers.
                        balance = local.take(p.key(request))
                        if balance < 0.0 or shown is None or balance < shown.remaining:
                            decision = Decision.from_balance(balance, local.rate, local.burst, 1.0)
                        else:
                            continue
                    if not decision.allowed:
                        raise decision.refusal()
                    if shown is None or decision.remaining < shown.remaining:
                        shown = decision
                for p in (service, policy):
                    if p is not None and p.concurrency is not None:
                        waited = await p.concurrency.acquire()
                        acquired.append(p.concurrency)
                        stats.observe_wait(waited)
            except (RateLimited, Overloaded) as exc:
                stats.count(route, "limited" if isinstance(exc, RateLimited) else "shed")
                return _answer(request, exc)
            try:
                response = await handler(request)
            except RateLimited:
                stats.count(route, "limited")
                raise
            except Overloaded:
                stats.count(route, "shed")
                raise
        finally:
            self.in_flight -= 1
            for limiter in reversed(acquired):
                limiter.release()
        stats.count(route, "admitted")
        if shown is not None and not response.prepared:
            response.headers.update(shown.headers())
        return response


def _describe_policy(policy: _Policy) -> dict[str, Any]:
    local, concurrency = policy.local, policy.concurrency
    return {
        "name": policy.name,
        "rate_per_second": None if local is None else local.rate,
        "burst": None if local is None else local.burst,
        "keys": None if local is None else len(local),
        "in_flight": None if concurrency is None else concurrency.in_flight,
        "max_in_flight": None if concurrency is None else concurrency.max_in_flight,
        "waiting": None if concurrency is None else concurrency.waiting,
        "priority": None if policy.priority is None else policy.priority.label,
    }


def _answer(request: web.Request, error: ProblemError) -> web.Response:
    """The problem JSON the request pipeline would make of ``error``, made here so a
    refusal is answered properly wherever the limiter sits in the middleware chain."""
    return problem_response(
        error.status,
        title=error.title,
        detail=error.detail,
        type=error.type,
        instance=request.path,
        request_id=current_request_id() or None,
        extensions=error.extensions,
        headers=error.headers,
    )


RATELIMIT_KEY = web.AppKey("chassis.ratelimit", RateLimiter)
"""The :class:`RateLimiter` installed on an application: ``request.app[RATELIMIT_KEY]``."""
