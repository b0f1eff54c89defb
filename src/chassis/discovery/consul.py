"""``ConsulRegistry``: registration and lookups through a Consul agent.

Needs the ``consul`` extra (``pip install 'aiochassis[consul]'``, which brings
py-consul); it is imported when the first registry is built, not with this module.

* :meth:`ConsulRegistry.register` announces an instance with an HTTP check against
  its readiness probe and ``DeregisterCriticalServiceAfter``, so an instance that
  dies without deregistering is reaped by Consul.
* :meth:`ConsulRegistry.resolve` answers from a cache of
  ``/v1/health/service/<name>?passing``. The first lookup of a name starts a
  background *blocking-query watch* (``index`` + ``wait``) that refreshes the cache
  as soon as Consul reports a change. When Consul cannot be reached the watch
  retries with exponential back-off and full jitter, and lookups keep being served
  from the last good answer (stale, logged once, counted on every lookup).
* :meth:`ConsulRegistry.ping` is a readiness check for the agent.

Metrics, on the ``CollectorRegistry`` passed in (one per service)::

    chassis_discovery_watch_errors_total{service}    failed blocking queries
    chassis_discovery_cache_age_seconds{service}     0 while the watch is connected;
                                                     else seconds since the last good answer
    chassis_discovery_stale_lookups_total{service}   lookups served while the watch fails

The ACL token is a :class:`~pydantic.SecretStr`; it is only ever written into the
``X-Consul-Token`` request header, never into a log line or a ``repr``.

py-consul builds the API calls (paths, payloads, answer decoding); the HTTP
transport underneath is the chassis' own aiohttp session, so there are no
deprecated aiohttp arguments and py-consul does not read ``CONSUL_HTTP_*``
variables behind the chassis' back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from pydantic import SecretStr
from yarl import URL

from chassis import _compat
from chassis.config import DiscoverySettings
from chassis.discovery.base import DiscoveryError, Instance, Registration
from chassis.exceptions import ConfigError, LifecycleError
from chassis.introspection import scrub

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["ConsulRegistry"]

log = logging.getLogger("chassis.discovery")

_MIN_WATCH_INTERVAL_SECONDS = 0.05
"""Blocking queries that come back unchanged are not repeated faster than this."""


def _go_duration(seconds: float) -> str:
    """A duration as Consul (Go) parses it: ``10s``, ``1500ms``.

    >>> _go_duration(10), _go_duration(0.5)
    ('10s', '500ms')
    """
    millis = max(1, round(seconds * 1000))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge

        labels = ("service",)
        self.watch_errors: Counter = Counter(
            "chassis_discovery_watch_errors_total",
            "Failed Consul blocking queries, by watched service.",
            labels,
            registry=registry,
        )
        self.cache_age: Gauge = Gauge(
            "chassis_discovery_cache_age_seconds",
            "0 while the watch of a service is connected; else seconds since its last good answer.",
            labels,
            registry=registry,
        )
        self.stale_lookups: Counter = Counter(
            "chassis_discovery_stale_lookups_total",
            "Lookups answered from the cache while Consul could not be reached.",
            labels,
            registry=registry,
        )


@dataclass(eq=False)
class _Watch:
    """The cached answer for one service and the state of its blocking-query loop."""

    service: str
    instances: list[Instance] | None = None
    version: int = 0
    """Incremented whenever ``instances`` changes."""
    failing: bool = False
    consecutive_errors: int = 0
    last_success: float = 0.0
    stale_logged: bool = False
    attempted: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the first query has finished, well or not."""
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[None] | None = None

    def age_seconds(self) -> float:
        if not self.failing or self.instances is None:
            return 0.0
        return max(0.0, time.monotonic() - self.last_success)


class ConsulRegistry:
    """A :class:`~chassis.discovery.Registry` backed by a Consul agent.

    Build it inside a running event loop (it opens an aiohttp session); close it
    with :meth:`aclose`. A closed registry cannot be reused.

    Args:
        addr: the agent's HTTP address.
        token: ACL token, sent as ``X-Consul-Token``.
        check_interval_seconds: how often Consul calls the readiness probe.
        check_timeout_seconds: timeout of that call.
        deregister_critical_after_seconds: Consul removes an instance whose check
            stays critical this long.
        watch_wait_seconds: ``wait`` of the blocking queries.
        watch_backoff_initial_seconds: first back-off step after a failed query.
        watch_backoff_max_seconds: cap of the back-off.
        request_timeout_seconds: timeout of a non-blocking call.
        metrics_registry: where the ``chassis_discovery_*`` metrics are registered;
            a private registry when omitted.

    Raises:
        ConfigError: py-consul is not installed, or ``addr`` is not a base URL.
    """

    def __init__(
        self,
        *,
        addr: str = "http://127.0.0.1:8500",
        token: SecretStr | str | None = None,
        check_interval_seconds: float = 10.0,
        check_timeout_seconds: float = 5.0,
        deregister_critical_after_seconds: float = 60.0,
        watch_wait_seconds: float = 30.0,
        watch_backoff_initial_seconds: float = 0.5,
        watch_backoff_max_seconds: float = 30.0,
        request_timeout_seconds: float = 5.0,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        problem = DiscoverySettings._base_url_problem(addr)
        if problem is not None:
            raise ConfigError([("CHASSIS_DISCOVERY__CONSUL_ADDR", f"{addr!r} {problem}")])
        self.addr = addr
        self._token = SecretStr(token) if isinstance(token, str) else token
        self.check_interval_seconds = check_interval_seconds
        self.check_timeout_seconds = check_timeout_seconds
        self.deregister_critical_after_seconds = deregister_critical_after_seconds
        self.watch_wait_seconds = watch_wait_seconds
        self.watch_backoff_initial_seconds = watch_backoff_initial_seconds
        self.watch_backoff_max_seconds = watch_backoff_max_seconds
        self.request_timeout_seconds = request_timeout_seconds
        if metrics_registry is None:
            from prometheus_client import CollectorRegistry

            metrics_registry = CollectorRegistry()
        self.metrics_registry = metrics_registry
        self._metrics = _Metrics(metrics_registry)
        self._client = _connect(addr, self._token)
        self._watches: dict[str, _Watch] = {}
        self._closed = False

    @classmethod
    def from_settings(
        cls, settings: DiscoverySettings, *, metrics_registry: CollectorRegistry | None = None
    ) -> ConsulRegistry:
        """The registry described by ``CHASSIS_DISCOVERY__*`` settings."""
        return cls(
            addr=settings.consul_addr,
            token=settings.consul_token,
            check_interval_seconds=settings.check_interval_seconds,
            check_timeout_seconds=settings.check_timeout_seconds,
            deregister_critical_after_seconds=settings.deregister_critical_after_seconds,
            watch_wait_seconds=settings.watch_wait_seconds,
            watch_backoff_initial_seconds=settings.watch_backoff_initial_seconds,
            watch_backoff_max_seconds=settings.watch_backoff_max_seconds,
            request_timeout_seconds=settings.request_timeout_seconds,
            metrics_registry=metrics_registry,
        )

    def __repr__(self) -> str:
        return f"<ConsulRegistry {self.addr} watching {sorted(self._watches)}>"

    # -- registration -------------------------------------------------------------
    async def register(self, registration: Registration) -> None:
        """Register the instance with an HTTP check against its readiness probe.

        Raises:
            DiscoveryError: the agent refused or could not be reached.
        """
        reg = registration
        check_url = str(
            URL.build(scheme="http", host=reg.address, port=reg.port, path=reg.health_path)
        )
        check: dict[str, Any] = _py_consul().Check.http(
            check_url,
            interval=_go_duration(self.check_interval_seconds),
            timeout=_go_duration(self.check_timeout_seconds),
            deregister=_go_duration(self.deregister_critical_after_seconds),
        )
        check["Name"] = f"{reg.service} readiness ({reg.health_path})"
        meta = {**reg.meta, "version": reg.version}
        await self._call(
            "register",
            reg.service,
            lambda: self._client.agent.service.register(
                name=reg.service,
                service_id=reg.id,
                address=reg.address,
                port=reg.port,
                tags=list(reg.tags),
                meta=meta,
                check=check,
            ),
        )
        log.info(
            "registered %s as %s with consul",
            reg.service,
            reg.id,
            extra={"event": "consul_registered", "instance_id": reg.id},
        )

    async def deregister(self, registration: Registration) -> None:
        """Remove the instance (and its check) from the agent; unknown ids are ignored.

        Raises:
            DiscoveryError: the agent refused or could not be reached.
        """
        removed = await self._call(
            "deregister",
            registration.service,
            lambda: self._client.agent.service.deregister(service_id=registration.id),
        )
        if removed is False:  # 404: the agent did not know it
            return
        log.info(
            "deregistered %s from consul",
            registration.id,
            extra={"event": "consul_deregistered", "instance_id": registration.id},
        )

    async def maintenance(
        self, registration: Registration, *, enabled: bool, reason: str | None = None
    ) -> None:
        """Put the instance into (or take it out of) Consul's maintenance mode.

        In maintenance an instance stays registered but is not returned by lookups.

        Raises:
            DiscoveryError: the agent refused or could not be reached.
        """
        await self._call(
            "maintenance",
            registration.service,
            lambda: self._client.agent.service.maintenance(
                service_id=registration.id, enable=enabled, reason=reason
            ),
        )

    async def ping(self) -> None:
        """Readiness check: the agent answers and knows a cluster leader.

        Uses ``/v1/status/leader``, which needs no ACL token.

        Raises:
            DiscoveryError: the agent cannot be reached or reports no leader.
        """
        leader = await self._call("status", None, lambda: self._client.status.leader())
        if not leader:
            raise DiscoveryError("the consul agent reports no cluster leader")

    async def _call(
        self, what: str, service: str | None, call: Callable[[], Awaitable[Any]]
    ) -> Any:
        self._ensure_open()
        try:
            async with _compat.timeout(self.request_timeout_seconds):
                return await call()
        except (_py_consul().ConsulException, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise DiscoveryError(
                f"consul {what} failed: {_describe(exc)}", service=service
            ) from exc

    # -- lookups ------------------------------------------------------------------
    async def resolve(self, service: str) -> list[Instance]:
        """The passing instances of ``service``, from the watched cache.

        The first lookup of a name waits for Consul's first answer (bounded by the
        request timeout). Later lookups never wait: while Consul is unreachable they
        return the last good answer.

        Raises:
            DiscoveryError: Consul could not be reached and nothing is cached yet.
        """
        self._ensure_open()
        watch = self._watch_of(service)
        if not watch.attempted.is_set():
            with contextlib.suppress(TimeoutError):
                async with _compat.timeout(self.request_timeout_seconds):
                    await watch.attempted.wait()
        if watch.instances is None:
            raise DiscoveryError(
                f"consul could not be reached to resolve {service!r} and nothing is cached",
                service=service,
            )
        if watch.failing:
            self._metrics.stale_lookups.labels(service).inc()
            if not watch.stale_logged:
                watch.stale_logged = True
                log.warning(
                    "serving %s from a stale cache (%.1fs old): consul is unreachable",
                    service,
                    watch.age_seconds(),
                    extra={"event": "discovery_stale", "upstream": service},
                )
        return list(watch.instances)

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        """Yield the passing instances of ``service`` now and after every change.

        Ends when the registry is closed. While Consul is unreachable nothing is
        yielded; the last answer stays valid.
        """
        self._ensure_open()
        watch = self._watch_of(service)
        seen = 0

        def news() -> bool:
            return self._closed or watch.version != seen

        while True:
            async with watch.changed:
                await watch.changed.wait_for(news)
            if self._closed:
                return
            seen = watch.version
            assert watch.instances is not None
            yield list(watch.instances)

    def _watch_of(self, service: str) -> _Watch:
        watch = self._watches.get(service)
        if watch is None:
            watch = self._watches[service] = _Watch(service)
            self._metrics.cache_age.labels(service).set_function(watch.age_seconds)
            watch.task = asyncio.get_running_loop().create_task(
                self._watch_loop(watch), name=f"chassis-consul-watch-{service}"
            )
        return watch

    async def _watch_loop(self, watch: _Watch) -> None:
        import backoff

        service = watch.service
        wait = _go_duration(self.watch_wait_seconds)
        # Consul adds up to wait/16 of jitter to a blocking query.
        call_timeout = self.watch_wait_seconds * 17 / 16 + self.request_timeout_seconds
        index: int | None = None
        delays: Generator[float, None, None] | None = None
        while True:
            started = time.monotonic()
            try:
                async with _compat.timeout(call_timeout):
                    raw_index, nodes = await self._client.health.service(
                        service, index=index, wait=wait, passing=True
                    )
                new_index = int(raw_index)
                instances = sorted(_instances(service, nodes or ()), key=lambda i: i.id)
            except Exception as exc:  # the loop must outlive any error; it backs off instead
                if delays is None:
                    delays = _backoff_delays(
                        backoff, self.watch_backoff_initial_seconds, self.watch_backoff_max_seconds
                    )
                self._watch_failed(watch, exc)
                await asyncio.sleep(backoff.full_jitter(next(delays)))
                continue
            delays = None
            unchanged = index is not None and new_index == index
            # An index that went backwards restarts the loop with a plain query;
            # one below 1 would make every blocking query return at once.
            index = None if index is not None and new_index < index else max(new_index, 1)
            await self._watch_succeeded(watch, instances)
            if unchanged and time.monotonic() - started < _MIN_WATCH_INTERVAL_SECONDS:
                await asyncio.sleep(_MIN_WATCH_INTERVAL_SECONDS)

    def _watch_failed(self, watch: _Watch, exc: BaseException) -> None:
        watch.consecutive_errors += 1
        self._metrics.watch_errors.labels(watch.service).inc()
        if not watch.failing:
            watch.failing = True
            log.warning(
                "consul watch of %s failed (%s); retrying with back-off",
                watch.service,
                _describe(exc),
                extra={"event": "discovery_watch_failed", "upstream": watch.service},
            )
        else:
            log.debug(
                "consul watch of %s failed again (%s)",
                watch.service,
                _describe(exc),
                extra={"event": "discovery_watch_failed", "upstream": watch.service},
            )
        watch.attempted.set()

    async def _watch_succeeded(self, watch: _Watch, instances: list[Instance]) -> None:
        if watch.failing:
            log.info(
                "consul watch of %s recovered after %d failed attempts",
                watch.service,
                watch.consecutive_errors,
                extra={"event": "discovery_watch_recovered", "upstream": watch.service},
            )
        watch.failing = False
        watch.stale_logged = False
        watch.consecutive_errors = 0
        watch.last_success = time.monotonic()
        if watch.instances != instances:
            watch.instances = instances
            watch.version += 1
            async with watch.changed:
                watch.changed.notify_all()
        watch.attempted.set()

    # -- introspection ------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The watched cache: per service, its instances, the age of the last good
        answer and whether its watch is running or failing."""
        now = time.monotonic()
        services = {}
        for name, watch in sorted(self._watches.items()):
            task = watch.task
            services[name] = {
                "instances": None if watch.instances is None else [i.url for i in watch.instances],
                "cache_age_seconds": (
                    round(now - watch.last_success, 3) if watch.last_success else None
                ),
                "watch": (
                    "stopped"
                    if task is None or task.done()
                    else ("failing" if watch.failing else "watching")
                ),
                "consecutive_errors": watch.consecutive_errors,
            }
        return {"backend": "consul", "addr": scrub(self.addr), "services": services}

    # -- lifecycle ----------------------------------------------------------------
    def _ensure_open(self) -> None:
        if self._closed:
            raise LifecycleError("this ConsulRegistry is closed; build a new one")

    async def aclose(self) -> None:
        """Stop every watch and close the HTTP session; idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = [w.task for w in self._watches.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for watch in self._watches.values():
            async with watch.changed:
                watch.changed.notify_all()
        await self._client.http.close()


def _backoff_delays(
    backoff: Any, initial_seconds: float, max_seconds: float
) -> Generator[float, None, None]:
    gen = backoff.expo(base=2, factor=initial_seconds, max_value=max_seconds)
    next(gen)  # the generator's first value primes it for send()
    return gen  # type: ignore[no-any-return]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _instances(service: str, nodes: Iterable[Mapping[str, Any]]) -> Iterable[Instance]:
    """Instances from a ``/v1/health/service`` answer (the service address, else the node's)."""
    for entry in nodes:
        svc = entry.get("Service") or {}
        node = entry.get("Node") or {}
        address = svc.get("Address") or node.get("Address")
        port = svc.get("Port")
        if not address or not port:
            continue
        meta = {str(k): str(v) for k, v in (svc.get("Meta") or {}).items()}
        yield Instance(
            service=service,
            id=str(svc.get("ID") or f"{address}:{port}"),
            address=str(address),
            port=int(port),
            scheme=meta.get("scheme", "http"),
            tags=tuple(str(t) for t in svc.get("Tags") or ()),
            meta=meta,
        )


def _connect(addr: str, token: SecretStr | None) -> Any:
    """A py-consul API object over the chassis' own aiohttp transport."""
    url = URL(addr)
    client = _client_class()(
        host=url.host,
        port=url.explicit_port or 8500,
        scheme=url.scheme,
        verify=True,
    )
    # py-consul prefers CONSUL_HTTP_TOKEN over the argument; only chassis.config reads
    # the environment, so the token is set here, after construction.
    client.token = token.get_secret_value() if token is not None else None
    return client


@functools.cache
def _py_consul() -> Any:
    """The ``consul`` package (py-consul), imported on first use."""
    try:
        import consul.base  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError(
            [
                (
                    "CHASSIS_DISCOVERY__BACKEND",
                    "consul needs py-consul: pip install 'aiochassis[consul]'",
                )
            ]
        ) from None
    return consul


@functools.cache
def _client_class() -> type[Any]:
    consul = _py_consul()
    http_client: Any = consul.base.HTTPClient
    api: Any = consul.base.Consul

    class Transport(http_client):  # type: ignore[misc]
        """py-consul's HTTP client interface on an aiohttp session."""

        def __init__(
            self, host: str, port: int, scheme: str, verify: bool = True, cert: Any = None
        ) -> None:
            super().__init__(host, port, scheme, verify, cert)
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=verify),
                timeout=aiohttp.ClientTimeout(total=None),
            )

        async def _request(
            self, callback: Any, method: str, uri: str, headers: Any, data: Any = None
        ) -> Any:
            async with self.session.request(method, uri, headers=headers, data=data) as resp:
                body = await resp.text(encoding="utf-8")
                return callback(consul.base.Response(resp.status, resp.headers, body))

        def get(
            self, callback: Any, path: str, params: Any = None, headers: Any = None, **_: Any
        ) -> Any:
            return self._request(callback, "GET", self.uri(path, params), headers)

        def put(
            self,
            callback: Any,
            path: str,
            params: Any = None,
            data: Any = "",
            headers: Any = None,
            **_: Any,
        ) -> Any:
            return self._request(callback, "PUT", self.uri(path, params), headers, data)

        def delete(
            self,
            callback: Any,
            path: str,
            params: Any = None,
            data: Any = "",
            headers: Any = None,
            **_: Any,
        ) -> Any:
            return self._request(callback, "DELETE", self.uri(path, params), headers, data)

        def post(
            self,
            callback: Any,
            path: str,
            params: Any = None,
            data: Any = "",
            headers: Any = None,
            **_: Any,
        ) -> Any:
            return self._request(callback, "POST", self.uri(path, params), headers, data)

        def close(self) -> Any:
            return self.session.close()

    class Client(api):  # type: ignore[misc]
        """py-consul's API surface on :class:`Transport`."""

        def http_connect(
            self, host: str, port: int, scheme: str, verify: Any = True, cert: Any = None
        ) -> Transport:
            return Transport(host, port, scheme, bool(verify), cert)

    return Client
