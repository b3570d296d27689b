"""The price catalogue in Postgres (migration 002): each provider's last good table, and the
lease that lets one replica of the fleet at a time fetch it."""

from __future__ import annotations

from dataclasses import fields

import orjson

from extproc.db import Connection
from extproc.pricing.catalogue import PriceTable
from extproc.pricing.prices import ModelPrices

_COLUMNS = tuple(f.name for f in fields(ModelPrices))
_COLUMN_LIST = ", ".join(_COLUMNS)
_RECORD_TYPES = ", ".join(f"{name} {'text' if name == 'model_id' else 'bigint'}" for name in _COLUMNS)


async def take_lease(
    connection: Connection,
    provider: str,
    holder: str,
    *,
    lease_seconds: float,
    older_than_seconds: float | None,
    retry_seconds: float = 0,
) -> bool:
    """Whether `holder` may fetch the provider's table now: no other replica holds an unexpired
    lease, and (unless `older_than_seconds` is None: the operator's refresh) the stored table
    is older than that and the last failure is `retry_seconds` old. Atomic: of replicas
    asking together, one gets it."""
    await connection.execute(
        "INSERT INTO gateway_price_catalogue_refresh (provider) VALUES ($1) ON CONFLICT DO NOTHING", provider
    )
    row = await connection.fetchrow(
        "UPDATE gateway_price_catalogue_refresh"
        " SET lease_holder = $2, lease_until = now() + make_interval(secs => $3)"
        " WHERE provider = $1 AND (lease_until IS NULL OR lease_until < now() OR lease_holder = $2)"
        " AND ($4::float8 IS NULL OR ("
        "   (fetched_at IS NULL OR fetched_at < now() - make_interval(secs => $4))"
        "   AND (last_error_at IS NULL OR last_error_at < now() - make_interval(secs => $5))))"
        " RETURNING provider",
        provider,
        holder,
        lease_seconds,
        older_than_seconds,
        retry_seconds,
    )
    return row is not None


async def record_failure(connection: Connection, provider: str, holder: str, error: str) -> None:
    """A failed or refused fetch: said in the row, the lease released. `take_lease` lets the
    fleet try again `retry_seconds` later, rather than every replica at once."""
    await connection.execute(
        "UPDATE gateway_price_catalogue_refresh"
        " SET last_error = $3, last_error_at = now(), lease_holder = NULL, lease_until = NULL"
        " WHERE provider = $1 AND lease_holder = $2",
        provider,
        holder,
        error[:1000],
    )


async def save_table(connection: Connection, table: PriceTable, holder: str) -> float | None:
    """Replace the provider's stored table with `table`, in one transaction, if `holder` still
    holds the lease. Returns the stored `fetched_at` (Postgres' clock), or None when the lease
    was lost meanwhile (it expired and another replica took it)."""
    rows = [{name: getattr(m, name) for name in _COLUMNS} for m in table.models.values()]
    async with connection.transaction():
        fetched_at = await connection.fetchval(
            "UPDATE gateway_price_catalogue_refresh"
            " SET fetched_at = now(), models = $2, lease_holder = NULL, lease_until = NULL,"
            " last_error = NULL, last_error_at = NULL"
            " WHERE provider = $1 AND lease_holder = $3"
            " RETURNING extract(epoch FROM fetched_at)::float8",
            table.provider,
            len(rows),
            holder,
        )
        if fetched_at is None:
            return None
        await connection.execute("DELETE FROM gateway_price_catalogue WHERE provider = $1", table.provider)
        await connection.execute(
            f"INSERT INTO gateway_price_catalogue (provider, {_COLUMN_LIST})"
            f" SELECT $1, {_COLUMN_LIST} FROM json_to_recordset($2::json) AS r({_RECORD_TYPES})",
            table.provider,
            orjson.dumps(rows).decode(),
        )
    return float(fetched_at)


async def stored_versions(connection: Connection) -> dict[str, float]:
    """provider -> `fetched_at` (Unix time) of each stored table."""
    rows = await connection.fetch(
        "SELECT provider, extract(epoch FROM fetched_at)::float8 AS fetched_at"
        " FROM gateway_price_catalogue_refresh WHERE fetched_at IS NOT NULL"
    )
    return {row["provider"]: float(row["fetched_at"]) for row in rows}


async def load_table(connection: Connection, provider: str, fetched_at: float) -> PriceTable | None:
    rows = await connection.fetch(f"SELECT {_COLUMN_LIST} FROM gateway_price_catalogue WHERE provider = $1", provider)
    if not rows:
        return None
    models = {row["model_id"]: ModelPrices(**dict(row)) for row in rows}
    return PriceTable.build(provider, models, fetched_at)
