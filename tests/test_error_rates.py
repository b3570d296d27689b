"""Contract 3.5: the error-rate query that drives the Vercel failover, forced against a real
Postgres, and the percentage it selects (90 only while OpenRouter fails and Vercel does not)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from extproc.db.migrate import migrate
from extproc.error_rates import ErrorRates
from extproc.shaping.vercel import route_to_vercel, vercel_bucket, vercel_percentage


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    async with pool.acquire() as connection:
        await migrate(connection)
        await connection.execute("TRUNCATE microdollar_usage, microdollar_usage_metadata")
    yield pool
    await pool.close()


async def add(pool: asyncpg.Pool, provider: str, *, errors: int = 0, ok: int = 0, byok: bool = False,
              minutes_ago: int = 0) -> None:
    async with pool.acquire() as connection:
        for has_error in [True] * errors + [False] * ok:
            usage_id = uuid.uuid4()
            created = f"now() - interval '{minutes_ago} minutes'"
            await connection.execute(
                "INSERT INTO microdollar_usage (id, kilo_user_id, cost, input_tokens, output_tokens, cache_write_tokens,"
                f" cache_hit_tokens, created_at, provider, has_error) VALUES ($1, 'u', 0, 0, 0, 0, 0, {created}, $2, $3)",
                usage_id, provider, has_error,
            )
            await connection.execute(
                "INSERT INTO microdollar_usage_metadata (id, created_at, message_id, is_user_byok)"
                f" VALUES ($1, {created}, 'gen', $2)",
                usage_id, byok,
            )


async def test_rates_are_errors_over_total_per_provider_in_the_last_ten_minutes(pool: asyncpg.Pool) -> None:
    await add(pool, "openrouter", errors=3, ok=1)
    await add(pool, "vercel", errors=1, ok=3)
    await add(pool, "openrouter", ok=50, minutes_ago=11)  # older than 10 minutes: not counted
    await add(pool, "openrouter", ok=50, byok=True)  # the customers' own keys: not counted
    await add(pool, "gigapotato", errors=9)  # neither provider
    assert await ErrorRates(pool, ttl=0).get() == (0.75, 0.25)


async def test_rates_are_cached_for_their_ttl(pool: asyncpg.Pool) -> None:
    rates = ErrorRates(pool, ttl=3600)
    assert await rates.get() == (0.0, 0.0)
    await add(pool, "openrouter", errors=1)
    assert await rates.get() == (0.0, 0.0)  # cached
    assert await ErrorRates(pool, ttl=0).get() == (1.0, 0.0)


async def test_a_failing_query_counts_as_no_errors(pool: asyncpg.Pool) -> None:
    await add(pool, "openrouter", errors=5)
    async with pool.acquire() as connection:
        await connection.execute("ALTER VIEW microdollar_usage_view RENAME TO microdollar_usage_view_gone")
    try:
        assert await ErrorRates(pool, ttl=0).get() == (0.0, 0.0)
    finally:
        async with pool.acquire() as connection:
            await connection.execute("ALTER VIEW microdollar_usage_view_gone RENAME TO microdollar_usage_view")


@pytest.mark.parametrize(
    ("openrouter", "vercel", "percentage"),
    [(0.0, 0.0, 10), (0.5, 0.0, 10), (0.51, 0.0, 90), (0.9, 0.49, 90), (0.9, 0.5, 10), (1.0, 1.0, 10)],
)
def test_failover_percentage(openrouter: float, vercel: float, percentage: int) -> None:
    """90 iff OpenRouter's rate > 0.5 and Vercel's < 0.5, else 10."""
    assert vercel_percentage(openrouter, vercel) == percentage


async def test_forced_openrouter_errors_send_a_middle_bucket_to_vercel(pool: asyncpg.Pool) -> None:
    """The query's result drives the split: a bucket between 10 and 90 goes to Vercel only
    while OpenRouter's forced error rate is in force."""
    while not 10 <= vercel_bucket(middle := f"task-{uuid.uuid4().hex}") < 90:
        pass
    assert not route_to_vercel(middle, vercel_percentage(*await ErrorRates(pool, ttl=0).get()))
    await add(pool, "openrouter", errors=6, ok=4)
    await add(pool, "vercel", ok=10)
    assert route_to_vercel(middle, vercel_percentage(*await ErrorRates(pool, ttl=0).get()))
