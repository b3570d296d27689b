"""The jsonb codec every connection gets (`extproc.db.init_connection`): readers see Python
values, parsed as `JSON.parse` would, and writers keep passing JSON text."""

from __future__ import annotations

import asyncpg

from extproc.db import init_connection


async def test_jsonb_arrives_decoded_even_with_numbers_beyond_double_range(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await init_connection(connection)
        # jsonb keeps 1e400 exactly (Postgres writes it out as 401 digits), which orjson alone
        # refuses to parse: one such value must not make a whole row unreadable.
        assert await connection.fetchval("""SELECT '{"a": [1, "x", null], "big": 1e400}'::jsonb""") == {
            "a": [1, "x", None],
            "big": 10**400,
        }
        assert await connection.fetchval("SELECT $1::jsonb", '{"k": true}') == {"k": True}
    finally:
        await connection.close()
