"""Plain SQL migrations, applied by every ext_proc at start-up and by the CLI.

Safe when several replicas start together: a transaction-scoped advisory lock serialises them,
and each file is recorded once in `gateway_schema_migrations`.
"""

from __future__ import annotations

import logging
from importlib import resources

from extproc.db import Connection

logger = logging.getLogger(__name__)

# Any constant shared by all replicas; "llmgw" in ASCII.
_LOCK_KEY = 0x6C6C6D6777


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("extproc.db") / "migrations"
    return sorted((f.name, f.read_text()) for f in folder.iterdir() if f.name.endswith(".sql"))


async def migrate(connection: Connection) -> list[str]:
    """Apply the migrations this database has not seen; returns their names."""
    applied: list[str] = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS gateway_schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["name"] for row in await connection.fetch("SELECT name FROM gateway_schema_migrations")}
        for name, sql in migration_files():
            if name in done:
                continue
            await connection.execute(sql)
            await connection.execute("INSERT INTO gateway_schema_migrations (name) VALUES ($1)", name)
            applied.append(name)
    if applied:
        logger.info("database migrated", extra={"applied": applied})
    return applied
