"""The read cache in front of Postgres on the request path, shared by the directory (users,
memberships, balances), BYOK keys and custom LLMs.

An entry is fresh for `ttl`; then it is reloaded, and while Postgres is unreachable it keeps
being served for up to `stale` more. A lookup that has nothing to fall back on raises
`DirectoryUnavailable` (the request gets the contract's 503).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

import asyncpg
from prometheus_client import Counter

from extproc import logs, metrics
from extproc.db import POSTGRES_ERRORS

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
            metrics.child(LOOKUPS, self.kind, "cache").inc()
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
                metrics.child(LOOKUPS, self.kind, "stale").inc()
                logger.warning(
                    "postgres unavailable; serving a cached entry",
                    extra={"kind": self.kind, **logs.failure(exc, f"SELECT {self.kind}")},
                )
                return entry[1]
            metrics.child(LOOKUPS, self.kind, "failed").inc()
            logger.error(
                "postgres unavailable and nothing cached", extra={"kind": self.kind, **logs.failure(exc, f"SELECT {self.kind}")}
            )
            raise DirectoryUnavailable(self.kind) from exc
        metrics.child(LOOKUPS, self.kind, "postgres").inc()
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # crude but bounded; entries live seconds anyway
        self._entries[key] = (time.monotonic(), value)
        return value


async def fetch(pool: asyncpg.Pool, timeout: float, sql: str, *args: Any) -> list[asyncpg.Record]:
    """One query on the request path, given up after `timeout` (the caller's failure policy
    then decides: a stale cache entry, or DirectoryUnavailable)."""

    async def query() -> list[asyncpg.Record]:
        async with pool.acquire() as connection:
            return await connection.fetch(sql, *args)

    return await asyncio.wait_for(query(), timeout)
