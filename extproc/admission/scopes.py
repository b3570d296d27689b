"""The spend scopes a paid request reserves in (issue 23) and their Redis keys.

A scope's keys carry its account's hash tag (`{u:<user>}` or `{o:<organisation>}`), so every
key one request touches is in one Redis Cluster slot: a personal request spends from the user's
balance; an organisation request from the organisation's balance and, when the member has a
daily limit, from the member's day (the contract's `usage_date`, Postgres' CURRENT_DATE).
"""

from __future__ import annotations

from enum import StrEnum

PREFIX = "gw:hold:"
_PARTS = (b":live", b":held", b":done", b":done_at")  # the order admit.lua and settle.lua read


class Kind(StrEnum):
    """What a scope is, as the metrics' `reason` says which one refused or lowered a request."""

    USER_BALANCE = "user_balance"
    ORGANIZATION_BALANCE = "organization_balance"
    MEMBER_DAILY_LIMIT = "member_daily_limit"


def user_balance(user_id: str) -> str:
    return f"{PREFIX}{{u:{user_id}}}:balance"


def organization_balance(organization_id: str) -> str:
    return f"{PREFIX}{{o:{organization_id}}}:balance"


def member_day(organization_id: str, user_id: str, day: str) -> str:
    """`day`: ISO date (YYYY-MM-DD) as Postgres' CURRENT_DATE gives it."""
    return f"{PREFIX}{{o:{organization_id}}}:day:{user_id}:{day}"


def kind(scope: str) -> Kind:
    if scope.startswith(PREFIX + "{u:"):
        return Kind.USER_BALANCE
    return Kind.MEMBER_DAILY_LIMIT if ":day:" in scope else Kind.ORGANIZATION_BALANCE


def keys(scope: str) -> list[bytes]:
    """The scope's four keys (see admit.lua)."""
    name = scope.encode()
    return [name + part for part in _PARTS]
