"""Postgres: migrations, and what counts as "Postgres is unavailable"."""

from __future__ import annotations

import asyncpg

# A refused or dropped connection, a timeout, or a server-side failure: each caller's failure
# policy applies (a stale cache entry, a retry, a 503), never an unhandled 500.
POSTGRES_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
