"""Admission control: token buckets, concurrency limits, priority shedding.

The objects are the primitives; the decorators and the middleware build them:

* :class:`TokenBucket` admits ``rate`` calls per second with bursts of ``burst``;
  :class:`KeyedLimiter` keeps one bucket per key (client, API key, ...) in a table
  bounded by ``max_keys`` (least recently used keys are evicted), and
  :class:`RedisLimiter` keeps them in Redis so several instances share one limit;
* :class:`ConcurrencyLimiter` admits ``max_in_flight`` calls at once, with an
  optional bounded queue;
* :class:`PriorityShedder` decides which requests to shed when the service is
  saturated: sheddable first, then normal, critical last.

:class:`RateLimiter` is the capability: one middleware applying the service-wide
and per-route limits from :class:`~chassis.config.RateLimitSettings`, and one
cleanup context owning the Redis connection. It answers 429 problem JSON with
``Retry-After`` and ``RateLimit-Limit``/``RateLimit-Remaining``/``RateLimit-Reset``
for rate limits, and 503 with ``Retry-After`` when it sheds load. The decorators
raise the same errors, :class:`~chassis.exceptions.RateLimited` and
:class:`~chassis.exceptions.Overloaded`, which the request pipeline answers alike.
Probes and ``/metrics`` are never limited.

Handlers and any other async function can be limited on their own::

    @service.get("/quotes/{symbol}")
    @rate_limited(rate=5, burst=10, key="header:X-Api-Key")
    async def quote(request: web.Request) -> web.Response: ...

    @concurrency_limited(4, queue=16, queue_timeout_seconds=0.5)
    async def render_report(order_id: str) -> bytes: ...
"""

from chassis.ratelimit.buckets import Clock, Decision, KeyedLimiter, TokenBucket
from chassis.ratelimit.concurrency import ConcurrencyLimiter
from chassis.ratelimit.decorators import RequestKey, concurrency_limited, rate_limited, request_key
from chassis.ratelimit.limiter import RATELIMIT_KEY, RateLimiter
from chassis.ratelimit.redis import RedisLimiter
from chassis.ratelimit.shedding import LagSource, Priority, PriorityShedder

__all__ = [
    "RATELIMIT_KEY",
    "Clock",
    "ConcurrencyLimiter",
    "Decision",
    "KeyedLimiter",
    "LagSource",
    "Priority",
    "PriorityShedder",
    "RateLimiter",
    "RedisLimiter",
    "RequestKey",
    "TokenBucket",
    "concurrency_limited",
    "rate_limited",
    "request_key",
]
