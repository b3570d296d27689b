"""The price refresher (extproc/pricing/refresh.py) against a real Postgres and a fake provider:
one replica of the fleet fetches at a time, the others load what it stored; a lease whose
holder died expires; a failed fetch keeps the last good table and the fleet waits before
trying again; Postgres down, a replica still fetches on its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from extproc.db import Connection, init_connection
from extproc.db.migrate import migrate
from extproc.local.mock_upstream import openrouter_models, vercel_models
from extproc.pricing import store
from extproc.pricing.catalogue import PriceCatalogue
from extproc.pricing.refresh import REFRESHES, PriceRefresher
from extproc.settings import Settings


class Provider:
    """`GET …/models` of OpenRouter and Vercel, slow enough for replicas to overlap, counted."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {"openrouter": 0, "vercel": 0}
        self.status = 200

    async def models(self, request: web.Request) -> web.Response:
        provider = "vercel" if request.path.startswith("/vercel/") else "openrouter"
        self.calls[provider] += 1
        await asyncio.sleep(0.3)
        if self.status != 200:
            return web.json_response({"error": "down"}, status=self.status)
        return web.json_response(vercel_models() if provider == "vercel" else openrouter_models())


@pytest.fixture
async def provider() -> AsyncIterator[tuple[Provider, str]]:
    fake = Provider()
    app = web.Application()
    app.router.add_get("/{base:.*}models", fake.models)
    async with TestServer(app) as server:
        yield fake, str(server.make_url(""))


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    db = await asyncpg.create_pool(database_url, min_size=0, max_size=20, init=init_connection)
    async with db.acquire() as connection:
        await migrate(connection)
        await connection.execute("TRUNCATE gateway_price_catalogue, gateway_price_catalogue_refresh")
    try:
        yield db
    finally:
        await db.close()


def settings_for(url: str, **extra: Any) -> Settings:
    return Settings(
        providers={"openrouter": {"api_url": f"{url}/api/v1"}, "vercel": {"api_url": f"{url}/vercel/v1"}},
        price_catalogue_fetch_timeout_seconds=5,
        **extra,
    )


def acquire(pool: asyncpg.Pool) -> Callable[[], AbstractAsyncContextManager[Connection]]:
    return lambda: pool.acquire(timeout=5)


def refreshed(provider: str, outcome: str) -> float:
    return REFRESHES.labels(provider, outcome)._value.get()


async def test_one_replica_of_the_fleet_fetches_and_the_others_load_it(
    provider: tuple[Provider, str], pool: asyncpg.Pool
) -> None:
    fake, url = provider
    replicas = [PriceRefresher(settings_for(url), acquire(pool), PriceCatalogue(), holder=f"r{i}") for i in range(5)]
    await asyncio.gather(*(r.check() for r in replicas))
    assert fake.calls == {"openrouter": 1, "vercel": 1}
    await asyncio.gather(*(r.check() for r in replicas))  # the others load what was stored
    assert fake.calls == {"openrouter": 1, "vercel": 1}  # fresh: nobody fetches again
    for replica in replicas:
        assert replica.catalogue.prices_for("openrouter", "openai/gpt-4o").prompt == 300_000
        assert replica.catalogue.prices_for("vercel", "zai/glm-5").completion == 1_500_000
        assert replica.catalogue.age_seconds("openrouter") < 60


async def test_a_stale_table_is_fetched_again_by_one_replica(
    provider: tuple[Provider, str], pool: asyncpg.Pool
) -> None:
    fake, url = provider
    replicas = [
        PriceRefresher(
            settings_for(url, price_catalogue_refresh_seconds=0.5), acquire(pool), PriceCatalogue(), holder=f"r{i}"
        )
        for i in range(3)
    ]
    await asyncio.gather(*(r.check() for r in replicas))
    await asyncio.sleep(0.6)
    await asyncio.gather(*(r.check() for r in replicas))
    assert fake.calls == {"openrouter": 2, "vercel": 2}


async def test_a_dead_holders_lease_expires(provider: tuple[Provider, str], pool: asyncpg.Pool) -> None:
    fake, url = provider
    async with pool.acquire() as connection:  # a replica took the lease and died mid-fetch
        assert await store.take_lease(connection, "openrouter", "dead", lease_seconds=0.5, older_than_seconds=600)
    live = PriceRefresher(settings_for(url), acquire(pool), PriceCatalogue(), holder="live")
    await live.check()
    assert fake.calls["openrouter"] == 0  # the lease is still held
    await asyncio.sleep(0.6)
    await live.check()
    assert fake.calls["openrouter"] == 1 and "openrouter" in live.catalogue.tables


async def test_a_failed_fetch_keeps_the_last_good_table_and_the_fleet_waits(
    provider: tuple[Provider, str], pool: asyncpg.Pool
) -> None:
    fake, url = provider
    settings = settings_for(url, price_catalogue_refresh_seconds=0.2, price_catalogue_check_seconds=60)
    first = PriceRefresher(settings, acquire(pool), PriceCatalogue(), holder="first")
    await first.check()
    stored = first.catalogue.tables["openrouter"]
    fake.status = 503
    await asyncio.sleep(0.3)
    failed_before = refreshed("openrouter", "failed")
    await first.check()
    assert fake.calls["openrouter"] == 2
    assert refreshed("openrouter", "failed") == failed_before + 1
    assert first.catalogue.tables["openrouter"] is stored  # the last good table stays
    async with pool.acquire() as connection:
        row = await connection.fetchrow(
            "SELECT last_error, models FROM gateway_price_catalogue_refresh WHERE provider = 'openrouter'"
        )
        assert row["last_error"] == "HTTP 503" and row["models"] == len(stored.models)
    # Other replicas do not retry until the check interval has passed since the failure.
    others = [PriceRefresher(settings, acquire(pool), PriceCatalogue(), holder=f"o{i}") for i in range(3)]
    await asyncio.gather(*(o.check() for o in others))
    assert fake.calls["openrouter"] == 2
    assert all(o.catalogue.tables["openrouter"].models == stored.models for o in others)  # loaded


async def test_postgres_down_a_replica_fetches_on_its_own(provider: tuple[Provider, str]) -> None:
    fake, url = provider

    @asynccontextmanager
    async def unreachable() -> AsyncIterator[Connection]:
        raise ConnectionRefusedError("postgres is down")
        yield  # pragma: no cover

    alone = PriceRefresher(settings_for(url), unreachable, PriceCatalogue(), holder="alone")
    await alone.check()
    assert fake.calls == {"openrouter": 1, "vercel": 1}
    assert alone.catalogue.prices_for("openrouter", "openai/gpt-4o").completion == 1_500_000
    await alone.check()  # fresh now: not again
    assert fake.calls == {"openrouter": 1, "vercel": 1}
