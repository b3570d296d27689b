"""Users, memberships and balances, read from Postgres through a short-lived cache.

A cached entry is trusted for `directory_cache_seconds` (default 5 s): that is how long a
revoked token, a blocked user, a removed membership or a changed balance can go unnoticed by
one ext_proc process. While Postgres is unreachable, entries keep being served for up to
`directory_stale_seconds` (default 10 min) past that, so known users keep working through an
outage; a lookup that has nothing to fall back on raises `DirectoryUnavailable` (the request
gets the contract's 503), never hangs longer than `directory_query_timeout_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg
import orjson
from prometheus_client import Counter

from extproc import logs
from extproc.db import POSTGRES_ERRORS
from extproc.settings import Settings

logger = logging.getLogger(__name__)

LOOKUPS = Counter(
    "llm_gateway_directory_lookups",
    "User, membership and balance lookups, by kind and how they were answered.",
    ["kind", "source"],  # source: cache, postgres, stale, failed
)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class DirectoryUnavailable(Exception):
    """Postgres could not answer and no cached answer is usable."""


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


class TtlCache(Generic[K, V]):
    """Fresh for `ttl`, then reloaded; a failed reload serves the old value up to `stale`.

    Concurrent misses for one key share a single load, so a burst of requests from one user
    costs one query, not one each.
    """

    def __init__(self, kind: str, ttl: float, stale: float, max_entries: int = 100_000) -> None:
        self.kind = kind
        self.ttl = ttl
        self.stale = stale
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Task[V]] = {}

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        entry = self._entries.get(key)
        if entry is not None and time.monotonic() - entry[0] < self.ttl:
            LOOKUPS.labels(self.kind, "cache").inc()
            return entry[1]
        task = self._loading.get(key)
        if task is None:
            # The load runs as its own task: a request that goes away does not cancel it for
            # the others waiting on the same key.
            task = asyncio.ensure_future(self._refresh(key, load, entry))
            self._loading[key] = task
            task.add_done_callback(lambda done: self._loaded(key, done))
        return await asyncio.shield(task)

    def _loaded(self, key: K, task: asyncio.Task[V]) -> None:
        self._loading.pop(key, None)
        if not task.cancelled():
            task.exception()  # mark retrieved: every waiter may have gone

    async def _refresh(self, key: K, load: Callable[[], Awaitable[V]], entry: tuple[float, V] | None) -> V:
        try:
            value = await load()
        except POSTGRES_ERRORS as exc:
            if entry is not None and time.monotonic() - entry[0] < self.ttl + self.stale:
                LOOKUPS.labels(self.kind, "stale").inc()
                logger.warning(
                    "postgres unavailable; serving a cached entry",
                    extra={"kind": self.kind, **logs.failure(exc, f"SELECT {self.kind}")},
                )
                return entry[1]
            LOOKUPS.labels(self.kind, "failed").inc()
            logger.error(
                "postgres unavailable and nothing cached", extra={"kind": self.kind, **logs.failure(exc, f"SELECT {self.kind}")}
            )
            raise DirectoryUnavailable(self.kind) from exc
        LOOKUPS.labels(self.kind, "postgres").inc()
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # crude but bounded; entries live seconds anyway
        self._entries[key] = (time.monotonic(), value)
        return value


_USER_SQL = """
SELECT id, google_user_email, api_token_pepper, blocked_reason, microdollars_used, total_microdollars_acquired
FROM kilocode_users WHERE id = $1
"""
_MEMBER_SQL = "SELECT 1 FROM organization_memberships WHERE organization_id = $1 AND kilo_user_id = $2"
# Contract 2.12: one query; a billing manager has no balance to spend.
_ACCOUNT_SQL = """
SELECT o.total_microdollars_acquired, o.microdollars_used, o.plan, o.settings, o.require_seats,
       l.microdollar_limit, COALESCE(u.microdollar_usage, 0) AS today_usage
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


async def fetch(pool: asyncpg.Pool, timeout: float, sql: str, *args: Any) -> list[asyncpg.Record]:
    """One query on the request path, given up after `timeout` (the caller's failure policy
    then decides: a stale cache entry, or DirectoryUnavailable)."""

    async def query() -> list[asyncpg.Record]:
        async with pool.acquire() as connection:
            return await connection.fetch(sql, *args)

    return await asyncio.wait_for(query(), timeout)


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
            settings = row["settings"]
            return OrganizationAccount(
                total_microdollars_acquired=row["total_microdollars_acquired"],
                microdollars_used=row["microdollars_used"],
                plan=row["plan"],
                settings=orjson.loads(settings) if isinstance(settings, str) else settings,
                require_seats=row["require_seats"],
                daily_limit_microdollars=row["microdollar_limit"],
                today_usage_microdollars=row["today_usage"],
            )

        return await self._accounts.get((organization_id, user_id), load)

    async def is_returning_customer(self, user_id: str) -> bool:
        """Only asked when a 402 is about to be sent, so it is not cached."""
        try:
            row = await self._fetchrow(_RETURNING_SQL, user_id)
        except POSTGRES_ERRORS as exc:
            raise DirectoryUnavailable("payments") from exc
        return bool(row is not None and row[0])
