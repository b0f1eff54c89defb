# ruff: noqa: E501  (the embedded page's script keeps its natural line lengths)
"""Live introspection: the state of a running service at ``GET /_chassis``.

One JSON document shows what the service is doing now: name, version, instance id,
uptime and environment; its settings with every secret redacted; the readiness
checks with their latest results; every upstream client with its instances, the
circuit of each, the retry budget's level and the bulkhead's occupancy; requests
in flight; rate limiting and shedding; the discovery cache's age and watches; event
consumers with their backlog and dead letters; the event loop's lag. A person
reads the same at ``GET /_chassis/ui`` (a self-contained page that refreshes
itself), a terminal with ``chassis status URL``.

Who may see it, from ``CHASSIS_INTROSPECTION__*`` and ``CHASSIS_ENVIRONMENT``:

* with a ``token``, every request needs ``Authorization: Bearer <token>``; anything
  else is answered 401 (``application/problem+json``) with no data;
* without one it is served only in the ``development`` environment; elsewhere the
  paths answer 404, as unknown paths do. ``enabled=false`` turns it off everywhere,
  and ``enabled=true`` outside development without a token is a configuration error.

The page itself holds no data and is served to anyone allowed to see that the
endpoint exists; it asks for the token, keeps it in the tab's ``sessionStorage`` and
sends it as a header (never in a URL).

With a :class:`~chassis.Service` it is ``service.introspection``, built in. A public
edge such as an API gateway turns it off for good whatever the settings say::

    service.introspection.enabled = False
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from pydantic import BaseModel, SecretStr

from ._version import __version__
from .config import ChassisSettings, IntrospectionSettings, env_var_name
from .exceptions import ConfigError
from .http import problem_response

if TYPE_CHECKING:
    from .client import Clients
    from .discovery.capability import Discovery
    from .events import Events
    from .health import Health
    from .metrics import Metrics
    from .ratelimit import RateLimiter
    from .tracing import Tracing

__all__ = ["INTROSPECTION_KEY", "REDACTED", "Introspection", "redact_settings"]

log = logging.getLogger("chassis.introspection")

REDACTED = "**********"
"""What a redacted value reads as (pydantic's rendering of a ``SecretStr``)."""

_SENSITIVE_NAME = re.compile(
    r"secret|passw|pwd|token|credential|api_?key|private_?key|cookie|session_?key|authoriz"
    r"|(?:^|_)auth(?:_|$)",
    re.I,
).search
_NO_STORE = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Access = Literal["off", "open", "token"]


def redact_settings(settings: BaseModel) -> dict[str, Any]:
    """``settings`` as JSON-ready data with every secret replaced by :data:`REDACTED`.

    Redacted: every ``SecretStr``, every value whose field or key is named like a
    secret (``secret``, ``password``, ``token``, ``api_key``, ...), the user
    information of URLs (``amqp://user:password@host`` reads ``amqp://host``) and
    secret-named parameters inside text (``?token=...``, ``password=...``).
    """
    return dict(_redact(settings, sensitive=False))


def _redact(value: Any, *, sensitive: bool) -> Any:
    if isinstance(value, BaseModel):
        return {
            name: _redact(getattr(value, name), sensitive=sensitive or bool(_SENSITIVE_NAME(name)))
            for name in type(value).model_fields
        }
    if isinstance(value, Mapping):
        return {
            str(k): _redact(v, sensitive=sensitive or bool(_SENSITIVE_NAME(str(k))))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact(v, sensitive=sensitive) for v in value]
    if value is None:
        return None
    if isinstance(value, SecretStr) or sensitive:
        return REDACTED
    if isinstance(value, bool | int | float):
        return value
    return scrub(str(value))


# ``scheme://user:password@`` (the authority's last ``@``), anywhere in a text, and a
# scheme-less ``user:password@host``.
_USERINFO = re.compile(
    r"(?<![A-Za-z0-9+.-])(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s@]*(?:@[^/?#\s@]*)*@"
)
_BARE_USERINFO = re.compile(r"(?<![\w.~%+:/-])[\w.~%+-]+:[^\s/@]+@(?=[\w\[])")
# ``name=value`` with a secret-like name: query strings, DSNs, header lists.
_SECRET_PARAM = re.compile(
    r"(?<![\w.-])(?P<name>[\w.-]*(?:secret|passw|pwd|token|credential|api_?key|private_?key|"
    r"signature|authorization)[\w.-]*)=(?P<value>(?:(?:Bearer|Basic|Token) )?[^&;,\s]+)",
    re.I,
)


def scrub(text: str) -> str:
    """``text`` without URL credentials or secret-named ``name=value`` parameters."""
    if "@" in text:
        text = _USERINFO.sub(r"\g<scheme>", text)
        text = _BARE_USERINFO.sub("", text)
    if "=" in text:
        text = _SECRET_PARAM.sub(lambda m: f"{m['name']}={REDACTED}", text)
    return text


def _scrub_all(value: Any) -> Any:
    """Every text in ``value`` (JSON-ready data) passed through :func:`scrub`."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_all(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_all(v) for v in value]
    return value


class Introspection:
    """The ``/_chassis`` endpoint and its status page.

    Args:
        service_name, version: shown as they are.
        health, metrics, ratelimit, tracing, discovery, clients, events: the
            capabilities whose state is shown; any may be omitted.
        enabled: ``False`` never serves the endpoint, whatever the settings; ``None``
            (the default) follows them.
        settings: introspection settings; when omitted, the service's are used at
            startup.
    """

    def __init__(
        self,
        *,
        service_name: str = "",
        version: str = "0.0.0",
        health: Health | None = None,
        metrics: Metrics | None = None,
        ratelimit: RateLimiter | None = None,
        tracing: Tracing | None = None,
        discovery: Discovery | None = None,
        clients: Clients | None = None,
        events: Events | None = None,
        enabled: bool | None = None,
        settings: IntrospectionSettings | None = None,
    ) -> None:
        self.service_name = service_name
        self.version = version
        self.health = health
        self.metrics = metrics
        self.ratelimit = ratelimit
        self.tracing = tracing
        self.discovery = discovery
        self.clients = clients
        self.events = events
        self.enabled = enabled
        self._explicit_settings = settings
        self.settings = settings or IntrospectionSettings()
        self.environment = "development"
        self._service_settings: BaseModel | None = None
        self._instance_id = uuid.uuid4().hex
        self._started_wall: float | None = None
        self._started: float | None = None

    def __repr__(self) -> str:
        return f"<Introspection {self.settings.prefix} {self.access}>"

    # -- who may see it -----------------------------------------------------------------
    @property
    def access(self) -> Access:
        """``off`` (404), ``open`` (development, no token) or ``token`` (bearer required)."""
        enabled = self.settings.enabled if self.enabled is None else self.enabled
        if self.enabled is False or enabled is False:
            return "off"
        if self.settings.token is not None:
            return "token"
        return "open" if self.environment == "development" else "off"

    def _refusal(self, request: web.Request) -> web.StreamResponse | None:
        """None when ``request`` may see the state; else the answer it gets."""
        access = self.access
        if access == "off":
            raise web.HTTPNotFound()
        if access == "open":
            return None
        token = self.settings.token
        assert token is not None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        expected = token.get_secret_value().encode()
        if (
            expected.strip()  # an empty token opens nothing
            and scheme.lower() == "bearer"
            and hmac.compare_digest(given.strip().encode(), expected)
        ):
            return None
        return problem_response(
            401,
            detail="an 'Authorization: Bearer <token>' header with the introspection token "
            "is required",
            instance=request.path,
            headers={"WWW-Authenticate": 'Bearer realm="chassis"', **_NO_STORE},
        )

    # -- the data ---------------------------------------------------------------------
    @property
    def instance_id(self) -> str:
        """The registered instance id, else the tracing resource's, else one made here."""
        registration = self.discovery.registration if self.discovery is not None else None
        if registration is not None:
            return registration.id
        traced = getattr(self.tracing, "instance_id", None)
        return str(traced) if traced else self._instance_id

    def _in_flight(self) -> int | None:
        server = getattr(self.metrics, "_server", None)
        active = getattr(server, "active", None)
        return sum(active.values()) if isinstance(active, dict) else None

    async def snapshot(self) -> dict[str, Any]:
        """The whole state as JSON-ready data (what ``GET /_chassis`` answers)."""
        now = time.monotonic()
        uptime = None if self._started is None else round(now - self._started, 3)
        health = self.health.snapshot() if self.health is not None else None
        data: dict[str, Any] = {
            "service": {
                "name": self.service_name,
                "version": self.version,
                "instance_id": self.instance_id,
                "environment": self.environment,
                "started_at": self._started_wall,
                "uptime_seconds": uptime,
                "pid": os.getpid(),
                "python": sys.version.split()[0],
                "chassis": __version__,
            },
            "health": health,
            "event_loop": health.pop("event_loop") if health is not None else None,
            "http": {"in_flight": self._in_flight()},
            "ratelimit": self.ratelimit.snapshot() if self.ratelimit is not None else None,
            "clients": self.clients.snapshot() if self.clients is not None else [],
            "discovery": self.discovery.snapshot() if self.discovery is not None else None,
            "events": await self.events.snapshot() if self.events is not None else None,
        }
        # Check errors and the like are free text: no credentials in them either.
        data = _scrub_all(data)
        data["settings"] = (
            redact_settings(self._service_settings)
            if self._service_settings is not None
            else {"introspection": redact_settings(self.settings)}
        )
        return data

    # -- handlers ---------------------------------------------------------------------
    async def _serve_json(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["prefix"] != self.settings.prefix[1:]:
            raise web.HTTPNotFound()
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        body = json.dumps(await self.snapshot(), default=str, ensure_ascii=False)
        return web.Response(text=body, content_type="application/json", headers=_NO_STORE)

    async def _serve_page(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["prefix"] != self.settings.prefix[1:]:
            raise web.HTTPNotFound()
        if self.access == "off":
            raise web.HTTPNotFound()
        # The page holds no data: it fetches the JSON itself, with the token.
        page = _PAGE.replace("__SOURCE__", self.settings.prefix).replace(
            "__ASKS__", "true" if self.access == "token" else "false"
        )
        return web.Response(
            text=page,
            content_type="text/html",
            headers={**_NO_STORE, "Content-Security-Policy": _CSP, "X-Frame-Options": "DENY"},
        )

    # -- wiring -----------------------------------------------------------------------
    def configure(self, settings: ChassisSettings) -> None:
        """Adopt the service's settings and environment.

        Raises:
            ConfigError: ``enabled=true`` outside development without a token.
        """
        if self._explicit_settings is None:
            self.settings = settings.introspection
        self.environment = settings.environment
        self._service_settings = settings
        token = self.settings.token
        if token is not None and not token.get_secret_value().strip():
            raise ConfigError(
                [(env_var_name(("introspection", "token")), "must not be empty when set")]
            )
        if (
            self.settings.enabled
            and self.enabled is not False
            and self.settings.token is None
            and self.environment != "development"
        ):
            raise ConfigError(
                [
                    (
                        env_var_name(("introspection", "token")),
                        f"required to enable introspection in the {self.environment!r} "
                        "environment (only development serves it without a token)",
                    )
                ]
            )
        if self.ratelimit is not None and self.settings.prefix not in self.ratelimit.exempt_paths:
            # An operator must see a saturated service: never shed the status.
            self.ratelimit.exempt_paths = (*self.ratelimit.exempt_paths, self.settings.prefix)

    def setup(self, app: web.Application) -> None:
        """Add the two routes and one cleanup context (the start time) to ``app``.

        The prefix is a setting read at startup, after the router is frozen, so the
        routes match any one-segment path starting with ``/_`` and answer 404 for
        any but the configured one (more specific routes of the application win).
        """
        app.router.add_get(r"/{prefix:_[A-Za-z0-9_.~-]{1,62}}", self._serve_json)
        app.router.add_get(r"/{prefix:_[A-Za-z0-9_.~-]{1,62}}/ui", self._serve_page)
        app.cleanup_ctx.append(self._lifespan)
        app[INTROSPECTION_KEY] = self

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        self._started = time.monotonic()
        self._started_wall = round(time.time(), 3)
        if self.access != "off":
            log.info(
                "introspection served at %s (%s)",
                self.settings.prefix,
                "bearer token required" if self.access == "token" else "development, no token",
                extra={"event": "introspection_enabled"},
            )
        try:
            yield
        finally:
            self._started = None


INTROSPECTION_KEY = web.AppKey("chassis.introspection", Introspection)
"""The application's :class:`Introspection`: ``request.app[INTROSPECTION_KEY]``."""


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d1d1f;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
h3{font-size:1em;margin:1em 0 .3em}
table{border-collapse:collapse;margin:.2em 0 .6em;background:#fff}
th,td{border:1px solid #d0d0d5;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eef0f3;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.state{font-weight:600;border-radius:.3em;padding:.05em .5em;display:inline-block}
.state-closed,.state-pass,.state-watching,.state-static,.state-registered{background:#1f8f3a;color:#fff}
.state-half_open,.state-degraded,.state-retrying{background:#d99a00;color:#1d1d1f}
.state-open,.state-fail,.state-failing,.state-stopped{background:#c62828;color:#fff}
#status{color:#555}#auth{margin:1em 0}#auth[hidden]{display:none}
.muted{color:#777}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var KEY = "chassis-introspection-token";
  var body = document.body;
  var source = body.getAttribute("data-source");
  var asks = body.getAttribute("data-asks") === "true";
  var out = document.getElementById("out");
  var status = document.getElementById("status");
  var form = document.getElementById("auth");

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function show(v) {
    if (v === null || v === undefined) return "-";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }
  function badge(state) {
    return el("span", state, "state state-" + String(state).replace(/[^a-z_]/g, ""));
  }
  function table(headers, rows) {
    var t = el("table"), tr = el("tr");
    headers.forEach(function (h) { tr.appendChild(el("th", h)); });
    t.appendChild(tr);
    rows.forEach(function (row) {
      var r = el("tr");
      row.forEach(function (cell) {
        var td = el("td");
        if (cell instanceof Node) td.appendChild(cell);
        else { td.textContent = show(cell); if (typeof cell === "number") td.className = "num"; }
        r.appendChild(td);
      });
      t.appendChild(r);
    });
    return t;
  }
  function pairs(obj) {
    return table(["", ""], Object.keys(obj || {}).map(function (k) { return [k, obj[k]]; }));
  }
  function flatten(obj, prefix, rows) {
    Object.keys(obj || {}).forEach(function (k) {
      var v = obj[k], name = prefix ? prefix + "." + k : k;
      if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) flatten(v, name, rows);
      else rows.push([name, v]);
    });
    return rows;
  }
  function section(title, node) { out.appendChild(el("h2", title)); out.appendChild(node); }

  function render(d) {
    out.textContent = "";
    var s = d.service;
    document.getElementById("title").textContent = s.name + " " + s.version;
    section("Service", pairs(s));
    var loop = d.event_loop || {};
    section("Event loop and HTTP", table(
      ["lag (s)", "max lag (s)", "allowed (s)", "requests in flight"],
      [[loop.lag_seconds, loop.max_lag_seconds, loop.max_allowed_seconds, d.http.in_flight]]));
    var h = d.health || {checks: {}};
    section("Readiness checks", table(
      ["check", "critical", "last status", "duration (ms)", "error", "checked at"],
      Object.keys(h.checks).map(function (name) {
        var c = h.checks[name], last = c.last;
        return [name, c.critical, last ? badge(last.status) : "not run yet",
          last ? last.duration_ms : null, last ? last.error : null,
          last ? new Date(last.at * 1000).toISOString() : null];
      })));
    out.appendChild(el("p", "started: " + h.started + ", draining: " + h.draining, "muted"));
    out.appendChild(el("h2", "Upstream clients"));
    if (!d.clients.length) out.appendChild(el("p", "no client yet", "muted"));
    d.clients.forEach(function (c) {
      out.appendChild(el("h3", c.name));
      var b = c.bulkhead, r = c.retry_budget;
      out.appendChild(table(
        ["in flight", "bulkhead", "queue", "rejected", "retries", "retry budget available", "budget exhausted"],
        [[c.in_flight, b.active + " / " + b.max_concurrency, b.waiting + " / " + b.max_queue,
          b.rejected, c.retries, r.available + " of " + r.allowance, r.exhausted]]));
      out.appendChild(table(
        ["instance", "url", "circuit", "failures", "retry after (s)", "outstanding"],
        c.instances.map(function (i) {
          return [i.id, i.url, badge(i.circuit), i.failures, i.retry_after_seconds, i.outstanding];
        })));
    });
    var rl = d.ratelimit;
    if (rl) {
      section("Rate limiting and shedding", table(
        ["enabled", "active", "admitted in flight", "shedding now", "decisions"],
        [[rl.enabled, rl.active, rl.in_flight, rl.shedding, rl.decisions]]));
      if (rl.policies.length) out.appendChild(table(
        ["policy", "rate/s", "burst", "keys", "in flight", "max", "waiting", "priority"],
        rl.policies.map(function (p) {
          return [p.name, p.rate_per_second, p.burst, p.keys, p.in_flight, p.max_in_flight, p.waiting, p.priority];
        })));
    }
    var ds = d.discovery;
    if (ds) {
      var reg = ds.registration;
      section("Discovery (" + ds.backend + ")", table(
        ["registration", "state"], [[reg ? reg.id : "not registered", reg ? badge(reg.state) : null]]));
      var cache = (ds.cache && ds.cache.services) || {};
      out.appendChild(table(["service", "instances", "cache age (s)", "watch", "errors"],
        Object.keys(cache).map(function (n) {
          var w = cache[n];
          return [n, w.instances, w.cache_age_seconds, badge(w.watch), w.consecutive_errors];
        })));
    }
    var ev = d.events;
    if (ev) {
      section("Events (" + ev.backend + ")", table(
        ["connected", "consuming", "handlers in flight", "outbox backlog", "queued", "dead letters"],
        [[ev.connected, ev.consuming, ev.handlers_in_flight, ev.outbox_backlog, ev.queued, ev.dead_letters]]));
      if (ev.subscriptions.length) out.appendChild(table(
        ["source", "type", "handler", "idempotent", "max attempts"],
        ev.subscriptions.map(function (x) { return [x.source, x.type, x.handler, x.idempotent, x.max_attempts]; })));
    }
    section("Settings (secrets redacted)", table(["setting", "value"], flatten(d.settings, "", [])));
  }

  function token() { try { return sessionStorage.getItem(KEY) || ""; } catch (e) { return ""; } }

  function refresh() {
    var headers = {"Accept": "application/json"};
    var t = token();
    if (asks && !t) { form.hidden = false; status.textContent = "enter the introspection token"; return; }
    if (t) headers["Authorization"] = "Bearer " + t;
    fetch(source, {headers: headers, cache: "no-store", credentials: "omit"}).then(function (r) {
      if (r.status === 401) { form.hidden = false; status.textContent = "unauthorized: enter the token"; return null; }
      if (!r.ok) { status.textContent = "error: HTTP " + r.status; return null; }
      return r.json();
    }).then(function (d) {
      if (!d) return;
      form.hidden = true;
      render(d);
      status.textContent = "updated " + new Date().toLocaleTimeString();
    }).catch(function (e) { status.textContent = "unreachable: " + e; });
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var input = document.getElementById("token");
    try { sessionStorage.setItem(KEY, input.value); } catch (err) { /* private mode */ }
    input.value = "";
    refresh();
  });
  document.getElementById("forget").addEventListener("click", function () {
    try { sessionStorage.removeItem(KEY); } catch (err) { /* private mode */ }
    out.textContent = "";
    form.hidden = false;
  });
  form.hidden = !asks || !!token();
  refresh();
  setInterval(refresh, 2000);
})();
"""


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


_CSP = (
    "default-src 'none'; "
    f"script-src '{_sha256(_SCRIPT)}'; "
    f"style-src '{_sha256(_STYLE)}'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_PAGE = (
    "<!doctype html>\n"
    '<html lang="en"><head><meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width, initial-scale=1">'
    '<meta name="referrer" content="no-referrer">'
    "<title>chassis status</title>"
    f"<style>{_STYLE}</style></head>"
    '<body data-source="__SOURCE__" data-asks="__ASKS__">'
    '<h1 id="title">chassis status</h1><div id="status">loading...</div>'
    '<form id="auth" hidden><label>Introspection token '
    '<input id="token" type="password" autocomplete="off" required></label> '
    '<button type="submit">Show</button> <button id="forget" type="button">Forget token</button>'
    "</form>"
    '<main id="out"></main>'
    f"<script>{_SCRIPT}</script></body></html>\n"
)
