"""The chassis' exception hierarchy.

Every error the chassis raises derives from :class:`ChassisError`. Where a built-in
exception means the same thing, it is mixed in, so generic handlers keep working
(``except ValueError`` still catches a :class:`ConfigError`)::

    ChassisError
    ├── ConfigError(ValueError)         invalid settings; names every bad variable
    ├── LifecycleError(RuntimeError)    a Service used in the wrong state
    └── ProblemError                    an HTTP error answered as RFC 9457 problem JSON
        ├── BadRequest                  400: malformed input (e.g. a body that is not JSON)
        │   └── RequestValidationError  422: well-formed input that fails validation
        ├── NotFound                    404
        ├── Conflict                    409
        └── ServiceUnavailable          503: a dependency is down; optional ``retry_after``

Raise a :class:`ProblemError` (or a subclass) from a handler and the chassis answers
with ``application/problem+json``; any other exception becomes a 500 problem whose body
carries no stack trace (the traceback goes to the log).

``asyncio.CancelledError`` is never caught or wrapped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "BadRequest",
    "ChassisError",
    "ConfigError",
    "Conflict",
    "LifecycleError",
    "NotFound",
    "ProblemError",
    "RequestValidationError",
    "ServiceUnavailable",
]


class ChassisError(Exception):
    """Root of every exception the chassis raises."""


class ConfigError(ChassisError, ValueError):
    """Settings failed validation.

    ``str(error)`` is one readable message listing every bad field with its
    environment variable and the reason. Secret values never appear in it.

    Attributes:
        errors: one ``(env_var, reason)`` pair per bad field.
    """

    def __init__(self, errors: Sequence[tuple[str, str]], *, title: str = "invalid configuration"):
        self.errors: list[tuple[str, str]] = list(errors)
        lines = [f"{title} ({len(self.errors)} error{'s' if len(self.errors) != 1 else ''}):"]
        lines.extend(f"  {name}: {reason}" for name, reason in self.errors)
        super().__init__("\n".join(lines))


class LifecycleError(ChassisError, RuntimeError):
    """A :class:`~chassis.Service` was used in a state that does not allow it."""


class ProblemError(ChassisError):
    """An error that the HTTP layer answers as RFC 9457 ``application/problem+json``.

    Args:
        detail: a human-readable explanation specific to this occurrence.
        status: the HTTP status code; subclasses fix it.
        title: a short summary of the problem type; defaults to the status phrase.
        type: a URI reference that identifies the problem type.
        extensions: extra members merged into the problem object.
        headers: extra response headers (e.g. ``Retry-After``).
    """

    status: int = 500
    title: str | None = None

    def __init__(
        self,
        detail: str | None = None,
        *,
        status: int | None = None,
        title: str | None = None,
        type: str = "about:blank",
        extensions: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title
        self.detail = detail
        self.type = type
        self.extensions: dict[str, Any] = dict(extensions or {})
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(detail or self.title or str(self.status))


class BadRequest(ProblemError):
    """400: the request is malformed."""

    status = 400


class RequestValidationError(BadRequest):
    """422: the request is well-formed but its content is invalid.

    The ``errors`` extension lists each invalid field as ``{"loc", "msg", "type"}``.
    """

    status = 422


class NotFound(ProblemError):
    """404: the resource does not exist."""

    status = 404


class Conflict(ProblemError):
    """409: the request conflicts with the resource's current state."""

    status = 409


class ServiceUnavailable(ProblemError):
    """503: the service cannot answer now; ``retry_after`` (seconds) becomes ``Retry-After``."""

    status = 503

    def __init__(self, detail: str | None = None, *, retry_after: float | None = None, **kw: Any):
        super().__init__(detail, **kw)
        self.retry_after = retry_after
        if retry_after is not None:
            self.headers.setdefault("Retry-After", str(max(0, round(retry_after))))
