"""The chassis' exception hierarchy.

Every error the chassis raises derives from :class:`ChassisError`. Where a built-in
exception means the same thing, it is mixed in, so generic handlers keep working
(``except ValueError`` still catches a :class:`ConfigError`)::

    ChassisError
    ├── ConfigError(ValueError)         invalid settings; names every bad variable
    ├── DeadlineExceeded(TimeoutError)  a ``timeout()`` block or function ran out of time
    ├── DiscoveryError(ConnectionError) discovery could not answer and had no cached answer
    ├── EventError                      an event could not be published or consumed
    │   ├── InvalidEvent(ValueError)    not a valid envelope, or data that is not JSON
    │   └── PublishError(ConnectionError)  the broker did not take (confirm) a publish
    ├── LifecycleError(RuntimeError)    a Service used in the wrong state
    │   └── ClientClosed                a ServiceClient used after ``aclose()`` or shutdown
    ├── UpstreamError                   a call to a dependency failed; ``service``, ``attempts``
    │   ├── UpstreamTimeout(TimeoutError)        an attempt or the call's deadline ran out
    │   ├── UpstreamUnavailable(ConnectionError) no instance; refused or reset connection
    │   ├── UpstreamStatusError         the upstream answered an error status; ``status``
    │   ├── CircuitOpen                 failed fast: the circuit is open; ``retry_after``
    │   └── BulkheadFull                failed fast: too many calls to it in flight
    └── ProblemError                    an HTTP error answered as RFC 9457 problem JSON
        ├── BadRequest                  400: malformed input (e.g. a body that is not JSON)
        │   └── RequestValidationError  422: well-formed input that fails validation
        ├── NotFound                    404
        ├── Conflict                    409
        ├── RateLimited                 429: a rate limit refused the call; ``retry_after``
        └── ServiceUnavailable          503: a dependency is down; optional ``retry_after``
            └── Overloaded              503: shed to protect the service; ``reason``, ``priority``

Raise a :class:`ProblemError` (or a subclass) from a handler and the chassis answers
with ``application/problem+json``; any other exception becomes a 500 problem whose body
carries no stack trace (the traceback goes to the log).

``asyncio.CancelledError`` is never caught or wrapped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "BadRequest",
    "BulkheadFull",
    "ChassisError",
    "CircuitOpen",
    "ClientClosed",
    "ConfigError",
    "Conflict",
    "DeadlineExceeded",
    "DiscoveryError",
    "EventError",
    "InvalidEvent",
    "LifecycleError",
    "NotFound",
    "Overloaded",
    "ProblemError",
    "PublishError",
    "RateLimited",
    "RequestValidationError",
    "ServiceUnavailable",
    "UpstreamError",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
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


class DiscoveryError(ChassisError, ConnectionError):
    """The discovery back end could not answer, and there was no cached answer to serve.

    Attributes:
        service: the service being registered or resolved, if any.
    """

    def __init__(self, message: str, *, service: str | None = None) -> None:
        super().__init__(message)
        self.service = service


class EventError(ChassisError):
    """An event could not be published or consumed."""


class InvalidEvent(EventError, ValueError):
    """An event that cannot be encoded or decoded.

    Raised by ``publish`` when the data is not a JSON object (or holds values JSON
    cannot represent), and on consumption for a message that is not a valid
    envelope; such a message is dead-lettered with this error's text as the reason.
    """


class PublishError(EventError, ConnectionError):
    """The broker did not take an event: it refused it, or did not confirm it in time.

    Attributes:
        event_type: the type of the event that was not published.
    """

    def __init__(self, message: str, *, event_type: str) -> None:
        super().__init__(message)
        self.event_type = event_type


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
            self.headers.setdefault("Retry-After", _retry_after_header(retry_after))


def _retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, rounded up and at least 1: never too early."""
    return str(max(1, math.ceil(seconds)))


class RateLimited(ProblemError):
    """429: a rate limit refused the request (or call); try again after ``retry_after`` seconds.

    Answered with ``Retry-After`` (whole seconds, rounded up) and any rate-limit
    headers given in ``headers``.

    Attributes:
        retry_after: seconds until the call would be admitted.
        limit: the bucket size of the limit that refused it, if known.
    """

    status = 429

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: float,
        limit: int | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(detail, **kw)
        self.retry_after = retry_after
        self.limit = limit
        self.headers.setdefault("Retry-After", _retry_after_header(retry_after))


class Overloaded(ServiceUnavailable):
    """503: the request was shed to keep the service healthy for what it admits.

    Attributes:
        reason: why: ``in_flight``, ``event_loop_lag``, ``queue_full`` or ``queue_timeout``.
        priority: the shed request's priority name, if known.
    """

    def __init__(
        self,
        detail: str | None = None,
        *,
        reason: str,
        retry_after: float = 1.0,
        priority: str | None = None,
        **kw: Any,
    ) -> None:
        headers = dict(kw.pop("headers", None) or {})
        headers.setdefault("Retry-After", _retry_after_header(retry_after))
        super().__init__(detail, retry_after=retry_after, headers=headers, **kw)
        self.reason = reason
        self.priority = priority


class DeadlineExceeded(ChassisError, TimeoutError):
    """A :func:`~chassis.client.timeout` block or function ran out of time.

    Attributes:
        timeout_seconds: the limit that applied (already clipped by an inbound deadline).
    """

    def __init__(
        self, message: str = "deadline exceeded", *, timeout_seconds: float | None = None
    ) -> None:
        super().__init__(message)
        self.timeout_seconds = timeout_seconds


class ClientClosed(LifecycleError):
    """A :class:`~chassis.client.ServiceClient` was used after ``aclose()`` or shutdown."""


class UpstreamError(ChassisError):
    """A call to a dependency failed: another service, or any call a resilience stage guards.

    Attributes:
        service: the dependency's name (``market-data``), never a URL.
        attempts: attempts made, the first included; 0 when none was sent.
        retryable: the failure is transient (connection error, timeout, 502, 503 or
            504) and the request could be sent again.
        retry_after: seconds the dependency asked callers to wait, when it said.
    """

    def __init__(
        self,
        message: str,
        *,
        service: str = "",
        attempts: int = 0,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.service = service
        self.attempts = attempts
        self.retryable = retryable
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError, TimeoutError):
    """An attempt's timeout or the whole call's deadline ran out."""


class UpstreamUnavailable(UpstreamError, ConnectionError):
    """No instance could be reached: none is known, or the connection was refused or reset."""


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status.

    Raised by :meth:`chassis.client.Response.raise_for_status` and the JSON helpers.

    Attributes:
        status: the HTTP status code.
        response: the :class:`~chassis.client.Response`, body included.
    """

    def __init__(self, message: str, *, status: int, response: Any = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.status = status
        self.response = response


class CircuitOpen(UpstreamError):
    """Failed fast without touching the network: the circuit breaker is open.

    ``retry_after`` is the time until the breaker lets a probe through.
    """


class BulkheadFull(UpstreamError):
    """Failed fast: the bulkhead of this dependency is full (and so is its queue)."""
