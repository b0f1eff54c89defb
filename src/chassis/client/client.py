"""``ServiceClient``: HTTP calls to another service by name, through the resilience pipeline.

::

    market = service.client("market-data")
    quote = await market.get_json("/prices/VTI")
    response = await market.post("/orders", json=order, headers={"Idempotency-Key": key})

Every call goes through these stages, outermost first (the reasons are in the
resilience explanation page, ``docs/resilience.md``):

1. **fallback** (when the call passes one): answers a failed call from the last
   good answer, a handler or a stub;
2. **deadline**: the call's budget is ``deadline_seconds``, clipped by the
   deadline in force (an inbound request's ``X-Request-Deadline-Ms``, an enclosing
   :func:`~chassis.client.timeout`); nothing below outlives it;
3. **bulkhead**: at most ``bulkhead_max_concurrency`` calls to this upstream at
   once; more fail fast with :class:`~chassis.exceptions.BulkheadFull`;
4. **retries**: idempotent requests (or ones with an ``Idempotency-Key``) are sent
   again after a connection error, a timeout, or 502/503/504, with exponential
   back-off and full jitter, ``Retry-After`` honoured, within the retry budget of
   the upstream and never past the deadline;
5. **load balancing**: each attempt goes to an instance discovery reports healthy,
   whose circuit is not open, preferring one not tried yet;
6. **circuit breaker**, per instance: after consecutive failures the instance is
   skipped; with every circuit open the call fails fast with
   :class:`~chassis.exceptions.CircuitOpen`;
7. **attempt**: a ``CLIENT`` span, ``traceparent``, ``X-Request-ID`` and the
   remaining budget in ``X-Request-Deadline-Ms`` are sent; the attempt times out
   after ``timeout_seconds`` (or what is left of the deadline); the body is read
   inside it.

A call returns a :class:`Response` for any status the upstream answered (after
retries, for 502/503/504); it raises an
:class:`~chassis.exceptions.UpstreamError` when no answer came. The JSON helpers
raise :class:`~chassis.exceptions.UpstreamStatusError` for a status >= 400.
"""

from __future__ import annotations

import json as jsonlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

import aiohttp
from multidict import CIMultiDictProxy
from opentelemetry import context as otel_context
from opentelemetry import trace

from chassis.config import ClientSettings
from chassis.discovery.base import Instance
from chassis.exceptions import (
    BulkheadFull,
    CircuitOpen,
    ClientClosed,
    LifecycleError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from chassis.logging import current_request_id
from chassis.tracing import current_tracer, inject_headers

from .balancer import Endpoint, LoadBalancer, make_balancer
from .breaker import CircuitBreaker, CircuitState
from .bulkheads import Bulkhead
from .deadline import DEADLINE_HEADER, _deadline, _timer, format_deadline
from .fallbacks import Fallback
from .retries import IDEMPOTENT_METHODS, RETRYABLE_STATUSES, Retry, RetryBudget, is_transient
from .retries import parse_retry_after as _parse_retry_after
from .telemetry import ClientMetrics, UpstreamStats

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "IDEMPOTENCY_KEY_HEADER",
    "REQUEST_ID_HEADER",
    "Resolver",
    "Response",
    "ServiceClient",
    "new_session",
]

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
"""A request carrying this header may be retried whatever its method."""
REQUEST_ID_HEADER = "X-Request-ID"

Params = Mapping[str, str | int | float] | Sequence[tuple[str, str | int | float]] | None

_CLIENT = trace.SpanKind.CLIENT
_NO_OP_TRACER = trace.NoOpTracer
_ERROR = trace.Status(trace.StatusCode.ERROR)
_attach = otel_context.attach
_detach = otel_context.detach
_in_context = trace.set_span_in_context
_NO_JSON: Any = object()
_JSON_HEADERS = {"Content-Type": "application/json"}


class Resolver(Protocol):
    """What a client needs from discovery: any :class:`~chassis.discovery.Registry` has it."""

    async def resolve(self, service: str) -> list[Instance]:
        """The service's healthy instances."""


def new_session() -> aiohttp.ClientSession:
    """An :class:`aiohttp.ClientSession` fit for calls between services.

    No cookie jar (one service's cookies must not leak into calls made for
    another user), no session-wide timeout (every attempt has its own), no
    connection limit (each upstream's bulkhead bounds its connections), no proxy
    from the environment, and no silent resend: aiohttp (3.10+) sends an idempotent
    request again after a reset on a reused connection, which neither the retry
    budget nor the metrics would see. The client's own retries cover that case.
    """
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=10),
        timeout=aiohttp.ClientTimeout(total=None),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return session


class Response:
    """An upstream's answer, its body already read.

    Attributes:
        status: the HTTP status code.
        reason: the reason phrase.
        headers: the response headers (case-insensitive).
        body: the body, decompressed.
        url: the URL of the attempt that answered.
        service: the upstream's name.
        attempts: attempts made, this one included.
    """

    __slots__ = ("attempts", "body", "headers", "reason", "service", "status", "url")

    def __init__(
        self,
        *,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        body: bytes,
        url: str,
        service: str,
        attempts: int,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.url = url
        self.service = service
        self.attempts = attempts

    def __repr__(self) -> str:
        return f"<Response {self.status} from {self.service} ({len(self.body)} bytes)>"

    @property
    def ok(self) -> bool:
        """Whether the status is below 400."""
        return self.status < 400

    def json(self, *, loads: Callable[[bytes], Any] = jsonlib.loads) -> Any:
        """The body parsed as JSON.

        Raises:
            ValueError: the body is not JSON (``json.JSONDecodeError``).
        """
        return loads(self.body)

    def text(self, encoding: str | None = None) -> str:
        """The body decoded with ``encoding``, else the declared charset, else UTF-8."""
        if encoding is None:
            encoding = _charset(self.headers.get("Content-Type", "")) or "utf-8"
        return self.body.decode(encoding, errors="replace")

    def raise_for_status(self) -> Response:
        """Return the response if its status is below 400.

        Raises:
            UpstreamStatusError: the status is 400 or above.
        """
        if self.status < 400:
            return self
        raise UpstreamStatusError(
            f"{self.service} answered {self.status} {self.reason}".rstrip(),
            status=self.status,
            response=self,
            service=self.service,
            attempts=self.attempts,
            retryable=self.status in RETRYABLE_STATUSES,
            retry_after=_parse_retry_after(self.headers.get("Retry-After")),
        )


def _charset(content_type: str) -> str | None:
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            return value.strip('"')
    return None


class _Call:
    """Per-call state, shared by the call's attempts."""

    __slots__ = (
        "attempts",
        "body",
        "deadline",
        "endpoints",
        "headers",
        "method",
        "params",
        "path",
        "timeout",
        "tried",
    )

    def __init__(
        self,
        method: str,
        path: str,
        params: Params,
        headers: dict[str, str],
        body: bytes | str | None,
        deadline: float,
        timeout: float,
        endpoints: list[Endpoint],
    ) -> None:
        self.method = method
        self.path = path
        self.params = params
        self.headers = headers
        self.body = body
        self.deadline = deadline
        self.timeout = timeout
        self.endpoints = endpoints
        self.attempts = 0
        self.tried: set[str] = set()


def _instance_failure(exc: BaseException) -> bool | None:
    """A breaker's verdict on a failed attempt.

    Transient failures count (connection errors, timeouts, 5xx); a timeout the
    caller's deadline cut short says nothing about the instance.
    """
    if isinstance(exc, UpstreamStatusError):
        return exc.status >= 500
    if isinstance(exc, UpstreamTimeout | UpstreamUnavailable):
        return True if exc.retryable else None
    return None


def _finish_span(span: trace.Span, response: Response | None, error: BaseException | None) -> None:
    """Record an attempt's outcome on its span (OpenTelemetry HTTP client conventions)."""
    if response is not None:
        span.set_attribute("http.response.status_code", response.status)
        if response.status >= 400:
            span.set_attribute("error.type", str(response.status))
            span.set_status(_ERROR)
    elif error is not None:
        cause = error.__cause__ or error
        span.set_attribute("error.type", type(cause).__qualname__)
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))


def _outstanding(endpoint: Endpoint) -> int:
    return endpoint.outstanding


def _params_key(params: Params) -> tuple[tuple[str, str], ...]:
    if params is None:
        return ()
    items: Iterable[tuple[str, Any]] = params.items() if isinstance(params, Mapping) else params
    return tuple(sorted((str(k), str(v)) for k, v in items))


class ServiceClient:
    """Calls one upstream service by name, through the resilience pipeline.

    Inside a :class:`~chassis.Service`, get one with ``service.client(name)``: it
    shares the service's connection pool, settings, metrics and tracer, and is
    closed on shutdown. On its own, use it as an async context manager (or call
    :meth:`aclose`); it then owns its connection pool::

        async with ServiceClient("market-data", registry=StaticRegistry(...)) as market:
            quote = await market.get_json("/prices/VTI")

    Args:
        name: the upstream's service name, as discovery knows it.
        registry: resolves ``name`` to instances (a discovery back end, or the
            service's :class:`~chassis.discovery.Discovery`).
        settings: timeouts, retries, breaker, bulkhead and balancer settings.
        session: an aiohttp session to share (the caller closes it); by default
            the client opens its own.
        metrics: a :class:`~chassis.client.ClientMetrics` shared with other
            clients, or a ``CollectorRegistry`` to register new ones on.
        tracer: the tracer of the client spans; by default the current service's
            (:func:`chassis.tracing.current_tracer`).
        balancer: a load balancer instead of the one ``settings.load_balancer`` names.
        headers: headers sent with every request.
    """

    def __init__(
        self,
        name: str,
        *,
        registry: Resolver | None = None,
        settings: ClientSettings | None = None,
        session: aiohttp.ClientSession | None = None,
        metrics: ClientMetrics | CollectorRegistry | None = None,
        tracer: trace.Tracer | None = None,
        balancer: LoadBalancer | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.registry = registry
        self._session = session
        self._owns_session = session is None
        self._managed = False
        self._state: Literal["new", "open", "closed"] = "new"
        self._headers = dict(headers or {})
        self._tracer = tracer
        self._given_balancer = balancer
        self._endpoints: dict[str, Endpoint] = {}
        if metrics is not None and not isinstance(metrics, ClientMetrics):
            metrics = ClientMetrics(metrics)
        self.metrics = metrics
        self.stats: UpstreamStats = (metrics or ClientMetrics()).new_stats(name)
        if metrics is not None:
            metrics.track(self)
        self.configure(settings or ClientSettings())

    def __repr__(self) -> str:
        return f"<ServiceClient {self.name} {self._state}>"

    # -- configuration -------------------------------------------------------------
    def configure(self, settings: ClientSettings) -> None:
        """Apply ``settings``: rebuilds the stages (circuit states start closed)."""
        self.settings = settings
        self._timeout_seconds = settings.timeout_seconds
        self._deadline_seconds = settings.deadline_seconds
        self.budget = RetryBudget(
            ratio=settings.retry_budget_ratio,
            min_per_second=settings.retry_budget_min_per_second,
            window_seconds=settings.retry_budget_window_seconds,
        )
        self.retry = Retry(
            max_attempts=settings.max_attempts,
            backoff_base_seconds=settings.backoff_base_seconds,
            backoff_max_seconds=settings.backoff_max_seconds,
            retry_on=self._worth_retrying,
            budget=self.budget,
        )
        self.bulkhead = Bulkhead(
            settings.bulkhead_max_concurrency, max_queue=settings.bulkhead_max_queue, name=self.name
        )
        self.balancer = self._given_balancer or make_balancer(settings.load_balancer)
        self._endpoints = {}

    def _worth_retrying(self, exc: BaseException) -> bool:
        if not is_transient(exc):
            return False
        return any(e.breaker.allows_request for e in self._endpoints.values())

    # -- what the metrics collector reads -------------------------------------------
    @property
    def retries(self) -> int:
        """Retries sent so far."""
        return self.retry.retries

    @property
    def retry_budget_exhausted(self) -> int:
        """Retries the budget refused so far."""
        return self.budget.exhausted

    @property
    def active_requests(self) -> int:
        """Calls in flight (holding a bulkhead slot or waiting for one)."""
        return self.bulkhead.active + self.bulkhead.waiting

    def circuit_states(self) -> list[tuple[str, CircuitState]]:
        """``(instance id, circuit state)`` of every instance seen lately."""
        return [(e.instance.id, e.breaker.state) for e in list(self._endpoints.values())]

    def snapshot(self) -> dict[str, Any]:
        """The client's live state, for introspection: instances seen lately with their
        circuit, the bulkhead's occupancy and the retry budget's level."""
        bulkhead = self.bulkhead
        instances = []
        for endpoint in list(self._endpoints.values()):
            breaker = endpoint.breaker
            retry_after = breaker.retry_after
            instances.append(
                {
                    "id": endpoint.instance.id,
                    "url": endpoint.base_url,
                    "circuit": breaker.state,
                    "failures": breaker.failure_count,
                    "retry_after_seconds": None if retry_after is None else round(retry_after, 3),
                    "outstanding": endpoint.outstanding,
                }
            )
        return {
            "name": self.name,
            "state": self._state,
            "in_flight": self.active_requests,
            "bulkhead": {
                "active": bulkhead.active,
                "max_concurrency": bulkhead.max_concurrency,
                "waiting": bulkhead.waiting,
                "max_queue": bulkhead.max_queue,
                "rejected": bulkhead.rejected,
            },
            "retries": self.retries,
            "retry_budget": self.budget.snapshot(),
            "instances": instances,
        }

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` ran (or the service shut down)."""
        return self._state == "closed"

    def _use_session(self, session: aiohttp.ClientSession) -> None:
        """Adopt a shared session owned by someone else (a :class:`Clients`)."""
        self._session = session
        self._owns_session = False
        self._managed = True
        if self._state == "new":
            self._state = "open"

    async def __aenter__(self) -> ServiceClient:
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _open(self) -> aiohttp.ClientSession:
        state = self._state
        if state == "closed":
            raise ClientClosed(f"the client of {self.name} is closed; make a new one")
        session = self._session
        if session is None:
            if self._managed:
                raise LifecycleError(f"the client of {self.name} is not started yet")
            session = self._session = new_session()
        self._state = "open"
        return session

    async def aclose(self) -> None:
        """Close the client (and its session, if it owns one). Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    # -- calls ---------------------------------------------------------------------------
    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        json: Any = _NO_JSON,
        data: bytes | str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        idempotent: bool | None = None,
        fallback: Fallback | None = None,
    ) -> Response:
        """Send ``method path`` to an instance of the upstream; the answer, any status.

        Args:
            method: the HTTP method.
            path: the path (and query) below the instance's base URL, e.g. ``/prices/VTI``.
            params: query parameters.
            headers: request headers.
            json: a body to send as JSON (encoded once, sent as is on every attempt).
            data: a raw body.
            timeout: seconds per attempt (``timeout_seconds`` by default).
            deadline: seconds for the whole call, retries included
                (``deadline_seconds`` by default); the inbound deadline clips it.
            idempotent: whether the request may be sent twice; by default, when
                its method is idempotent or it has an ``Idempotency-Key`` header.
            fallback: answers the call when it fails. With a fallback, a 5xx answer
                counts as a failure: the fallback answers it, or
                :class:`~chassis.exceptions.UpstreamStatusError` is raised.

        Raises:
            UpstreamTimeout: no answer within the deadline.
            UpstreamUnavailable: no instance known, or none could be reached.
            CircuitOpen: every instance's circuit is open.
            BulkheadFull: too many calls to the upstream in flight.
            ClientClosed: the client is closed.
        """
        if fallback is None:
            return await self._request(
                method, path, params, headers, json, data, timeout, deadline, idempotent, False
            )
        response: Response = await fallback.run(
            (method.upper(), path, _params_key(params)),
            self._request,
            method,
            path,
            params,
            headers,
            json,
            data,
            timeout,
            deadline,
            idempotent,
            True,
        )
        return response

    async def _request(
        self,
        method: str,
        path: str,
        params: Params,
        headers: Mapping[str, str] | None,
        json: Any,
        data: bytes | str | None,
        timeout: float | None,
        deadline: float | None,
        idempotent: bool | None,
        raise_5xx: bool,
    ) -> Response:
        if self._state != "open" or self._session is None:
            self._open()
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', not {path!r}")
        method = method.upper()
        now = time.monotonic()
        call_deadline = now + (self._deadline_seconds if deadline is None else deadline)
        inbound = _deadline.get()
        if inbound is not None and inbound < call_deadline:
            call_deadline = inbound

        sent = dict(self._headers)
        if headers:
            sent.update(headers)
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS or any(
                k.lower() == "idempotency-key" for k in sent
            )
        body: bytes | str | None = data
        if json is not _NO_JSON:
            if data is not None:
                raise ValueError("pass json= or data=, not both")
            body = jsonlib.dumps(json, separators=(",", ":")).encode()
            if not any(k.lower() == "content-type" for k in sent):
                sent.update(_JSON_HEADERS)
        request_id = current_request_id()
        if request_id and not (headers and any(k.lower() == "x-request-id" for k in sent)):
            sent[REQUEST_ID_HEADER] = request_id

        registry = self.registry
        if registry is None:
            raise LifecycleError(f"the client of {self.name} has no registry to resolve it with")
        endpoints = self._endpoints_for(await registry.resolve(self.name))
        call = _Call(
            method,
            path,
            params,
            sent,
            body,
            call_deadline,
            self._timeout_seconds if timeout is None else timeout,
            endpoints,
        )
        token = _deadline.set(call_deadline)
        try:
            bulkhead = self.bulkhead
            if not bulkhead.try_acquire():
                try:
                    await bulkhead.acquire()
                except BulkheadFull:
                    self.stats.rejected["bulkhead_full"] += 1
                    raise
            try:
                if idempotent and self.retry.max_attempts > 1:
                    return await self.retry.call(self._attempt, call)
                self.budget.record_request()
                return await self._attempt(call)
            finally:
                bulkhead.release()
        except UpstreamStatusError as exc:
            # A 5xx answer that retries did not (or could not) fix: the answer stands.
            if raise_5xx or exc.response is None:
                raise
            response: Response = exc.response
            return response
        finally:
            _deadline.reset(token)

    def _endpoints_for(self, instances: list[Instance]) -> list[Endpoint]:
        if not instances:
            self.stats.rejected["no_instances"] += 1
            raise UpstreamUnavailable(
                f"no healthy instance of {self.name} is known", service=self.name
            )
        known = self._endpoints
        endpoints = []
        for instance in instances:
            endpoint = known.get(instance.id)
            if endpoint is None:
                endpoint = known[instance.id] = self._new_endpoint(instance)
            elif endpoint.instance is not instance:
                endpoint.instance = instance
                endpoint.base_url = instance.url
            endpoints.append(endpoint)
        if len(known) > len(endpoints):  # instances went away: forget them
            current = {e.instance.id for e in endpoints}
            for gone in [i for i in known if i not in current]:
                del known[gone]
        return endpoints

    def _new_endpoint(self, instance: Instance) -> Endpoint:
        settings = self.settings
        breaker = CircuitBreaker(
            f"{self.name}/{instance.id}",
            failure_threshold=settings.breaker_failure_threshold,
            recovery_seconds=settings.breaker_recovery_seconds,
            is_failure=_instance_failure,
            service=self.name,
        )
        return Endpoint(instance, breaker)

    def _choose(self, call: _Call) -> Endpoint:
        endpoints = call.endpoints
        if len(endpoints) == 1 and endpoints[0].breaker.allows_request:
            return endpoints[0]
        candidates = [e for e in endpoints if e.breaker.allows_request]
        if not candidates:
            self.stats.rejected["circuit_open"] += 1
            waits = [w for e in endpoints if (w := e.breaker.retry_after) is not None]
            raise CircuitOpen(
                f"no instance of {self.name} accepts calls: every circuit is open "
                f"({len(endpoints)} instances); failing fast",
                service=self.name,
                attempts=call.attempts - 1,
                retry_after=min(waits) if waits else None,
            )
        tried = call.tried
        if tried and len(candidates) > 1:
            # A retry goes to the least loaded instance not tried yet, outside the
            # balancer's rotation (which stays fair to first attempts).
            fresh = [e for e in candidates if e.instance.id not in tried]
            if fresh:
                return min(fresh, key=_outstanding)
        return self.balancer.choose(candidates)

    async def _attempt(self, call: _Call) -> Response:
        call.attempts += 1
        attempt = call.attempts
        endpoint = self._choose(call)
        remaining = call.deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamTimeout(
                f"the deadline of the call to {self.name} ran out before attempt {attempt}",
                service=self.name,
                attempts=attempt - 1,
            )
        budget = call.timeout
        clipped = remaining < budget
        if clipped:
            budget = remaining
        call.tried.add(endpoint.instance.id)
        headers = call.headers.copy()
        headers[DEADLINE_HEADER] = format_deadline(budget)
        url = endpoint.base_url + call.path

        session = self._session
        if session is None:
            raise ClientClosed(f"the client of {self.name} was closed during the call")
        tracer = self._tracer or current_tracer()
        span: trace.Span | None = None
        recording = False
        if type(tracer) is not _NO_OP_TRACER:
            instance = endpoint.instance
            attributes: dict[str, str | int] = {
                "http.request.method": call.method,
                "server.address": instance.address,
                "server.port": instance.port,
                "url.full": url,
                "peer.service": self.name,
            }
            if attempt > 1:
                attributes["http.request.resend_count"] = attempt - 1
            span = tracer.start_span(call.method, kind=_CLIENT, attributes=attributes)
            recording = span.is_recording()
            if span.get_span_context().is_valid:
                token = _attach(_in_context(span))
                try:
                    inject_headers(headers)
                finally:
                    _detach(token)
        status = "error"
        response: Response | None = None
        sent = False
        error: BaseException | None = None
        try:
            async with endpoint.breaker:
                sent = True
                endpoint.outstanding += 1
                start = time.perf_counter()
                try:
                    async with (
                        _timer(budget),
                        session.request(
                            call.method,
                            url,
                            params=call.params,
                            headers=headers,
                            data=call.body,
                            allow_redirects=False,
                        ) as resp,
                    ):
                        body = await resp.read()
                    response = Response(
                        status=resp.status,
                        reason=resp.reason or "",
                        headers=resp.headers,
                        body=body,
                        url=url,
                        service=self.name,
                        attempts=attempt,
                    )
                except TimeoutError as exc:
                    status = "timeout"
                    raise UpstreamTimeout(
                        f"{self.name} ({endpoint.instance.id}) did not answer "
                        f"{call.method} {call.path} within {budget:.3f}s",
                        service=self.name,
                        attempts=attempt,
                        retryable=not clipped,
                    ) from exc
                except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                    raise UpstreamUnavailable(
                        f"{self.name} ({endpoint.instance.id}): {type(exc).__name__}: {exc}",
                        service=self.name,
                        attempts=attempt,
                        retryable=True,
                    ) from exc
                except aiohttp.ClientError as exc:
                    raise UpstreamError(
                        f"{self.name} ({endpoint.instance.id}): {type(exc).__name__}: {exc}",
                        service=self.name,
                        attempts=attempt,
                    ) from exc
                finally:
                    elapsed = time.perf_counter() - start
                    endpoint.outstanding -= 1
                code = response.status
                status = str(code)
                if code >= 500:
                    raise UpstreamStatusError(
                        f"{self.name} answered {code} {response.reason}".rstrip(),
                        status=code,
                        response=response,
                        service=self.name,
                        attempts=attempt,
                        retryable=code in RETRYABLE_STATUSES,
                        retry_after=_parse_retry_after(response.headers.get("Retry-After")),
                    )
                return response
        except BaseException as exc:
            error = exc
            if not sent and isinstance(exc, CircuitOpen):
                self.stats.rejected["circuit_open"] += 1
            raise
        finally:
            if sent:
                self.stats.observe(call.method, status, elapsed)
            if span is not None:
                if recording:
                    _finish_span(span, response, error)
                span.end()

    # -- methods ---------------------------------------------------------------------
    async def get(
        self,
        path: str,
        *,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        fallback: Fallback | None = None,
    ) -> Response:
        """``GET path``; see :meth:`request`."""
        return await self.request(
            "GET",
            path,
            params=params,
            headers=headers,
            timeout=timeout,
            deadline=deadline,
            fallback=fallback,
        )

    async def head(
        self,
        path: str,
        *,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Response:
        """``HEAD path``; see :meth:`request`."""
        return await self._request(
            "HEAD", path, params, headers, _NO_JSON, None, timeout, deadline, None, False
        )

    async def options(
        self,
        path: str,
        *,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Response:
        """``OPTIONS path``; see :meth:`request`."""
        return await self._request(
            "OPTIONS", path, params, headers, _NO_JSON, None, timeout, deadline, None, False
        )

    async def post(
        self,
        path: str,
        *,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        json: Any = _NO_JSON,
        data: bytes | str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        idempotent: bool | None = None,
        fallback: Fallback | None = None,
    ) -> Response:
        """``POST path``; retried only with an ``Idempotency-Key``. See :meth:`request`."""
        return await self.request(
            "POST",
            path,
            params=params,
            headers=headers,
            json=json,
            data=data,
            timeout=timeout,
            deadline=deadline,
            idempotent=idempotent,
            fallback=fallback,
        )

    async def put(
        self,
        path: str,
        *,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        json: Any = _NO_JSON,
        data: bytes | str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        fallback: Fallback | None = None,
    ) -> Response:
        """``PUT path``; see :meth:`request`."""
        return await self.request(
            "PUT",
            path,
            params=params,
            headers=headers,
            json=json,
            data=data,
            timeout=timeout,
            deadline=deadline,
            fallback=fallback,
        )

    async def patch(
        self,
        path: str,
        *,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        json: Any = _NO_JSON,
        data: bytes | str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        idempotent: bool | None = None,
        fallback: Fallback | None = None,
    ) -> Response:
        """``PATCH path``; retried only with an ``Idempotency-Key``. See :meth:`request`."""
        return await self.request(
            "PATCH",
            path,
            params=params,
            headers=headers,
            json=json,
            data=data,
            timeout=timeout,
            deadline=deadline,
            idempotent=idempotent,
            fallback=fallback,
        )

    async def delete(
        self,
        path: str,
        *,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        fallback: Fallback | None = None,
    ) -> Response:
        """``DELETE path``; see :meth:`request`."""
        return await self.request(
            "DELETE",
            path,
            params=params,
            headers=headers,
            timeout=timeout,
            deadline=deadline,
            fallback=fallback,
        )

    # -- JSON helpers ------------------------------------------------------------------
    async def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        json: Any = _NO_JSON,
        timeout: float | None = None,
        deadline: float | None = None,
        idempotent: bool | None = None,
        fallback: Fallback | None = None,
    ) -> Any:
        """Send a request and return its JSON answer (``None`` for an empty body).

        A ``fallback`` answers with JSON values too (its cache keeps parsed answers).

        Raises:
            UpstreamStatusError: the status is 400 or above.
            UpstreamError: as :meth:`request`.
            ValueError: the body is not JSON.
        """
        if fallback is None:
            return await self._json(
                method, path, params, headers, json, timeout, deadline, idempotent
            )
        return await fallback.run(
            (method.upper(), path, _params_key(params)),
            self._json,
            method,
            path,
            params,
            headers,
            json,
            timeout,
            deadline,
            idempotent,
        )

    async def _json(
        self,
        method: str,
        path: str,
        params: Params,
        headers: Mapping[str, str] | None,
        json: Any,
        timeout: float | None,
        deadline: float | None,
        idempotent: bool | None,
    ) -> Any:
        sent = {"Accept": "application/json"}
        if headers:
            sent.update(headers)
        response = await self._request(
            method, path, params, sent, json, None, timeout, deadline, idempotent, False
        )
        response.raise_for_status()
        return response.json() if response.body else None

    async def get_json(
        self,
        path: str,
        *,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        fallback: Fallback | None = None,
    ) -> Any:
        """``GET path`` and its JSON answer; see :meth:`request_json`."""
        return await self.request_json(
            "GET",
            path,
            params=params,
            headers=headers,
            timeout=timeout,
            deadline=deadline,
            fallback=fallback,
        )

    async def post_json(
        self,
        path: str,
        *,
        json: Any = _NO_JSON,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        idempotent: bool | None = None,
        fallback: Fallback | None = None,
    ) -> Any:
        """``POST path`` with a JSON body and its JSON answer; see :meth:`request_json`."""
        return await self.request_json(
            "POST",
            path,
            params=params,
            headers=headers,
            json=json,
            timeout=timeout,
            deadline=deadline,
            idempotent=idempotent,
            fallback=fallback,
        )
