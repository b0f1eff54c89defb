"""Shared fixtures: a clean environment, JSON log capture, quick services."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chassis import ChassisSettings, Service
from chassis.config import LogSettings
from chassis.logging import configure_logging

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CHASSIS_* or OTEL_* variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("CHASSIS_", "OTEL_")):
            monkeypatch.delenv(name)


class LogCapture:
    """JSON lines written by the chassis handler during a test."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stream.getvalue().splitlines() if line]

    @property
    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    def find(self, **match: Any) -> list[dict[str, Any]]:
        return [r for r in self.records if all(r.get(k) == v for k, v in match.items())]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    """Route the root logger to an in-memory JSON stream (synchronous writes)."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    handler = configure_logging(
        LogSettings(level="DEBUG", background_writes=False), service="test", stream=stream
    )
    try:
        yield LogCapture(stream)
    finally:
        root.removeHandler(handler)
        handler.close()
        for h in saved_handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(saved_level)


def quick_settings(**overrides: Any) -> ChassisSettings:
    """Settings for in-process tests: no drain delay, fast lag probe."""
    health = {"drain_delay_seconds": 0, "lag_probe_interval_seconds": 0.05}
    health.update(overrides.pop("health", {}))
    return ChassisSettings(health=health, **overrides)


@pytest.fixture
def make_service() -> Callable[..., Service]:
    def make(name: str = "svc", **overrides: Any) -> Service:
        return Service(name, version="1.2.3", settings=quick_settings(**overrides))

    return make
