"""The gateway's ``/graphql``: one query for customer, portfolio, orders and prices.

The seed's consumer-driven gateway: a client asks for exactly the fields it shows, and
the gateway composes them from the internal services through the same
``service.client(name)`` clients (deadlines, retries, breaker) and the same bearer
token as the REST routes. Built with strawberry; served by a plain aiohttp handler
(``POST /graphql``, ``{"query", "variables", "operationName"}``).

**No N+1 calls.** Prices and instruments are read through per-request data loaders:
every ``price`` asked in one query is fetched with one ``GET /prices?symbols=...``
(a position asks for the prices of its whole portfolio, so the first batch has them
all), the instruments with one ``GET /instruments``.

**Errors never leak internals.** A resolver error is answered as a GraphQL error
only when it is one of ours (:class:`BankError`, with ``extensions.code`` such as
``UNAUTHENTICATED``, ``NOT_FOUND``, ``INSUFFICIENT_FUNDS`` or ``UNAVAILABLE``); any
other exception becomes ``internal error`` (code ``INTERNAL``) and its traceback goes
to the log only. Upstream URLs and stack traces never reach the client.

::

    {
      customer { name }
      portfolio { cashCents totalValueCents positions { symbol quantity price { priceCents } } }
      orders(limit: 5) { id side symbol quantity state }
    }
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import strawberry
from aiohttp import web
from graphql import GraphQLError
from prometheus_client import Counter
from strawberry.dataloader import DataLoader
from strawberry.extensions import QueryDepthLimiter
from strawberry.types import ExecutionContext

from chassis import ProblemError, Service, read_json
from chassis.client import Fallback, Response, ServiceClient
from chassis.exceptions import UpstreamError

from .common import CUSTOMER_HEADER, PROBLEM_BASE, problem

__all__ = ["SCHEMA", "BankError", "Gateway", "install"]

log = logging.getLogger(__name__)

MAX_DEPTH = 8
"""Deepest query accepted (a guard against abusive nesting)."""


class BankError(Exception):
    """An error a client may see: a message and a stable ``extensions.code``."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.extensions = {"code": code}


F = TypeVar("F", bound=Callable[..., Any])


def _field(description: str) -> Callable[[F], F]:
    """``@strawberry.field(description=...)``, typed for ``mypy --strict``."""
    return cast("Callable[[F], F]", strawberry.field(description=description))


def _mutation(description: str) -> Callable[[F], F]:
    """``@strawberry.mutation(description=...)``, typed for ``mypy --strict``."""
    return cast("Callable[[F], F]", strawberry.mutation(description=description))


_UNAVAILABLE = "a service the bank depends on is unavailable; try again later"


@dataclass
class Gateway:
    """What ``/graphql`` composes: the gateway's clients and its authentication."""

    identity: Callable[[web.Request], str]
    """The gateway's bearer-token check: the customer id, or a 401 ``ProblemError``."""
    customers: ServiceClient
    orders: ServiceClient
    holdings: ServiceClient
    market_data: ServiceClient
    cached: Fallback
    """The market-data fallback (the last good answer, as for REST)."""
    orders_placed: Counter | None = None
    """``simplebank_gateway_orders_placed_total``, counted for ``placeOrder`` too."""


def _error_of(answer: Response) -> BankError:
    """A client-facing error for an upstream's error answer (its problem detail only)."""
    if answer.status >= 500 or answer.status == 429:
        return BankError(_UNAVAILABLE, "UNAVAILABLE")
    try:
        body = answer.json()
    except ValueError:
        body = None
    kind, detail = None, None
    if isinstance(body, dict):
        kind = body.get("type")
        detail = body.get("detail")
    if answer.status == 404:
        return BankError("not found", "NOT_FOUND")
    code = "BAD_REQUEST"
    if isinstance(kind, str) and kind.startswith(PROBLEM_BASE):
        code = kind[len(PROBLEM_BASE) :].upper().replace("-", "_")
    message = detail if isinstance(detail, str) else "the request was refused"
    return BankError(message, code)


@dataclass
class Context:
    """One GraphQL request: its HTTP request, its customer and its data loaders."""

    request: web.Request
    gateway: Gateway
    prices: DataLoader[str, Price | None] = field(init=False)
    instruments: DataLoader[str, Instrument | None] = field(init=False)
    _customer: str | None = None

    def __post_init__(self) -> None:
        self.prices = DataLoader(load_fn=self._load_prices)
        self.instruments = DataLoader(load_fn=self._load_instruments)

    def customer(self) -> str:
        """The authenticated customer (the token is checked once, when first needed)."""
        if self._customer is None:
            try:
                self._customer = self.gateway.identity(self.request)
            except ProblemError as exc:
                raise BankError(exc.detail or "unauthenticated", "UNAUTHENTICATED") from None
        return self._customer

    async def fetch(
        self,
        client: ServiceClient,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Call an upstream for the customer; its JSON, or a :class:`BankError`."""
        headers = {"Accept": "application/json", CUSTOMER_HEADER: self.customer()}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        try:
            if json is None:
                answer = await client.request(method, path, headers=headers, params=params)
            else:
                answer = await client.request(
                    method, path, headers=headers, params=params, json=json
                )
        except UpstreamError as exc:
            log.warning("graphql: %s %s failed: %r", method, client.name, exc)
            raise BankError(_UNAVAILABLE, "UNAVAILABLE") from None
        if answer.status >= 400:
            raise _error_of(answer)
        return answer.json()

    async def _load_prices(self, symbols: list[str]) -> list[Price | None]:
        """One ``GET /prices?symbols=`` for every price asked in this batch."""
        try:
            answer = await self.gateway.market_data.get(
                "/prices",
                params={"symbols": ",".join(sorted(set(symbols)))},
                fallback=self.gateway.cached,
            )
            answer.raise_for_status()
            body = answer.json()
        except UpstreamError:
            return [None] * len(symbols)  # market-data down, nothing cached: no prices
        quoted: dict[str, int] = body["prices"]
        return [
            Price(symbol=s, price_cents=quoted[s], as_of=body["as_of"]) if s in quoted else None
            for s in symbols
        ]

    async def _load_instruments(self, symbols: list[str]) -> list[Instrument | None]:
        """One ``GET /instruments`` for every instrument asked in this batch."""
        try:
            answer = await self.gateway.market_data.get(
                "/instruments", fallback=self.gateway.cached
            )
            answer.raise_for_status()
        except UpstreamError:
            raise BankError(_UNAVAILABLE, "UNAVAILABLE") from None
        known = {i["symbol"]: Instrument.of(i) for i in answer.json()["instruments"]}
        return [known.get(s) for s in symbols]

    async def all_instruments(self) -> list[Instrument]:
        """Every instrument (primes the loader, so nested lookups cost nothing more)."""
        try:
            answer = await self.gateway.market_data.get(
                "/instruments", fallback=self.gateway.cached
            )
            answer.raise_for_status()
        except UpstreamError:
            raise BankError(_UNAVAILABLE, "UNAVAILABLE") from None
        listed = [Instrument.of(i) for i in answer.json()["instruments"]]
        for instrument in listed:
            self.instruments.prime(instrument.symbol, instrument)
        return listed


Info = strawberry.Info[Context, None]


# -- types -------------------------------------------------------------------------------
@strawberry.enum(description="Buy or sell.")
class OrderSide(enum.Enum):
    BUY = "buy"
    SELL = "sell"


@strawberry.type(description="A live price from market-data.")
class Price:
    symbol: str
    price_cents: int
    as_of: str | None


@strawberry.type(description="A tradable instrument.")
class Instrument:
    symbol: str
    name: str
    asset_class: str
    currency: str
    listed_price_cents: int | None = strawberry.field(
        description="The price in market-data's instrument list."
    )
    price_updated_at: str | None

    @staticmethod
    def of(body: dict[str, Any]) -> Instrument:
        return Instrument(
            symbol=body["symbol"],
            name=body["name"],
            asset_class=body["asset_class"],
            currency=body["currency"],
            listed_price_cents=body.get("price_cents"),
            price_updated_at=body.get("price_updated_at"),
        )

    @_field("The live price (batched with every other price asked).")
    async def price(self, info: Info) -> Price | None:
        return await info.context.prices.load(self.symbol)


@strawberry.type(description="Shares of one instrument held, valued at the live price.")
class Position:
    symbol: str
    quantity: int
    cost_basis_cents: int
    held: strawberry.Private[tuple[str, ...]]

    async def _prices(self, info: Info) -> dict[str, Price | None]:
        # Ask for the whole portfolio's prices: one batch, whatever the query's shape.
        quoted = await info.context.prices.load_many(list(self.held))
        return dict(zip(self.held, quoted, strict=True))

    @_field("The live price (one market-data call per portfolio).")
    async def price(self, info: Info) -> Price | None:
        return (await self._prices(info)).get(self.symbol)

    async def value(self, info: Info) -> int | None:
        price = (await self._prices(info)).get(self.symbol)
        return None if price is None else price.price_cents * self.quantity

    @_field("quantity * price; null without a price.")
    async def market_value_cents(self, info: Info) -> int | None:
        return await self.value(info)

    @_field("market value - cost basis; null without a price.")
    async def gain_cents(self, info: Info) -> int | None:
        value = await self.value(info)
        return None if value is None else value - self.cost_basis_cents

    @_field("The instrument held.")
    async def instrument(self, info: Info) -> Instrument | None:
        return await info.context.instruments.load(self.symbol)


@strawberry.type(description="The customer's holdings (the CQRS read model) at live prices.")
class Portfolio:
    version: int
    cash_cents: int
    pending_orders: int
    updated_at: str | None
    positions: list[Position]

    async def invested(self, info: Info) -> int | None:
        values = [await p.value(info) for p in self.positions]
        return None if None in values else sum(v or 0 for v in values)

    @_field("True when every position has a price.")
    async def prices_available(self, info: Info) -> bool:
        return await self.invested(info) is not None

    @_field("The positions' value; null when a price is missing.")
    async def positions_value_cents(self, info: Info) -> int | None:
        return await self.invested(info)

    @_field("Cash plus positions; null when a price is missing.")
    async def total_value_cents(self, info: Info) -> int | None:
        invested = await self.invested(info)
        return None if invested is None else self.cash_cents + invested


@strawberry.type(description="An order and where its saga is (poll `version`).")
class Order:
    id: strawberry.ID
    side: OrderSide
    symbol: str
    quantity: int
    state: str = strawberry.field(
        description="PENDING, RESERVED, PLACED, FEE_CHARGED, COMPENSATING, FILLED or FAILED."
    )
    version: int
    limit_price_cents: int | None
    price_cents: int | None
    gross_cents: int | None
    fee_cents: int | None
    failed_step: str | None
    failure_reason: str | None
    created_at: str
    updated_at: str

    @staticmethod
    def of(body: dict[str, Any]) -> Order:
        return Order(
            id=strawberry.ID(body["order_id"]),
            side=OrderSide(body["side"]),
            symbol=body["symbol"],
            quantity=body["quantity"],
            state=body["state"],
            version=body["version"],
            limit_price_cents=body.get("limit_price_cents"),
            price_cents=body.get("price_cents"),
            gross_cents=body.get("gross_cents"),
            fee_cents=body.get("fee_cents"),
            failed_step=body.get("failed_step"),
            failure_reason=body.get("failure_reason"),
            created_at=body["created_at"],
            updated_at=body["updated_at"],
        )

    @_field("The instrument ordered.")
    async def instrument(self, info: Info) -> Instrument | None:
        return await info.context.instruments.load(self.symbol)


async def _portfolio(info: Info) -> Portfolio:
    ctx = info.context
    held = await ctx.fetch(ctx.gateway.holdings, "GET", "/holdings")
    symbols = tuple(sorted(p["symbol"] for p in held["positions"]))
    return Portfolio(
        version=held["version"],
        cash_cents=held["cash_cents"],
        pending_orders=held["pending_orders"],
        updated_at=held.get("updated_at"),
        positions=[
            Position(
                symbol=p["symbol"],
                quantity=p["quantity"],
                cost_basis_cents=p["cost_basis_cents"],
                held=symbols,
            )
            for p in held["positions"]
        ],
    )


async def _orders(info: Info, state: str | None, limit: int | None) -> list[Order]:
    params = {}
    if state is not None:
        params["state"] = state
    if limit is not None:
        params["limit"] = str(limit)
    ctx = info.context
    body = await ctx.fetch(ctx.gateway.orders, "GET", "/orders", params=params or None)
    return [Order.of(o) for o in body["orders"]]


@strawberry.type(description="A SimpleBank customer (the one of the bearer token).")
class Customer:
    id: strawberry.ID
    email: str
    name: str
    created_at: str

    @_field("The customer's portfolio at live prices.")
    async def portfolio(self, info: Info) -> Portfolio:
        return await _portfolio(info)

    @_field("The customer's orders, newest first.")
    async def orders(
        self, info: Info, state: str | None = None, limit: int | None = None
    ) -> list[Order]:
        return await _orders(info, state, limit)


@strawberry.type
class Query:
    @_field("The customer of the bearer token.")
    async def customer(self, info: Info) -> Customer:
        ctx = info.context
        body = await ctx.fetch(ctx.gateway.customers, "GET", "/customers/me")
        return Customer(
            id=strawberry.ID(body["customer_id"]),
            email=body["email"],
            name=body["name"],
            created_at=body["created_at"],
        )

    @_field("The customer's portfolio at live prices.")
    async def portfolio(self, info: Info) -> Portfolio:
        return await _portfolio(info)

    @_field("The customer's orders, newest first (limit 1..100).")
    async def orders(
        self, info: Info, state: str | None = None, limit: int | None = None
    ) -> list[Order]:
        return await _orders(info, state, limit)

    @_field("One of the customer's orders; null if there is none.")
    async def order(self, info: Info, id: strawberry.ID) -> Order | None:
        ctx = info.context
        ctx.customer()  # unauthenticated before "not found"
        if not _is_uuid(str(id)):
            return None
        try:
            body = await ctx.fetch(ctx.gateway.orders, "GET", f"/orders/{id}")
        except BankError as exc:
            if exc.extensions["code"] == "NOT_FOUND":
                return None
            raise
        return Order.of(body)

    @_field("What can be traded (no token needed).")
    async def instruments(self, info: Info) -> list[Instrument]:
        return await info.context.all_instruments()

    @_field("One instrument; null if it is not traded.")
    async def instrument(self, info: Info, symbol: str) -> Instrument | None:
        return await info.context.instruments.load(symbol)


@strawberry.type
class Mutation:
    @_mutation("Place an order; it answers PENDING and the saga runs on (poll `order`).")
    async def place_order(
        self,
        info: Info,
        side: OrderSide,
        symbol: str,
        quantity: int,
        idempotency_key: str | None = None,
    ) -> Order:
        ctx = info.context
        body = await ctx.fetch(
            ctx.gateway.orders,
            "POST",
            "/orders",
            json={"side": side.value, "symbol": symbol, "quantity": quantity},
            idempotency_key=idempotency_key,
        )
        if ctx.gateway.orders_placed is not None:
            ctx.gateway.orders_placed.labels(side.value).inc()
        return Order.of(body)


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


class _Schema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Our own errors are answers, not faults: log only the unexpected, with traceback.
        for error in errors:
            original = error.original_error
            if original is not None and not isinstance(original, BankError):
                log.error("graphql resolver failed at %s", error.path, exc_info=original)


SCHEMA = _Schema(
    query=Query, mutation=Mutation, extensions=[lambda: QueryDepthLimiter(max_depth=MAX_DEPTH)]
)
"""The gateway's GraphQL schema (``print(SCHEMA)`` shows its SDL)."""


def _public(error: GraphQLError) -> dict[str, Any]:
    """The error as the client sees it: ours and query errors as they are, others masked."""
    original = error.original_error
    if original is None or isinstance(original, BankError):
        return error.formatted  # type: ignore[return-value]
    masked = GraphQLError(
        "internal error", path=error.path, extensions={"code": "INTERNAL"}
    ).formatted
    if error.locations:
        masked["locations"] = [{"line": loc.line, "column": loc.column} for loc in error.locations]
    return masked  # type: ignore[return-value]


def install(service: Service, gateway: Gateway, *, path: str = "/graphql") -> None:
    """Serve the GraphQL API on ``POST path`` of the gateway ``service``."""

    @service.post(path)
    async def graphql(request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            raise problem(422, "invalid-body", 'the body must be {"query": "...", ...}')
        if not body["query"].strip():
            raise problem(422, "invalid-body", "the query is empty")
        variables = body.get("variables")
        operation = body.get("operationName")
        if variables is not None and not isinstance(variables, dict):
            raise problem(422, "invalid-body", "variables must be an object")
        if operation is not None and not isinstance(operation, str):
            raise problem(422, "invalid-body", "operationName must be a string")
        result = await SCHEMA.execute(
            body["query"],
            variable_values=variables,
            operation_name=operation,
            context_value=Context(request, gateway),
        )
        answer: dict[str, Any] = {"data": result.data}
        if result.errors:
            answer["errors"] = [_public(e) for e in result.errors]
        return web.json_response(answer)
