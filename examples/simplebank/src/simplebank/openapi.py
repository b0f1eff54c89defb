"""The gateway's OpenAPI 3.1 document, generated from pydantic models (``GET /openapi.json``).

The gateway relays bodies to the internal services, which validate them; so the
request bodies here are the internal services' own models where the gateway's body is
theirs (:class:`~simplebank.customers.SignUp`, :class:`~simplebank.orders.NewOrder`,
...), and models defined here where the gateway's differs (a deposit's optional
``deposit_id``, the book's ``/shares/buy`` body). The responses are models of what the
services answer. :data:`OPERATIONS` describes every route of
:data:`simplebank.gateway.ROUTES`; :func:`document` turns them into the document, the
schemas by ``pydantic.json_schema.models_json_schema`` (JSON Schema 2020-12, the
dialect of OpenAPI 3.1), so nothing in it is written by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from chassis import Service

from .common import VERSION, Cents, Id, Model, Quantity, Symbol
from .customers import Login, SignUp
from .orders import NewOrder
from .strategies import Invest, NewStrategy

__all__ = ["OPERATIONS", "Operation", "document", "install"]


# -- the gateway's own request bodies ------------------------------------------------------
class DepositIn(Model):
    """A deposit; without ``deposit_id`` one is derived from ``Idempotency-Key``, or drawn."""

    amount_cents: Cents
    deposit_id: Id | None = None


class TradeIn(Model):
    """The book's ``/shares/buy`` and ``/shares/sell`` body (the side is in the path)."""

    symbol: Symbol
    quantity: Quantity


class GraphQLRequest(BaseModel):
    """A GraphQL request (GraphQL over HTTP)."""

    query: Annotated[str, Field(min_length=1)]
    variables: dict[str, Any] | None = None
    operationName: str | None = None  # the protocol's name


# -- responses -----------------------------------------------------------------------------
class Answer(BaseModel):
    """Base of responses: services may add fields, so none is forbidden."""

    model_config = ConfigDict(extra="allow")


class Problem(Answer):
    """RFC 9457 problem details (``application/problem+json``)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None


class RouteInfo(Answer):
    method: str
    path: str
    does: str


class Index(Answer):
    service: str
    version: str
    authentication: str
    routes: list[RouteInfo]


class CustomerOut(Answer):
    customer_id: str
    email: str
    name: str
    created_at: str


class TokenOut(Answer):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    customer_id: str


class Cash(Answer):
    available_cents: int
    reserved_cents: int


class PositionBalance(Answer):
    symbol: str
    available: int
    reserved: int


class Balances(Answer):
    customer_id: str
    version: int
    cash: Cash
    positions: list[PositionBalance]


class OrderOut(Answer):
    order_id: str
    customer_id: str
    side: Literal["buy", "sell"]
    symbol: str
    quantity: int
    state: Literal[
        "PENDING", "RESERVED", "PLACED", "FEE_CHARGED", "COMPENSATING", "FILLED", "FAILED"
    ]
    version: int
    limit_price_cents: int
    reserved_asset: str
    price_cents: int | None = None
    gross_cents: int | None = None
    fee_cents: int | None = None
    failed_step: str | None = None
    failure_reason: str | None = None
    compensations: list[str] = []
    created_at: str
    updated_at: str


class OrderList(Answer):
    orders: list[OrderOut]


class ValuedPosition(Answer):
    symbol: str
    quantity: int
    cost_basis_cents: int
    price_cents: int | None
    market_value_cents: int | None
    gain_cents: int | None


class PortfolioOut(Answer):
    customer_id: str
    version: int
    cash_cents: int
    pending_orders: int
    positions: list[ValuedPosition]
    positions_value_cents: int | None
    total_value_cents: int | None
    prices_available: bool
    prices_as_of: str | None
    updated_at: str | None


class InstrumentOut(Answer):
    symbol: str
    name: str
    asset_class: str
    currency: str
    price_cents: int
    price_updated_at: str


class InstrumentList(Answer):
    instruments: list[InstrumentOut]


class Prices(Answer):
    prices: dict[str, int]
    as_of: str | None


class AllocationOut(Answer):
    symbol: str
    percent: int


class StrategyOut(Answer):
    strategy_id: str
    customer_id: str
    name: str
    allocations: list[AllocationOut]
    created_at: str


class StrategyList(Answer):
    strategies: list[StrategyOut]


class InvestmentOrder(Answer):
    symbol: str
    percent: int
    budget_cents: int
    quantity: int
    order_id: str | None
    state: str
    reason: str | None
    spent_cents: int


class InvestmentOut(Answer):
    investment_id: str
    strategy_id: str
    customer_id: str
    amount_cents: int
    state: Literal["IN_PROGRESS", "COMPLETED", "PARTIAL", "FAILED"]
    spent_cents: int
    orders: list[InvestmentOrder]
    created_at: str


class InvestmentList(Answer):
    investments: list[InvestmentOut]


class NotificationOut(Answer):
    notification_id: str
    kind: str
    message: str
    data: dict[str, Any]
    created_at: str


class NotificationList(Answer):
    notifications: list[NotificationOut]


class GraphQLResponse(Answer):
    data: dict[str, Any] | None
    errors: Annotated[list[dict[str, Any]], Field(default_factory=list)]


class OpenAPIDocument(Answer):
    openapi: str


# -- the operations ------------------------------------------------------------------------
@dataclass(frozen=True)
class Operation:
    """How one gateway route is described: body, answers, token, query parameters."""

    answers: dict[int, type[BaseModel] | None]
    body: type[BaseModel] | None = None
    auth: bool = True
    query: tuple[str, ...] = ()
    idempotent: bool = False
    """Whether it honours an ``Idempotency-Key`` header."""
    refusals: dict[int, str] = field(default_factory=dict)
    """Other problem answers: status -> when."""


OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/"): Operation({200: Index}, auth=False),
    ("POST", "/signup"): Operation(
        {201: CustomerOut}, SignUp, auth=False, refusals={409: "the email is taken"}
    ),
    ("POST", "/login"): Operation(
        {200: TokenOut}, Login, auth=False, refusals={401: "unknown email or wrong password"}
    ),
    ("GET", "/me"): Operation({200: CustomerOut}, refusals={404: "the customer is gone"}),
    ("POST", "/deposits"): Operation(
        {201: Balances, 200: Balances},
        DepositIn,
        idempotent=True,
        refusals={409: "the deposit_id was used for another deposit"},
    ),
    ("GET", "/balances"): Operation({200: Balances}),
    ("POST", "/orders"): Operation(
        {202: OrderOut, 200: OrderOut},
        NewOrder,
        idempotent=True,
        refusals={
            409: "not enough cash or shares, or the Idempotency-Key used for another order",
            503: "the order cannot be priced",
        },
    ),
    ("POST", "/shares/buy"): Operation(
        {202: OrderOut, 200: OrderOut},
        TradeIn,
        idempotent=True,
        refusals={409: "not enough cash, or the Idempotency-Key used for another order"},
    ),
    ("POST", "/shares/sell"): Operation(
        {202: OrderOut, 200: OrderOut},
        TradeIn,
        idempotent=True,
        refusals={409: "not enough shares, or the Idempotency-Key used for another order"},
    ),
    ("GET", "/orders"): Operation({200: OrderList}, query=("state", "limit")),
    ("GET", "/orders/{order_id}"): Operation({200: OrderOut}, query=("version", "wait_seconds")),
    ("GET", "/portfolio"): Operation({200: PortfolioOut}),
    ("GET", "/instruments"): Operation({200: InstrumentList}, auth=False),
    ("GET", "/instruments/{symbol}"): Operation({200: InstrumentOut}, auth=False),
    ("GET", "/prices"): Operation({200: Prices}, auth=False, query=("symbols",)),
    ("POST", "/strategies"): Operation({201: StrategyOut}, NewStrategy),
    ("GET", "/strategies"): Operation({200: StrategyList}),
    ("GET", "/strategies/{strategy_id}"): Operation({200: StrategyOut}),
    ("POST", "/strategies/{strategy_id}/investments"): Operation(
        {202: InvestmentOut, 200: InvestmentOut},
        Invest,
        idempotent=True,
        refusals={409: "the Idempotency-Key was used for another investment"},
    ),
    ("GET", "/strategies/{strategy_id}/investments"): Operation({200: InvestmentList}),
    ("GET", "/investments/{investment_id}"): Operation({200: InvestmentOut}),
    ("GET", "/notifications"): Operation({200: NotificationList}, query=("limit",)),
    ("POST", "/graphql"): Operation({200: GraphQLResponse}, GraphQLRequest, auth=False),
    ("GET", "/openapi.json"): Operation({200: OpenAPIDocument}, auth=False),
}
"""Every route of the gateway's public HTTP API, by (method, path)."""

_EXTRA_SUMMARIES = {
    ("GET", "/"): "the list of routes",
    ("POST", "/graphql"): "GraphQL: customer, portfolio, orders, instruments; placeOrder "
    "(a bearer token for the customer's fields)",
    ("GET", "/openapi.json"): "this document",
}

_QUERY = {
    "state": {"type": "string", "description": "only orders in this state"},
    "limit": {"type": "integer", "minimum": 1, "maximum": 100, "description": "at most"},
    "version": {
        "type": "integer",
        "minimum": 1,
        "maximum": 999_999_999,
        "description": "with wait_seconds: the version the client has (default: the current one)",
    },
    "wait_seconds": {
        "type": "number",
        "minimum": 0,
        "maximum": 10,
        "multipleOf": 0.001,
        "description": "wait up to this long for the order's version to differ from version "
        "(answers at once when it does, or the order is FILLED or FAILED)",
    },
    "symbols": {
        "type": "string",
        "pattern": r"^[A-Z][A-Z0-9.]{0,9}(,[A-Z][A-Z0-9.]{0,9})*$",
        "description": "comma-separated symbols (all when absent)",
    },
}
_REF = "#/components/schemas/{model}"
_PROBLEM = "application/problem+json"


def _path_parameter(name: str) -> dict[str, Any]:
    if name == "symbol":
        schema: dict[str, Any] = {"type": "string", "pattern": r"^[A-Z][A-Z0-9.]{0,9}$"}
    else:
        schema = {"type": "string", "format": "uuid"}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {_PROBLEM: {"schema": {"$ref": _REF.format(model="Problem")}}},
    }


def document(routes: list[tuple[str, str, str]] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway's routes (``gateway.ROUTES`` by default).

    A route without an :class:`Operation` in :data:`OPERATIONS` is listed bare.
    """
    if routes is None:
        from .gateway import ROUTES

        routes = list(ROUTES)
    summaries = {(m, p): does for m, p, does in routes} | _EXTRA_SUMMARIES
    # A route without an Operation is still listed (tests require one for each).
    operations = {key: OPERATIONS.get(key, Operation({200: None})) for key in summaries}
    models: set[type[BaseModel]] = {Problem}
    for op in operations.values():
        models.update(m for m in op.answers.values() if m is not None)
        if op.body is not None:
            models.add(op.body)
    ordered = sorted(models, key=lambda m: m.__name__)
    _, schemas = models_json_schema([(m, "validation") for m in ordered], ref_template=_REF)

    def ref(model: type[BaseModel]) -> dict[str, str]:
        return {"$ref": _REF.format(model=model.__name__)}

    paths: dict[str, dict[str, Any]] = {}
    for (method, path), op in operations.items():
        item: dict[str, Any] = {
            "summary": summaries[(method, path)],
            "operationId": _operation_id(method, path),
            "tags": [path.strip("/").split("/")[0] or "index"],
        }
        parameters = [_path_parameter(n) for n in re.findall(r"{(\w+)}", path)]
        parameters += [
            {"name": q, "in": "query", "required": False, "schema": _QUERY[q]} for q in op.query
        ]
        if op.idempotent:
            parameters.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "a retry with the same key is the same request "
                    "(1-128 visible ASCII characters)",
                    "schema": {"type": "string", "pattern": "^[!-~]{1,128}$"},
                }
            )
        if parameters:
            item["parameters"] = parameters
        responses: dict[str, Any] = {}
        for status, model in sorted(op.answers.items()):
            answer: dict[str, Any] = {"description": _DESCRIPTIONS.get(status, "OK")}
            if model is not None:
                answer["content"] = {"application/json": {"schema": ref(model)}}
            responses[str(status)] = answer
        if op.body is not None:
            item["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(op.body)}},
            }
            responses["400"] = _problem("the body is not JSON (or not UTF-8)")
            responses["413"] = _problem("the body is too large")
            responses["422"] = _problem("the body is not valid")
        if op.query or op.idempotent:
            responses.setdefault("422", _problem("a parameter is not valid"))
        if op.auth:
            item["security"] = [{"bearer": []}]
            responses["401"] = _problem("no valid bearer token")
        if "{" in path:
            responses["404"] = _problem("no such resource (or another customer's)")
        for status, when in op.refusals.items():
            responses[str(status)] = _problem(when)
        responses.setdefault("429", _problem("too many requests: retry after Retry-After"))
        responses["502"] = _problem("a service it depends on answered with an error")
        responses.setdefault("503", _problem("a service it depends on is unavailable"))
        responses["504"] = _problem("a service it depends on did not answer in time")
        item["responses"] = dict(sorted(responses.items()))
        paths.setdefault(path, {})[method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SimpleBank gateway",
            "version": VERSION,
            "description": "The public REST API of SimpleBank (generated from its models).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "the access_token of POST /login",
                }
            },
        },
    }


_DESCRIPTIONS = {
    200: "OK (for a POST: a replay of the same request)",
    201: "created",
    202: "accepted: it runs on; poll the resource",
}


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}") for w in re.split(r"[/.]", path) if w] or ["index"]
    return method.lower() + "".join(w.title().replace("_", "") for w in words)


def install(service: Service, *, path: str = "/openapi.json") -> None:
    """Serve :func:`document` (built now, once) at ``GET path``."""
    built = document()

    @service.get(path)
    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(built)
