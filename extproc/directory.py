"""Users, memberships and balances, read from Postgres through a short-lived cache.

A cached entry is trusted for `directory_cache_seconds` (default 5 s): that is how long a
revoked token, a blocked user, a removed membership or a changed balance can go unnoticed by
one ext_proc process. While Postgres is unreachable, entries keep being served for up to
`directory_stale_seconds` (default 10 min) past that, so known users keep working through an
outage; a lookup that has nothing to fall back on raises `DirectoryUnavailable` (the request
gets the contract's 503), never hangs longer than `directory_query_timeout_seconds`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import asyncpg

from extproc.db import POSTGRES_ERRORS
from extproc.db.cache import DirectoryUnavailable, TtlCache, fetch
from extproc.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    api_token_pepper: str | None
    blocked_reason: str | None
    microdollars_used: int
    total_microdollars_acquired: int

    @property
    def balance_microdollars(self) -> int:
        return self.total_microdollars_acquired - self.microdollars_used


@dataclass(frozen=True, slots=True)
class OrganizationAccount:
    """What the balance and organisation checks need about one member of one organisation."""

    total_microdollars_acquired: int
    microdollars_used: int
    plan: str | None
    settings: dict[str, Any] | None
    require_seats: bool
    daily_limit_microdollars: int | None
    today_usage_microdollars: int
    usage_date: str = ""  # the day of `today_usage_microdollars` (Postgres' CURRENT_DATE, ISO)


_USER_SQL = """
SELECT id, google_user_email, api_token_pepper, blocked_reason, microdollars_used, total_microdollars_acquired
FROM kilocode_users WHERE id = $1
"""
_MEMBER_SQL = "SELECT 1 FROM organization_memberships WHERE organization_id = $1 AND kilo_user_id = $2"
# Contract 2.12: one query; a billing manager has no balance to spend.
_ACCOUNT_SQL = """
SELECT o.total_microdollars_acquired, o.microdollars_used, o.plan, o.settings, o.require_seats,
       l.microdollar_limit, COALESCE(u.microdollar_usage, 0) AS today_usage, CURRENT_DATE::text AS usage_date
FROM organizations o
JOIN organization_memberships m
  ON m.organization_id = o.id AND m.kilo_user_id = $2 AND m.role <> 'billing_manager'
LEFT JOIN organization_user_limits l
  ON l.organization_id = o.id AND l.kilo_user_id = $2 AND l.limit_type = 'daily'
LEFT JOIN organization_user_usage u
  ON u.organization_id = o.id AND u.kilo_user_id = $2 AND u.limit_type = 'daily' AND u.usage_date = CURRENT_DATE
WHERE o.id = $1
"""
# Contract 2.12: a returning customer paid at least once (credits that were not a KiloPass bonus).
_RETURNING_SQL = """
SELECT EXISTS (
  SELECT 1 FROM credit_transactions ct
  WHERE ct.kilo_user_id = $1 AND ct.is_free = false AND ct.amount_microdollars > 0
    AND NOT EXISTS (SELECT 1 FROM kilo_pass_issuance_items k WHERE k.credit_transaction_id = ct.id)
)
"""


class Directory:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.timeout = settings.directory_query_timeout_seconds
        ttl, stale = settings.directory_cache_seconds, settings.directory_stale_seconds
        self._users: TtlCache[str, User | None] = TtlCache("user", ttl, stale)
        self._members: TtlCache[tuple[str, str], bool] = TtlCache("membership", ttl, stale)
        self._accounts: TtlCache[tuple[str, str], OrganizationAccount | None] = TtlCache("org_account", ttl, stale)

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        rows = await fetch(self.pool, self.timeout, sql, *args)
        return rows[0] if rows else None

    async def user(self, user_id: str) -> User | None:
        async def load() -> User | None:
            row = await self._fetchrow(_USER_SQL, user_id)
            if row is None:
                return None
            return User(
                id=row["id"],
                email=row["google_user_email"],
                api_token_pepper=row["api_token_pepper"],
                blocked_reason=row["blocked_reason"],
                microdollars_used=row["microdollars_used"],
                total_microdollars_acquired=row["total_microdollars_acquired"],
            )

        return await self._users.get(user_id, load)

    async def is_member(self, organization_id: str, user_id: str) -> bool:
        async def load() -> bool:
            return await self._fetchrow(_MEMBER_SQL, organization_id, user_id) is not None

        return await self._members.get((organization_id, user_id), load)

    async def organization_account(self, organization_id: str, user_id: str) -> OrganizationAccount | None:
        async def load() -> OrganizationAccount | None:
            row = await self._fetchrow(_ACCOUNT_SQL, organization_id, user_id)
            if row is None:
                return None
            return OrganizationAccount(
                total_microdollars_acquired=row["total_microdollars_acquired"],
                microdollars_used=row["microdollars_used"],
                plan=row["plan"],
                settings=row["settings"],
                require_seats=row["require_seats"],
                daily_limit_microdollars=row["microdollar_limit"],
                today_usage_microdollars=row["today_usage"],
                usage_date=row["usage_date"],
            )

        return await self._accounts.get((organization_id, user_id), load)

    async def is_returning_customer(self, user_id: str) -> bool:
        """Only asked when a 402 is about to be sent, so it is not cached."""
        try:
            row = await self._fetchrow(_RETURNING_SQL, user_id)
        except POSTGRES_ERRORS as exc:
            raise DirectoryUnavailable("payments") from exc
        return bool(row is not None and row[0])
