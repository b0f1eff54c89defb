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


def render(data: Mapping[str, Any], *, settings: bool = False) -> str:
    """The state as titled plain-text tables (settings only when asked)."""
    out: list[str] = []

    def section(title: str, body: str) -> None:
        out.append(f"{title}\n{body}\n")

    s = data.get("service", {})
    section(
        f"{_cell(s.get('name'))} {_cell(s.get('version'))}",
        table(
            ["instance", "environment", "uptime (s)", "pid", "chassis"],
            [
                [
                    s.get("instance_id"),
                    s.get("environment"),
                    s.get("uptime_seconds"),
                    s.get("pid"),
                    s.get("chassis"),
                ]
            ],
        ),
    )
    loop = data.get("event_loop") or {}
    http = data.get("http") or {}
    section(
        "Event loop and HTTP",
        table(
            ["loop lag (s)", "max lag (s)", "requests in flight"],
            [[loop.get("lag_seconds"), loop.get("max_lag_seconds"), http.get("in_flight")]],
        ),
    )
    health = data.get("health") or {}
    checks = health.get("checks") or {}
    rows = []
    for name, check in checks.items():
        last = check.get("last") or {}
        rows.append(
            [
                name,
                check.get("critical"),
                last.get("status", "not run yet"),
                last.get("duration_ms"),
                last.get("error"),
            ]
        )
    section(
        f"Readiness (started: {_cell(health.get('started'))}, "
        f"draining: {_cell(health.get('draining'))})",
        table(["check", "critical", "last", "ms", "error"], rows),
    )
    clients = data.get("clients") or []
    rows = []
    for client in clients:
        bulkhead = client.get("bulkhead", {})
        budget = client.get("retry_budget", {})
        instances = client.get("instances") or [{}]
        for position, inst in enumerate(instances):
            first = position == 0
            circuit = inst.get("circuit")
            rows.append(
                [
                    client.get("name") if first else "",
                    inst.get("id"),
                    inst.get("url"),
                    _STATE_MARKS.get(circuit, circuit) if circuit else None,
                    inst.get("failures"),
                    (
                        f"{bulkhead.get('active')}/{bulkhead.get('max_concurrency')}"
                        f" (+{bulkhead.get('waiting')} waiting)"
                        if first
                        else ""
                    ),
                    client.get("in_flight") if first else "",
                    (
                        f"{_cell(budget.get('available'))}/{_cell(budget.get('allowance'))}"
                        if first
                        else ""
                    ),
                ]
            )
    section(
        "Upstream clients",
        table(
            [
                "client",
                "instance",
                "url",
                "circuit",
                "fails",
                "bulkhead",
                "in flight",
                "retry budget",
            ],
            rows,
        )
        if rows
        else "(none yet)",
    )
    rl = data.get("ratelimit")
    if rl:
        section(
            "Rate limiting and shedding",
            table(
                ["enabled", "admitted in flight", "shedding now", "decisions"],
                [[rl.get("enabled"), rl.get("in_flight"), rl.get("shedding"), rl.get("decisions")]],
            ),
        )
    disc = data.get("discovery")
    if disc:
        reg = disc.get("registration") or {}
        cache = (disc.get("cache") or {}).get("services") or {}
        rows = [
            [name, w.get("instances"), w.get("cache_age_seconds"), w.get("watch")]
            for name, w in cache.items()
        ]
        registration = " ".join(str(reg[k]) for k in ("id", "state") if reg.get(k)) or "none"
        section(
            f"Discovery ({_cell(disc.get('backend'))}; registration: {_cell(registration)})",
            table(["service", "instances", "cache age (s)", "watch"], rows),
        )
    events = data.get("events")
    if events:
        section(
            f"Events ({_cell(events.get('backend'))})",
            table(
                ["connected", "consuming", "handlers", "outbox", "queued", "dead letters"],
                [
                    [
                        events.get("connected"),
                        events.get("consuming"),
                        events.get("handlers_in_flight"),
                        events.get("outbox_backlog"),
                        events.get("queued"),
                        events.get("dead_letters"),
                    ]
                ],
            ),
        )
    if settings:
        section(
            "Settings (secrets redacted)",
            table(["setting", "value"], _flatten(data.get("settings") or {}, "", [])),
        )
    return "\n".join(out)


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
