"""Liveness, readiness and startup probes, and the draining flag.

Three endpoints, each answering JSON::

    GET /health/live     the process and its event loop are responsive
    GET /health/ready    every readiness check passes and the service is not draining
    GET /health/startup  startup finished and every startup check passes

A check is an async callable taking no arguments; it passes by returning (any value
that is not ``False``) and fails by raising or returning ``False``. Each runs with
its own timeout, all concurrently. A failing *critical* check makes the probe answer
503 ``fail``; a failing non-critical one answers 200 ``degraded``. The body lists
every check with its status, duration and error::

    {"status": "degraded", "checks": {"db": {"status": "pass", "critical": true,
     "duration_ms": 1.2, "error": null}, ...}}

Use it with a :class:`~chassis.Service` (``service.health``) or on a bare
application::

    health = Health()
    health.setup(app)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from aiohttp import web

from . import _compat
from .config import ChassisSettings, HealthSettings

__all__ = ["Check", "Health", "HealthReport", "LoopLagMonitor", "Probe"]

Probe = Literal["live", "ready", "startup"]
CheckFn = Callable[[], Awaitable[Any]]
F = TypeVar("F", bound=CheckFn)

_JSON_HEADERS = {"Cache-Control": "no-store"}


@dataclass(frozen=True, slots=True)
class Check:
    """A registered health check."""

    name: str
    fn: CheckFn
    critical: bool
    timeout_seconds: float | None
    probes: frozenset[Probe]


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The outcome of one probe: ``status`` is ``pass``, ``degraded`` or ``fail``."""

    status: Literal["pass", "degraded", "fail"]
    checks: dict[str, dict[str, Any]]

    @property
    def http_status(self) -> int:
        """200 for ``pass`` and ``degraded``, 503 for ``fail``."""
        return 503 if self.status == "fail" else 200

    def as_dict(self) -> dict[str, Any]:
        """The JSON body served by the probe."""
        return {"status": self.status, "checks": self.checks}


class LoopLagMonitor:
    """Measures how late the event loop wakes a sleeping task.

    ``lag_seconds`` is the last measured overshoot; ``stalled_seconds()`` grows when
    the monitor itself has not run for a while (a blocked loop).
    """

    def __init__(self, interval_seconds: float = 0.5) -> None:
        self.interval_seconds = interval_seconds
        self.lag_seconds = 0.0
        self.max_lag_seconds = 0.0
        self._last_tick = time.monotonic()
        self._listeners: list[Callable[[float], None]] = []

    def add_listener(self, fn: Callable[[float], None]) -> None:
        """Call ``fn(lag_seconds)`` after every measurement (e.g. to export a metric)."""
        self._listeners.append(fn)

    def stalled_seconds(self) -> float:
        """Time since the last measurement beyond the expected interval."""
        return max(0.0, time.monotonic() - self._last_tick - self.interval_seconds)

    def current_lag_seconds(self) -> float:
        """The larger of the last measured lag and the current stall."""
        return max(self.lag_seconds, self.stalled_seconds())

    async def run(self) -> None:
        """Measure forever; cancel to stop."""
        interval = self.interval_seconds
        self._last_tick = time.monotonic()
        while True:
            start = time.monotonic()
            await asyncio.sleep(interval)
            now = time.monotonic()
            self.lag_seconds = max(0.0, now - start - interval)
            self.max_lag_seconds = max(self.max_lag_seconds, self.lag_seconds)
            self._last_tick = now
            for fn in self._listeners:
                fn(self.lag_seconds)


class Health:
    """Health checks, the three probe endpoints, and the draining flag.

    Args:
        settings: probe and drain settings; when omitted, the service's settings
            (or the defaults) are used at startup.
        prefix: URL prefix of the probe endpoints.
    """

    def __init__(self, settings: HealthSettings | None = None, *, prefix: str = "/health") -> None:
        self._explicit_settings = settings
        self.settings = settings or HealthSettings()
        self.prefix = prefix.rstrip("/")
        self.checks: dict[str, Check] = {}
        self.started = False
        self.draining = False
        self.lag = LoopLagMonitor(self.settings.lag_probe_interval_seconds)
        self.last_results: dict[str, dict[str, Any]] = {}
        """Each check's latest result, with ``at`` (a ``time.time()`` timestamp)."""

    # -- registration -------------------------------------------------------------
    def add_check(
        self,
        name: str,
        fn: CheckFn,
        *,
        critical: bool = True,
        timeout_seconds: float | None = None,
        probes: Iterable[Probe] = ("ready",),
    ) -> None:
        """Register ``fn`` as check ``name`` on the given probes (readiness by default)."""
        if name in self.checks:
            raise ValueError(f"health check {name!r} is already registered")
        if not callable(fn):
            raise TypeError("a health check must be an async callable")
        chosen = frozenset(probes)
        unknown = chosen - {"live", "ready", "startup"}
        if unknown:
            raise ValueError(f"unknown probe(s) {sorted(unknown)}")
        self.checks[name] = Check(name, fn, critical, timeout_seconds, chosen)

    def check(
        self,
        name: str | None = None,
        *,
        critical: bool = True,
        timeout_seconds: float | None = None,
        probes: Iterable[Probe] = ("ready",),
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`add_check`; the name defaults to the function's."""

        def decorate(fn: F) -> F:
            self.add_check(
                name or str(getattr(fn, "__name__", "check")),
                fn,
                critical=critical,
                timeout_seconds=timeout_seconds,
                probes=probes,
            )
            return fn

        return decorate

    # -- evaluation ---------------------------------------------------------------
    async def _run_one(self, check: Check) -> dict[str, Any]:
        timeout = check.timeout_seconds or self.settings.check_timeout_seconds
        start = time.perf_counter()
        error: str | None = None
        try:
            async with _compat.timeout(timeout):
                result = await check.fn()
            if result is False:
                error = "check returned False"
        except TimeoutError:
            error = f"timed out after {timeout:g}s"
        except Exception as exc:  # a failing check must not fail the probe endpoint
            error = f"{type(exc).__name__}: {exc}"
        result = {
            "status": "pass" if error is None else "fail",
            "critical": check.critical,
            "duration_ms": round((time.perf_counter() - start) * 1000, 3),
            "error": error,
        }
        self.last_results[check.name] = {**result, "at": time.time()}
        return result

    async def evaluate(self, probe: Probe) -> HealthReport:
        """Run every check registered for ``probe`` and combine their results."""
        checks = [c for c in self.checks.values() if probe in c.probes]
        results: dict[str, dict[str, Any]] = {}
        if checks:
            outcomes = await asyncio.gather(*(self._run_one(c) for c in checks))
            results = {c.name: r for c, r in zip(checks, outcomes, strict=True)}
        status: Literal["pass", "degraded", "fail"] = "pass"
        for r in results.values():
            if r["status"] == "fail":
                if r["critical"]:
                    status = "fail"
                    break
                status = "degraded"
        return HealthReport(status, results)

    def _builtin(self, probe: Probe) -> dict[str, Any] | None:
        """The chassis' own condition for ``probe``, as a check result, if it fails."""
        if probe == "live":
            lag = self.lag.current_lag_seconds()
            bound = self.settings.max_event_loop_lag_seconds
            ok = lag <= bound
            return {
                "status": "pass" if ok else "fail",
                "critical": True,
                "duration_ms": 0.0,
                "error": None if ok else f"event loop lag {lag:.3f}s exceeds {bound:g}s",
                "lag_seconds": round(lag, 6),
            }
        if probe == "startup" and not self.started:
            return {
                "status": "fail",
                "critical": True,
                "duration_ms": 0.0,
                "error": "startup has not finished",
            }
        if probe == "ready":
            if self.draining:
                return {"status": "fail", "critical": True, "duration_ms": 0.0, "error": "draining"}
            if not self.started:
                return {
                    "status": "fail",
                    "critical": True,
                    "duration_ms": 0.0,
                    "error": "startup has not finished",
                }
        return None

    async def report(self, probe: Probe) -> HealthReport:
        """The full answer of ``probe``: the chassis' own condition, then the checks."""
        builtin = self._builtin(probe)
        if builtin is not None and builtin["status"] == "fail":
            # Failing already: skip the (possibly slow) checks, answer at once.
            return HealthReport("fail", {f"chassis:{probe}": builtin})
        report = await self.evaluate(probe)
        if builtin is not None:
            report.checks[f"chassis:{probe}"] = builtin
        return report

    async def _handle(self, request: web.Request) -> web.Response:
        probe: Probe = request.match_info["probe"]  # type: ignore[assignment]
        report = await self.report(probe)
        return web.json_response(report.as_dict(), status=report.http_status, headers=_JSON_HEADERS)

    def snapshot(self) -> dict[str, Any]:
        """What the probes know now, without running a check: flags, the loop lag, and
        every check with its latest result (``None`` until it has run)."""
        lag = self.lag
        return {
            "started": self.started,
            "draining": self.draining,
            "event_loop": {
                "lag_seconds": round(lag.current_lag_seconds(), 6),
                "max_lag_seconds": round(lag.max_lag_seconds, 6),
                "interval_seconds": lag.interval_seconds,
                "max_allowed_seconds": self.settings.max_event_loop_lag_seconds,
            },
            "checks": {
                name: {
                    "critical": check.critical,
                    "probes": sorted(check.probes),
                    "last": self.last_results.get(name),
                }
                for name, check in self.checks.items()
            },
        }

    # -- wiring -------------------------------------------------------------------
    def configure(self, settings: ChassisSettings) -> None:
        """Adopt a service's health settings unless explicit ones were given."""
        if self._explicit_settings is None:
            self.settings = settings.health
            self.lag.interval_seconds = settings.health.lag_probe_interval_seconds

    def setup(self, app: web.Application) -> None:
        """Add the probe routes and one cleanup context (the lag monitor) to ``app``."""
        app.router.add_get(self.prefix + "/{probe:live|ready|startup}", self._handle)
        app.cleanup_ctx.append(self._lifespan)
        app.on_startup.append(self._mark_started)

    async def _mark_started(self, app: web.Application) -> None:
        # on_startup runs after every cleanup_ctx entry has been entered.
        self.started = True

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        self.draining = False
        task = asyncio.get_running_loop().create_task(self.lag.run(), name="chassis-loop-lag")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.started = False

    @staticmethod
    def is_probe_path(path: str) -> bool:
        """Whether ``path`` is one of the probe endpoints (kept out of INFO logs)."""
        return path.startswith("/health/")
