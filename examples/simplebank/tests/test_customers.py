"""customers and simplebank.auth: hashed passwords, signed expiring tokens, a required key."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import jwt
import pytest
from simplebank import customers
from simplebank.auth import (
    TokenError,
    VerifiedTokens,
    hash_password,
    issue_token,
    verify_password,
    verify_token,
)
from simplebank.common import AuthSettings, BankSettings
from simplebank.services import Bank

from chassis.exceptions import ConfigError
from conftest import Customer, bank_settings

AUTH = AuthSettings(token_secret="a test key that is long enough to sign")


async def test_passwords_are_stored_as_salted_scrypt_hashes() -> None:
    first, second = await hash_password("s3cret pass"), await hash_password("s3cret pass")
    assert first.startswith("scrypt$") and "s3cret" not in first
    assert first != second  # a fresh salt each time
    assert await verify_password("s3cret pass", first)
    assert not await verify_password("s3cret pasS", first)
    assert not await verify_password("s3cret pass", None)
    assert not await verify_password("s3cret pass", "md5$garbage")


def test_a_token_names_its_customer_until_it_expires() -> None:
    token = issue_token("c1", AUTH)
    assert verify_token(token, AUTH) == "c1"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 3600 and claims["aud"] == "simplebank"
    with pytest.raises(TokenError, match="expired"):
        verify_token(issue_token("c1", AUTH, now=time.time() - 3601), AUTH)


def test_tampered_or_foreign_tokens_are_refused() -> None:
    token = issue_token("c1", AUTH)
    head, payload, signature = token.split(".")
    for bad in (
        f"{head}.{payload}.{signature[:-2]}AA",
        issue_token("c1", AuthSettings(token_secret="x" * 40)),
        jwt.encode({"sub": "c1", "exp": time.time() + 60}, "k" * 40, algorithm="HS256"),
        jwt.encode({"sub": "c1"}, None, algorithm="none"),  # type: ignore[arg-type]
    ):
        with pytest.raises(TokenError):
            verify_token(bad, AUTH)


def test_verified_tokens_are_remembered_until_they_expire_and_bounded() -> None:
    tokens = VerifiedTokens(AUTH, max_tokens=2)
    token = issue_token("c1", AUTH)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert tokens.verify(token) == "c1" and tokens.verify(token) == "c1"
    assert len(tokens) == 1
    with pytest.raises(TokenError, match="expired"):
        tokens.verify(token, now=exp)  # a remembered token is refused once it expires
    assert len(tokens) == 0
    head, payload, signature = issue_token("c2", AUTH).split(".")
    for _ in range(2):  # an invalid token is never remembered
        with pytest.raises(TokenError):
            tokens.verify(f"{head}.{payload}.{signature[:-2]}AA")
    for n in range(3):
        assert tokens.verify(issue_token(f"c{n}", AUTH)) == f"c{n}"
    assert len(tokens) == 2


@pytest.mark.parametrize("secret", [None, "too short"])
async def test_customers_refuses_to_start_without_a_proper_key(
    tmp_path: Path, secret: str | None
) -> None:
    settings = BankSettings.model_validate(
        {**bank_settings().model_dump(), "auth": {"token_secret": secret}}
    )
    service = customers.create(settings=settings, database=tmp_path / "c.db")
    with pytest.raises(ConfigError, match="CHASSIS_AUTH__TOKEN_SECRET"):
        async with service.running("127.0.0.1", 0):
            pass


async def test_the_database_holds_no_plain_password(anna: Customer, bank: Bank) -> None:
    path = bank.services["customers"].settings.database.path
    assert path is not None
    with contextlib.closing(sqlite3.connect(path)) as conn:
        [(stored,)] = conn.execute(
            "SELECT password_hash FROM customers WHERE email = ?", (anna.email,)
        ).fetchall()
    assert stored.startswith("scrypt$") and anna.password not in stored
