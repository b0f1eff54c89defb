"""gateway: SimpleBank's only public entry (REST).

It authenticates the customer from the bearer token that customers issued (checked
here, with the shared key: no call per request), and forwards the identity to the
internal services in ``X-Customer-Id``. Outbound headers are built from scratch, so a
client can never pass its own ``X-Customer-Id`` (or any other internal header) through.
Path ids are checked before anything is forwarded, so no client path reaches an
internal route (``/internal/*``, ``PUT /prices``, ``/alerts``).

Every upstream is called through ``service.client(name)`` (deadlines, retries, breaker).
The portfolio is **API composition**: the customer's holdings (the CQRS read model)
valued with market-data's prices; prices and instruments are cached by the gateway (a
fallback with a 300 s TTL, the book's), so the portfolio still answers while
market-data is down.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from chassis import ChassisSettings, ProblemError, Service, read_json
from chassis.client import Fallback, Response, ServiceClient
from chassis.exceptions import UpstreamError

from . import graphql_api, openapi
from .auth import TokenError, VerifiedTokens, secret_of
from .common import (
    CUSTOMER_HEADER,
    PROBLEM_BASE,
    VERSION,
    BankSettings,
    bank_settings_from,
    business_counter,
    problem,
)
from .webclient import add_web_client

__all__ = ["ROUTES", "create"]

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch
_SYMBOL = re.compile(r"[A-Z][A-Z0-9.]{0,9}").fullmatch
_WAIT = re.compile(r"[0-9]{1,6}(\.[0-9]{1,3})?").fullmatch
_KEY = re.compile(r"[\x21-\x7e]{1,128}").fullmatch  # visible ASCII: safe to forward and store
_DEPOSITS = uuid.UUID("5d1e0c8a-3f4b-4b8e-9a51-0c2d9e7f6b10")  # namespace of derived deposit ids
_FORWARDED_QUERY = ("limit", "state")
WAIT_CAP_SECONDS = 10.0  # orders' MAX_WAIT_SECONDS: longer waits are refused there
WAIT_SLACK_SECONDS = 5.0  # on top of a waiting read's wait: the ordinary call timeout

ROUTES = [
    ("POST", "/signup", "sign up: {email, password, name}"),
    ("POST", "/login", "log in: {email, password} -> bearer token"),
    ("GET", "/me", "the customer"),
    ("POST", "/deposits", "deposit: {amount_cents[, deposit_id]}"),
    ("GET", "/balances", "cash and positions, available and reserved"),
    ("POST", "/orders", "place an order: {side, symbol, quantity}"),
    ("POST", "/shares/buy", "buy: {symbol, quantity}"),
    ("POST", "/shares/sell", "sell: {symbol, quantity}"),
    ("GET", "/orders", "the customer's orders (?state=&limit=)"),
    ("GET", "/orders/{order_id}", "one order, with its version"),
    ("GET", "/portfolio", "holdings valued at market prices, with a version"),
    ("GET", "/instruments", "what can be traded"),
    ("GET", "/instruments/{symbol}", "one instrument"),
    ("GET", "/prices", "current prices (?symbols=VTI,BND)"),
    ("POST", "/strategies", "create a strategy: {name, allocations: [{symbol, percent}]}"),
    ("GET", "/strategies", "the customer's strategies"),
    ("GET", "/strategies/{strategy_id}", "one strategy"),
    ("POST", "/strategies/{strategy_id}/investments", "invest: {amount_cents}"),
    ("GET", "/strategies/{strategy_id}/investments", "a strategy's investments"),
    ("GET", "/investments/{investment_id}", "one investment and its orders"),
    ("GET", "/notifications", "the customer's notifications (?limit=)"),
]
"""The public API: method, path, what it does (also served at ``GET /``)."""


def _unauthenticated(detail: str) -> ProblemError:
    return ProblemError(
        detail,
        status=401,
        title="Unauthenticated",
        type=PROBLEM_BASE + "unauthenticated",
        headers={"WWW-Authenticate": 'Bearer realm="simplebank"'},
    )


def _id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not _UUID(value):
        raise web.HTTPNotFound(text=f"no such {name.removesuffix('_id')}")
    return value


def _idempotency_key(request: web.Request) -> str | None:
    """The ``Idempotency-Key`` header, if sent: 1-128 visible ASCII characters."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _KEY(key):
        raise problem(
            422, "invalid-idempotency-key", "Idempotency-Key: 1-128 visible ASCII characters"
        )
    return key


async def _object(request: web.Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise problem(422, "invalid-body", "the body must be a JSON object")
    return body


def _relay(response: Response, location: str | None = None) -> web.Response:
    """The upstream's answer, as the gateway's (status, body and content type)."""
    headers = {}
    content_type = response.headers.get("Content-Type", "application/json").split(";")[0]
    if location is not None and response.status in (201, 202):
        headers["Location"] = location
    retry_after = response.headers.get("Retry-After")
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return web.Response(
        body=response.body, status=response.status, content_type=content_type, headers=headers
    )


def create(*, settings: ChassisSettings | None = None) -> Service:
    """The gateway (needs ``CHASSIS_AUTH__TOKEN_SECRET``, the key customers signs with)."""
    service = Service(
        "gateway",
        version=VERSION,
        settings=bank_settings_from(settings) if settings is not None else BankSettings,
    )
    # The public edge never shows the chassis' live state (/_chassis), whatever the
    # settings: operators read it on the internal services.
    service.introspection.enabled = False
    customers = service.client("customers")
    accounts = service.client("accounts")
    orders = service.client("orders")
    holdings = service.client("holdings")
    strategies = service.client("strategies")
    notifications = service.client("notifications")
    # The book's market-data calls: 5 s timeout, 3 attempts, last good answer for 300 s.
    market_data = service.client("market-data", timeout_seconds=5.0, max_attempts=3)
    cached = Fallback(cache_ttl_seconds=300.0)
    page = add_web_client(service)  # the browser client: GET / (HTML) and /web/*
    auth_failures = business_counter(
        service,
        "simplebank_gateway_auth_failures_total",
        "Requests refused for want of a valid token, by reason.",
        ("reason",),
    )
    orders_placed = business_counter(
        service,
        "simplebank_gateway_orders_placed_total",
        "Orders accepted through the gateway, by side.",
        ("side",),
    )

    def auth() -> BankSettings:
        return bank_settings_from(service.settings)

    tokens: VerifiedTokens | None = None  # made at start, from the settings then in force

    @service.lifespan
    async def check_secret(app: web.Application) -> AsyncIterator[None]:
        nonlocal tokens
        secret_of(auth().auth)  # a missing key fails the start, not the first request
        tokens = VerifiedTokens(auth().auth)
        yield

    def identity(request: web.Request) -> str:
        """The customer of the bearer token (never a client-sent ``X-Customer-Id``)."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            auth_failures.labels("missing").inc()
            raise _unauthenticated("an 'Authorization: Bearer <token>' header is required")
        try:
            assert tokens is not None  # requests come after the start
            customer = tokens.verify(token.strip())
        except TokenError as exc:
            auth_failures.labels("expired" if "expired" in str(exc) else "invalid").inc()
            raise _unauthenticated(str(exc)) from None
        if not _UUID(customer):
            auth_failures.labels("invalid").inc()
            raise _unauthenticated("the token is not valid")
        return customer

    async def call(
        request: web.Request,
        client: ServiceClient,
        method: str,
        path: str,
        *,
        customer: str | None = None,
        json: Any = None,
        params: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Response:
        """Call an upstream for ``customer``; ``idempotency_key`` lets the client retry a POST."""
        headers = {"Accept": "application/json"}
        if customer is not None:
            headers[CUSTOMER_HEADER] = customer
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        if json is None:
            return await client.request(method, path, headers=headers, params=params)
        return await client.request(method, path, headers=headers, params=params, json=json)

    def query(request: web.Request) -> dict[str, str]:
        return {k: request.query[k] for k in _FORWARDED_QUERY if k in request.query}

    # -- index, customers --------------------------------------------------------------
    @service.get("/")
    async def index(request: web.Request) -> web.Response:
        if page.wanted(request):
            return page.response()
        return web.json_response(
            {
                "service": "SimpleBank gateway",
                "version": VERSION,
                "authentication": "Authorization: Bearer <access_token from POST /login>",
                "routes": [{"method": m, "path": p, "does": d} for m, p, d in ROUTES],
            }
        )

    @service.post("/signup")
    async def sign_up(request: web.Request) -> web.Response:
        answer = await call(request, customers, "POST", "/customers", json=await _object(request))
        return _relay(answer, "/me")

    @service.post("/login")
    async def log_in(request: web.Request) -> web.Response:
        return _relay(
            await call(request, customers, "POST", "/tokens", json=await _object(request))
        )

    @service.get("/me")
    async def me(request: web.Request) -> web.Response:
        customer = identity(request)
        return _relay(await call(request, customers, "GET", "/customers/me", customer=customer))

    # -- accounts ----------------------------------------------------------------------
    @service.post("/deposits")
    async def deposit(request: web.Request) -> web.Response:
        customer = identity(request)
        body = await _object(request)
        key = _idempotency_key(request)
        if "deposit_id" not in body:
            # A retried deposit with the same Idempotency-Key is the same deposit.
            seed = f"{customer}/{key}" if key else None
            body["deposit_id"] = str(uuid.uuid5(_DEPOSITS, seed) if seed else uuid.uuid4())
        deposit_id = body["deposit_id"]
        answer = await call(
            request,
            accounts,
            "POST",
            "/deposits",
            customer=customer,
            json=body,
            idempotency_key=deposit_id if isinstance(deposit_id, str) else None,
        )
        return _relay(answer, "/balances")

    @service.get("/balances")
    async def balances(request: web.Request) -> web.Response:
        customer = identity(request)
        return _relay(await call(request, accounts, "GET", "/balances", customer=customer))

    # -- orders ------------------------------------------------------------------------
    async def place(request: web.Request, customer: str, body: dict[str, Any]) -> web.Response:
        answer = await call(
            request,
            orders,
            "POST",
            "/orders",
            customer=customer,
            json=body,
            idempotency_key=_idempotency_key(request),
        )
        if answer.status == 202:
            orders_placed.labels(str(body.get("side"))).inc()
        location = None
        if answer.status in (200, 202):
            location = f"/orders/{answer.json()['order_id']}"
        return _relay(answer, location)

    @service.post("/orders")
    async def place_order(request: web.Request) -> web.Response:
        customer = identity(request)
        return await place(request, customer, await _object(request))

    @service.post("/shares/buy")
    async def buy(request: web.Request) -> web.Response:
        customer = identity(request)
        return await place(request, customer, {**await _object(request), "side": "buy"})

    @service.post("/shares/sell")
    async def sell(request: web.Request) -> web.Response:
        customer = identity(request)
        return await place(request, customer, {**await _object(request), "side": "sell"})

    @service.get("/orders")
    async def list_orders(request: web.Request) -> web.Response:
        customer = identity(request)
        answer = await call(
            request, orders, "GET", "/orders", customer=customer, params=query(request)
        )
        return _relay(answer)

    @service.get("/orders/{order_id}")
    async def get_order(request: web.Request) -> web.Response:
        customer = identity(request)
        path = f"/orders/{_id(request, 'order_id')}"
        params = {k: request.query[k] for k in ("wait_seconds", "version") if k in request.query}
        if "wait_seconds" not in params:
            return _relay(await call(request, orders, "GET", path, customer=customer))
        # A waiting read (orders checks the values): the call outlasts the wait.
        wait = params["wait_seconds"]
        budget = WAIT_SLACK_SECONDS + (min(float(wait), WAIT_CAP_SECONDS) if _WAIT(wait) else 0)
        answer = await orders.get(
            path,
            params=params,
            headers={"Accept": "application/json", CUSTOMER_HEADER: customer},
            timeout=budget,
            deadline=budget,
        )
        return _relay(answer)

    # -- portfolio: API composition ----------------------------------------------------
    @service.get("/portfolio")
    async def portfolio(request: web.Request) -> web.Response:
        customer = identity(request)
        answer = await call(request, holdings, "GET", "/holdings", customer=customer)
        answer.raise_for_status()
        held = answer.json()
        symbols = sorted(p["symbol"] for p in held["positions"])
        prices: dict[str, int] = {}
        prices_as_of = None
        if symbols:
            try:
                quoted = await market_data.get(
                    "/prices", params={"symbols": ",".join(symbols)}, fallback=cached
                )
                quoted.raise_for_status()
                prices = quoted.json()["prices"]
                prices_as_of = quoted.json()["as_of"]
            except UpstreamError:
                prices = {}  # market-data down and nothing cached: holdings without values
        positions = []
        for p in held["positions"]:
            price = prices.get(p["symbol"])
            value = None if price is None else price * p["quantity"]
            positions.append(
                {
                    **p,
                    "price_cents": price,
                    "market_value_cents": value,
                    "gain_cents": None if value is None else value - p["cost_basis_cents"],
                }
            )
        valued = all(p["market_value_cents"] is not None for p in positions)
        invested = sum(p["market_value_cents"] or 0 for p in positions)
        return web.json_response(
            {
                "customer_id": customer,
                "version": held["version"],
                "cash_cents": held["cash_cents"],
                "pending_orders": held["pending_orders"],
                "positions": positions,
                "positions_value_cents": invested if valued else None,
                "total_value_cents": held["cash_cents"] + invested if valued else None,
                "prices_available": valued,
                "prices_as_of": prices_as_of,
                "updated_at": held["updated_at"],
            }
        )

    # -- market data -------------------------------------------------------------------
    @service.get("/instruments")
    async def instruments(request: web.Request) -> web.Response:
        return _relay(await market_data.get("/instruments", fallback=cached))

    @service.get("/instruments/{symbol}")
    async def instrument(request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        if not _SYMBOL(symbol):
            raise web.HTTPNotFound(text="no such instrument")
        return _relay(await market_data.get(f"/instruments/{symbol}", fallback=cached))

    @service.get("/prices")
    async def prices(request: web.Request) -> web.Response:
        wanted = request.query.get("symbols", "")
        if wanted and not all(_SYMBOL(s) for s in wanted.split(",")):
            raise problem(422, "invalid-symbols", "symbols is a comma-separated list of symbols")
        params = {"symbols": wanted} if wanted else None
        return _relay(await market_data.get("/prices", params=params, fallback=cached))

    # -- strategies ----------------------------------------------------------------------
    @service.post("/strategies")
    async def create_strategy(request: web.Request) -> web.Response:
        customer = identity(request)
        body = await _object(request)
        answer = await call(
            request, strategies, "POST", "/strategies", customer=customer, json=body
        )
        location = f"/strategies/{answer.json()['strategy_id']}" if answer.status == 201 else None
        return _relay(answer, location)

    @service.get("/strategies")
    async def list_strategies(request: web.Request) -> web.Response:
        customer = identity(request)
        return _relay(await call(request, strategies, "GET", "/strategies", customer=customer))

    @service.get("/strategies/{strategy_id}")
    async def get_strategy(request: web.Request) -> web.Response:
        customer = identity(request)
        path = f"/strategies/{_id(request, 'strategy_id')}"
        return _relay(await call(request, strategies, "GET", path, customer=customer))

    @service.post("/strategies/{strategy_id}/investments")
    async def invest(request: web.Request) -> web.Response:
        customer = identity(request)
        path = f"/strategies/{_id(request, 'strategy_id')}/investments"
        body = await _object(request)
        answer = await call(
            request,
            strategies,
            "POST",
            path,
            customer=customer,
            json=body,
            idempotency_key=_idempotency_key(request),
        )
        location = None
        if answer.status in (200, 202):
            location = f"/investments/{answer.json()['investment_id']}"
        return _relay(answer, location)

    @service.get("/strategies/{strategy_id}/investments")
    async def list_investments(request: web.Request) -> web.Response:
        customer = identity(request)
        path = f"/strategies/{_id(request, 'strategy_id')}/investments"
        return _relay(await call(request, strategies, "GET", path, customer=customer))

    @service.get("/investments/{investment_id}")
    async def get_investment(request: web.Request) -> web.Response:
        customer = identity(request)
        path = f"/investments/{_id(request, 'investment_id')}"
        return _relay(await call(request, strategies, "GET", path, customer=customer))

    # -- notifications -------------------------------------------------------------------
    @service.get("/notifications")
    async def list_notifications(request: web.Request) -> web.Response:
        customer = identity(request)
        answer = await call(
            request,
            notifications,
            "GET",
            "/notifications",
            customer=customer,
            params=query(request),
        )
        return _relay(answer)

    # -- GraphQL (graphql_api.py) and the OpenAPI document (openapi.py) ------------------
    upstreams = graphql_api.Gateway(
        identity=identity,
        customers=customers,
        orders=orders,
        holdings=holdings,
        market_data=market_data,
        cached=cached,
        orders_placed=orders_placed,
    )
    graphql_api.install(service, upstreams)
    openapi.install(service)

    return service
