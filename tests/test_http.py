"""Problem JSON (RFC 9457) for every error, and read_json."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from pydantic import BaseModel, Field
from pytest_aiohttp import AiohttpClient

from chassis import (
    BadRequest,
    CircuitOpen,
    Conflict,
    DeadlineExceeded,
    NotFound,
    ProblemError,
    Service,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    read_json,
)
from chassis.http import PROBLEM_CONTENT_TYPE

from .conftest import LogCapture


class Order(BaseModel):
    symbol: str = Field(min_length=1)
    quantity: int = Field(gt=0)


def _service(make_service: Callable[..., Service], **overrides: Any) -> Service:
    service = make_service("shop", **overrides)

    @service.post("/orders")
    async def create(request: web.Request) -> web.Response:
        order = await read_json(request, Order)
        return web.json_response(order.model_dump(), status=201)

    @service.post("/raw")
    async def raw(request: web.Request) -> web.Response:
        return web.json_response(await request.json())  # aiohttp's own parser

    @service.get("/crash")
    async def crash(request: web.Request) -> web.Response:
        raise ZeroDivisionError("secret internal detail")

    @service.get("/missing")
    async def missing(request: web.Request) -> web.Response:
        raise NotFound("order 7 does not exist", type="https://errors.example/not-found")

    @service.get("/busy")
    async def busy(request: web.Request) -> web.Response:
        raise ServiceUnavailable("exchange down", retry_after=3)

    @service.get("/conflict")
    async def conflict(request: web.Request) -> web.Response:
        raise Conflict("version mismatch", extensions={"current_version": 4})

    @service.get("/upstream-json")
    async def upstream_json(request: web.Request) -> web.Response:
        json.loads("{not json")  # a bug in our code, not the client's
        return web.Response()

    @service.get("/redirect")
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/orders")

    @service.get("/teapot")
    async def teapot(request: web.Request) -> web.Response:
        raise web.HTTPBadRequest(text="custom explanation")

    @service.get("/dependency/{kind}")
    async def dependency(request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind == "timeout":
            raise UpstreamTimeout("market-data timed out", service="market-data", attempts=3)
        if kind == "deadline":
            raise DeadlineExceeded(timeout_seconds=0.3)
        if kind == "circuit":
            raise CircuitOpen("open", service="market-data", retry_after=2.5)
        if kind == "refused":
            raise UpstreamUnavailable("no instance", service="market-data")
        raise UpstreamError("odd", service="market-data")

    return service


async def _problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status
    assert resp.headers["Content-Type"] == PROBLEM_CONTENT_TYPE
    body = await resp.json(content_type=PROBLEM_CONTENT_TYPE)
    assert body["status"] == status
    assert body["title"]
    assert body["type"]
    assert body["request_id"] == resp.headers["X-Request-ID"]
    return dict(body)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, make_service: Callable[..., Service]) -> Any:
    return await aiohttp_client(_service(make_service, http={"max_body_bytes": 1024}).app)


async def test_unhandled_exception_is_500_problem_without_stack_trace(
    client: Any, logs: LogCapture
) -> None:
    resp = await client.get("/crash")
    body = await _problem(resp, 500)
    text = json.dumps(body)
    assert "Traceback" not in text and "secret internal detail" not in text
    assert "ZeroDivisionError" not in text
    (error,) = logs.find(logger="chassis.errors")
    assert "secret internal detail" in error["exception"]["stacktrace"]


async def test_unknown_route_is_404_problem(client: Any) -> None:
    body = await _problem(await client.get("/no/such/thing"), 404)
    assert body["title"] == "Not Found"
    assert body["instance"] == "/no/such/thing"


async def test_wrong_method_is_405_problem_with_allow_header(client: Any) -> None:
    resp = await client.delete("/orders")
    await _problem(resp, 405)
    assert resp.headers["Allow"] == "POST"


async def test_malformed_json_body_is_400_problem(client: Any) -> None:
    for path in ("/orders", "/raw"):
        resp = await client.post(
            path, data=b'{"symbol": "VTI",', headers={"Content-Type": "application/json"}
        )
        body = await _problem(resp, 400)
        assert body["title"] == "Malformed JSON"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"symbol": "\x90VTI"}', "application/json"),  # not UTF-8
        (b'{"symbol": "VTI"}', "application/json; charset=no-such-charset"),
        (b'{"quantity": ' + b"7" * 5000 + b"}", "application/json"),  # int too long
        (b"[" * 50_000 + b"]" * 50_000, "application/json"),  # nested too deep
    ],
    ids=["not-utf8", "unknown-charset", "huge-integer", "deep-nesting"],
)
async def test_undecodable_json_body_is_400_problem_not_500(
    aiohttp_client: AiohttpClient,
    make_service: Callable[..., Service],
    body: bytes,
    content_type: str,
) -> None:
    service = _service(make_service, http={"max_body_bytes": 200_000})
    client = await aiohttp_client(service.app)
    resp = await client.post("/orders", data=body, headers={"Content-Type": content_type})
    problem = await _problem(resp, 400)
    assert problem["title"] == "Malformed JSON"


async def test_invalid_json_content_is_422_problem_listing_fields(client: Any) -> None:
    resp = await client.post("/orders", json={"symbol": "", "quantity": -1})
    body = await _problem(resp, 422)
    locs = sorted(tuple(e["loc"]) for e in body["errors"])
    assert locs == [("quantity",), ("symbol",)]
    resp = await client.post("/orders", json={"symbol": "VTI", "quantity": 2})
    assert resp.status == 201


async def test_body_over_the_limit_is_413_problem(client: Any) -> None:
    big = json.dumps({"symbol": "x" * 2000, "quantity": 1}).encode()
    body = await _problem(await client.post("/orders", data=big), 413)
    assert body["title"] == "Content Too Large"  # RFC 9110's name, not aiohttp's older one


async def test_chunked_body_over_the_limit_is_413_problem(client: Any) -> None:
    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 500

    await _problem(await client.post("/raw", data=chunks()), 413)


async def test_problem_errors_carry_type_detail_extensions_and_headers(client: Any) -> None:
    body = await _problem(await client.get("/missing"), 404)
    assert body["detail"] == "order 7 does not exist"
    assert body["type"] == "https://errors.example/not-found"

    resp = await client.get("/busy")
    await _problem(resp, 503)
    assert resp.headers["Retry-After"] == "3"

    body = await _problem(await client.get("/conflict"), 409)
    assert body["current_version"] == 4

    body = await _problem(await client.get("/teapot"), 400)
    assert body["detail"] == "custom explanation"


async def test_json_error_from_our_own_code_is_a_500_not_a_400(client: Any) -> None:
    await _problem(await client.get("/upstream-json"), 500)


async def test_redirects_pass_through_untouched(client: Any) -> None:
    resp = await client.get("/redirect", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/orders"
    assert len(resp.headers["X-Request-ID"]) == 32


def test_problem_error_defaults() -> None:
    error = ProblemError("boom", status=418, title="I'm a teapot")
    assert (error.status, error.title, error.detail, str(error)) == (
        418, "I'm a teapot", "boom", "boom"
    )  # fmt: skip
    assert BadRequest().status == 400
    assert ServiceUnavailable(retry_after=1.4).headers["Retry-After"] == "2"  # never too early
    assert ServiceUnavailable(retry_after=0).headers["Retry-After"] == "1"


async def test_dependency_failures_degrade_to_502_503_504_not_500(
    client: Any, logs: LogCapture
) -> None:
    for kind, status in (("timeout", 504), ("deadline", 504), ("refused", 503), ("odd", 503)):
        body = await _problem(await client.get(f"/dependency/{kind}"), status)
        assert "market-data" not in json.dumps(body)  # no topology in public answers
    resp = await client.get("/dependency/circuit")
    await _problem(resp, 503)
    assert resp.headers["Retry-After"] == "3"
    warnings = logs.find(logger="chassis.errors", level="WARNING")
    assert len(warnings) == 5
    assert {w["upstream"] for w in warnings} == {"market-data", ""}
    assert not logs.find(logger="chassis.errors", level="ERROR")
