"""The gateway's ``/openapi.json``: a valid OpenAPI 3.1 document of every public route."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator
from simplebank import graphql_api, openapi
from simplebank.gateway import ROUTES
from simplebank.services import Bank

from conftest import Customer

OWN_MODULES = {"simplebank.gateway", graphql_api.__name__, openapi.__name__}


def gateway_routes(bank: Bank) -> set[tuple[str, str]]:
    """(method, path) of every route whose handler the gateway's own modules define."""
    found = set()
    for route in bank.services["gateway"].app.router.routes():
        handler = route.handler
        if route.method == "HEAD" or getattr(handler, "__module__", None) not in OWN_MODULES:
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert path is not None, info
        found.add((route.method, path))
    return found


async def fetch_document(anna: Customer) -> dict[str, Any]:
    status, body = await anna.call("GET", "/openapi.json", auth=False)
    assert status == 200
    return body  # type: ignore[no-any-return]


async def test_the_document_is_valid_openapi_3_1(anna: Customer) -> None:
    document = await fetch_document(anna)
    assert document["openapi"].startswith("3.1")
    validate(document, cls=OpenAPIV31SpecValidator)


async def test_every_gateway_route_is_in_the_document(anna: Customer, bank: Bank) -> None:
    document = await fetch_document(anna)
    described = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    served = gateway_routes(bank)
    assert {(m, p) for m, p, _ in ROUTES} <= served  # the routes list tells the truth
    assert served <= described, served - described
    assert ("POST", "/graphql") in described and ("GET", "/openapi.json") in described


def test_every_route_has_a_described_operation() -> None:
    missing = [(m, p) for m, p, _ in ROUTES if (m, p) not in openapi.OPERATIONS]
    assert not missing


async def test_operations_declare_bodies_tokens_and_path_parameters(anna: Customer) -> None:
    document = await fetch_document(anna)
    paths = document["paths"]
    assert paths["/signup"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SignUp"
    }
    assert "security" not in paths["/login"]["post"]
    assert paths["/portfolio"]["get"]["security"] == [{"bearer": []}]
    assert "401" in paths["/portfolio"]["get"]["responses"]
    order = paths["/orders/{order_id}"]["get"]
    assert [p["name"] for p in order["parameters"]] == ["order_id", "version", "wait_seconds"]
    assert order["parameters"][2]["schema"]["maximum"] == 10  # orders' MAX_WAIT_SECONDS
    assert order["responses"]["404"]["content"]["application/problem+json"]
    ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(ids) == len(set(ids))
    for item in paths.values():
        for op in item.values():
            assert all(re.fullmatch(r"[1-5]\d\d", status) for status in op["responses"])


async def test_real_answers_fit_their_response_schemas(anna: Customer) -> None:
    """The models describe what the gateway really answers (checked with jsonschema)."""
    document = await fetch_document(anna)
    schemas = document["components"]["schemas"]

    def check(body: Any, model: str) -> None:
        # The refs point into the document: validate against a root that holds them.
        schema = {"$ref": f"#/components/schemas/{model}", "components": {"schemas": schemas}}
        jsonschema.validate(body, schema, cls=jsonschema.Draft202012Validator)

    with pytest.raises(jsonschema.ValidationError):
        check({"cash": {"available_cents": "many"}}, "Balances")
    placed = await anna.ok("POST", "/deposits", json={"amount_cents": 100_000}, status=201)
    check(placed, "Balances")
    order = await anna.order("buy", "BND", 3)
    check(order, "OrderOut")
    check(await anna.ok("GET", "/orders"), "OrderList")
    check(await anna.portfolio_newer_than(0), "PortfolioOut")
    check(await anna.ok("GET", "/me"), "CustomerOut")
    check(await anna.ok("GET", "/instruments"), "InstrumentList")
    check(await anna.ok("GET", "/prices?symbols=VTI,BND"), "Prices")
    check(await anna.ok("GET", "/notifications"), "NotificationList")
    strategy = await anna.ok(
        "POST",
        "/strategies",
        json={"name": "Mostly bonds", "allocations": [{"symbol": "BND", "percent": 100}]},
        status=201,
    )
    check(strategy, "StrategyOut")
    check(await anna.ok("GET", "/strategies"), "StrategyList")
    status, problem = await anna.call("GET", "/portfolio", auth=False)
    assert status == 401
    check(problem, "Problem")
