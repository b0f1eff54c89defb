"""``chassis status URL``: a service's ``/_chassis`` state as plain-text tables.

Fetching is synchronous (``urllib``): the command runs no event loop.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TextIO

__all__ = ["StatusError", "Unauthorized", "fetch", "render", "watch"]

_STATE_MARKS = {"closed": "ok", "half_open": "HALF-OPEN", "open": "OPEN"}
# Terminal control characters (escape sequences included) in a value are shown as "?".
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]").sub


class StatusError(Exception):
    """The service could not be reached or did not answer the state."""


class Unauthorized(StatusError):
    """The service refused the token (401)."""


def fetch(url: str, *, token: str | None, timeout_seconds: float = 10.0) -> dict[str, Any]:
    """GET the JSON state at ``url`` (a base URL or the endpoint itself).

    Raises:
        Unauthorized: 401 (no token, or a wrong one).
        StatusError: unreachable, another status, or not JSON.
    """
    target = endpoint_of(url)
    headers = {"Accept": "application/json", "User-Agent": "chassis-status"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(target, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise Unauthorized(
                f"{target}: 401 Unauthorized (give --token or CHASSIS_STATUS_TOKEN)"
            ) from None
        raise StatusError(f"{target}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusError(f"{target}: unreachable ({reason})") from None
    try:
        data = json.loads(body)
    except ValueError:
        raise StatusError(f"{target}: the answer is not JSON") from None
    if not isinstance(data, dict) or "service" not in data:
        raise StatusError(f"{target}: the answer is not a chassis state")
    return data


def endpoint_of(url: str) -> str:
    """``http://host:port`` -> ``http://host:port/_chassis``; a path given is kept."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(f"not an http:// or https:// URL: {url!r}")
    path = parts.path if parts.path not in {"", "/"} else "/_chassis"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value == value else "nan"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value) or "-"
    return _CONTROL("?", " ".join(str(value).split()))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _flatten(value: Any, prefix: str, rows: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), rows)
    else:
        rows.append((prefix, value))
    return rows


def _when(value: Any) -> Any:
    """A wall-clock timestamp (seconds) as UTC ISO 8601, like the status page."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        try:
            return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        except (OverflowError, OSError, ValueError):
            pass
    return value


def _of(value: Any, limit: Any) -> str:
    return f"{_cell(value)}/{_cell(limit)}"


def _records(items: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A table of ``items``, one row each, from ``(header, key)`` columns."""
    return table([h for h, _ in columns], [[item.get(k) for _, k in columns] for item in items])


def render(data: Mapping[str, Any], *, settings: bool = False) -> str:
    """The state as titled plain-text tables (settings only when asked).

    Every field of the ``/_chassis`` answer is shown (the status page shows a part
    of them), so a terminal sees all a browser does.
    """
    out: list[str] = []

    def section(title: str, body: str) -> None:
        out.append(f"{title}\n{body}\n")

    s = data.get("service") or {}
    section(
        f"{_cell(s.get('name'))} {_cell(s.get('version'))}",
        _records(
            [{**s, "started_at": _when(s.get("started_at"))}],
            [
                ("instance", "instance_id"),
                ("environment", "environment"),
                ("started at", "started_at"),
                ("uptime (s)", "uptime_seconds"),
                ("pid", "pid"),
                ("python", "python"),
                ("chassis", "chassis"),
            ],
        ),
    )
    loop = data.get("event_loop") or {}
    http = data.get("http") or {}
    section(
        "Event loop and HTTP",
        _records(
            [{**loop, "in_flight": http.get("in_flight")}],
            [
                ("lag (s)", "lag_seconds"),
                ("max lag (s)", "max_lag_seconds"),
                ("allowed (s)", "max_allowed_seconds"),
                ("probed every (s)", "interval_seconds"),
                ("requests in flight", "in_flight"),
            ],
        ),
    )
    health = data.get("health") or {}
    rows: list[list[Any]] = []
    for name, check in (health.get("checks") or {}).items():
        last = check.get("last") or {}
        rows.append(
            [
                name,
                check.get("critical"),
                check.get("probes"),
                last.get("status", "not run yet"),
                last.get("duration_ms"),
                last.get("error"),
                _when(last.get("at")),
            ]
        )
    section(
        f"Readiness checks (started: {_cell(health.get('started'))}, "
        f"draining: {_cell(health.get('draining'))})",
        table(
            ["check", "critical", "probes", "last status", "duration (ms)", "error", "checked at"],
            rows,
        ),
    )
    _clients(data.get("clients") or [], section)
    rl = data.get("ratelimit")
    if rl:
        _ratelimit(rl, section)
    disc = data.get("discovery")
    if disc:
        _discovery(disc, section)
    events = data.get("events")
    if events:
        _events(events, section)
    if settings:
        section(
            "Settings (secrets redacted)",
            table(["setting", "value"], _flatten(data.get("settings") or {}, "", [])),
        )
    return "\n".join(out)


_Section = Callable[[str, str], None]


def _clients(clients: Sequence[Mapping[str, Any]], section: _Section) -> None:
    if not clients:
        section("Upstream clients", "(none yet)")
        return
    summary, budgets, instances = [], [], []
    for client in clients:
        name = client.get("name")
        b = client.get("bulkhead") or {}
        summary.append(
            [
                name,
                client.get("state"),
                client.get("in_flight"),
                _of(b.get("active"), b.get("max_concurrency")),
                _of(b.get("waiting"), b.get("max_queue")),
                b.get("rejected"),
                client.get("retries"),
            ]
        )
        r = client.get("retry_budget") or {}
        budgets.append(
            [
                name,
                f"{_cell(r.get('available'))} of {_cell(r.get('allowance'))}",
                r.get("exhausted"),
                r.get("retries"),
                r.get("requests"),
                r.get("window_seconds"),
                r.get("ratio"),
            ]
        )
        for i in client.get("instances") or []:
            circuit = i.get("circuit")
            instances.append(
                [
                    name,
                    i.get("id"),
                    i.get("url"),
                    _STATE_MARKS.get(circuit, circuit) if isinstance(circuit, str) else circuit,
                    i.get("failures"),
                    i.get("retry_after_seconds"),
                    i.get("outstanding"),
                ]
            )
    section(
        "Upstream clients",
        table(
            ["client", "state", "in flight", "bulkhead", "queue", "rejected", "retries"], summary
        ),
    )
    section(
        "Retry budgets",
        table(
            ["client", "available", "exhausted", "retries", "requests", "window (s)", "ratio"],
            budgets,
        ),
    )
    section(
        "Upstream instances",
        table(
            ["client", "instance", "url", "circuit", "failures", "retry after (s)", "outstanding"],
            instances,
        )
        if instances
        else "(none seen yet)",
    )


def _ratelimit(rl: Mapping[str, Any], section: _Section) -> None:
    section(
        "Rate limiting and shedding",
        _records(
            [rl],
            [
                ("enabled", "enabled"),
                ("active", "active"),
                ("admitted in flight", "in_flight"),
                ("shedding now", "shedding"),
                ("decisions", "decisions"),
            ],
        ),
    )
    policies = rl.get("policies") or []
    if policies:
        section(
            "Rate-limit policies",
            _records(
                policies,
                [
                    ("policy", "name"),
                    ("rate/s", "rate_per_second"),
                    ("burst", "burst"),
                    ("keys", "keys"),
                    ("in flight", "in_flight"),
                    ("max", "max_in_flight"),
                    ("waiting", "waiting"),
                    ("priority", "priority"),
                ],
            ),
        )
    shared = rl.get("shared") or []
    if shared:
        section(
            "Shared limits (Redis)",
            table(
                ["limit", "using redis", "fallbacks"],
                [[n, x.get("using_redis"), x.get("fallbacks")] for n, x in enumerate(shared, 1)],
            ),
        )


def _discovery(disc: Mapping[str, Any], section: _Section) -> None:
    reg = disc.get("registration")
    section(
        f"Discovery ({_cell(disc.get('backend'))})",
        table(
            ["self-register", "registration", "address", "state"],
            [
                [
                    disc.get("self_register"),
                    reg.get("id") if reg else "not registered",
                    f"{_cell(reg.get('address'))}:{_cell(reg.get('port'))}" if reg else None,
                    reg.get("state") if reg else None,
                ]
            ],
        ),
    )
    cache = disc.get("cache")
    if cache:
        where = " at ".join(_cell(cache.get(k)) for k in ("backend", "addr") if k in cache)
        section(
            f"Discovery cache ({where})",
            table(
                ["service", "instances", "cache age (s)", "watch", "errors"],
                [
                    [
                        name,
                        w.get("instances"),
                        w.get("cache_age_seconds"),
                        w.get("watch"),
                        w.get("consecutive_errors"),
                    ]
                    for name, w in (cache.get("services") or {}).items()
                ],
            ),
        )


def _events(events: Mapping[str, Any], section: _Section) -> None:
    section(
        f"Events ({_cell(events.get('backend'))})",
        _records(
            [events],
            [
                ("running", "running"),
                ("connected", "connected"),
                ("consuming", "consuming"),
                ("handlers in flight", "handlers_in_flight"),
                ("outbox backlog", "outbox_backlog"),
                ("queued", "queued"),
                ("dead letters", "dead_letters"),
            ],
        ),
    )
    subscriptions = events.get("subscriptions") or []
    if subscriptions:
        section(
            "Event subscriptions",
            table(
                ["source", "type", "handler", "idempotent", "max attempts"],
                [
                    [x.get(k) for k in ("source", "type", "handler", "idempotent", "max_attempts")]
                    for x in subscriptions
                ],
            ),
        )


def watch(
    poll: Callable[[], str],
    write: TextIO,
    *,
    interval_seconds: float,
    count: int | None,
    clear: bool,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Print ``poll()`` every ``interval_seconds``, ``count`` times (forever if None)."""
    done = 0
    while count is None or done < count:
        if done:
            sleep(interval_seconds)
        text = poll()
        if clear:
            write.write("\x1b[H\x1b[2J")
        write.write(text + "\n")
        write.flush()
        done += 1
