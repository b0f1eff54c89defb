"""aiochassis: an asyncio microservice chassis on aiohttp.

The distribution is ``aiochassis``; the import package is ``chassis``.
"""

from ._version import __version__
from .config import ChassisSettings, HealthSettings, HttpSettings, LogSettings, load_settings
from .exceptions import (
    BadRequest,
    ChassisError,
    ConfigError,
    Conflict,
    LifecycleError,
    NotFound,
    ProblemError,
    RequestValidationError,
    ServiceUnavailable,
)
from .health import Health
from .http import problem_response, read_json
from .logging import configure_logging, current_request_id
from .service import SERVICE_KEY, SETTINGS_KEY, RunningService, Service

__all__ = [
    "BadRequest",
    "ChassisError",
    "ChassisSettings",
    "ConfigError",
    "Conflict",
    "Health",
    "HealthSettings",
    "HttpSettings",
    "LifecycleError",
    "LogSettings",
    "NotFound",
    "ProblemError",
    "RequestValidationError",
    "RunningService",
    "SERVICE_KEY",
    "SETTINGS_KEY",
    "Service",
    "ServiceUnavailable",
    "__version__",
    "configure_logging",
    "current_request_id",
    "load_settings",
    "problem_response",
    "read_json",
]
