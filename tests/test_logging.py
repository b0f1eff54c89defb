"""JSON logs: fields, timestamps, exceptions, request ids, access log, injection safety."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient
from pythonjsonlogger.json import JsonEncoder

import chassis.http as chassis_http
from chassis import Service
from chassis.config import LogSettings
from chassis.logging import (
    ChassisJsonFormatter,
    ConsoleFormatter,
    LogContext,
    bind_log_context,
    configure_logging,
    log_direct,
)

from .conftest import LogCapture

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
FIELDS = {
    "timestamp", "level", "logger", "message", "service", "version", "environment", "host",
    "pid", "module", "function", "line", "request_id", "trace_id", "span_id",
}  # fmt: skip


def test_json_line_has_every_field(logs: LogCapture) -> None:
    logging.getLogger("app.orders").warning("sold %d shares", 3, extra={"order_id": "o-1"})
    (record,) = logs.records
    assert record.keys() >= FIELDS
    assert TIMESTAMP.fullmatch(record["timestamp"])
    assert record["level"] == "WARNING"
    assert record["logger"] == "app.orders"
    assert record["message"] == "sold 3 shares"
    assert record["service"] == "test"
    assert record["function"] == "test_json_line_has_every_field"
    assert record["module"] == "test_logging"
    assert record["order_id"] == "o-1"
    assert record["request_id"] == record["trace_id"] == record["span_id"] == ""


class _Unusual:
    def __str__(self) -> str:
        return "unusual"


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"event": "access", "status": 200, "duration_ms": 0.125, "client": "127.0.0.1"},
        {"text": 'quote " backslash \\ newline \n tab \t nul \x00 é ☕ \u2028'},
        {"yes": True, "no": False, "none": None, "big": 2**70, "neg": -3},
        {"nan": float("nan"), "inf": float("-inf"), "tiny": 1e-300, "whole": 2.0},
        {"nested": {"a": [1, "b", None]}, "tuple": (1, 2), "odd": _Unusual()},
        {"level": "forged", "trace_id": "forged", "pid": "forged"},
    ],
)
def test_direct_json_line_is_exactly_what_json_dumps_writes(extra: dict[str, Any]) -> None:
    formatter = ChassisJsonFormatter(service="svc", version="1.0", environment="test")
    logger = logging.getLogger("tests.direct")
    with bind_log_context(LogContext("orders", "2.0", "prod", "rid-1")):
        record = logger.makeRecord(
            logger.name, logging.INFO, __file__, 7, "%s é %d", ("x", 3), None, "fn", extra
        )
        direct = formatter.format(record)
        dumped = json.dumps(
            formatter.fields(record), ensure_ascii=False, default=JsonEncoder().default
        )
    assert direct == dumped
    json.loads(direct.replace("NaN", "null").replace("-Infinity", "null"))


def test_timestamp_is_utc_with_milliseconds() -> None:
    formatter = ChassisJsonFormatter(service="s")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.created = 1_700_000_000.123_9  # 2023-11-14T22:13:20.123Z
    assert json.loads(formatter.format(record))["timestamp"] == "2023-11-14T22:13:20.123Z"


def test_exception_is_a_structured_field(logs: LogCapture) -> None:
    try:
        raise KeyError("missing-thing")
    except KeyError:
        logging.getLogger("app").exception("lookup failed")
    (record,) = logs.records
    exc = record["exception"]
    assert exc["type"] == "KeyError"
    assert exc["message"] == "'missing-thing'"
    assert "Traceback (most recent call last)" in exc["stacktrace"]
    assert "exc_info" not in record


def test_bound_context_fills_service_and_request_id(logs: LogCapture) -> None:
    with bind_log_context(LogContext(service="orders", version="2.0", request_id="r-1")):
        logging.getLogger("app").info("inside")
    logging.getLogger("app").info("outside")
    inside, outside = logs.records
    assert (inside["service"], inside["version"], inside["request_id"]) == ("orders", "2.0", "r-1")
    assert (outside["service"], outside["request_id"]) == ("test", "")


def test_console_format_is_for_people() -> None:
    stream = io.StringIO()
    handler = configure_logging(
        LogSettings(format="console", background_writes=False), stream=stream
    )
    try:
        assert isinstance(handler.formatter, ConsoleFormatter)
        logging.getLogger("app").info("hello %s", "there", extra={"order_id": 7})
    finally:
        logging.getLogger().removeHandler(handler)
    line = stream.getvalue().strip()
    assert "INFO" in line and "app: hello there" in line and "order_id=7" in line
    assert not line.startswith("{")


def test_background_writer_writes_every_line_in_order() -> None:
    stream = io.StringIO()
    handler = configure_logging(LogSettings(background_writes=True), stream=stream)
    try:
        log = logging.getLogger("bulk")
        for i in range(2000):
            log.info("line %d", i)
        handler.flush()
        messages = [json.loads(line)["message"] for line in stream.getvalue().splitlines()]
        assert messages == [f"line {i}" for i in range(2000)]
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def test_configure_logging_replaces_its_own_handler_only() -> None:
    root = logging.getLogger()
    other = logging.NullHandler()
    root.addHandler(other)
    first = configure_logging(LogSettings(background_writes=False), stream=io.StringIO())
    second = configure_logging(LogSettings(background_writes=False), stream=io.StringIO())
    try:
        assert first not in root.handlers
        assert second in root.handlers and other in root.handlers
    finally:
        root.removeHandler(second)
        root.removeHandler(other)


def _service(make_service: Callable[..., Service], **overrides: Any) -> Service:
    service = make_service("shop", **overrides)

    @service.get("/items/{item_id}")
    async def item(request: web.Request) -> web.Response:
        logging.getLogger("app").info("looking up", extra={"item": request.match_info["item_id"]})
        return web.json_response({"id": request.match_info["item_id"]})

    @service.get("/boom")
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("kaput")

    return service


async def test_request_id_is_generated_echoed_and_bound(
    aiohttp_client: AiohttpClient, make_service: Callable[..., Service], logs: LogCapture
) -> None:
    client = await aiohttp_client(_service(make_service).app)
    resp = await client.get("/items/42")
    assert resp.status == 200
    rid = resp.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    (app_line,) = logs.find(logger="app")
    assert app_line["request_id"] == rid
    assert app_line["service"] == "shop" and app_line["version"] == "1.2.3"
    assert app_line["item"] == "42"


async def test_valid_inbound_request_id_is_kept_and_invalid_one_replaced(
    aiohttp_client: AiohttpClient, make_service: Callable[..., Service], logs: LogCapture
) -> None:
    client = await aiohttp_client(_service(make_service).app)
    resp = await client.get("/items/1", headers={"X-Request-ID": "gw-1234.abc:9_z"})
    assert resp.headers["X-Request-ID"] == "gw-1234.abc:9_z"
    for bad in ("x" * 129, "has space", "semi;colon", 'quote"d', "ümlaut", ""):
        resp = await client.get("/items/1", headers={"X-Request-ID": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-ID"]), bad


async def test_access_log_line_has_route_template_and_fields(
    aiohttp_client: AiohttpClient, make_service: Callable[..., Service], logs: LogCapture
) -> None:
    client = await aiohttp_client(_service(make_service).app)
    resp = await client.get("/items/abc?secret=1")
    body = await resp.read()
    (line,) = logs.find(logger="chassis.access")
    assert line["level"] == "INFO"
    assert line["message"] == "GET /items/{item_id} 200"
    assert line["route"] == "/items/{item_id}"
    assert line["method"] == "GET"
    assert line["status"] == 200
    assert line["bytes"] == len(body)
    assert line["client"] == "127.0.0.1"
    assert line["request_id"] == resp.headers["X-Request-ID"]
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert "abc" not in line["message"] and "secret" not in json.dumps(line)


async def test_server_errors_log_the_traceback_and_an_error_access_line(
    aiohttp_client: AiohttpClient, make_service: Callable[..., Service], logs: LogCapture
) -> None:
    client = await aiohttp_client(_service(make_service).app)
    resp = await client.get("/boom")
    assert resp.status == 500
    (error,) = logs.find(logger="chassis.errors")
    assert error["exception"]["type"] == "RuntimeError"
    assert "kaput" in error["exception"]["stacktrace"]
    (access,) = logs.find(logger="chassis.access")
    assert access["level"] == "ERROR" and access["status"] == 500
    assert error["request_id"] == access["request_id"] == resp.headers["X-Request-ID"]


async def test_access_log_can_be_sampled_or_turned_off(
    aiohttp_client: AiohttpClient, make_service: Callable[..., Service], logs: LogCapture
) -> None:
    sampled = _service(make_service, log={"access_log_sample_rate": 0.0})
    client = await aiohttp_client(sampled.app)
    for _ in range(5):
        await client.get("/items/1")
    await client.get("/nope")  # errors are always logged
    assert [r["status"] for r in logs.find(logger="chassis.access")] == [404]

    off = _service(make_service, log={"access_log": False})

    @off.get("/old")
    async def old(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/items/1")

    client2 = await aiohttp_client(off.app)
    before = len(logs.records)
    await client2.get("/items/1")
    await client2.get("/nope")
    await client2.get("/old", allow_redirects=False)
    assert not [r for r in logs.records[before:] if r["logger"] == "chassis.access"]


async def test_probes_are_not_logged_at_info(
    aiohttp_client: AiohttpClient, make_service: Callable[..., Service], logs: LogCapture
) -> None:
    service = _service(make_service)
    client = await aiohttp_client(service.app)
    for probe in ("live", "ready", "startup"):
        assert (await client.get(f"/health/{probe}")).status == 200
    service.health.draining = True  # a readiness 503 while draining is by design
    assert (await client.get("/health/ready")).status == 503
    lines = logs.find(logger="chassis.access")
    assert len(lines) == 4
    assert {line["level"] for line in lines} == {"DEBUG"}


async def test_hostile_headers_and_paths_cannot_forge_log_records(
    make_service: Callable[..., Service], logs: LogCapture
) -> None:
    service = make_service("echo")

    @service.route("*", r"/{tail:[\s\S]*}")
    async def echo(request: web.Request) -> web.Response:
        logging.getLogger("app").info(
            "path=%s agent=%s",
            request.path,
            request.headers.get("User-Agent", ""),
            extra={"header": request.headers.get("X-Note", "")},
        )
        return web.Response(text="ok")

    evil = [
        ('/a%0A{"level":"CRITICAL","message":"forged"}', 'x"\t}{"forged":1'),
        ("/b%0D%0Ainjected%22%7D", "\x1b[31mred\x1b[0m"),
        ("/c%00nul%7F", "caf\xe9 \\u0000"),
        ('/d/"quoted"/%E2%80%A8line-sep', "}\x0b{\x0c"),
    ]
    answered = 0
    async with service.running("127.0.0.1", 0) as running:
        for path, value in evil:
            reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
            raw = (
                f"GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: {value}\r\n"
                f"X-Note: {value}\r\nX-Request-ID: {value}\r\nConnection: close\r\n\r\n"
            )
            writer.write(raw.encode("latin-1"))
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 10)
            # The handler answers, or the HTTP parser refuses a forbidden byte.
            assert status_line.split()[1] in (b"200", b"400"), status_line
            answered += status_line.split()[1] == b"200"
            await asyncio.wait_for(reader.read(), 10)
            writer.close()
            await writer.wait_closed()
    deadline = time.monotonic() + 5
    while len(logs.find(logger="app")) < answered and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    records = []
    for line in logs.lines:
        record = json.loads(line)  # every line is exactly one JSON object
        assert isinstance(record, dict)
        records.append(record)
    app_lines = [r for r in records if r["logger"] == "app"]
    assert answered >= 2
    assert len(app_lines) == answered
    assert not [r for r in records if r.get("forged") or r["message"] == "forged"]
    assert {r["level"] for r in records} <= {"DEBUG", "INFO", "WARNING"}
    assert "\n" in app_lines[0]["message"]  # the newline survived, inside one record


def test_repeated_library_warnings_are_throttled(logs: LogCapture) -> None:
    sdk = logging.getLogger("opentelemetry.sdk._shared_internal")
    for _ in range(500):
        sdk.warning("Queue full, dropping Span.")
    app = logging.getLogger("app")
    for _ in range(3):
        app.warning("same thing")  # our own lines are never throttled
    assert len(logs.find(message="Queue full, dropping Span.")) == 1
    assert len(logs.find(message="same thing")) == 3


@pytest.fixture
def only_background_json() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    """The chassis' background JSON handler, installed; see :func:`alone`."""
    root = logging.getLogger()
    saved_level = root.level
    stream = io.StringIO()
    ours = configure_logging(
        LogSettings(level="DEBUG", background_writes=True), service="shop", stream=stream
    )
    try:
        yield stream, ours
    finally:
        root.removeHandler(ours)
        ours.close()
        root.setLevel(saved_level)


@contextlib.contextmanager
def alone(handler: logging.Handler) -> Iterator[None]:
    """``handler`` as the root's only handler, as in a deployed service: pytest's
    capture handlers (added around each test phase) are set aside meanwhile."""
    root = logging.getLogger()
    others = [h for h in root.handlers if h is not handler]
    for other in others:
        root.removeHandler(other)
    try:
        yield
    finally:
        for other in others:
            root.addHandler(other)


ACCESS_EXTRA = {"method": "GET", "route": "/x/{id}", "status": 200, "duration_ms": 0.25,
                "bytes": 17, "client": "127.0.0.1\n{\"forged\": 1}"}  # fmt: skip


def _through_logging(logger: logging.Logger, level: int) -> None:
    record = logger.makeRecord(
        logger.name, level, chassis_http.__file__, 0, "%s %s %d", ("GET", "/x/{id}", 200),
        None, "access", dict(ACCESS_EXTRA),
    )  # fmt: skip
    logger.handle(record)


def test_direct_access_line_is_the_line_the_logging_path_writes(
    only_background_json: tuple[io.StringIO, logging.Handler],
) -> None:
    stream, handler = only_background_json
    logger = logging.getLogger("chassis.access")
    with alone(handler), bind_log_context(LogContext("shop", "1.2", "test", "req-1")):
        assert log_direct(
            logger, logging.INFO, "GET /x/{id} 200", module="http", function="access",
            extra=ACCESS_EXTRA.items(),
        )  # fmt: skip
        _through_logging(logger, logging.INFO)
    handler.flush()
    direct, logged = stream.getvalue().splitlines()
    # Same keys in the same order and the same values, bar the clock.
    direct_fields, logged_fields = json.loads(direct), json.loads(logged)
    assert TIMESTAMP.fullmatch(direct_fields.pop("timestamp"))
    logged_fields.pop("timestamp")
    assert list(direct_fields.items()) == list(logged_fields.items())
    assert direct_fields["request_id"] == "req-1" and direct_fields["client"].endswith("1}")
    assert direct[direct.index('"level"') :] == logged[logged.index('"level"') :]


@pytest.mark.parametrize(
    "change",
    ["root handler", "logger handler", "logger filter", "root filter", "no propagation",
     "formatter subclass", "handler level", "console format"],
)  # fmt: skip
def test_direct_access_line_steps_aside_when_logging_is_configured_otherwise(
    only_background_json: tuple[io.StringIO, logging.Handler], change: str
) -> None:
    stream, handler = only_background_json
    root, logger = logging.getLogger(), logging.getLogger("chassis.access")
    seen: list[logging.LogRecord] = []
    other = logging.Handler()
    other.emit = seen.append  # type: ignore[method-assign]
    refuse = logging.Filter("nothing-matches")
    with alone(handler):
        undo: Callable[[], None]
        if change == "root handler":
            root.addHandler(other)
            undo = lambda: root.removeHandler(other)  # noqa: E731
        elif change == "logger handler":
            logger.addHandler(other)
            undo = lambda: logger.removeHandler(other)  # noqa: E731
        elif change == "logger filter":
            logger.addFilter(refuse)
            undo = lambda: logger.removeFilter(refuse)  # noqa: E731
        elif change == "root filter":
            root.addFilter(refuse)
            undo = lambda: root.removeFilter(refuse)  # noqa: E731
        elif change == "no propagation":
            logger.propagate = False
            undo = lambda: setattr(logger, "propagate", True)  # noqa: E731
        elif change == "formatter subclass":
            saved = handler.formatter
            handler.setFormatter(type("Custom", (ChassisJsonFormatter,), {})())
            undo = lambda: handler.setFormatter(saved)  # noqa: E731
        elif change == "handler level":
            handler.setLevel(logging.WARNING)
            undo = lambda: handler.setLevel(logging.NOTSET)  # noqa: E731
        else:
            saved = handler.formatter
            handler.setFormatter(ConsoleFormatter())
            undo = lambda: handler.setFormatter(saved)  # noqa: E731
        try:
            written = log_direct(
                logger, logging.INFO, "GET / 200", module="http", function="access", extra=()
            )
        finally:
            undo()
    assert written is False
    handler.flush()
    assert stream.getvalue() == "" and seen == []


async def test_access_log_of_a_deployed_service_is_written_directly(
    only_background_json: tuple[io.StringIO, logging.Handler],
    make_service: Callable[..., Service],
    aiohttp_client: AiohttpClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream, handler = only_background_json
    service = _service(make_service)
    built: list[logging.LogRecord] = []
    make_record = logging.Logger.makeRecord

    def spy(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(self, *args, **kwargs)
        if self.name == "chassis.access":
            built.append(record)
        return record

    monkeypatch.setattr(logging.Logger, "makeRecord", spy)
    client = await aiohttp_client(service.app)
    with alone(handler):
        response = await client.get("/items/7", headers={"X-Request-Id": "abc-123"})
    assert response.status == 200
    handler.flush()
    [access] = [json.loads(line) for line in stream.getvalue().splitlines()
                if json.loads(line)["logger"] == "chassis.access"]  # fmt: skip
    assert built == []  # no LogRecord on the hot path
    assert access["message"] == "GET /items/{item_id} 200"
    assert access["request_id"] == "abc-123" and access["service"] == "shop"
    assert access["module"] == "http" and access["function"] == "access" and access["line"] == 0
    assert access["status"] == 200 and access["route"] == "/items/{item_id}"
