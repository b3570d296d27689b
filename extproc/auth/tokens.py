"""Kilo API tokens (contract 2.5): HS256 JWTs signed with NEXTAUTH_SECRET, claim `version` 3.

The algorithm is pinned: a token's own `alg` header is never trusted (no `none`, no RS/HS
confusion). Any failure yields None: an invalid token makes the request anonymous, it is
never an error of its own.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

import jwt

TOKEN_VERSION = 3
FIVE_YEARS_SECONDS = 5 * 365 * 24 * 3600


@dataclass(frozen=True, slots=True)
class TokenClaims:
    kilo_user_id: str
    api_token_pepper: str | None
    bot_id: str | None
    token_source: str | None


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def verify_token(token: str, secret: str) -> TokenClaims | None:
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options={"verify_aud": False})
    except jwt.PyJWTError:
        return None
    user_id = claims.get("kiloUserId")
    if claims.get("version") != TOKEN_VERSION or not isinstance(user_id, str) or not user_id:
        return None
    pepper = claims.get("apiTokenPepper")
    bot_id = claims.get("botId")
    token_source = claims.get("tokenSource")
    return TokenClaims(
        kilo_user_id=user_id,
        api_token_pepper=pepper if isinstance(pepper, str) else None,
        bot_id=bot_id if isinstance(bot_id, str) else None,
        token_source=token_source if isinstance(token_source, str) else None,
    )


def pepper_matches(database_pepper: str | None, token_pepper: str | None) -> bool:
    """A user with a pepper revokes every token minted with another one (constant time)."""
    if database_pepper is None:
        return True
    return hmac.compare_digest(database_pepper.encode(), (token_pepper or "").encode())


def mint_token(
    user_id: str,
    secret: str,
    *,
    pepper: str | None = None,
    expires_in: int = FIVE_YEARS_SECONDS,
    env: str = "production",
) -> str:
    now = int(time.time())
    claims = {
        "env": env,
        "kiloUserId": user_id,
        "apiTokenPepper": pepper,
        "version": TOKEN_VERSION,
        "iat": now,
        "exp": now + expires_in,
    }
    return jwt.encode(claims, secret, algorithm="HS256")
