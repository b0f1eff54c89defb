"""Passwords and tokens: hashed by customers, tokens issued by customers, checked by the gateway.

* Passwords are hashed with scrypt (``hashlib.scrypt``, a random 16-byte salt per
  password); only ``scrypt$n$r$p$salt$hash`` is stored. Hashing is CPU work, so it runs
  in a thread, never on the event loop.
* Tokens are JWTs signed with HS256 (PyJWT) with the key of
  ``CHASSIS_AUTH__TOKEN_SECRET``; they carry the customer id in ``sub`` and expire
  after ``CHASSIS_AUTH__TOKEN_TTL_SECONDS``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from typing import Any

import jwt

from chassis.exceptions import ConfigError

from .common import AuthSettings

__all__ = [
    "AUDIENCE",
    "TokenError",
    "VerifiedTokens",
    "hash_password",
    "issue_token",
    "secret_of",
    "verify_password",
    "verify_token",
]

AUDIENCE = "simplebank"
"""The ``aud`` claim of every token."""

_N, _R, _P = 2**14, 8, 1  # scrypt cost: ~16 MiB and tens of milliseconds per hash
_ALGORITHM = "HS256"


class TokenError(Exception):
    """A token is missing, malformed, forged or expired."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)


async def hash_password(password: str) -> str:
    """The stored form of ``password``: ``scrypt$n$r$p$salt$hash`` (base64url)."""
    salt = secrets.token_bytes(16)
    digest = await asyncio.to_thread(_scrypt, password, salt, _N, _R, _P)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


async def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches ``stored``; takes as long when ``stored`` is None."""
    if stored is None:
        # Unknown customer: hash anyway, so timing does not tell which emails exist.
        await hash_password(password)
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = await asyncio.to_thread(_scrypt, password, _unb64(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def secret_of(auth: AuthSettings) -> str:
    """The token key.

    Raises:
        ConfigError: ``CHASSIS_AUTH__TOKEN_SECRET`` is not set, or too short.
    """
    if auth.token_secret is None:
        raise ConfigError([("CHASSIS_AUTH__TOKEN_SECRET", "is required (the token signing key)")])
    secret = auth.token_secret.get_secret_value()
    if len(secret) < 32:
        raise ConfigError([("CHASSIS_AUTH__TOKEN_SECRET", "must be at least 32 characters")])
    return secret


def issue_token(customer_id: str, auth: AuthSettings, *, now: float | None = None) -> str:
    """A signed token for ``customer_id``, valid for ``auth.token_ttl_seconds``."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": customer_id,
        "iss": auth.issuer,
        "aud": AUDIENCE,
        "iat": issued,
        "exp": issued + int(auth.token_ttl_seconds),
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, secret_of(auth), algorithm=_ALGORITHM)


def verify_token(token: str, auth: AuthSettings) -> str:
    """The customer id of a valid token.

    Raises:
        TokenError: the token is malformed, not signed with the key, expired, or not
            issued for SimpleBank.
    """
    return _verified(token, auth)[0]


def _verified(token: str, auth: AuthSettings) -> tuple[str, int]:
    """The customer id and expiry time of a valid token (see :func:`verify_token`)."""
    try:
        claims = jwt.decode(
            token,
            secret_of(auth),
            algorithms=[_ALGORITHM],
            audience=AUDIENCE,
            issuer=auth.issuer,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("the token has expired") from exc
    except jwt.PyJWTError as exc:
        raise TokenError("the token is not valid") from exc
    subject = claims.get("sub")
    if not isinstance(subject, str):
        raise TokenError("the token has no subject")
    return subject, int(claims["exp"])


class VerifiedTokens:
    """:func:`verify_token` with a memory of the tokens it found valid, until they expire.

    A customer sends the same token with every request; checking its signature and
    claims each time costs more than a dictionary lookup. Only valid tokens are kept
    (an invalid one is checked again every time), each with its ``exp``: a kept token
    is refused from the second it expires, as :func:`verify_token` would. At most
    ``max_tokens`` are kept; the oldest is dropped first.
    """

    def __init__(self, auth: AuthSettings, max_tokens: int = 10_000) -> None:
        self.auth = auth
        self.max_tokens = max_tokens
        self._valid: dict[str, tuple[str, int]] = {}  # token -> (customer id, exp)

    def __len__(self) -> int:
        return len(self._valid)

    def verify(self, token: str, now: float | None = None) -> str:
        """The customer id of a valid token.

        Raises:
            TokenError: as :func:`verify_token`.
        """
        moment = time.time() if now is None else now
        kept = self._valid.get(token)
        if kept is not None:
            if moment < kept[1]:
                return kept[0]
            del self._valid[token]
            raise TokenError("the token has expired")
        customer, exp = _verified(token, self.auth)
        if len(self._valid) >= self.max_tokens:
            del self._valid[next(iter(self._valid))]
        self._valid[token] = (customer, exp)
        return customer
