"""An in-process stand-in for a Consul agent, for tests (public as ``chassis.testing``).

It speaks, faithfully, the subset of Consul's HTTP API the chassis uses: Consul's
JSON field names (request keys case-insensitively, as Consul decodes them), its
status codes and error texts, ``X-Consul-Index`` blocking queries, HTTP checks it
really runs on their interval, TTL checks, ``DeregisterCriticalServiceAfter``
reaping and service maintenance mode. See :class:`ConsulStandIn`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

from chassis import _compat

__all__ = ["ConsulStandIn", "parse_go_duration"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_DEFAULT_WAIT_SECONDS = 300.0
_MAX_WAIT_SECONDS = 600.0
_OUTPUT_MAX_BYTES = 4096
_DEFAULT_HTTP_TIMEOUT_SECONDS = 10.0
_MAINTENANCE_PREFIX = "_service_maintenance:"
_MAINTENANCE_DEFAULT_REASON = (
    "Maintenance mode is enabled for this service, but no reason was provided. "
    "This is a default message."
)
_ANONYMOUS = "anonymous token"
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration such as ``10s``, ``1m30s`` or ``500ms``.

    Raises:
        ValueError: ``text`` is not a Go duration.
    """
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ValueError(f"invalid duration {text!r}")
    return total


def _fold(obj: Any) -> dict[str, Any]:
    """Keys folded the way Consul matches them: case-insensitive, ``_`` ignored."""
    if not isinstance(obj, Mapping):
        raise ValueError("expected a JSON object")
    return {str(k).replace("_", "").lower(): v for k, v in obj.items()}


def _duration_field(value: Any) -> float | None:
    """A duration given as a Go string or as nanoseconds (both are accepted by Consul)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value) / 1e9
    return parse_go_duration(str(value))


def _format_duration(seconds: float | None) -> str:
    if not seconds:
        return ""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


class _ApiError(Exception):
    """An error answered as Consul does: a status code and a plain-text reason."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(eq=False)
class _Service:
    id: str
    name: str
    tags: list[str]
    address: str
    port: int
    meta: dict[str, str]
    enable_tag_override: bool
    create_index: int
    modify_index: int

    def as_json(self, datacenter: str) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Service": self.name,
            "Tags": list(self.tags),
            "Address": self.address,
            "Meta": dict(self.meta),
            "Port": self.port,
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": self.enable_tag_override,
            "Datacenter": datacenter,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass(eq=False)
class _Check:
    id: str
    name: str
    service_id: str
    service_name: str
    status: str
    notes: str = ""
    output: str = ""
    type: str = ""
    http: str = ""
    method: str = "GET"
    header: dict[str, list[str]] = field(default_factory=dict)
    interval: float | None = None
    timeout: float | None = None
    ttl: float | None = None
    deregister_after: float | None = None
    create_index: int = 0
    modify_index: int = 0
    critical_since: float | None = None
    task: asyncio.Task[None] | None = None

    def as_json(self, node: str, tags: list[str]) -> dict[str, Any]:
        return {
            "Node": node,
            "CheckID": self.id,
            "Name": self.name,
            "Status": self.status,
            "Notes": self.notes,
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "ServiceTags": list(tags),
            "Type": self.type,
            "Interval": _format_duration(self.interval),
            "Timeout": _format_duration(self.timeout),
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


class ConsulStandIn:
    """A Consul agent (and single-server cluster) in the test's event loop.

    Serves on ``127.0.0.1`` (a free port by default)::

        async with ConsulStandIn() as consul:
            settings = ChassisSettings(discovery={"backend": "consul", "consul_addr": consul.url})

    Endpoints: ``PUT /v1/agent/service/register``, ``PUT
    /v1/agent/service/deregister/<id>``, ``PUT /v1/agent/service/maintenance/<id>``,
    ``PUT /v1/agent/check/{pass,warn,fail}/<id>``, ``GET /v1/health/service/<name>``
    (``passing``, ``tag``, blocking with ``index``/``wait``), ``GET
    /v1/catalog/services`` (blocking), ``GET /v1/agent/{self,services,checks}``,
    ``GET /v1/status/{leader,peers}``.

    Behaviour follows Consul's: new checks start ``critical``; HTTP checks run after
    a random stagger within their interval, then every interval (2xx passing, 429
    warning, anything else critical), with intervals below
    ``check_min_interval_seconds`` raised to it; TTL checks turn critical when not
    refreshed in time; a service whose check stays critical longer than its
    ``DeregisterCriticalServiceAfter`` (at least ``check_deregister_interval_min_seconds``)
    is removed by a reaper running every ``check_reap_interval_seconds``. The three
    knobs default to Consul's values (1 s, 1 min, 30 s); tests may shorten them.

    With ``token`` set, ACLs are on with a default-deny policy and ``token`` is the
    only valid token: writes and ``/v1/agent/self`` without it answer 403
    ``Permission denied``, an unknown token 403 ``ACL not found``, and reads without
    one are filtered to nothing (``X-Consul-Results-Filtered-By-ACLs: true``), as
    Consul does. ``/v1/status/*`` needs no token.

    Outages: :meth:`stop` drops every connection (blocking queries included) and
    stops the checks, :meth:`start` comes back on the same port with the same state;
    :meth:`pause` holds new requests unanswered until :meth:`resume`. ``hits`` counts
    requests by ``"<METHOD> <route>"``, e.g. ``hits["GET /v1/health/service/{name}"]``.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        node_name: str = "chassis-standin",
        datacenter: str = "dc1",
        check_min_interval_seconds: float = 1.0,
        check_reap_interval_seconds: float = 30.0,
        check_deregister_interval_min_seconds: float = 60.0,
    ) -> None:
        self.host = host
        self.port = port
        self.node_name = node_name
        self.node_id = str(uuid.uuid4())
        self.datacenter = datacenter
        self.check_min_interval_seconds = check_min_interval_seconds
        self.check_reap_interval_seconds = check_reap_interval_seconds
        self.check_deregister_interval_min_seconds = check_deregister_interval_min_seconds
        self._token = token
        self.hits: collections.Counter[str] = collections.Counter()
        self._services: dict[str, _Service] = {}
        self._checks: dict[str, _Check] = {}
        self._index = 1
        self._name_index: dict[str, int] = {}
        self._catalog_index = 1
        self._changed: asyncio.Event | None = None
        self._open_gate: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._reaper: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<ConsulStandIn {self.host}:{self.port} {state}>"

    # -- control ------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:51234`` (the port is fixed after the first start)."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the agent is serving."""
        return self._runner is not None

    async def start(self) -> None:
        """Serve (again, on the same port after :meth:`stop`); start the checks."""
        if self._runner is not None:
            return
        self._changed = self._changed or asyncio.Event()
        if self._open_gate is None:
            self._open_gate = asyncio.Event()
            self._open_gate.set()
        app = web.Application(middlewares=[self._middleware])
        self._add_routes(app)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        server = site._server
        sockets = list(getattr(server, "sockets", None) or [])
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._runner = runner
        self._session = aiohttp.ClientSession()
        for check in self._checks.values():
            self._start_check(check)
        self._reaper = asyncio.get_running_loop().create_task(
            self._reap_forever(), name="consul-standin-reaper"
        )

    async def stop(self) -> None:
        """Go down like a crashed agent: connections drop, checks stop, state is kept."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        tasks = [c.task for c in self._checks.values() if c.task is not None]
        if self._reaper is not None:
            tasks.append(self._reaper)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for check in self._checks.values():
            check.task = None
        self._reaper = None
        await runner.cleanup()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def pause(self) -> None:
        """Accept connections but answer no request until :meth:`resume`."""
        if self._open_gate is not None:
            self._open_gate.clear()

    def resume(self) -> None:
        """Answer requests again, the held ones first."""
        if self._open_gate is not None:
            self._open_gate.set()

    async def aclose(self) -> None:
        """Stop for good; idempotent."""
        self.resume()
        await self.stop()

    async def __aenter__(self) -> ConsulStandIn:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- inspection ---------------------------------------------------------------
    def service_ids(self, name: str | None = None) -> list[str]:
        """Ids of the registered services (of ``name`` only, if given)."""
        return sorted(s.id for s in self._services.values() if name is None or s.name == name)

    def check_status(self, check_id: str) -> str | None:
        """``passing``, ``warning`` or ``critical``; None for an unknown check."""
        check = self._checks.get(check_id)
        return None if check is None else check.status

    # -- state changes ------------------------------------------------------------
    def _bump(self, *names: str, catalog: bool = False) -> int:
        self._index += 1
        for name in names:
            self._name_index[name] = self._index
        if catalog:
            self._catalog_index = self._index
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()
        return self._index

    def _set_status(self, check: _Check, status: str, output: str) -> None:
        check.output = output
        if status == check.status:
            return  # output-only changes are not synced at once by Consul either
        check.status = status
        now = time.monotonic()
        check.critical_since = (check.critical_since or now) if status == "critical" else None
        check.modify_index = self._bump(check.service_name)

    def _remove_service(self, service_id: str) -> None:
        service = self._services.pop(service_id)
        for check_id in [c.id for c in self._checks.values() if c.service_id == service_id]:
            self._drop_check(check_id)
        self._bump(service.name, catalog=True)

    def _drop_check(self, check_id: str) -> None:
        check = self._checks.pop(check_id)
        if check.task is not None:
            check.task.cancel()

    def _start_check(self, check: _Check) -> None:
        if self._runner is None:
            return
        runner: Callable[[_Check], Coroutine[Any, Any, None]] | None = None
        if check.type == "http":
            runner = self._run_http_check
        elif check.type == "ttl":
            runner = self._run_ttl_check
        if runner is not None:
            check.task = asyncio.get_running_loop().create_task(
                runner(check), name=f"consul-standin-check-{check.id}"
            )

    async def _run_http_check(self, check: _Check) -> None:
        assert check.interval is not None
        await asyncio.sleep(random.uniform(0, check.interval))
        while True:
            status, output = await self._probe(check)
            if check.id in self._checks:
                self._set_status(check, status, output)
            await asyncio.sleep(check.interval)

    async def _probe(self, check: _Check) -> tuple[str, str]:
        assert self._session is not None
        timeout = check.timeout or _DEFAULT_HTTP_TIMEOUT_SECONDS
        headers = {"User-Agent": "Consul Health Check", "Accept": "text/plain, text/*, */*"}
        headers.update({k: v[0] for k, v in check.header.items() if v})
        try:
            async with (
                _compat.timeout(timeout),
                self._session.request(
                    check.method, check.http, headers=headers, allow_redirects=True
                ) as resp,
            ):
                body = await resp.content.read(_OUTPUT_MAX_BYTES)
                code, reason = resp.status, resp.reason or ""
        except TimeoutError:
            return "critical", (
                f'{check.method} "{check.http}": context deadline exceeded '
                "(Client.Timeout exceeded while awaiting headers)"
            )
        except aiohttp.ClientError as exc:
            return "critical", f'{check.method} "{check.http}": {exc}'
        output = (
            f"HTTP {check.method} {check.http}: {code} {reason} "
            f"Output: {body.decode('utf-8', 'replace')}"
        )
        if 200 <= code <= 299:
            return "passing", output
        return ("warning" if code == 429 else "critical"), output

    async def _run_ttl_check(self, check: _Check) -> None:
        assert check.ttl is not None
        await asyncio.sleep(check.ttl)
        if check.id in self._checks:
            self._set_status(
                check,
                "critical",
                f"TTL expired (last output before timeout follows): {check.output}",
            )

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.check_reap_interval_seconds)
            now = time.monotonic()
            doomed: set[str] = set()
            for check in self._checks.values():
                if check.deregister_after is None or check.critical_since is None:
                    continue
                after = max(check.deregister_after, self.check_deregister_interval_min_seconds)
                if now - check.critical_since > after and check.service_id in self._services:
                    doomed.add(check.service_id)
            for service_id in sorted(doomed):
                self._remove_service(service_id)

    # -- HTTP plumbing ------------------------------------------------------------
    def _add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_put("/v1/agent/service/register", self._register)
        r.add_put("/v1/agent/service/deregister/{id}", self._deregister)
        r.add_put("/v1/agent/service/maintenance/{id}", self._maintenance)
        r.add_put("/v1/agent/check/{verb:pass|warn|fail}/{id}", self._ttl_update)
        r.add_get("/v1/agent/self", self._agent_self)
        r.add_get("/v1/agent/services", self._agent_services)
        r.add_get("/v1/agent/checks", self._agent_checks)
        r.add_get("/v1/health/service/{name}", self._health_service)
        r.add_get("/v1/catalog/services", self._catalog_services)
        r.add_get("/v1/status/leader", self._status_leader)
        r.add_get("/v1/status/peers", self._status_peers)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path
        self.hits[f"{request.method} {route}"] += 1
        if self._open_gate is not None:
            await self._open_gate.wait()
        try:
            return await handler(request)
        except _ApiError as exc:
            return web.Response(status=exc.status, text=exc.text)

    def _token_of(self, request: web.Request) -> str | None:
        token = request.headers.get("X-Consul-Token")
        if not token:
            auth = request.headers.get("Authorization", "")
            if auth.lower().startswith("bearer "):
                token = auth[7:].strip()
        return token or request.query.get("token") or None

    def _authorize(self, request: web.Request, permission: str, resource: str = "") -> None:
        """Raise 403 unless the request may do ``permission`` (no-op without ACLs)."""
        if self._token is None:
            return
        token = self._token_of(request)
        if token is None:
            on = f' on "{resource}"' if resource else ""
            raise _ApiError(
                403, f"Permission denied: {_ANONYMOUS} lacks permission '{permission}'{on}"
            )
        if token != self._token:
            raise _ApiError(403, "ACL not found")

    def _may_read(self, request: web.Request) -> bool:
        """Whether reads are unfiltered; an unknown token is an error, none filters."""
        if self._token is None:
            return True
        token = self._token_of(request)
        if token is None:
            return False
        if token != self._token:
            raise _ApiError(403, "ACL not found")
        return True

    def _json(self, body: Any, *, index: int | None = None, filtered: bool = False) -> web.Response:
        headers = {}
        if index is not None:
            headers.update(
                {
                    "X-Consul-Index": str(index),
                    "X-Consul-KnownLeader": "true",
                    "X-Consul-LastContact": "0",
                    "X-Consul-Effective-Consistency": "leader",
                }
            )
        if filtered:
            headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
        return web.Response(text=json.dumps(body), content_type="application/json", headers=headers)

    async def _block(self, request: web.Request, current: Callable[[], int]) -> None:
        """Hold a blocking query until ``current()`` passes ``?index`` or ``?wait`` ends."""
        raw_index = request.query.get("index")
        if raw_index is None:
            return
        try:
            index = int(raw_index)
        except ValueError:
            raise _ApiError(400, "Invalid index") from None
        wait = _DEFAULT_WAIT_SECONDS
        if "wait" in request.query:
            try:
                wait = parse_go_duration(request.query["wait"])
            except ValueError:
                raise _ApiError(400, "Invalid wait time") from None
        wait = min(wait, _MAX_WAIT_SECONDS)
        wait += random.uniform(0, wait / 16)  # Consul's jitter
        deadline = time.monotonic() + wait
        while current() <= index:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._changed is None:
                return
            with contextlib.suppress(TimeoutError):
                async with _compat.timeout(remaining):
                    await self._changed.wait()

    # -- agent endpoints ----------------------------------------------------------
    async def _register(self, request: web.Request) -> web.Response:
        try:
            body = _fold(json.loads(await request.text() or "null"))
        except ValueError as exc:
            raise _ApiError(400, f"Request decode failed: {exc}") from None
        name = str(body.get("name") or "")
        if not name:
            raise _ApiError(400, "Missing service name")
        self._authorize(request, "service:write", name)
        service_id = str(body.get("id") or name)
        try:
            port = int(body.get("port") or 0)
        except (TypeError, ValueError):
            raise _ApiError(400, "Request decode failed: invalid Port") from None
        definitions: list[Any] = []
        if body.get("check"):
            definitions.append(body["check"])
        definitions.extend(body.get("checks") or [])
        checks = [
            self._check_from(
                _fold(raw),
                default_id=(
                    f"service:{service_id}"
                    if len(definitions) == 1
                    else f"service:{service_id}:{i + 1}"
                ),
                service_id=service_id,
                service_name=name,
            )
            for i, raw in enumerate(definitions)
        ]
        replace = request.query.get("replace-existing-checks", "").lower() in {"1", "true"}
        old = self._services.get(service_id)
        if old is not None and old.name != name:
            self._remove_service(service_id)
            old = None
        index = self._bump(name, catalog=True)
        self._services[service_id] = _Service(
            id=service_id,
            name=name,
            tags=[str(t) for t in body.get("tags") or []],
            address=str(body.get("address") or ""),
            port=port,
            meta={str(k): str(v) for k, v in (body.get("meta") or {}).items()},
            enable_tag_override=bool(body.get("enabletagoverride")),
            create_index=old.create_index if old is not None else index,
            modify_index=index,
        )
        new_ids = {c.id for c in checks}
        if replace:
            for check_id in [
                c.id
                for c in self._checks.values()
                if c.service_id == service_id
                and c.id not in new_ids
                and not c.id.startswith(_MAINTENANCE_PREFIX)
            ]:
                self._drop_check(check_id)
        for check in checks:
            previous = self._checks.get(check.id)
            if previous is not None:
                check.status, check.output = previous.status, previous.output
                check.critical_since = previous.critical_since
                check.create_index = previous.create_index
                self._drop_check(check.id)
            else:
                check.create_index = index
            check.modify_index = index
            self._checks[check.id] = check
            self._start_check(check)
        return web.Response()

    def _check_from(
        self, spec: dict[str, Any], *, default_id: str, service_id: str, service_name: str
    ) -> _Check:
        check_id = str(spec.get("checkid") or spec.get("id") or default_id)
        status = str(spec.get("status") or "critical")
        if status not in {"passing", "warning", "critical"}:
            raise _ApiError(400, f"Invalid check status: {status!r}")
        try:
            interval = _duration_field(spec.get("interval"))
            timeout = _duration_field(spec.get("timeout"))
            ttl = _duration_field(spec.get("ttl"))
            deregister = _duration_field(spec.get("deregistercriticalserviceafter"))
        except ValueError as exc:
            raise _ApiError(400, f"Request decode failed: {exc}") from None
        http = str(spec.get("http") or "")
        unsupported = {"args", "tcp", "udp", "grpc", "h2ping", "dockercontainerid", "aliasservice"}
        if http and ttl:
            raise _ApiError(400, "Invalid check: only one of HTTP or TTL may be set")
        if not http and not ttl:
            kinds = sorted(k for k in unsupported if spec.get(k))
            detail = f" (this stand-in runs HTTP and TTL checks, not {kinds})" if kinds else ""
            raise _ApiError(400, f"Invalid check: TTL or HTTP must be set{detail}")
        if http and not interval:
            raise _ApiError(
                400,
                "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP "
                "or gRPC checks",
            )
        if interval is not None:
            interval = max(interval, self.check_min_interval_seconds)
        header = {
            str(k): [str(x) for x in (v if isinstance(v, list) else [v])]
            for k, v in (spec.get("header") or {}).items()
        }
        return _Check(
            id=check_id,
            name=str(spec.get("name") or f"Service '{service_name}' check"),
            service_id=service_id,
            service_name=service_name,
            status=status,
            notes=str(spec.get("notes") or ""),
            type="http" if http else "ttl",
            http=http,
            method=str(spec.get("method") or "GET").upper(),
            header=header,
            interval=interval,
            timeout=timeout,
            ttl=ttl,
            deregister_after=deregister,
            critical_since=time.monotonic() if status == "critical" else None,
        )

    def _service_or_404(self, service_id: str) -> _Service:
        service = self._services.get(service_id)
        if service is None:
            raise _ApiError(404, f'Unknown service ID "{service_id}"')
        return service

    async def _deregister(self, request: web.Request) -> web.Response:
        service_id = request.match_info["id"]
        service = self._services.get(service_id)
        self._authorize(request, "service:write", service.name if service else service_id)
        self._service_or_404(service_id)
        self._remove_service(service_id)
        return web.Response()

    async def _maintenance(self, request: web.Request) -> web.Response:
        service_id = request.match_info["id"]
        raw = request.query.get("enable")
        if raw is None:
            raise _ApiError(400, "Missing value for enable")
        if raw.lower() not in {"true", "false", "1", "0"}:
            raise _ApiError(400, f"Invalid value for enable: {raw!r}")
        service = self._services.get(service_id)
        self._authorize(request, "service:write", service.name if service else service_id)
        service = self._service_or_404(service_id)
        check_id = _MAINTENANCE_PREFIX + service_id
        if raw.lower() in {"true", "1"}:
            if check_id not in self._checks:
                index = self._bump(service.name)
                self._checks[check_id] = _Check(
                    id=check_id,
                    name="Service Maintenance Mode",
                    service_id=service_id,
                    service_name=service.name,
                    status="critical",
                    notes=request.query.get("reason") or _MAINTENANCE_DEFAULT_REASON,
                    create_index=index,
                    modify_index=index,
                )
        elif check_id in self._checks:
            self._drop_check(check_id)
            self._bump(service.name)
        return web.Response()

    async def _ttl_update(self, request: web.Request) -> web.Response:
        check_id = request.match_info["id"]
        check = self._checks.get(check_id)
        self._authorize(request, "service:write", check.service_name if check else check_id)
        if check is None:
            raise _ApiError(404, f'Unknown check ID "{check_id}"')
        if check.type != "ttl":
            raise _ApiError(500, f'CheckID "{check_id}" does not have associated TTL')
        verb = request.match_info["verb"]
        status = {"pass": "passing", "warn": "warning", "fail": "critical"}[verb]
        self._set_status(check, status, request.query.get("note", ""))
        if check.task is not None:
            check.task.cancel()
        self._start_check(check)  # re-arm the TTL
        return web.Response()

    async def _agent_self(self, request: web.Request) -> web.Response:
        self._authorize(request, "agent:read", self.node_name)
        return self._json(
            {
                "Config": {
                    "Datacenter": self.datacenter,
                    "PrimaryDatacenter": self.datacenter,
                    "NodeName": self.node_name,
                    "NodeID": self.node_id,
                    "Server": True,
                    "Revision": "chassis-standin",
                    "Version": "1.19.0",
                },
                "Member": {
                    "Name": self.node_name,
                    "Addr": self.host,
                    "Port": 8301,
                    "Tags": {"dc": self.datacenter, "role": "consul"},
                    "Status": 1,
                },
                "Meta": {"consul-network-segment": ""},
            }
        )

    async def _agent_services(self, request: web.Request) -> web.Response:
        allowed = self._may_read(request)
        services = self._services.values() if allowed else ()
        return self._json(
            {s.id: s.as_json(self.datacenter) for s in services}, filtered=not allowed
        )

    async def _agent_checks(self, request: web.Request) -> web.Response:
        allowed = self._may_read(request)
        checks = self._checks.values() if allowed else ()
        return self._json(
            {c.id: c.as_json(self.node_name, self._tags_of(c.service_id)) for c in checks},
            filtered=not allowed,
        )

    def _tags_of(self, service_id: str) -> list[str]:
        service = self._services.get(service_id)
        return service.tags if service is not None else []

    # -- catalog and health -------------------------------------------------------
    async def _health_service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        allowed = self._may_read(request)
        passing = _query_bool(request, "passing")
        tags = request.query.getall("tag", [])
        await self._block(request, lambda: self._name_index.get(name, 1))
        entries = []
        if allowed:
            for service in sorted(self._services.values(), key=lambda s: s.id):
                if service.name != name or not all(t in service.tags for t in tags):
                    continue
                checks = [self._node_check()] + [
                    c.as_json(self.node_name, service.tags)
                    for c in sorted(self._checks.values(), key=lambda c: c.id)
                    if c.service_id == service.id
                ]
                if passing and any(c["Status"] != "passing" for c in checks):
                    continue
                entries.append(
                    {
                        "Node": self._node_json(),
                        "Service": service.as_json(self.datacenter),
                        "Checks": checks,
                    }
                )
        return self._json(entries, index=self._name_index.get(name, 1), filtered=not allowed)

    async def _catalog_services(self, request: web.Request) -> web.Response:
        allowed = self._may_read(request)
        await self._block(request, lambda: self._catalog_index)
        names: dict[str, set[str]] = {"consul": set()}
        if allowed:
            for service in self._services.values():
                names.setdefault(service.name, set()).update(service.tags)
        else:
            names = {}
        body = {name: sorted(tags) for name, tags in sorted(names.items())}
        return self._json(body, index=self._catalog_index, filtered=not allowed)

    def _node_json(self) -> dict[str, Any]:
        return {
            "ID": self.node_id,
            "Node": self.node_name,
            "Address": self.host,
            "Datacenter": self.datacenter,
            "TaggedAddresses": {"lan": self.host, "wan": self.host},
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": 1,
            "ModifyIndex": 1,
        }

    def _node_check(self) -> dict[str, Any]:
        return {
            "Node": self.node_name,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": "passing",
            "Notes": "",
            "Output": "Agent alive and reachable",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
            "Type": "",
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": 1,
            "ModifyIndex": 1,
        }

    # -- status -------------------------------------------------------------------
    async def _status_leader(self, request: web.Request) -> web.Response:
        return self._json(f"{self.host}:8300")

    async def _status_peers(self, request: web.Request) -> web.Response:
        return self._json([f"{self.host}:8300"])


def _query_bool(request: web.Request, name: str) -> bool:
    """Consul's reading of a flag parameter: present and empty means true."""
    if name not in request.query:
        return False
    raw = request.query[name].lower()
    if raw in {"", "1", "true"}:
        return True
    if raw in {"0", "false"}:
        return False
    raise _ApiError(400, f"Invalid value for ?{name}")
