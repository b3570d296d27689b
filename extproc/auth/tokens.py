"""Kilo API tokens (contract 2.5): HS256 JWTs signed with NEXTAUTH_SECRET, claim `version` 3.

The algorithm is pinned: a token's own `alg` header is never trusted (no `none`, no RS/HS
confusion). Any failure yields None: an invalid token makes the request anonymous, it is
never an error of its own.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
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


# Tokens that verified, with their expiry: a client sends the same token with every request,
# and decoding plus HMAC-checking it again cost about a tenth of the ext_proc's time per
# request. Only valid tokens are kept (a flood of bad ones cannot evict them for long), at
# most _VERIFIED_MAX, least recently used out first. Revocation does not depend on it: the
# pepper and the blocked flag are checked against the user on every request.
_VERIFIED: OrderedDict[tuple[str, str], tuple[TokenClaims, float]] = OrderedDict()
_VERIFIED_MAX = 10_000


def verify_token(token: str, secret: str) -> TokenClaims | None:
    key = (token, secret)
    hit = _VERIFIED.get(key)
    if hit is not None and hit[1] > time.time():
        _VERIFIED.move_to_end(key)
        return hit[0]
    verified = _verify(token, secret)
    if verified is None:
        _VERIFIED.pop(key, None)
        return None
    _VERIFIED[key] = verified
    if len(_VERIFIED) > _VERIFIED_MAX:
        _VERIFIED.popitem(last=False)
    return verified[0]


def _verify(token: str, secret: str) -> tuple[TokenClaims, float] | None:
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
    expires = claims.get("exp")
    return TokenClaims(
        kilo_user_id=user_id,
        api_token_pepper=pepper if isinstance(pepper, str) else None,
        bot_id=bot_id if isinstance(bot_id, str) else None,
        token_source=token_source if isinstance(token_source, str) else None,
    ), float(expires) if isinstance(expires, int | float) else float("inf")


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
