"""The authorisation matrix: every customer-scoped operation x another customer's ids.

The operations come from the gateway's own ``/openapi.json``, so a new endpoint is
covered as soon as it is documented: one with a bearer ``security`` requirement is
customer-scoped and goes through the matrix; one without must be listed in
:data:`PUBLIC`, or the first test fails. Anna then tries every customer-scoped
operation with Ben's ids (his orders, strategy, investment in the path; his customer id
in ``X-Customer-Id``, the query and the body): each is refused (403/404 problem JSON),
or answers about Anna only, and nothing of Ben's is in any answer or changed.
Without a token, with a bad, forged or expired one: 401, everywhere.
"""

from __future__ import annotations

import re
import time
from typing import Any

from simplebank.auth import issue_token
from simplebank.common import (
    CUSTOMER_HEADER,
    PROBLEM_BASE,
    AuthSettings,
    bank_settings_from,
    new_id,
)
from simplebank.services import Bank

from conftest import Customer

PUBLIC = {
    ("GET", "/"),
    ("POST", "/signup"),
    ("POST", "/login"),
    ("GET", "/instruments"),
    ("GET", "/instruments/{symbol}"),
    ("GET", "/prices"),
    ("POST", "/graphql"),  # its customer fields check the token themselves (tested below)
    ("GET", "/openapi.json"),
}
"""Operations anyone may call: no token, no customer data."""

BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/deposits"): {"amount_cents": 100},
    ("POST", "/orders"): {"side": "sell", "symbol": "VTI", "quantity": 1},
    ("POST", "/shares/buy"): {"symbol": "VTI", "quantity": 1},
    ("POST", "/shares/sell"): {"symbol": "VTI", "quantity": 1},
    ("POST", "/strategies"): {"name": "Anna's", "allocations": [{"symbol": "BND", "percent": 100}]},
    ("POST", "/strategies/{strategy_id}/investments"): {"amount_cents": 100},
}
"""A valid body for each customer-scoped POST (so a refusal is about whose ids, not the body)."""

REFUSED = (403, 404)


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): op
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method != "parameters"
    }


def customer_scoped(document: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted(key for key, op in operations(document).items() if op.get("security"))


async def document_of(customer: Customer) -> dict[str, Any]:
    status, document = await customer.call("GET", "/openapi.json", auth=False)
    assert status == 200
    return document  # type: ignore[no-any-return]


class Victim:
    """Ben, with one of everything: cash, a filled order, a strategy, an investment."""

    def __init__(self, ben: Customer, bank: Bank) -> None:
        self.ben = ben
        self.bank = bank
        self.ids: dict[str, str] = {}

    async def open_accounts(self) -> Victim:
        ben = self.ben
        deposit_id = new_id()
        await ben.ok(
            "POST",
            "/deposits",
            json={"amount_cents": 1_000_000, "deposit_id": deposit_id},
            status=201,
        )
        order = await ben.order("buy", "VTI", 1)
        assert order["state"] == "FILLED", order
        strategy = await ben.ok(
            "POST",
            "/strategies",
            json={"name": "Ben's", "allocations": [{"symbol": "BND", "percent": 100}]},
            status=201,
        )
        investment = await ben.ok(
            "POST",
            f"/strategies/{strategy['strategy_id']}/investments",
            json={"amount_cents": 20_000},
            status=202,
        )
        await ben.poll(
            f"/investments/{investment['investment_id']}", lambda i: i["state"] != "IN_PROGRESS"
        )
        assert ben.customer_id is not None
        self.ids = {
            "customer_id": ben.customer_id,
            "order_id": order["order_id"],
            "strategy_id": strategy["strategy_id"],
            "investment_id": investment["investment_id"],
            "deposit_id": deposit_id,
        }
        await self.bank.settle()  # the read models have caught up: Ben's views hold still
        return self

    @property
    def secrets(self) -> list[str]:
        """What no answer to Anna may contain."""
        return [*self.ids.values(), self.ben.email]

    def leaked(self, answer: Any, url: str) -> list[str]:
        """Ben's secrets in ``answer``, but for ids the caller put in ``url`` itself."""
        text = repr(answer)
        return [s for s in self.secrets if s in text and s not in url]

    async def state(self) -> list[Any]:
        """Everything Ben can see; compared before and after Anna's attempts."""
        paths = ["/me", "/balances", "/orders", "/portfolio", "/strategies", "/notifications"]
        paths += [
            f"/orders/{self.ids['order_id']}",
            f"/strategies/{self.ids['strategy_id']}/investments",
            f"/investments/{self.ids['investment_id']}",
        ]
        seen = [await self.ben.ok("GET", path) for path in paths]
        for answer in seen:  # drop what changes by itself (prices move, the clock runs)
            for volatile in ("prices_as_of", "updated_at"):
                answer.pop(volatile, None)
            for position in answer.get("positions", []):
                for volatile in ("price_cents", "market_value_cents", "gain_cents"):
                    position.pop(volatile, None)
            for volatile in ("positions_value_cents", "total_value_cents"):
                answer.pop(volatile, None)
        return seen


def foreign_path(path: str, ids: dict[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in ids, f"no id of another customer for {{{name}}} in {path}: add one"
        return ids[name]

    return re.sub(r"{(\w+)}", substitute, path)


async def test_every_operation_is_customer_scoped_or_explicitly_public(anna: Customer) -> None:
    document = await document_of(anna)
    for (method, path), op in operations(document).items():
        if (method, path) in PUBLIC:
            assert not op.get("security"), f"{method} {path} is listed public but needs a token"
            continue
        assert op.get("security") == [{"bearer": []}], (
            f"{method} {path} needs neither a token nor is listed in PUBLIC: decide which"
        )
        if method not in ("GET", "HEAD", "DELETE"):
            assert (method, path) in BODIES, f"add a valid body for {method} {path} to BODIES"
        for name in re.findall(r"{(\w+)}", path):
            assert name in {"order_id", "strategy_id", "investment_id"}, (
                f"{method} {path}: the matrix has no other customer's {name}; add one"
            )
    assert len(customer_scoped(document)) >= 16


async def test_no_customer_reaches_another_customers_data(
    anna: Customer, ben: Customer, bank: Bank
) -> None:
    victim = await Victim(ben, bank).open_accounts()
    before = await victim.state()
    document = await document_of(anna)
    smuggled = {CUSTOMER_HEADER: victim.ids["customer_id"]}
    problems: list[str] = []
    for method, path in customer_scoped(document):
        url = foreign_path(path, victim.ids)
        query = f"?customer_id={victim.ids['customer_id']}"
        body = BODIES.get((method, path))
        status, answer = await anna.call(method, url + query, json=body, headers=smuggled)
        where = f"{method} {url}: {status} {repr(answer)[:300]}"
        leaked = victim.leaked(answer, url)
        if leaked:
            problems.append(f"leaks {leaked}: {where}")
        if url != path:  # Ben's id in the path: refused
            if status not in REFUSED or not isinstance(answer, dict):
                problems.append(f"not refused: {where}")
            elif not answer.get("type", "").startswith((PROBLEM_BASE, "about:blank")):
                problems.append(f"not a problem answer: {where}")
        elif status < 300:  # Ben's id only smuggled: it answers about Anna, or refuses
            owner = answer.get("customer_id") if isinstance(answer, dict) else None
            if owner not in (None, anna.customer_id):
                problems.append(f"answers about {owner}: {where}")
        elif status not in (*REFUSED, 409, 422):
            problems.append(f"unexpected answer: {where}")
        if body is not None:  # the same with Ben's customer id in the body
            forged = {**body, "customer_id": victim.ids["customer_id"]}
            status, answer = await anna.call(method, url, json=forged, headers=smuggled)
            if status < 400 or victim.leaked(answer, url):
                problems.append(f"took a customer_id in the body: {method} {url}: {status}")
    # Ben's deposit id is his: reusing it is refused, not merged into Anna's deposits.
    for amount in (1_000_000, 100):
        deposit = {"amount_cents": amount, "deposit_id": victim.ids["deposit_id"]}
        status, answer = await anna.call("POST", "/deposits", json=deposit)
        if status != 409 or victim.leaked(answer, "/deposits"):
            problems.append(f"Ben's deposit_id: {status} {answer}")
    await bank.settle()
    assert await victim.state() == before, "Anna's attempts changed what Ben sees"
    assert not problems, "\n".join(problems)


async def test_customer_operations_refuse_missing_bad_forged_and_expired_tokens(
    anna: Customer, bank: Bank
) -> None:
    assert anna.customer_id is not None
    auth = bank_settings_from(bank.services["gateway"].settings).auth
    expired = issue_token(anna.customer_id, auth, now=time.time() - auth.token_ttl_seconds - 60)
    forged = issue_token(
        anna.customer_id, AuthSettings(token_secret="another key of at least 32 characters")
    )
    foreign_issuer = issue_token(
        anna.customer_id, auth.model_copy(update={"issuer": "someone-else"})
    )
    header, payload, _ = (anna.token or "").split(".")
    unsigned = f"{header}.{payload}."
    bad = {
        "no token": None,
        "empty bearer": "Bearer ",
        "basic scheme": f"Basic {anna.token}",
        "garbage": "Bearer not.a.token",
        "unsigned": f"Bearer {unsigned}",
        "forged": f"Bearer {forged}",
        "other issuer": f"Bearer {foreign_issuer}",
        "expired": f"Bearer {expired}",
    }
    document = await document_of(anna)
    ids = {"order_id": anna.customer_id, "strategy_id": anna.customer_id}
    ids["investment_id"] = anna.customer_id
    problems = []
    for method, path in customer_scoped(document):
        url = foreign_path(path, ids)
        for why, authorization in bad.items():
            headers = {CUSTOMER_HEADER: anna.customer_id}  # never trusted from outside
            if authorization is not None:
                headers["Authorization"] = authorization
            body = BODIES.get((method, path))
            status, answer = await anna.call(method, url, json=body, headers=headers, auth=False)
            if status != 401 or answer.get("type") != PROBLEM_BASE + "unauthenticated":
                problems.append(f"{method} {url} with {why}: {status} {answer}")
    assert not problems, "\n".join(problems)


async def test_graphql_shows_no_other_customers_order(
    anna: Customer, ben: Customer, bank: Bank
) -> None:
    victim = await Victim(ben, bank).open_accounts()
    order = victim.ids["order_id"]
    query = f'{{ order(id: "{order}") {{ id state }} customer {{ id email }} }}'
    status, answer = await anna.call("POST", "/graphql", json={"query": query})
    assert status == 200, answer
    assert answer["data"]["order"] is None
    assert answer["data"]["customer"]["id"] == anna.customer_id
    assert not victim.leaked(answer, query)
    status, answer = await anna.call("POST", "/graphql", json={"query": query}, auth=False)
    assert status == 200 and answer.get("errors"), answer
    assert answer["data"] is None or answer["data"].get("order") is None
    assert not victim.leaked(answer, query)
