"""Fuzzing the gateway with schemathesis against its own ``/openapi.json``.

Every operation of the document gets valid (positive) and invalid (negative) requests,
as a signed-up customer; each answer must not be a 5xx, and its status, content type and
body must be ones the document declares. The whole bank runs in-process, so the fuzzer
reaches the internal services too; the ``bank`` fixture then checks that money is
conserved and nothing went negative.

Bounded for CI: ``SIMPLEBANK_FUZZ_EXAMPLES`` examples per operation and mode (4 by
default, derandomized, so a run is repeatable). ``SIMPLEBANK_FUZZ_SEED`` is ``random``
or a number (the same number, the same run). A longer, random run::

    SIMPLEBANK_FUZZ_EXAMPLES=200 SIMPLEBANK_FUZZ_SEED=random \\
        python -m pytest examples/simplebank/tests/test_fuzz.py
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from typing import Any
from urllib.parse import urlencode, urlsplit

import hypothesis
import requests
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)
from simplebank.services import Bank

from conftest import Customer

EXAMPLES = int(os.environ.get("SIMPLEBANK_FUZZ_EXAMPLES", "4"))
SEED = os.environ.get("SIMPLEBANK_FUZZ_SEED", "")  # "" derandomized, "random", or a number
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,
]


def fuzz(document: dict[str, Any], base_url: str, token: str) -> dict[str, list[str]]:
    """Fuzz every operation (blocking: run it in a thread); failures by operation."""
    schema = schemathesis.openapi.from_dict(document)
    headers = {"Authorization": f"Bearer {token}"}
    failures: dict[str, list[str]] = {}
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            described = document["paths"][operation.path][operation.method.lower()]
            modes = [GenerationMode.POSITIVE]
            if "parameters" in described or "requestBody" in described:
                modes.append(GenerationMode.NEGATIVE)  # nothing to get wrong otherwise
            for mode in modes:

                @hypothesis.settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    derandomize=not SEED,
                    database=None,
                    suppress_health_check=list(hypothesis.HealthCheck),
                    phases=[hypothesis.Phase.generate, hypothesis.Phase.shrink],
                )
                @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
                def send(case: schemathesis.Case) -> None:
                    case.call_and_validate(
                        base_url=base_url, session=session, headers=headers, checks=CHECKS
                    )

                if SEED.isdigit():
                    send = hypothesis.seed(int(SEED))(send)
                try:
                    send()
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # schemathesis' FailureGroup is one
                    failures.setdefault(f"{operation.label} ({mode.value})", []).append(str(exc))
    return failures


async def test_the_gateway_answers_every_fuzzed_request_as_its_document_says(
    bank: Bank, anna: Customer
) -> None:
    status, document = await anna.call("GET", "/openapi.json", auth=False)
    assert status == 200
    assert anna.token is not None
    failures = await asyncio.to_thread(fuzz, document, bank.urls["gateway"], anna.token)
    assert not failures, "\n\n".join(f"{op}:\n" + "\n".join(f) for op, f in failures.items())


async def send_raw(url: str, request: bytes) -> bytes:
    """Send bytes no HTTP client would (a header that is not ASCII); the status line."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
        await writer.wait_closed()
    return answer.split(b"\r\n", 1)[0]


async def test_an_idempotency_key_that_is_not_short_visible_ascii_is_422_not_500(
    anna: Customer,
) -> None:
    assert anna.token is not None
    keys = [b"\xe9t\xe9", b"\xff\xfe", "\u043a\u043b\u044e\u0447".encode(), b"x" * 129]
    bodies = {
        "/deposits": b'{"amount_cents": 5}',
        "/orders": b'{"side": "buy", "symbol": "VTI", "quantity": 1}',
        f"/strategies/{uuid.uuid4()}/investments": b'{"amount_cents": 5}',
    }
    for (path, body), key in itertools.product(bodies.items(), keys):
        request = b"\r\n".join(
            [
                f"POST {path} HTTP/1.1".encode(),
                b"Host: simplebank",
                f"Authorization: Bearer {anna.token}".encode(),
                b"Idempotency-Key: " + key,
                b"Content-Type: application/json",
                f"Content-Length: {len(body)}".encode(),
                b"Connection: close",
                b"",
                body,
            ]
        )
        status = await send_raw(anna.url, request)
        assert status == b"HTTP/1.1 422 Unprocessable Entity", (path, key)
    assert (await anna.cash())["available_cents"] == 0


async def test_a_limit_that_is_not_1_to_100_in_ascii_digits_is_422_not_500(
    anna: Customer,
) -> None:
    limits = ["\u00b2", "\u0663", "1" * 5000, "0", "101", "-1", ""]
    for path, limit in itertools.product(["/orders", "/notifications"], limits):
        status, body = await anna.call("GET", f"{path}?{urlencode({'limit': limit})}")
        assert status == 422 and body["title"] == "Invalid limit", (path, limit, body)


async def test_a_body_that_is_not_utf8_is_400_not_500(anna: Customer) -> None:
    headers = {"Content-Type": "application/json"}
    status, body = await anna.call("POST", "/deposits", data=b'{"\x90": 1}', headers=headers)
    assert status == 400 and body["title"] == "Malformed JSON", body


async def test_an_empty_graphql_query_is_422_not_500(anna: Customer) -> None:
    for query in ("", "  \n"):
        status, body = await anna.call("POST", "/graphql", json={"query": query})
        assert status == 422, body
