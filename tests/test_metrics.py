"""chassis.metrics: registry per service, golden signals, exposition, decorators."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import string
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp.http_parser
import aiohttp.web_protocol
import prometheus_client
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpClient, AiohttpServer
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.samples import Sample

from chassis import ChassisSettings, ConfigError, Conflict, Service
from chassis.config import MetricsSettings
from chassis.health import LoopLagMonitor
from chassis.metrics import KNOWN_METHODS, METRICS_KEY, Metrics, counted, timed

DURATION = "http_server_request_duration_seconds"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def chassis_settings(**metrics: Any) -> ChassisSettings:
    """Settings for an in-process service: no access log, drain delay or chassis tracing.

    Tests of exemplars open spans themselves (see ``_traced``); one test runs the
    chassis' own tracing.
    """
    return ChassisSettings(
        log={"access_log": False},
        health={"drain_delay_seconds": 0},
        tracing={"enabled": False},
        metrics=metrics,
    )


def make_service(name: str = "orders", **metrics: Any) -> Service:
    service = Service(name, version="1.2.3", settings=chassis_settings(**metrics))

    @service.get("/items/{id}")
    async def item(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"]})

    @service.post("/items")
    async def create(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=b"x" * (len(body) // 2), status=201)

    @service.get("/boom")
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("handler failed")

    @service.get("/conflict")
    async def conflict(request: web.Request) -> web.Response:
        raise Conflict("already sold")

    return service


def samples(registry: CollectorRegistry, prefix: str = "http_server_") -> list[Sample]:
    return [
        sample
        for family in registry.collect()
        for sample in family.samples
        if sample.name.startswith(prefix)
    ]


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """The value of one sample, or ``None`` when the series does not exist."""
    found = registry.get_sample_value(name, labels)
    return None if found is None else float(found)


def count(registry: CollectorRegistry, method: str, route: str, status: int) -> float | None:
    labels = {"method": method, "route": route, "status_code": str(status)}
    return value(registry, f"{DURATION}_count", **labels)


async def wait_for(predicate: Callable[[], bool], *, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# -- exposition ---------------------------------------------------------------------------


async def test_metrics_endpoint_serves_prometheus_text_by_default(
    aiohttp_client: AiohttpClient,
) -> None:
    service = make_service()
    client = await aiohttp_client(service.app)
    assert (await client.get("/items/1")).status == 200

    response = await client.get("/metrics")

    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert response.headers["Cache-Control"] == "no-store"
    families = {f.name: f for f in parse_text(await response.text())}
    assert families[DURATION].type == "histogram"
    assert families["chassis_service_info"].samples[0].labels == {
        "service": "orders",
        "version": "1.2.3",
    }


async def test_metrics_endpoint_serves_openmetrics_when_accept_asks_for_it(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(make_service().app)
    assert (await client.get("/items/1")).status == 200
    prometheus_accept = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )

    response = await client.get("/metrics", headers={"Accept": prometheus_accept})

    assert response.headers["Content-Type"].startswith(OPENMETRICS)
    text = await response.text()
    assert text.endswith("# EOF\n")
    names = {f.name for f in parse_openmetrics(text)}
    assert {"http_server_request_duration_seconds", "chassis_service_info"} <= names


async def test_head_on_the_metrics_endpoint_answers_without_a_body(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(make_service().app)

    response = await client.head("/metrics")

    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert await response.read() == b""


async def test_metrics_path_comes_from_settings(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_service(path="/internal/metrics").app)

    assert (await client.get("/metrics")).status == 404
    response = await client.get("/internal/metrics")
    assert response.status == 200
    assert "chassis_service_info" in await response.text()


async def test_scrapes_are_neither_recorded_nor_logged_at_info(
    aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    service = Service(
        "orders",
        settings=ChassisSettings(log={"access_log": True}, health={"drain_delay_seconds": 0}),
    )

    @service.get("/hello")
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    client = await aiohttp_client(service.app)
    caplog.set_level(logging.INFO, logger="chassis.access")

    for _ in range(3):
        assert (await client.get("/metrics")).status == 200
    assert (await client.get("/hello")).status == 200

    access = [r for r in caplog.records if r.name == "chassis.access"]
    assert [r.getMessage() for r in access] == ["GET /hello 200"]
    routes = {s.labels.get("route") for s in samples(service.metrics.registry)}
    assert routes == {"/hello", None}  # None: the active-requests gauge, labelled by method only


# -- golden signals -----------------------------------------------------------------------


async def test_requests_are_recorded_by_method_route_template_and_status(
    aiohttp_client: AiohttpClient,
) -> None:
    service = make_service()
    client = await aiohttp_client(service.app)

    for path in ("/items/1", "/items/2", "/boom", "/conflict", "/no/such/path"):
        await client.get(path)
    await client.post("/items", data=b"")
    await client.delete("/items/3")

    registry = service.metrics.registry
    assert count(registry, "GET", "/items/{id}", 200) == 2
    assert count(registry, "GET", "/boom", 500) == 1
    assert count(registry, "GET", "/conflict", 409) == 1
    assert count(registry, "GET", "unmatched", 404) == 1
    assert count(registry, "POST", "/items", 201) == 1
    assert count(registry, "DELETE", "unmatched", 405) == 1
    routes = {s.labels["route"] for s in samples(registry) if "route" in s.labels}
    assert routes == {"/items/{id}", "/boom", "/conflict", "/items", "unmatched"}


async def test_unknown_methods_are_recorded_as_other(aiohttp_client: AiohttpClient) -> None:
    service = make_service()
    service.route("PROPFIND", "/dav")(_ok)
    client = await aiohttp_client(service.app)

    assert (await client.request("PROPFIND", "/dav")).status == 200
    assert (await client.request("PURGE", "/dav")).status == 405

    registry = service.metrics.registry
    assert count(registry, "OTHER", "/dav", 200) == 1
    assert count(registry, "OTHER", "unmatched", 405) == 1
    methods = {s.labels["method"] for s in samples(registry)}
    assert methods == {*KNOWN_METHODS, "OTHER"}  # the gauge has every method, pre-bound


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


_EXTENSION_METHODS = ("PROPFIND", "MKCOL", "PURGE", "QUERY", "M-SEARCH", "LOCK", "REPORT")
_TOKEN_CHARS = string.ascii_uppercase + string.digits + "!#$%&'*+-.^_`|~"


def _random_method(rng: random.Random, made_up_share: float) -> str:
    roll = rng.random()
    if roll < 0.8 * (1 - made_up_share):
        return rng.choice(sorted(KNOWN_METHODS - {"CONNECT"}))
    if roll < 1 - made_up_share:
        return rng.choice(_EXTENSION_METHODS)
    return "".join(rng.choice(_TOKEN_CHARS) for _ in range(rng.randint(1, 12)))


def _random_path(rng: random.Random) -> str:
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 16)))
    paths = (f"/items/{word}", f"/{word}", f"/{word}/{rng.randint(0, 10**9)}", "/items", "/boom")
    return rng.choices(paths, weights=(40, 30, 20, 8, 2))[0]


async def _pipelined(server: TestServer, requests: Sequence[tuple[str, str]]) -> list[int]:
    """Send ``requests`` on one connection without waiting, then read every status.

    A raw HTTP/1.1 client: cheap enough for thousands of requests, and it sends
    method tokens exactly as given.
    """
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            b"".join(f"{m} {p} HTTP/1.1\r\nHost: test\r\n\r\n".encode() for m, p in requests)
        )
        statuses = []
        for method, _ in requests:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            statuses.append(int(head[0].split()[1]))
            length = next(
                (int(h.split(":")[1]) for h in head if h.lower().startswith("content-length:")), 0
            )
            if method != "HEAD" and length:
                await reader.readexactly(length)
        return statuses
    finally:
        writer.close()
        await writer.wait_closed()


@dataclass(frozen=True)
class Parser:
    """How the server parses requests, and so which method tokens reach the application."""

    refuses_made_up_methods: bool
    made_up_share: float


@pytest.fixture(params=["default-parser", "pure-python-parser"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Parser:
    """The C parser (llhttp) answers 400 to methods outside its list before the
    application sees them, and closes the connection: send a few made-up tokens.
    The pure-Python parser hands any token to the application: send many.
    """
    pure = aiohttp.http_parser.HttpRequestParserPy
    if request.param == "default-parser":
        # Without aiohttp's C extensions (AIOHTTP_NO_EXTENSIONS=1) the default is the pure one.
        refuses = aiohttp.web_protocol.HttpRequestParser is not pure
        return Parser(refuses_made_up_methods=refuses, made_up_share=0.02)
    monkeypatch.setattr(aiohttp.web_protocol, "HttpRequestParser", pure)
    return Parser(refuses_made_up_methods=False, made_up_share=0.2)


async def test_series_stay_bounded_under_random_paths_and_methods(
    aiohttp_server: AiohttpServer, parser: Parser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL)  # refused methods and /boom are logged with tracebacks
    service = make_service()
    server = await aiohttp_server(service.app)
    registry = service.metrics.registry
    rng = random.Random(20240601)
    sent: list[tuple[str, str]] = []
    statuses: list[int] = []

    def is_usual(method: str) -> bool:
        return method in KNOWN_METHODS or method in _EXTENSION_METHODS

    async def send(requests: list[tuple[str, str]]) -> None:
        sent.extend(requests)
        together, alone = requests, []
        if parser.refuses_made_up_methods:  # a refusal closes the connection
            together = [(m, p) for m, p in requests if is_usual(m)]
            alone = [(m, p) for m, p in requests if not is_usual(m)]
        runs = [_pipelined(server, together[i::8]) for i in range(8)]
        runs += [_pipelined(server, [request]) for request in alone]
        for answered in await asyncio.gather(*runs):
            statuses.extend(answered)

    def series() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        return {(s.name, tuple(sorted(s.labels.items()))) for s in samples(registry)}

    # One request for every method bucket on every kind of path, so the first
    # thousand surely make every series there can be; then random ones only.
    kinds = ("/items/{}", "/{}", "/{}/0", "/items", "/boom")
    methods = (*sorted(KNOWN_METHODS - {"CONNECT"}), "PROPFIND")
    sweep = [(m, kind.format(uuid.uuid4().hex)) for m in methods for kind in kinds]
    share, rest = parser.made_up_share, 1_000 - len(sweep)
    await send(sweep + [(_random_method(rng, share), _random_path(rng)) for _ in range(rest)])
    first = series()
    await send([(_random_method(rng, share), _random_path(rng)) for _ in range(9_000)])

    assert len(sent) == len(statuses) == 10_000
    assert series() == first
    assert len({path for _, path in sent}) > 5_000
    made_up = [m for m, _ in sent if not is_usual(m)]
    assert len(set(made_up)) > 100
    labels = [s.labels for s in samples(registry)]
    assert {x["method"] for x in labels} == {*KNOWN_METHODS, "OTHER"}
    routes = {x["route"] for x in labels if "route" in x}
    assert routes == {"/items/{id}", "/items", "/boom", "unmatched"}
    refused = statuses.count(400)  # by the parser; no handler here answers 400
    assert refused == (len(made_up) if parser.refuses_made_up_methods else 0)
    recorded = sum(s.value for s in samples(registry) if s.name == f"{DURATION}_count")
    assert recorded == len(sent) - refused


async def test_active_requests_gauge_counts_requests_in_flight(
    aiohttp_client: AiohttpClient,
) -> None:
    service = make_service()
    entered = asyncio.Event()
    release = asyncio.Event()

    @service.get("/slow")
    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.Response(text="done")

    client = await aiohttp_client(service.app)
    registry = service.metrics.registry
    pending = asyncio.ensure_future(client.get("/slow"))
    await asyncio.wait_for(entered.wait(), 5)

    assert value(registry, "http_server_active_requests", method="GET") == 1
    assert value(registry, "http_server_active_requests", method="POST") == 0
    release.set()
    assert (await pending).status == 200
    assert value(registry, "http_server_active_requests", method="GET") == 0


async def test_request_and_response_body_sizes_are_recorded(
    aiohttp_client: AiohttpClient,
) -> None:
    service = make_service()
    client = await aiohttp_client(service.app)

    assert (await client.post("/items", data=b"a" * 3000)).status == 201
    await client.head("/items/1")

    registry = service.metrics.registry
    post = {"method": "POST", "route": "/items", "status_code": "201"}
    assert value(registry, "http_server_request_body_size_bytes_sum", **post) == 3000
    assert value(registry, "http_server_request_body_size_bytes_bucket", le="4096.0", **post) == 1
    assert value(registry, "http_server_request_body_size_bytes_bucket", le="1024.0", **post) == 0
    assert value(registry, "http_server_response_body_size_bytes_sum", **post) == 1500
    head = {"method": "HEAD", "route": "/items/{id}", "status_code": "200"}
    assert value(registry, "http_server_response_body_size_bytes_sum", **head) == 0
    assert value(registry, "http_server_response_body_size_bytes_count", **head) == 1


async def test_cancelled_handler_is_recorded_as_499(aiohttp_server: AiohttpServer) -> None:
    metrics = Metrics(service_name="x", settings=MetricsSettings(process_metrics=False))
    app = web.Application()
    metrics.setup(app)
    entered = asyncio.Event()

    async def forever(request: web.Request) -> web.Response:
        entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    app.router.add_get("/forever", forever)
    server = await aiohttp_server(app)  # TestServer cancels handlers of lost clients
    _, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET /forever HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(entered.wait(), 5)
    writer.close()  # the client goes away: aiohttp cancels the handler
    await writer.wait_closed()

    await wait_for(lambda: count(metrics.registry, "GET", "/forever", 499) == 1)
    assert value(metrics.registry, "http_server_active_requests", method="GET") == 0


async def test_without_the_pipeline_raised_errors_are_recorded_with_their_status(
    aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="aiohttp.server")
    metrics = Metrics(service_name="bare", settings=MetricsSettings(process_metrics=False))
    app = web.Application()
    metrics.setup(app)

    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound(text="gone")

    async def crash(request: web.Request) -> web.Response:
        raise ValueError("bug")

    app.router.add_get("/missing", missing)
    app.router.add_get("/crash", crash)
    client = await aiohttp_client(app)

    assert (await client.get("/missing")).status == 404
    assert (await client.get("/crash")).status == 500
    assert (await client.get("/nowhere")).status == 404

    assert count(metrics.registry, "GET", "/missing", 404) == 1
    assert count(metrics.registry, "GET", "/crash", 500) == 1
    assert count(metrics.registry, "GET", "unmatched", 404) == 1
    assert app[METRICS_KEY] is metrics


async def test_metrics_middleware_wraps_the_pipeline() -> None:
    service = make_service()

    chain = list(service.app.middlewares)

    assert chain.index(service.metrics.middleware) < chain.index(service.pipeline.middleware)


# -- exemplars ----------------------------------------------------------------------------


def _traced(service: Service, sampler: Sampler) -> list[str]:
    """Wrap ``service`` in a middleware that runs each request in a span, as tracing will."""
    tracer = TracerProvider(sampler=sampler).get_tracer("test")
    trace_ids: list[str] = []

    @web.middleware
    async def span(request: web.Request, handler: Any) -> web.StreamResponse:
        with tracer.start_as_current_span("request") as current:
            trace_ids.append(f"{current.get_span_context().trace_id:032x}")
            return await handler(request)

    service.app.middlewares.insert(0, span)
    return trace_ids


async def _openmetrics(client: Any) -> str:
    response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    return str(await response.text())


async def test_exemplar_carries_the_trace_id_of_a_sampled_request(
    aiohttp_client: AiohttpClient,
) -> None:
    service = make_service()
    trace_ids = _traced(service, ALWAYS_ON)
    client = await aiohttp_client(service.app)

    assert (await client.get("/items/7")).status == 200

    text = await _openmetrics(client)
    trace_id = trace_ids[0]  # the scrape ran in a span of its own too
    assert len(trace_id) == 32
    assert f'# {{trace_id="{trace_id}"}}' in text
    exemplars = [
        s.exemplar
        for family in parse_openmetrics(text)
        for s in family.samples
        if s.name == f"{DURATION}_bucket" and s.exemplar is not None
    ]
    assert [e.labels for e in exemplars] == [{"trace_id": trace_id}]
    # the text format has no exemplars
    assert trace_id not in await (await client.get("/metrics")).text()


async def test_no_exemplar_when_the_span_is_not_sampled(aiohttp_client: AiohttpClient) -> None:
    service = make_service()
    trace_ids = _traced(service, ALWAYS_OFF)
    client = await aiohttp_client(service.app)

    assert (await client.get("/items/7")).status == 200

    assert len(trace_ids) == 1
    assert "trace_id" not in await _openmetrics(client)


async def test_exemplars_can_be_turned_off(aiohttp_client: AiohttpClient) -> None:
    service = make_service(exemplars=False)
    _traced(service, ALWAYS_ON)
    client = await aiohttp_client(service.app)

    assert (await client.get("/items/7")).status == 200

    assert "trace_id" not in await _openmetrics(client)


async def test_chassis_tracing_puts_the_request_trace_id_in_exemplars(
    aiohttp_client: AiohttpClient,
) -> None:
    settings = ChassisSettings(
        log={"access_log": False},
        health={"drain_delay_seconds": 0},
        tracing={"enabled": True, "endpoint": None, "sampler": "parentbased_always_on"},
    )
    service = Service("orders", settings=settings)
    service.get("/hello")(_ok)
    client = await aiohttp_client(service.app)
    trace_id = uuid.uuid4().hex

    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    assert (await client.get("/hello", headers={"traceparent": traceparent})).status == 200

    assert f'# {{trace_id="{trace_id}"}}' in await _openmetrics(client)


# -- saturation and identity --------------------------------------------------------------


def _block_event_loop(seconds: float) -> None:
    time.sleep(seconds)  # deliberately blocking: the lag monitor must notice


async def test_event_loop_lag_gauge_follows_the_health_monitor(
    aiohttp_client: AiohttpClient,
) -> None:
    service = Service(
        "orders",
        settings=ChassisSettings(
            log={"access_log": False},
            health={"drain_delay_seconds": 0, "lag_probe_interval_seconds": 0.05},
        ),
    )
    assert service.metrics.lag is service.health.lag
    await aiohttp_client(service.app)
    registry = service.metrics.registry
    await asyncio.sleep(0.1)

    _block_event_loop(0.3)

    await wait_for(lambda: (value(registry, "chassis_event_loop_lag_seconds") or 0) > 0.1)


async def test_standalone_metrics_run_their_own_lag_monitor(
    aiohttp_client: AiohttpClient,
) -> None:
    metrics = Metrics(service_name="bare")
    metrics.lag.interval_seconds = 0.05
    app = web.Application()
    metrics.setup(app)
    client = await aiohttp_client(app)
    await asyncio.sleep(0.1)

    _block_event_loop(0.3)

    await wait_for(lambda: (value(metrics.registry, "chassis_event_loop_lag_seconds") or 0) > 0.1)
    ticks: list[float] = []
    metrics.lag.add_listener(ticks.append)
    await wait_for(lambda: len(ticks) > 0)
    await client.close()  # cleanup stops the monitor
    ticks.clear()
    await asyncio.sleep(0.3)  # six intervals
    assert ticks == []


async def test_a_monitor_passed_in_is_left_to_its_owner(aiohttp_client: AiohttpClient) -> None:
    monitor = LoopLagMonitor(interval_seconds=0.01)
    metrics = Metrics(lag_monitor=monitor)
    app = web.Application()
    metrics.setup(app)
    await aiohttp_client(app)

    _block_event_loop(0.1)
    await asyncio.sleep(0.05)

    assert monitor.max_lag_seconds == 0  # nobody runs it, so it never measured


async def test_process_and_gc_metrics_are_exported(aiohttp_client: AiohttpClient) -> None:
    service = make_service()
    client = await aiohttp_client(service.app)

    names = {f.name for f in parse_text(await (await client.get("/metrics")).text())}

    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"} <= names
    assert {"python_gc_collections", "python_info"} <= names


async def test_process_metrics_can_be_turned_off(aiohttp_client: AiohttpClient) -> None:
    service = make_service(process_metrics=False)
    client = await aiohttp_client(service.app)

    text = await (await client.get("/metrics")).text()

    assert "process_" not in text
    assert "python_" not in text
    assert "chassis_service_info" in text


async def test_disabled_metrics_record_nothing_and_serve_nothing(
    aiohttp_client: AiohttpClient,
) -> None:
    service = make_service(enabled=False)
    client = await aiohttp_client(service.app)

    assert (await client.get("/items/1")).status == 200
    assert (await client.get("/metrics")).status == 404

    assert list(service.metrics.registry.collect()) == []


async def test_each_service_has_its_own_registry(aiohttp_client: AiohttpClient) -> None:
    orders, billing = make_service("orders"), make_service("billing")
    orders.metrics.counter("placed", "Orders placed.").inc()
    client = await aiohttp_client(orders.app)
    await aiohttp_client(billing.app)

    assert (await client.get("/items/1")).status == 200

    assert count(orders.metrics.registry, "GET", "/items/{id}", 200) == 1
    assert count(billing.metrics.registry, "GET", "/items/{id}", 200) is None
    assert value(billing.metrics.registry, "orders_placed_total") is None
    assert value(prometheus_client.REGISTRY, "orders_placed_total") is None
    assert (
        value(prometheus_client.REGISTRY, "chassis_service_info", service="orders", version="1.2.3")
        is None
    )


def test_invalid_duration_buckets_fail_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="CHASSIS_METRICS__DURATION_BUCKETS_SECONDS"):
        Metrics(settings=MetricsSettings(duration_buckets_seconds=(0.5, 0.1)))
    metrics = Metrics()
    with pytest.raises(ConfigError, match="strictly increasing"):
        metrics.configure(chassis_settings(duration_buckets_seconds=()))


async def test_duration_buckets_come_from_settings(aiohttp_client: AiohttpClient) -> None:
    service = make_service(duration_buckets_seconds=(0.25, 1.0))
    client = await aiohttp_client(service.app)
    await client.get("/items/1")

    buckets = {
        s.labels["le"] for s in samples(service.metrics.registry) if s.name == f"{DURATION}_bucket"
    }

    assert buckets == {"0.25", "1.0", "+Inf"}


# -- service metrics ----------------------------------------------------------------------


def test_service_metrics_are_prefixed_with_the_snake_cased_service_name() -> None:
    metrics = Service("market-data").metrics

    metrics.counter("quotes_served_total", "Quotes served.").inc(3)
    metrics.gauge("symbols", "Symbols tracked.").set(42)
    metrics.histogram("spread", "Bid-ask spread.", ("venue",), buckets=(0.01, 0.1)).labels(
        "x"
    ).observe(0.05)

    registry = metrics.registry
    assert value(registry, "market_data_quotes_served_total") == 3
    assert value(registry, "market_data_symbols") == 42
    assert value(registry, "market_data_spread_bucket", venue="x", le="0.1") == 1


def test_a_metric_can_take_a_domain_prefix_or_none_instead_of_the_service_name() -> None:
    metrics = Service("orders").metrics

    metrics.counter("orders", "Orders by outcome.", ("outcome",), prefix="simplebank_").labels(
        "filled"
    ).inc()
    metrics.gauge("up_ratio", "Share of instances up.", prefix="").set(0.5)
    metrics.histogram("fill_seconds", "Fill time.", buckets=(1.0,), prefix="bank_").observe(0.5)

    registry = metrics.registry
    assert value(registry, "simplebank_orders_total", outcome="filled") == 1
    assert value(registry, "up_ratio") == 0.5
    assert value(registry, "bank_fill_seconds_bucket", le="1.0") == 1
    with pytest.raises(ValueError, match="invalid metric name '9lives'"):
        metrics.counter("9lives", "Starts with a digit.", prefix="")
    with pytest.raises(ValueError, match="invalid metric name"):
        metrics.gauge("ok", "Bad prefix.", prefix="bad-")


def test_asking_twice_for_a_metric_returns_the_same_one() -> None:
    metrics = Metrics(service_name="orders")

    first = metrics.counter("sell_shares_total", "Shares sold.", labels=("side",))

    assert metrics.counter("sell_shares_total", "Shares sold.", labels=("side",)) is first
    assert metrics.counter("sell_shares", "Shares sold.", labels=("side",)) is first
    assert metrics.gauge("open", "Open orders.") is metrics.gauge("open", "Open orders.")
    hist = metrics.histogram("fill_seconds", "Fill time.")
    assert metrics.histogram("fill_seconds", "Fill time.") is hist


def test_asking_for_a_used_name_with_another_shape_raises() -> None:
    metrics = Metrics(service_name="orders")
    metrics.counter("sold", "Sold.", labels=("side",))
    metrics.histogram("fill_seconds", "Fill time.", buckets=(0.1, 1.0))

    with pytest.raises(ValueError, match="'orders_sold' is already a counter, not a gauge"):
        metrics.gauge("sold", "Sold.")
    with pytest.raises(ValueError, match="already has labels"):
        metrics.counter("sold", "Sold.", labels=("venue",))
    with pytest.raises(ValueError, match="already has buckets"):
        metrics.histogram("fill_seconds", "Fill time.", buckets=(0.5,))
    with pytest.raises(ValueError, match="invalid metric name"):
        metrics.counter("sold-out", "Sold out.")


async def test_metric_names_cannot_collide_with_the_chassis_own(
    aiohttp_client: AiohttpClient,
) -> None:
    metrics = Metrics()  # no service name: no prefix
    app = web.Application()
    metrics.setup(app)
    await aiohttp_client(app)  # startup registers the chassis' own metrics

    with pytest.raises(ValueError, match="Duplicated timeseries"):
        metrics.histogram("http_server_request_duration_seconds", "Mine.")


# -- decorators ---------------------------------------------------------------------------


def _histogram(name: str = "call_seconds") -> Histogram:
    return Histogram(name, "Calls.", registry=CollectorRegistry(), buckets=(0.01, 0.04, 1.0))


async def test_timed_measures_the_awaited_call_of_an_async_function() -> None:
    histogram = _histogram()

    @timed(histogram)
    async def slow(delay: float) -> str:
        await asyncio.sleep(delay)
        return "done"

    assert inspect.iscoroutinefunction(slow)
    pending = slow(0.05)
    assert _sum(histogram) == 0  # creating the coroutine measures nothing
    assert await pending == "done"

    assert _sum(histogram) >= 0.05
    assert _bucket(histogram, "0.04") == 0
    assert slow.__name__ == "slow"
    assert slow.metric is histogram  # type: ignore[attr-defined]


def test_timed_measures_a_sync_function() -> None:
    histogram = _histogram()

    @timed(histogram)
    def add(a: int, b: int) -> int:
        time.sleep(0.02)
        return a + b

    assert add(2, 3) == 5
    assert 0.02 <= _sum(histogram) < 1.0
    assert _bucket(histogram, "0.01") == 0


async def test_timed_observes_calls_that_raise() -> None:
    histogram = _histogram()

    @timed(histogram)
    async def fails() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await fails()
    assert _bucket(histogram, "+Inf") == 1


def test_timed_accepts_a_labelled_child_and_refuses_the_parent() -> None:
    histogram = Histogram("labelled_seconds", "Calls.", ("side",), registry=CollectorRegistry())

    @timed(histogram.labels("buy"))
    def buy() -> None:
        return None

    buy()
    assert _sample(histogram, "_count", side="buy") == 1
    with pytest.raises(ValueError, match=r"pass metric.labels\(...\)"):
        timed(histogram)


def test_decorators_refuse_generator_functions() -> None:
    counter = Counter("gen_calls", "Calls.", ("outcome",), registry=CollectorRegistry())

    def numbers() -> Iterator[int]:
        yield 1

    async def anumbers() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        timed(_histogram())(numbers)
    with pytest.raises(TypeError, match="generator"):
        counted(counter)(anumbers)


async def test_counted_counts_async_calls_by_outcome() -> None:
    counter = Counter("work_calls", "Calls.", ("outcome",), registry=CollectorRegistry())

    @counted(counter)
    async def work(fail: bool) -> int:
        await asyncio.sleep(0)
        if fail:
            raise RuntimeError("no")
        return 1

    assert inspect.iscoroutinefunction(work)
    pending = work(False)
    assert _outcomes(counter) == (0, 0)
    assert await pending == 1
    await work(False)
    with pytest.raises(RuntimeError):
        await work(True)

    assert _outcomes(counter) == (2, 1)
    assert work.metric is counter  # type: ignore[attr-defined]


async def test_counted_counts_cancellation_as_an_error() -> None:
    counter = Counter("wait_calls", "Calls.", ("outcome",), registry=CollectorRegistry())

    @counted(counter)
    async def wait() -> None:
        await asyncio.Event().wait()

    task = asyncio.ensure_future(wait())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _outcomes(counter) == (0, 1)


def test_counted_counts_sync_calls_by_outcome() -> None:
    counter = Counter("parse_calls", "Calls.", ("outcome",), registry=CollectorRegistry())
    parse = counted(counter)(int)

    assert parse("12") == 12
    with pytest.raises(ValueError, match="invalid literal"):
        parse("twelve")

    assert _outcomes(counter) == (1, 1)


def test_counted_needs_a_counter_labelled_by_outcome_only() -> None:
    registry = CollectorRegistry()

    with pytest.raises(ValueError, match="only label is 'outcome'"):
        counted(Counter("bare", "Calls.", registry=registry))
    with pytest.raises(ValueError, match="only label is 'outcome'"):
        counted(Counter("wide", "Calls.", ("outcome", "side"), registry=registry))


async def test_service_decorators_make_prefixed_metrics() -> None:
    metrics = Metrics(service_name="orders")

    @metrics.timed("sell_shares")
    @metrics.counted("sell_shares")
    async def sell_shares(n: int) -> int:
        await asyncio.sleep(0)
        return n

    assert await sell_shares(5) == 5

    registry = metrics.registry
    assert value(registry, "orders_sell_shares_duration_seconds_count") == 1
    assert value(registry, "orders_sell_shares_total", outcome="success") == 1
    assert value(registry, "orders_sell_shares_total", outcome="error") == 0
    assert metrics.timed("fill_seconds") is not None  # already in seconds: kept as it is
    assert value(registry, "orders_fill_seconds_count") == 0


def _sample(metric: Histogram | Counter, suffix: str, **labels: str) -> float:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix) and labels.items() <= sample.labels.items():
                return float(sample.value)
    raise AssertionError(f"no sample {suffix} {labels}")


def _sum(histogram: Histogram) -> float:
    return _sample(histogram, "_sum")


def _bucket(histogram: Histogram, le: str) -> float:
    return _sample(histogram, "_bucket", le=le)


def _outcomes(counter: Counter) -> tuple[float, float]:
    success = _sample(counter, "_total", outcome="success")
    error = _sample(counter, "_total", outcome="error")
    return success, error
