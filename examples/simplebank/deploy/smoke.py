"""Smoke-test a deployed SimpleBank through its gateway (the pipeline's "Test staging").

    python examples/simplebank/deploy/smoke.py http://127.0.0.1:18080

A new customer signs up, logs in, deposits $1,000, buys one VTI and waits until the
order is ``FILLED``. Exit 0 on success, 1 with the failed step otherwise. Standard
library only, so any Python 3.10+ on a build agent runs it.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

ATTEMPTS = 120
POLL_SECONDS = 0.5
TIMEOUT_SECONDS = 10.0


class SmokeError(Exception):
    """A step of the smoke test failed."""


def call(
    base: str, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    """One request to the gateway; (status, decoded JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base.rstrip("/") + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def expect(step: str, got: tuple[int, Any], status: int) -> Any:
    if got[0] != status:
        raise SmokeError(f"{step}: expected HTTP {status}, got {got[0]}: {got[1]!r}")
    return got[1]


def run(base: str) -> str:
    """The scenario; returns the filled order's id."""
    me = {
        "email": f"smoke-{uuid.uuid4().hex[:12]}@example.com",
        "password": uuid.uuid4().hex,
        "name": "Smoke Test",
    }
    expect("sign up", call(base, "POST", "/signup", me), 201)
    login = expect(
        "log in", call(base, "POST", "/login", {k: me[k] for k in ("email", "password")}), 200
    )
    token = login["access_token"]
    expect("deposit", call(base, "POST", "/deposits", {"amount_cents": 100_000}, token), 201)
    order = {"side": "buy", "symbol": "VTI", "quantity": 1}
    placed = expect("buy", call(base, "POST", "/orders", order, token), 202)
    state = None
    for _ in range(ATTEMPTS):
        state = expect(
            "order", call(base, "GET", f"/orders/{placed['order_id']}", token=token), 200
        )["state"]
        if state in ("FILLED", "FAILED"):
            break
        time.sleep(POLL_SECONDS)
    if state != "FILLED":
        raise SmokeError(f"order {placed['order_id']} ended {state}, not FILLED")
    return str(placed["order_id"])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: smoke.py GATEWAY_URL", file=sys.stderr)
        return 2
    try:
        order_id = run(args[0])
    except (SmokeError, OSError) as exc:
        print(f"smoke test failed: {exc}", file=sys.stderr)
        return 1
    print(f"smoke test passed: order {order_id} FILLED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
