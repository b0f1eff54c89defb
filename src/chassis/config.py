"""Typed configuration: the one module that reads the environment.

Settings are pydantic-settings models. Every field can be set, from highest to
lowest precedence, by:

1. keyword arguments (``ChassisSettings(http={"port": 9000})`` or
   :func:`load_settings` overrides);
2. environment variables, prefixed ``CHASSIS_`` with ``__`` between nested
   names (``CHASSIS_HTTP__PORT=9000``, ``CHASSIS_LOG__LEVEL=DEBUG``);
3. a ``.env`` file in the working directory (same names);
4. the defaults declared here.

Service-specific settings subclass :class:`ChassisSettings`::

    class OrdersSettings(ChassisSettings):
        exchange_url: str = "http://127.0.0.1:9100"
        api_key: SecretStr

    service = Service("orders", settings=OrdersSettings)   # read at startup

Invalid values raise :class:`~chassis.exceptions.ConfigError` listing every bad
field with its environment variable; secret values never appear in it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .exceptions import ConfigError

__all__ = [
    "DURATION_BUCKETS_SECONDS",
    "ENV_NESTED_DELIMITER",
    "ENV_PREFIX",
    "ChassisSettings",
    "ClientSettings",
    "DatabaseSettings",
    "DiscoverySettings",
    "EventsSettings",
    "HealthSettings",
    "HttpSettings",
    "IntrospectionSettings",
    "LogSettings",
    "MetricsSettings",
    "RateLimitSettings",
    "RuntimeSettings",
    "RouteLimitSettings",
    "TracingSettings",
    "env_var_name",
    "load_settings",
]

ENV_PREFIX = "CHASSIS_"
ENV_NESTED_DELIMITER = "__"
_PREFIX_OK = re.compile(r"/_[A-Za-z0-9_.~-]{1,62}").fullmatch

SettingsT = TypeVar("SettingsT", bound="ChassisSettings")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogSettings(_Section):
    """``CHASSIS_LOG__*``: logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    """Root log level."""
    format: Literal["json", "console"] = "json"
    """``json`` lines for machines, ``console`` for people."""
    access_log: bool = True
    """Emit one access-log line per request."""
    access_log_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    """Fraction of successful (< 400) requests logged; errors are always logged."""
    background_writes: bool = True
    """Write log lines from a background thread so a slow stdout never blocks the event loop."""


class HttpSettings(_Section):
    """``CHASSIS_HTTP__*``: the HTTP server."""

    host: str = "127.0.0.1"
    """Interface to bind. Use ``0.0.0.0`` inside a container."""
    port: int = Field(default=8080, ge=0, le=65535)
    """TCP port; ``0`` picks a free one."""
    max_body_bytes: int = Field(default=1024 * 1024, ge=0)
    """Largest request body accepted; larger ones get 413."""
    keepalive_timeout_seconds: float = Field(default=75.0, gt=0)
    """Idle keep-alive connections are closed after this long."""


class RuntimeSettings(_Section):
    """``CHASSIS_RUNTIME__*``: the Python process a served service runs in.

    Applied by ``Service.run()`` / ``serve()`` (``chassis run``) once the service
    listens, and undone when it stops; never by ``Service.running()``, which tests and
    several services in one process use.
    """

    gc_freeze: bool = True
    """Once started, move every object then alive (imported modules, settings, the
    application) to the collector's permanent generation (``gc.freeze()``): later
    collections no longer walk them."""
    gc_threshold: int = Field(default=10_000, ge=0)
    """Allocations between collections of the youngest generation (Python's default is
    700): fewer collections of short-lived request objects. ``0`` keeps the
    interpreter's setting."""
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    """The event loop ``Service.run()`` serves on: ``asyncio``'s own, or ``uvloop``, a
    drop-in loop written in C on libuv (the ``uvloop`` extra:
    ``pip install 'aiochassis[uvloop]'``; Linux and macOS). It helps where the loop's
    own work dominates; on SimpleBank's sagas it measured no different (see the
    performance page). Chosen before the loop exists, so ``Service.running()`` and
    ``serve()``, which run on the caller's loop, ignore it."""


class HealthSettings(_Section):
    """``CHASSIS_HEALTH__*``: probes and graceful drain."""

    drain_delay_seconds: float = Field(default=5.0, ge=0)
    """After SIGTERM, how long readiness answers 503 before the listener closes."""
    shutdown_timeout_seconds: float = Field(default=20.0, ge=0)
    """How long in-flight requests may take to finish once the listener is closed.
    With the drain delay it stays under Kubernetes' default 30 s grace period."""
    check_timeout_seconds: float = Field(default=2.0, gt=0)
    """Default timeout of a health check that sets none."""
    max_event_loop_lag_seconds: float = Field(default=2.0, gt=0)
    """Liveness fails when the event loop lags more than this."""
    lag_probe_interval_seconds: float = Field(default=0.5, gt=0)
    """How often the event-loop lag is measured."""


DURATION_BUCKETS_SECONDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
"""Default buckets of the server and client request-duration histograms (seconds)."""


class MetricsSettings(_Section):
    """``CHASSIS_METRICS__*``: Prometheus metrics."""

    enabled: bool = True
    """Serve ``/metrics`` and record the golden signals."""
    path: str = "/metrics"
    """Where the registry is served."""
    exemplars: bool = True
    """Attach the trace id of sampled requests to histogram observations (OpenMetrics)."""
    duration_buckets_seconds: tuple[float, ...] = DURATION_BUCKETS_SECONDS
    """Histogram buckets of request durations."""
    process_metrics: bool = True
    """Export process (CPU, memory, open fds) and GC collectors."""


OtlpProtocol = Literal["http/protobuf", "grpc"]
SamplerName = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]


class TracingSettings(_Section):
    """``CHASSIS_TRACING__*``: OpenTelemetry tracing.

    Fields left unset fall back to the standard ``OTEL_*`` variables
    (see :meth:`resolve`); chassis settings win over them.
    """

    enabled: bool = True
    """Create spans (and ids for log correlation). Export needs an endpoint too."""
    endpoint: str | None = None
    """OTLP endpoint; none means no export. Falls back to
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` then ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
    protocol: OtlpProtocol | None = None
    """``http/protobuf`` (default) or ``grpc``. Falls back to
    ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` then ``OTEL_EXPORTER_OTLP_PROTOCOL``."""
    headers: SecretStr | None = None
    """Export headers as ``key=value,key2=value2``. Falls back to
    ``OTEL_EXPORTER_OTLP_TRACES_HEADERS`` then ``OTEL_EXPORTER_OTLP_HEADERS``."""
    sampler: SamplerName | None = None
    """Sampler name (default ``parentbased_traceidratio``).
    Falls back to ``OTEL_TRACES_SAMPLER``."""
    sampler_arg: float | None = Field(default=None, ge=0.0, le=1.0)
    """Ratio for the ratio samplers (default 1.0). Falls back to ``OTEL_TRACES_SAMPLER_ARG``."""
    export_timeout_seconds: float = Field(default=10.0, gt=0)
    """Timeout of one export call."""
    schedule_delay_seconds: float = Field(default=1.0, gt=0)
    """How often the batch processor exports."""
    max_queue_size: int = Field(default=2048, gt=0)
    """Spans buffered before new ones are dropped (export never blocks requests)."""
    max_export_batch_size: int = Field(default=512, gt=0)
    """Spans per export call."""

    def resolve(self, environ: Mapping[str, str] | None = None) -> TracingSettings:
        """Fill unset fields from the standard ``OTEL_*`` variables, then defaults.

        Raises:
            ConfigError: an ``OTEL_*`` variable holds an invalid value.
        """
        env = os.environ if environ is None else environ

        def first(*names: str) -> str | None:
            for name in names:
                value = env.get(name)
                if value:
                    return value.strip()
            return None

        raw: dict[str, Any] = {}
        names: dict[str, str] = {}
        for field, env_names in {
            "endpoint": ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
            "protocol": ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
            "headers": ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
            "sampler": ("OTEL_TRACES_SAMPLER",),
            "sampler_arg": ("OTEL_TRACES_SAMPLER_ARG",),
        }.items():
            if getattr(self, field) is None:
                value = first(*env_names)
                if value is not None:
                    raw[field] = value
                    names[field] = next(n for n in env_names if env.get(n))
        if raw.get("sampler") is not None:
            raw["sampler"] = str(raw["sampler"]).lower()
        data = self.model_dump()
        data.update(raw)
        data["protocol"] = data["protocol"] or "http/protobuf"
        if names.get("endpoint") == "OTEL_EXPORTER_OTLP_ENDPOINT" and data["protocol"] != "grpc":
            # The generic variable names the collector's base URL: the signal path is added.
            data["endpoint"] = str(data["endpoint"]).rstrip("/") + "/v1/traces"
        data["sampler"] = data["sampler"] or "parentbased_traceidratio"
        data["sampler_arg"] = 1.0 if data["sampler_arg"] is None else data["sampler_arg"]
        try:
            return TracingSettings.model_validate(data)
        except ValidationError as exc:
            pairs = []
            for error in exc.errors(include_url=False):
                field = str(error["loc"][0]) if error.get("loc") else ""
                var = names.get(field, env_var_name(("tracing", field)))
                pairs.append((var, str(error.get("msg", "invalid"))))
            raise ConfigError(pairs) from None


class DiscoverySettings(_Section):
    """``CHASSIS_DISCOVERY__*``: registration and lookup of service instances."""

    backend: Literal["static", "consul"] = "static"
    """``static`` (embedded default, no network) or ``consul``."""
    # NoDecode: the raw variable reaches the validator, so bad JSON is a ConfigError
    # naming CHASSIS_DISCOVERY__STATIC rather than a bare pydantic-settings error.
    static: Annotated[dict[str, list[str]], NoDecode] = Field(default_factory=dict)
    """Static instances: a JSON map of service name to base URLs, e.g.
    ``{"market-data": ["http://127.0.0.1:8001"]}``."""
    consul_addr: str = "http://127.0.0.1:8500"
    """The Consul agent's HTTP address (``http://`` or ``https://``, port 8500 if none)."""
    consul_token: SecretStr | None = None
    """Consul ACL token."""
    self_register: bool = True
    """Register this service with the back end at startup (Consul only)."""
    advertise_address: str | None = None
    """Address other services use to reach this one; defaults to the bound host
    (or the host name when bound to a wildcard address)."""
    tags: tuple[str, ...] = ()
    """Tags registered with the instance."""
    check_interval_seconds: float = Field(default=10.0, gt=0)
    """How often Consul calls ``/health/ready``."""
    check_timeout_seconds: float = Field(default=5.0, gt=0)
    """Timeout of that check."""
    deregister_critical_after_seconds: float = Field(default=60.0, gt=0)
    """Consul removes an instance whose check stays critical this long."""
    watch_wait_seconds: float = Field(default=30.0, gt=0)
    """``wait`` of the blocking queries that keep lookups fresh."""
    watch_backoff_max_seconds: float = Field(default=30.0, gt=0)
    """Cap of the jittered back-off between failed watch calls."""
    watch_backoff_initial_seconds: float = Field(default=0.5, gt=0)
    """First step of that back-off; it doubles per failure, with full jitter."""
    request_timeout_seconds: float = Field(default=5.0, gt=0)
    """Timeout of one non-blocking Consul call (register, deregister, agent check)."""

    @field_validator("static", mode="before")
    @classmethod
    def _decode_static(cls, value: Any) -> Any:
        # The shape is checked here so errors name CHASSIS_DISCOVERY__STATIC itself,
        # not a made-up variable per service name.
        if isinstance(value, str | bytes):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"not a JSON object of service name to URLs ({exc})") from None
        if not isinstance(value, Mapping):
            raise ValueError("must be a JSON object of service name to a list of URLs")
        for name, urls in value.items():
            if not isinstance(urls, list | tuple) or not all(isinstance(u, str) for u in urls):
                raise ValueError(f"{name!r} must map to a list of URL strings")
        return value

    @field_validator("static")
    @classmethod
    def _check_static_urls(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, urls in value.items():
            for url in urls:
                problem = cls._base_url_problem(url)
                if problem is not None:
                    raise ValueError(f"{name!r}: {url!r} {problem}")
        return value

    @field_validator("consul_addr")
    @classmethod
    def _check_consul_addr(cls, value: str) -> str:
        problem = cls._base_url_problem(value)
        if problem is not None:
            raise ValueError(f"{value!r} {problem}")
        return value

    @staticmethod
    def _base_url_problem(url: str) -> str | None:
        """Why ``url`` is not a base URL like ``http://host:port``, or None."""
        from yarl import URL

        try:
            parsed = URL(url)
        except ValueError as exc:
            return f"is not a URL ({exc})"
        if parsed.scheme not in {"http", "https"} or not parsed.host:
            return "is not an http:// or https:// URL with a host"
        if parsed.path not in {"", "/"} or parsed.query_string or parsed.fragment:
            return "must be a base URL without a path, query or fragment"
        return None


class ClientSettings(_Section):
    """``CHASSIS_CLIENT__*``: defaults of every ``ServiceClient``."""

    timeout_seconds: float = Field(default=5.0, gt=0)
    """Timeout of one attempt."""
    deadline_seconds: float = Field(default=15.0, gt=0)
    """Overall budget of a call, retries included (clipped by an inbound deadline)."""
    max_attempts: int = Field(default=3, ge=1)
    """Attempts per call, the first included."""
    backoff_base_seconds: float = Field(default=0.05, gt=0)
    """First back-off step; grows exponentially with full jitter."""
    backoff_max_seconds: float = Field(default=2.0, gt=0)
    """Largest back-off step."""
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=1)
    """Retries may add at most this fraction of recent requests per upstream."""
    retry_budget_min_per_second: float = Field(default=10.0, ge=0)
    """Retries always allowed per second, so a quiet upstream can still be retried."""
    retry_budget_window_seconds: float = Field(default=10.0, gt=0)
    """The sliding window over which requests and retries are counted for the budget."""
    breaker_failure_threshold: int = Field(default=5, ge=1)
    """Consecutive failures that open an instance's circuit."""
    breaker_recovery_seconds: float = Field(default=30.0, gt=0)
    """How long a circuit stays open before a half-open probe."""
    bulkhead_max_concurrency: int = Field(default=100, ge=1)
    """Concurrent requests per upstream."""
    bulkhead_max_queue: int = Field(default=0, ge=0)
    """Calls that may wait (within their deadline) for a bulkhead slot; 0 rejects at once."""
    load_balancer: Literal["round_robin", "p2c"] = "round_robin"
    """``round_robin`` or ``p2c`` (power of two choices by outstanding requests)."""


class EventsSettings(_Section):
    """``CHASSIS_EVENTS__*``: publish/subscribe between services."""

    backend: Literal["memory", "rabbitmq"] = "memory"
    """``memory`` (embedded default: services in one process share a broker) or ``rabbitmq``."""
    url: SecretStr = SecretStr("amqp://127.0.0.1:5672/")
    """The RabbitMQ broker's AMQP URL, credentials included
    (``amqp://user:password@127.0.0.1:5672/vhost``)."""
    prefetch: int = Field(default=16, ge=1)
    """Deliveries a consuming instance handles at once."""
    max_attempts: int = Field(default=5, ge=1)
    """Deliveries of one event to a failing handler, the first included, before it is
    dead-lettered."""
    retry_initial_seconds: float = Field(default=0.5, gt=0)
    """Delay before the first redelivery; it doubles per attempt, with full jitter."""
    retry_max_seconds: float = Field(default=60.0, gt=0)
    """Largest delay before a redelivery."""
    publish_timeout_seconds: float = Field(default=10.0, gt=0)
    """How long a publish waits for the broker to confirm it."""
    stop_timeout_seconds: float = Field(default=10.0, ge=0)
    """At shutdown, how long in-flight handlers may take to finish before they are
    cancelled (their events are delivered again later)."""
    reconnect_initial_seconds: float = Field(default=0.5, gt=0)
    """First delay before reconnecting to a lost broker; it doubles, with full jitter."""
    reconnect_max_seconds: float = Field(default=30.0, gt=0)
    """Largest delay between reconnection attempts (and between the outbox relay's
    attempts to publish)."""
    outbox_poll_interval_seconds: float = Field(default=5.0, gt=0)
    """How often the outbox relay looks for unsent events besides being woken by commits
    (it finds the events a crashed process left behind)."""
    outbox_batch_size: int = Field(default=100, ge=1)
    """Outbox rows the relay reads per round."""


class DatabaseSettings(_Section):
    """``CHASSIS_DATABASE__*``: the service's own SQLite store (``service.database()``)."""

    path: str | None = None
    """Database file; none means ``<service name>.db`` in the working directory.
    ``:memory:`` keeps it in memory (gone at exit)."""
    busy_timeout_seconds: float = Field(default=5.0, ge=0)
    """How long a statement waits for another process' write lock on the file."""
    inbox_retention_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    """How long idempotent subscribers remember the ids of the events they applied;
    keep it longer than any event can be redelivered."""


class RouteLimitSettings(_Section):
    """One route's limits in ``CHASSIS_RATELIMIT__ROUTES`` (keyed by route template)."""

    rate_per_second: float | None = Field(default=None, gt=0)
    """Token refill rate per key on this route, on top of the service-wide limit."""
    burst: int | None = Field(default=None, ge=1)
    """Bucket size; defaults to the rate rounded up."""
    key: str | None = None
    """``client``, ``header:<Name>`` or ``global``; defaults to the service-wide key."""
    max_in_flight: int | None = Field(default=None, ge=1)
    """Concurrent requests admitted on this route."""
    queue: int = Field(default=0, ge=0)
    """Requests that may wait for one of this route's slots."""
    priority: Literal["critical", "normal", "sheddable"] | None = None
    """Priority of requests that carry no priority header."""


class RateLimitSettings(_Section):
    """``CHASSIS_RATELIMIT__*``: admission control for inbound requests."""

    enabled: bool = False
    """Apply the limits below, per-route ones included."""
    rate_per_second: float | None = Field(default=None, gt=0)
    """Token refill rate per key; none disables rate limiting."""
    burst: int | None = Field(default=None, ge=1)
    """Bucket size; defaults to the rate rounded up."""
    key: str = "client"
    """What a limit is per: ``client`` (address), ``header:<Name>``, or ``global``."""
    max_keys: int = Field(default=10_000, ge=1)
    """Bound of the key table (least recently used keys are evicted)."""
    max_in_flight: int | None = Field(default=None, ge=1)
    """Concurrent requests admitted service-wide; none means unlimited."""
    max_event_loop_lag_seconds: float = Field(default=0.25, gt=0)
    """Above this loop lag the service is saturated and sheds by priority."""
    priority_header: str = "X-Priority"
    """Trusted header carrying ``critical``, ``normal`` or ``sheddable``."""
    redis_url: SecretStr | None = None
    """Share limits across instances through Redis (``redis://127.0.0.1:6379/0``)."""
    redis_timeout_seconds: float = Field(default=0.1, gt=0)
    """Budget of one Redis decision; slower answers fall back to local limiting."""
    redis_retry_interval_seconds: float = Field(default=2.0, gt=0)
    """After a Redis failure, limit locally this long before trying Redis again."""
    queue: int = Field(default=0, ge=0)
    """Requests that may wait for a slot once ``max_in_flight`` are in flight."""
    queue_timeout_seconds: float = Field(default=1.0, gt=0)
    """Longest wait in that queue before the request is shed."""
    retry_after_seconds: float = Field(default=1.0, gt=0)
    """``Retry-After`` of 503 answers when shedding."""
    sheddable_share: float = Field(default=0.5, gt=0, le=1)
    """Sheddable requests are shed once this fraction of ``max_in_flight`` is in flight."""
    normal_share: float = Field(default=0.8, gt=0, le=1)
    """Normal requests are shed once this fraction of ``max_in_flight`` is in flight."""
    # NoDecode: the raw variable reaches the validator, so errors name CHASSIS_RATELIMIT__ROUTES.
    routes: Annotated[dict[str, RouteLimitSettings], NoDecode] = Field(default_factory=dict)
    """Per-route limits keyed by route template, as JSON:
    ``{"/orders/{id}": {"rate_per_second": 5, "priority": "critical"}}``."""

    @field_validator("routes", mode="before")
    @classmethod
    def _decode_routes(cls, value: Any) -> Any:
        if isinstance(value, str | bytes):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"not a JSON object of route template to limits ({exc})") from None
        if not isinstance(value, Mapping):
            raise ValueError("must be a JSON object of route template to limits")
        routes = {}
        for route, limits in value.items():
            try:
                routes[route] = RouteLimitSettings.model_validate(limits)
            except ValidationError as exc:
                first = exc.errors(include_url=False)[0]
                where = ".".join(str(part) for part in first.get("loc", ())) or "limits"
                raise ValueError(f"{route!r}: {where}: {first.get('msg', 'invalid')}") from None
        return routes


class IntrospectionSettings(_Section):
    """``CHASSIS_INTROSPECTION__*``: the live state at ``/_chassis``."""

    enabled: bool | None = None
    """Serve the endpoint. Unset: on in the ``development`` environment, or wherever a
    token is set; ``false`` turns it off everywhere. Outside ``development`` it is
    never served without a token."""
    token: SecretStr | None = None
    """Bearer token the endpoint then requires (``Authorization: Bearer <token>``)."""
    prefix: str = "/_chassis"
    """Path of the JSON endpoint; the status page is ``<prefix>/ui``. One segment
    starting with an underscore."""

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not _PREFIX_OK(value):
            raise ValueError("must be one path segment starting with '/_', e.g. /_chassis")
        return value


class ChassisSettings(BaseSettings):
    """Every setting of a chassis service. Subclass it to add your own."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    environment: str = "development"
    """Deployment environment name (``CHASSIS_ENVIRONMENT``), e.g. ``production``."""
    log: LogSettings = LogSettings()
    http: HttpSettings = HttpSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    health: HealthSettings = HealthSettings()
    metrics: MetricsSettings = MetricsSettings()
    tracing: TracingSettings = TracingSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    client: ClientSettings = ClientSettings()
    ratelimit: RateLimitSettings = RateLimitSettings()
    events: EventsSettings = EventsSettings()
    database: DatabaseSettings = DatabaseSettings()
    introspection: IntrospectionSettings = IntrospectionSettings()


def env_var_name(loc: tuple[int | str, ...], prefix: str = ENV_PREFIX) -> str:
    """The environment variable that sets the field at ``loc``.

    >>> env_var_name(("http", "port"))
    'CHASSIS_HTTP__PORT'
    """
    parts = [str(p) for p in loc if not isinstance(p, int)]
    return prefix + ENV_NESTED_DELIMITER.join(parts).upper()


def _is_secret(model: type[BaseModel], loc: tuple[int | str, ...]) -> bool:
    """Whether the field at ``loc`` (or any field on the way to it) holds a secret."""
    current: Any = model
    for part in loc:
        # ``dict[str, int]`` is an instance of ``type`` on Python 3.10: skip generics.
        if get_origin(current) is not None or not (
            isinstance(current, type) and issubclass(current, BaseModel)
        ):
            return False
        field = current.model_fields.get(str(part))
        if field is None:
            return False
        annotation = field.annotation
        if _mentions_secret(annotation):
            return True
        current = annotation
    return False


def _mentions_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    args = getattr(annotation, "__args__", ())
    return any(_mentions_secret(a) for a in args)


def _describe(error: Any, model: type[BaseModel]) -> str:
    loc = tuple(error.get("loc", ()))
    reason = str(error.get("msg", "invalid"))
    if error.get("type") not in {"missing"} and "input" in error and not _is_secret(model, loc):
        shown = repr(error["input"])
        if len(shown) > 60:
            shown = shown[:57] + "..."
        reason = f"{reason} (got {shown})"
    return reason


def config_error_from(exc: ValidationError, model: type[BaseModel]) -> ConfigError:
    """Turn a pydantic ``ValidationError`` into a :class:`ConfigError` naming env vars."""
    prefix = str(getattr(model, "model_config", {}).get("env_prefix", ENV_PREFIX) or "")
    pairs = []
    for error in exc.errors(include_url=False):
        loc = tuple(error.get("loc", ()))
        pairs.append((env_var_name(loc, prefix), _describe(error, model)))
    return ConfigError(pairs)


def load_settings(cls: type[SettingsT] = ChassisSettings, /, **overrides: Any) -> SettingsT:  # type: ignore[assignment]
    """Read settings of type ``cls`` from overrides, the environment and ``.env``.

    Raises:
        ConfigError: listing every invalid field with its environment variable.
    """
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise config_error_from(exc, cls) from None
