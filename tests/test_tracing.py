"""Tracing in-process: server spans, propagation, log correlation, ``@traced``, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pytest_aiohttp import AiohttpClient

from chassis import ConfigError, LifecycleError, NotFound, Service, ServiceUnavailable
from chassis.config import ChassisSettings, TracingSettings
from chassis.tracing import (
    TRACING_KEY,
    Tracing,
    current_trace_id,
    current_tracer,
    inject_headers,
    traced,
)

from .conftest import LogCapture, quick_settings

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
BATCH_THREAD = "OtelBatchSpanRecordProcessor"

log = logging.getLogger("tests.tracing")


@traced("load item", attributes={"store": "memory"})
async def load_item(item: str) -> dict[str, str]:
    log.info("loading %s", item)
    if item == "lost":
        raise KeyError(item)
    return {"item": item, "trace_id": current_trace_id()}


@traced()
def price(item: str) -> int:
    return len(item)


def build(exporter: InMemorySpanExporter | None = None, **overrides: Any) -> Service:
    service = Service("shop", version="1.2.3", settings=quick_settings(**overrides))
    service.tracing.exporter = exporter

    @service.get("/items/{id}")
    async def item(request: web.Request) -> web.Response:
        log.info("handling item")
        data = await load_item(request.match_info["id"])
        data["price"] = str(price(data["item"]))
        return web.json_response(data)

    @service.get("/boom")
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("kaput")

    @service.get("/missing")
    async def missing(request: web.Request) -> web.Response:
        raise NotFound("no such thing")

    @service.get("/down")
    async def down(request: web.Request) -> web.Response:
        raise ServiceUnavailable("database is down", retry_after=3)

    @service.get("/context")
    async def context(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "trace_id": current_trace_id(),
                "baggage": dict(baggage.get_all()),
                "outbound": inject_headers({}),
            }
        )

    return service


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def service(exporter: InMemorySpanExporter) -> Service:
    return build(exporter)


async def finished(service: Service, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    assert await service.tracing.flush()
    return list(exporter.get_finished_spans())


def sampled(traceparent: str) -> bool:
    """The ``sampled`` bit of a W3C ``traceparent`` header."""
    return bool(int(traceparent.rsplit("-", 1)[1], 16) & 0x01)


def server_span(spans: list[ReadableSpan]) -> ReadableSpan:
    (span,) = [s for s in spans if s.kind is SpanKind.SERVER]
    return span


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


# -- server spans -------------------------------------------------------------------------


async def test_request_is_a_server_span_named_after_the_route_template(
    aiohttp_client: AiohttpClient, service: Service, exporter: InMemorySpanExporter
) -> None:
    client = await aiohttp_client(service.app)
    response = await client.get("/items/7", headers={"User-Agent": "tests/1.0"})
    assert response.status == 200

    span = server_span(await finished(service, exporter))
    assert span.name == "GET /items/{id}"
    assert span.parent is None
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "http.route": "/items/{id}",
        "http.response.status_code": 200,
        "url.path": "/items/7",
        "url.scheme": "http",
        "server.address": "127.0.0.1",
        "server.port": client.port,
        "client.address": "127.0.0.1",
        "user_agent.original": "tests/1.0",
    }
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "chassis"


async def test_unmatched_request_span_is_named_after_the_method_alone(
    aiohttp_client: AiohttpClient, service: Service, exporter: InMemorySpanExporter
) -> None:
    client = await aiohttp_client(service.app)
    assert (await client.get("/nowhere/123")).status == 404

    span = server_span(await finished(service, exporter))
    assert span.name == "GET"
    attributes = dict(span.attributes or {})
    assert "http.route" not in attributes
    assert attributes["url.path"] == "/nowhere/123"
    assert attributes["http.response.status_code"] == 404
    assert span.status.status_code is StatusCode.UNSET  # 4xx is the client's error


async def test_unknown_method_is_recorded_as_other(
    aiohttp_client: AiohttpClient, service: Service, exporter: InMemorySpanExporter
) -> None:
    client = await aiohttp_client(service.app)
    assert (await client.request("PURGE", "/items/7")).status == 405

    span = server_span(await finished(service, exporter))
    assert span.name == "HTTP"
    attributes = dict(span.attributes or {})
    assert attributes["http.request.method"] == "_OTHER"
    assert attributes["http.request.method_original"] == "PURGE"


async def test_unhandled_exception_marks_the_span_failed_with_an_exception_event(
    aiohttp_client: AiohttpClient,
    service: Service,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL)
    client = await aiohttp_client(service.app)
    assert (await client.get("/boom")).status == 500

    span = server_span(await finished(service, exporter))
    assert span.name == "GET /boom"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "RuntimeError"
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "RuntimeError"
    assert attributes["http.response.status_code"] == 500
    (event,) = span.events
    assert event.name == "exception"
    event_attributes = dict(event.attributes or {})
    assert event_attributes["exception.type"] == "RuntimeError"
    assert event_attributes["exception.message"] == "kaput"
    assert "kaput" in str(event_attributes["exception.stacktrace"])


async def test_server_problem_is_an_error_and_client_problem_is_not(
    aiohttp_client: AiohttpClient, service: Service, exporter: InMemorySpanExporter
) -> None:
    client = await aiohttp_client(service.app)
    assert (await client.get("/down")).status == 503
    assert (await client.get("/missing")).status == 404

    spans = {s.name: s for s in await finished(service, exporter)}
    down, missing = spans["GET /down"], spans["GET /missing"]
    assert down.status.status_code is StatusCode.ERROR
    assert dict(down.attributes or {})["error.type"] == "chassis.exceptions.ServiceUnavailable"
    assert [e.name for e in down.events] == ["exception"]
    assert missing.status.status_code is StatusCode.UNSET
    assert missing.events == ()
    assert "error.type" not in dict(missing.attributes or {})


async def test_http_5xx_without_exception_is_an_error_typed_by_status(
    aiohttp_client: AiohttpClient, exporter: InMemorySpanExporter
) -> None:
    service = build(exporter)

    @service.get("/teapot-down")
    async def teapot(request: web.Request) -> web.Response:
        return web.Response(status=502, text="upstream went away")

    client = await aiohttp_client(service.app)
    assert (await client.get("/teapot-down")).status == 502

    span = server_span(await finished(service, exporter))
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "502"
    assert span.events == ()


async def test_middleware_alone_records_exceptions_of_a_bare_app(
    aiohttp_client: AiohttpClient, exporter: InMemorySpanExporter
) -> None:
    app = web.Application()
    tracing = Tracing(service_name="bare", exporter=exporter)
    tracing.setup(app)

    async def fail(request: web.Request) -> web.Response:
        raise ValueError("bad")

    async def gone(request: web.Request) -> web.Response:
        raise web.HTTPBadGateway()

    app.router.add_get("/fail", fail)
    app.router.add_get("/gone", gone)
    client = await aiohttp_client(app)
    assert app[TRACING_KEY] is tracing
    assert (await client.get("/fail")).status == 500
    assert (await client.get("/gone")).status == 502

    assert await tracing.flush()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["GET /fail"].status.status_code is StatusCode.ERROR
    assert [e.name for e in spans["GET /fail"].events] == ["exception"]
    assert dict(spans["GET /gone"].attributes or {})["http.response.status_code"] == 502
    assert dict(spans["GET /gone"].attributes or {})["error.type"] == "502"
    assert spans["GET /gone"].resource.attributes["service.name"] == "bare"


async def test_metrics_scrapes_and_excluded_paths_make_no_spans(
    aiohttp_client: AiohttpClient, service: Service, exporter: InMemorySpanExporter
) -> None:
    service.tracing.exclude_paths = frozenset({"/health/live"})
    client = await aiohttp_client(service.app)
    assert (await client.get("/metrics")).status == 200
    assert (await client.get("/health/live")).status == 200
    assert (await client.get("/health/ready")).status == 200

    assert [s.name for s in await finished(service, exporter)] == ["GET /health/{probe}"]


# -- propagation --------------------------------------------------------------------------


async def test_traceparent_tracestate_and_baggage_of_the_request_are_continued(
    aiohttp_client: AiohttpClient, service: Service, exporter: InMemorySpanExporter
) -> None:
    client = await aiohttp_client(service.app)
    response = await client.get(
        "/context",
        headers={
            "traceparent": TRACEPARENT,
            "tracestate": "vendor=opaque",
            "baggage": "tenant=acme,region=eu%20west",
        },
    )
    body = await response.json()

    span = server_span(await finished(service, exporter))
    trace_id, span_id = hex_ids(span)
    assert trace_id == TRACE_ID == body["trace_id"]
    assert span.parent is not None
    assert span.parent.is_remote
    assert f"{span.parent.span_id:016x}" == PARENT_ID
    assert body["baggage"] == {"tenant": "acme", "region": "eu west"}
    outbound = body["outbound"]
    assert outbound["traceparent"].startswith(f"00-{TRACE_ID}-{span_id}-")
    assert sampled(outbound["traceparent"])
    assert outbound["tracestate"] == "vendor=opaque"
    assert sorted(outbound["baggage"].split(",")) == ["region=eu+west", "tenant=acme"]


async def test_invalid_traceparent_starts_a_new_trace(
    aiohttp_client: AiohttpClient, service: Service, exporter: InMemorySpanExporter
) -> None:
    client = await aiohttp_client(service.app)
    response = await client.get("/context", headers={"traceparent": "00-garbage-01"})
    body = await response.json()

    span = server_span(await finished(service, exporter))
    assert span.parent is None
    assert hex_ids(span)[0] == body["trace_id"] != TRACE_ID


def test_inject_headers_outside_a_span_adds_nothing_and_returns_the_mapping() -> None:
    headers = {"Accept": "application/json"}
    assert inject_headers(headers) is headers
    assert headers == {"Accept": "application/json"}
    assert current_trace_id() == ""


def test_inject_headers_writes_the_current_span_and_baggage() -> None:
    tracer = SdkTracerProvider(shutdown_on_exit=False).get_tracer("test")
    token = otel_context.attach(baggage.set_baggage("user", "u-1"))
    try:
        with tracer.start_as_current_span("outbound") as span:
            headers = inject_headers({})
            context = span.get_span_context()
            assert current_trace_id() == f"{context.trace_id:032x}"
    finally:
        otel_context.detach(token)
    assert headers["traceparent"].startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")
    assert sampled(headers["traceparent"])
    assert headers["baggage"] == "user=u-1"


# -- log correlation ----------------------------------------------------------------------


async def test_every_log_line_of_a_request_carries_its_trace_and_span_ids(
    aiohttp_client: AiohttpClient,
    service: Service,
    exporter: InMemorySpanExporter,
    logs: LogCapture,
) -> None:
    client = await aiohttp_client(service.app)
    response = await client.get("/items/7", headers={"traceparent": TRACEPARENT})
    assert response.status == 200

    spans = await finished(service, exporter)
    trace_id, server_span_id = hex_ids(server_span(spans))
    (child,) = [s for s in spans if s.name == "load item"]
    _, child_span_id = hex_ids(child)
    request_id = response.headers["X-Request-ID"]
    lines = [r for r in logs.records if r["request_id"] == request_id]
    assert {r["message"] for r in lines} >= {"handling item", "loading 7", "GET /items/{id} 200"}
    for record in lines:
        assert record["trace_id"] == trace_id == TRACE_ID
    by_message = {r["message"]: r for r in lines}
    assert by_message["handling item"]["span_id"] == server_span_id
    assert by_message["GET /items/{id} 200"]["span_id"] == server_span_id  # the access line
    assert by_message["GET /items/{id} 200"]["logger"] == "chassis.access"
    assert by_message["loading 7"]["span_id"] == child_span_id
    assert (await response.json())["trace_id"] == trace_id


async def test_without_an_endpoint_ids_exist_for_logs_but_nothing_is_exported(
    aiohttp_client: AiohttpClient, logs: LogCapture
) -> None:
    service = build()  # no exporter, no endpoint
    client = await aiohttp_client(service.app)
    response = await client.get("/context")
    body = await response.json()

    assert len(body["trace_id"]) == 32
    assert body["outbound"]["traceparent"].startswith(f"00-{body['trace_id']}-")
    (access,) = logs.find(logger="chassis.access", route="/context")
    assert access["trace_id"] == body["trace_id"]
    assert len(access["span_id"]) == 16
    assert service.tracing.provider is not None
    assert not [t for t in threading.enumerate() if t.name.startswith(BATCH_THREAD)]


@pytest.mark.parametrize("flags", ["01", "00"])
async def test_without_a_span_processor_spans_carry_ids_only_until_one_is_added(
    aiohttp_client: AiohttpClient, logs: LogCapture, flags: str
) -> None:
    service = Service("shop", settings=quick_settings())  # no exporter, no endpoint
    seen: list[tuple[bool, trace.SpanContext]] = []

    def note() -> None:
        span = trace.get_current_span()
        seen.append((span.is_recording(), span.get_span_context()))

    @traced("inner")
    async def inner() -> None:
        note()

    @service.get("/r")
    async def r(request: web.Request) -> web.Response:
        note()
        await inner()
        return web.json_response({"outbound": inject_headers({})})

    client = await aiohttp_client(service.app)
    parent = f"00-{TRACE_ID}-{PARENT_ID}-{flags}"
    body = await (await client.get("/r", headers={"traceparent": parent})).json()

    (server_recording, server), (inner_recording, child) = seen
    assert not server_recording and not inner_recording  # nothing would receive them
    assert f"{server.trace_id:032x}" == f"{child.trace_id:032x}" == TRACE_ID
    assert len({server.span_id, child.span_id, int(PARENT_ID, 16)}) == 3  # fresh span ids
    # The sampler (parent-based) still decides, and downstream hears it.
    assert body["outbound"]["traceparent"] == f"00-{TRACE_ID}-{server.span_id:016x}-{flags}"
    assert server.trace_flags.sampled is child.trace_flags.sampled is (flags == "01")
    (access,) = logs.find(logger="chassis.access", route="/r")
    assert (access["trace_id"], access["span_id"]) == (TRACE_ID, f"{server.span_id:016x}")

    # A processor added while serving (as capture_spans does) gets recorded spans at once.
    exporter = InMemorySpanExporter()
    tracing = service.tracing
    assert tracing.provider is not None
    tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    seen.clear()
    await client.get("/r", headers={"traceparent": parent})
    assert [recording for recording, _ in seen] == [flags == "01"] * 2
    names = sorted(span.name for span in exporter.get_finished_spans())
    assert names == (["GET /r", "inner"] if flags == "01" else [])


async def test_always_off_sampler_still_gives_log_lines_ids_but_records_nothing(
    aiohttp_client: AiohttpClient, exporter: InMemorySpanExporter, logs: LogCapture
) -> None:
    service = build(exporter, tracing={"sampler": "always_off"})
    client = await aiohttp_client(service.app)
    body = await (await client.get("/context")).json()

    assert not sampled(body["outbound"]["traceparent"])  # downstream knows
    (access,) = logs.find(logger="chassis.access", route="/context")
    assert access["trace_id"] == body["trace_id"] != ""
    assert await finished(service, exporter) == []


# -- @traced ------------------------------------------------------------------------------


@pytest.mark.parametrize("recording", [False, True])
async def test_the_service_tracer_as_a_decorator_starts_a_span_per_call(
    aiohttp_client: AiohttpClient, recording: bool
) -> None:
    exporter = InMemorySpanExporter() if recording else None
    service = build(exporter)
    seen: list[tuple[bool, int]] = []

    @service.get("/twice")
    async def twice(request: web.Request) -> web.Response:
        tracer = current_tracer()

        @tracer.start_as_current_span("step")
        async def step() -> None:
            span = trace.get_current_span()
            seen.append((span.is_recording(), span.get_span_context().span_id))

        await step()
        await step()
        with tracer.start_as_current_span("block") as block:
            seen.append((block.is_recording(), block.get_span_context().span_id))
        return web.json_response({})

    client = await aiohttp_client(service.app)
    assert (await client.get("/twice")).status == 200
    assert [r for r, _ in seen] == [recording] * 3
    assert len({span_id for _, span_id in seen}) == 3  # a new span each call and block
    if exporter is not None:
        names = [s.name for s in await finished(service, exporter)]
        assert sorted(names) == ["GET /twice", "block", "step", "step"]


async def test_traced_spans_are_children_of_the_request_span(
    aiohttp_client: AiohttpClient, service: Service, exporter: InMemorySpanExporter
) -> None:
    client = await aiohttp_client(service.app)
    assert (await client.get("/items/abc")).status == 200

    spans = {s.name: s for s in await finished(service, exporter)}
    server = spans["GET /items/{id}"]
    loaded = spans["load item"]
    priced = spans[price.__qualname__]
    for child in (loaded, priced):
        assert child.kind is SpanKind.INTERNAL
        assert child.parent is not None
        assert child.parent.span_id == hex_int(hex_ids(server)[1])
        assert hex_ids(child)[0] == hex_ids(server)[0]
        assert child.resource.attributes["service.name"] == "shop"
    assert dict(loaded.attributes or {}) == {"store": "memory"}


def hex_int(value: str) -> int:
    return int(value, 16)


async def test_traced_records_an_exception_and_reraises_it(
    aiohttp_client: AiohttpClient,
    service: Service,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL)
    client = await aiohttp_client(service.app)
    assert (await client.get("/items/lost")).status == 500

    spans = {s.name: s for s in await finished(service, exporter)}
    loaded, server = spans["load item"], spans["GET /items/{id}"]
    assert loaded.status.status_code is StatusCode.ERROR
    assert dict(loaded.attributes or {})["error.type"] == "KeyError"
    assert [e.name for e in loaded.events] == ["exception"]
    assert server.status.status_code is StatusCode.ERROR  # the pipeline saw it escape too


def test_traced_keeps_the_kind_of_function_and_exposes_the_span_name() -> None:
    assert inspect.iscoroutinefunction(load_item)
    assert not inspect.iscoroutinefunction(price)
    assert load_item.span_name == "load item"  # type: ignore[attr-defined]
    assert price.span_name.endswith("price")  # type: ignore[attr-defined]
    assert load_item.__name__ == "load_item"


def test_traced_rejects_bare_use_and_generators() -> None:
    with pytest.raises(TypeError, match="parentheses"):
        traced(price)  # type: ignore[arg-type]

    def numbers() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        traced()(numbers)


async def test_traced_outside_a_service_calls_through_without_a_span() -> None:
    assert await load_item("x") == {"item": "x", "trace_id": ""}
    assert price("abc") == 3
    assert not isinstance(trace.get_tracer_provider(), SdkTracerProvider)


async def test_cancelled_traced_call_ends_its_span_without_error(
    aiohttp_client: AiohttpClient, service: Service, exporter: InMemorySpanExporter
) -> None:
    started = asyncio.Event()

    @traced("wait forever")
    async def wait_forever() -> None:
        started.set()
        await asyncio.Event().wait()

    @service.get("/wait")
    async def wait(request: web.Request) -> web.Response:
        task = asyncio.ensure_future(wait_forever())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return web.Response(text="ok")

    client = await aiohttp_client(service.app)
    assert (await client.get("/wait")).status == 200

    spans = {s.name: s for s in await finished(service, exporter)}
    assert spans["wait forever"].status.status_code is StatusCode.UNSET
    assert spans["wait forever"].end_time is not None


async def test_tasks_started_by_a_lifespan_use_the_service_tracer(
    exporter: InMemorySpanExporter,
) -> None:
    service = build(exporter)
    done = asyncio.Event()

    @traced("background tick")
    async def tick() -> None:
        done.set()

    @service.lifespan
    async def ticker(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(tick())
        yield
        await task

    async with service.running(port=0):
        await asyncio.wait_for(done.wait(), 10)
        running_tracer = service.tracing.tracer
        assert current_tracer() is running_tracer
    (span,) = exporter.get_finished_spans()
    assert span.name == "background tick"
    assert span.resource.attributes["service.name"] == "shop"
    assert current_tracer() is not running_tracer  # back to the global API tracer
    assert not isinstance(current_tracer(), SdkTracer)


# -- provider, resource, lifecycle --------------------------------------------------------


async def test_each_service_owns_a_provider_and_never_sets_the_global_one(
    aiohttp_client: AiohttpClient,
) -> None:
    first_spans, second_spans = InMemorySpanExporter(), InMemorySpanExporter()
    first, second = build(first_spans), build(second_spans)
    client_one = await aiohttp_client(first.app)
    client_two = await aiohttp_client(second.app)
    assert (await client_one.get("/items/1")).status == 200
    assert (await client_two.get("/items/2")).status == 200

    one, two = await finished(first, first_spans), await finished(second, second_spans)
    assert first.tracing.provider is not second.tracing.provider
    assert {dict(s.attributes or {}).get("url.path") for s in one} == {"/items/1", None}
    assert {dict(s.attributes or {}).get("url.path") for s in two} == {"/items/2", None}
    assert not isinstance(trace.get_tracer_provider(), SdkTracerProvider)


async def test_resource_names_the_service_and_a_fresh_instance_per_start(
    exporter: InMemorySpanExporter,
) -> None:
    ids = []
    for _ in range(2):
        service = build(exporter, environment="staging")
        async with service.running(port=0):
            assert service.tracing.provider is not None
            attributes = dict(service.tracing.provider.resource.attributes)
            ids.append(attributes["service.instance.id"])
    assert attributes["service.name"] == "shop"
    assert attributes["service.version"] == "1.2.3"
    assert attributes["deployment.environment"] == "staging"
    assert attributes["deployment.environment.name"] == "staging"
    assert attributes["host.name"]
    assert ids[0] != ids[1]
    assert all(len(i) == 36 for i in ids)


async def test_graceful_shutdown_flushes_queued_spans(exporter: InMemorySpanExporter) -> None:
    service = build(exporter, tracing={"schedule_delay_seconds": 60})
    async with service.running(port=0) as running:
        from aiohttp import ClientSession

        async with ClientSession() as session, session.get(f"{running.url}/items/9") as r:
            assert r.status == 200
        assert exporter.get_finished_spans() == ()  # still queued: the delay is 60 s
    names = {s.name for s in exporter.get_finished_spans()}
    assert "GET /items/{id}" in names
    assert service.tracing.provider is None
    with pytest.raises(LifecycleError):
        _ = service.tracing.tracer
    assert not [t for t in threading.enumerate() if t.name.startswith(BATCH_THREAD)]


async def test_tracing_is_the_outermost_middleware(service: Service) -> None:
    assert service.app.middlewares[0] == service.tracing.middleware
    assert service.app.middlewares.index(service.metrics.middleware) > 0


async def test_disabled_tracing_makes_no_spans_and_no_ids(
    aiohttp_client: AiohttpClient, exporter: InMemorySpanExporter, logs: LogCapture
) -> None:
    service = build(exporter, tracing={"enabled": False})
    client = await aiohttp_client(service.app)
    body = await (await client.get("/context")).json()

    assert body == {"trace_id": "", "baggage": {}, "outbound": {}}
    (access,) = logs.find(logger="chassis.access", route="/context")
    assert access["trace_id"] == access["span_id"] == ""
    assert service.tracing.provider is None
    with pytest.raises(LifecycleError, match="no tracer"):
        _ = service.tracing.tracer


# -- samplers and configuration -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "description"),
    [
        ("always_on", "AlwaysOnSampler"),
        ("always_off", "AlwaysOffSampler"),
        ("traceidratio", "TraceIdRatioBased{0.25}"),
        ("parentbased_always_on", "ParentBased{root:AlwaysOnSampler,"),
        ("parentbased_always_off", "ParentBased{root:AlwaysOffSampler,"),
        ("parentbased_traceidratio", "ParentBased{root:TraceIdRatioBased{0.25},"),
    ],
)
async def test_every_sampler_name_builds_its_sampler(name: str, description: str) -> None:
    settings = TracingSettings.model_validate({"sampler": name, "sampler_arg": 0.25})
    tracing = Tracing(service_name="s", settings=settings)
    app = web.Application()
    tracing.setup(app)
    async with lifespan(tracing, app):
        assert tracing.provider is not None
        assert tracing.provider.sampler.get_description().startswith(description)


@contextlib.asynccontextmanager
async def lifespan(tracing: Tracing, app: web.Application) -> AsyncIterator[None]:
    """Run ``tracing``'s cleanup context around the block, as an application start would."""
    steps = tracing._lifespan(app)
    await steps.__anext__()
    try:
        yield
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await steps.__anext__()


def test_default_sampler_is_parent_based_ratio_one() -> None:
    tracing = Tracing(service_name="s")
    tracing.configure(ChassisSettings())
    assert tracing._settings().sampler == "parentbased_traceidratio"
    assert tracing._settings().sampler_arg == 1.0


def test_otel_sampler_variables_apply_when_chassis_leaves_them_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    tracing = Tracing(service_name="s")
    tracing.configure(ChassisSettings())
    assert (tracing._settings().sampler, tracing._settings().sampler_arg) == ("traceidratio", 0.5)


@pytest.mark.parametrize(
    ("tracing", "variable", "reason"),
    [
        ({"endpoint": "ftp://collector:21"}, "CHASSIS_TRACING__ENDPOINT", "http:// or https://"),
        ({"endpoint": "collector:4318"}, "CHASSIS_TRACING__ENDPOINT", "http:// or https://"),
        (
            {"endpoint": "ftp://collector", "protocol": "grpc"},
            "CHASSIS_TRACING__ENDPOINT",
            "host:port",
        ),
    ],
)
def test_invalid_endpoint_fails_at_startup_naming_the_variable(
    tracing: dict[str, str], variable: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Tracing(service_name="s").configure(ChassisSettings(tracing=tracing))
    ((name, message),) = caught.value.errors
    assert name == variable
    assert reason in message


def test_grpc_without_the_optional_exporter_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc", None)
    settings = ChassisSettings(tracing={"endpoint": "http://127.0.0.1:4317", "protocol": "grpc"})
    with pytest.raises(ConfigError, match=r"aiochassis\[grpc\]") as caught:
        Tracing(service_name="s").configure(settings)
    assert caught.value.errors[0][0] == "CHASSIS_TRACING__PROTOCOL"


def test_a_valid_grpc_host_port_endpoint_is_accepted() -> None:
    tracing = Tracing(service_name="s")
    tracing.configure(ChassisSettings(tracing={"endpoint": "127.0.0.1:4317", "protocol": "grpc"}))
    assert tracing._settings().protocol == "grpc"


def test_tracing_object_builds_without_side_effects() -> None:
    before = {t.name for t in threading.enumerate()}
    tracing = Tracing(service_name="s")
    assert tracing.provider is None
    assert "stopped" in repr(tracing)
    assert {t.name for t in threading.enumerate()} == before
    with pytest.raises(LifecycleError):
        _ = tracing.tracer


def test_current_tracer_answers_without_any_service() -> None:
    with current_tracer().start_as_current_span("free-standing") as span:
        assert not span.is_recording()
