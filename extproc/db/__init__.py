"""Postgres: migrations, and what counts as "Postgres is unavailable"."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from extproc import js

# A connection of its own or one lent by a pool (`async with pool.acquire()`): what takes a
# connection uses only what both offer.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy

# A refused or dropped connection, a timeout, or a server-side failure: each caller's failure
# policy applies (a stale cache entry, a retry, a 503), never an unhandled 500.
POSTGRES_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # asyncpg's "cannot switch to state N; another operation is in progress": a pooled
    # connection left mid-protocol when Postgres dropped it (seen around a Postgres restart in
    # tests/test_faults_e2e.py, where a free model's usage insert then answered 500).
    asyncpg.InternalClientError,
)

# The ledger's idempotency conflict: the usage id already written (not a fault of the data).
_IDEMPOTENCY_CONSTRAINTS = frozenset({"microdollar_usage_pkey", "microdollar_usage_metadata_pkey"})


def refuses_data(error: BaseException) -> bool:
    """Postgres (or asyncpg, before sending) refused the values themselves: a data exception
    (SQLSTATE class 22), an integrity violation (class 23) other than the idempotency
    conflict, or a value asyncpg cannot encode. Writing the same values again cannot succeed;
    anything else (connection lost, serialization failure, deadlock, a restart) may."""
    if isinstance(error, asyncpg.PostgresError):
        state = error.sqlstate or ""
        if state == "23505":
            return getattr(error, "constraint_name", None) not in _IDEMPOTENCY_CONSTRAINTS
        return state.startswith(("22", "23"))
    # asyncpg's client-side DataError (also a ValueError), and what its encoders raise.
    return isinstance(error, (asyncpg.exceptions._base.DataError, UnicodeEncodeError, OverflowError))


def _json_text(value: str) -> str:
    """Parameters stay JSON text: each writer serialises its value itself (made storable)."""
    return value


async def init_connection(connection: asyncpg.Connection) -> None:
    """For every connection (a pool's `init`): jsonb columns arrive as Python values, decoded
    here once rather than by each reader. Through `js.loads`: jsonb holds numbers beyond double
    range (1e400), which orjson alone refuses."""
    await connection.set_type_codec("jsonb", schema="pg_catalog", encoder=_json_text, decoder=js.loads)
