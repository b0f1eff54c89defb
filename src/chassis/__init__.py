"""aiochassis: an asyncio microservice chassis on aiohttp.

The distribution is ``aiochassis``; the import package is ``chassis``.
"""

from ._version import __version__
from .client import ServiceClient
from .config import (
    ChassisSettings,
    ClientSettings,
    DiscoverySettings,
    HealthSettings,
    HttpSettings,
    LogSettings,
    MetricsSettings,
    RateLimitSettings,
    TracingSettings,
    load_settings,
)
from .discovery import ConsulRegistry, Discovery, Instance, Registry, StaticRegistry
from .exceptions import (
    BadRequest,
    BulkheadFull,
    ChassisError,
    CircuitOpen,
    ClientClosed,
    ConfigError,
    Conflict,
    DeadlineExceeded,
    DiscoveryError,
    LifecycleError,
    NotFound,
    Overloaded,
    ProblemError,
    RateLimited,
    RequestValidationError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .health import Health
from .http import problem_response, read_json
from .logging import configure_logging, current_request_id
from .metrics import Metrics, counted, timed
from .ratelimit import (
    ConcurrencyLimiter,
    RateLimiter,
    TokenBucket,
    concurrency_limited,
    rate_limited,
)
from .service import SERVICE_KEY, SETTINGS_KEY, RunningService, Service
from .tracing import Tracing, current_trace_id, inject_headers, traced

__all__ = [
    "BadRequest",
    "BulkheadFull",
    "ChassisError",
    "ChassisSettings",
    "CircuitOpen",
    "ClientClosed",
    "ClientSettings",
    "ConcurrencyLimiter",
    "ConfigError",
    "Conflict",
    "ConsulRegistry",
    "DeadlineExceeded",
    "Discovery",
    "DiscoveryError",
    "DiscoverySettings",
    "Health",
    "HealthSettings",
    "HttpSettings",
    "Instance",
    "LifecycleError",
    "LogSettings",
    "Metrics",
    "MetricsSettings",
    "NotFound",
    "Overloaded",
    "ProblemError",
    "RateLimitSettings",
    "RateLimited",
    "RateLimiter",
    "Registry",
    "RequestValidationError",
    "RunningService",
    "SERVICE_KEY",
    "SETTINGS_KEY",
    "Service",
    "ServiceClient",
    "ServiceUnavailable",
    "StaticRegistry",
    "TokenBucket",
    "Tracing",
    "TracingSettings",
    "UpstreamError",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "__version__",
    "concurrency_limited",
    "configure_logging",
    "counted",
    "current_request_id",
    "current_trace_id",
    "inject_headers",
    "load_settings",
    "problem_response",
    "rate_limited",
    "read_json",
    "timed",
    "traced",
]
