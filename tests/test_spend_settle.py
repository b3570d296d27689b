"""The hold -> charge handoff against a real Postgres and Redis, with the real directory, ledger
writer and reaper (issue 23, parts 3 and 5).

The race the design must exclude, forced step by step: admission reads the balance, the ledger
writer commits a charge and ends that request's hold, and only then does admission's script run
on the balance it read. The charge must still be counted (it is in the scope's committed charges,
above the version the read saw), and a read that saw it must not count it twice.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from extproc.accounting.inflight import InFlightLog, Reaper
from extproc.accounting.outbox import Outbox
from extproc.accounting.resp import RespConnection
from extproc.accounting.writer import LedgerWriter
from extproc.admission import scopes
from extproc.admission.holds import ScopeRead, SpendHolds
from extproc.db.migrate import migrate
from extproc.directory import Directory
from extproc.pipeline.spend import organization_reads, user_reads
from extproc.settings import Settings
from tests.test_side_services import record

RETENTION_MS = 60_000
BALANCE = 10_000


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    async with pool.acquire() as connection:
        await migrate(connection)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    await redis.flushdb()
    try:
        yield redis
    finally:
        await redis.aclose()


def fresh_directory(db: asyncpg.Pool) -> Directory:
    """Reads Postgres every time (no cache), as a replica whose cache just expired."""
    return Directory(db, Settings(directory_cache_seconds=0))


async def new_user(db: asyncpg.Pool) -> str:
    user_id = f"holds-{uuid.uuid4().hex[:12]}"
    await db.execute(
        "INSERT INTO kilocode_users (id, google_user_email, total_microdollars_acquired) VALUES ($1, $2, $3)",
        user_id, f"{user_id}@example.com", BALANCE,
    )  # fmt: skip
    return user_id


def held_record(user_id: str, cost: int, held: list[str], **fields: Any) -> Any:
    return record(kilo_user_id=user_id, cost_microdollars=cost, held_scopes=held, held_microdollars=9_000, **fields)


async def test_a_charge_committed_between_the_read_and_the_script_is_counted(
    db: asyncpg.Pool, client: aioredis.Redis
) -> None:
    user_id = await new_user(db)
    holds = SpendHolds(client, RETENTION_MS)
    writer = LedgerWriter(Settings(), db, Outbox(client, "test:holds"))
    stale = user_reads(await fresh_directory(db).user(user_id))  # type: ignore[arg-type]
    first = held_record(user_id, 7_000, [scopes.user_balance(user_id)])
    assert (await holds.admit(first.usage_id, stale, 9_000, 9_000)).held == 9_000

    # The writer commits request a's charge and ends its hold, before b's script runs.
    assert await writer.write(first)
    assert await client.hlen(scopes.user_balance(user_id) + ":live") == 0

    late = await holds.admit("b", stale, 4_000, 4_000)
    assert (late.held, late.available) == (0, BALANCE - 7_000)
    # A read that saw the commit counts it once: the whole rest fits.
    fresh = user_reads(await fresh_directory(db).user(user_id))  # type: ignore[arg-type]
    assert fresh[0].balance == BALANCE - 7_000
    assert (await holds.admit("c", fresh, 3_000, 3_000)).held == 3_000


async def test_a_duplicate_row_ends_its_hold_as_a_charge_every_read_counts(
    db: asyncpg.Pool, client: aioredis.Redis
) -> None:
    """A row committed by a writer that died before ending its hold: the next writer finds a
    duplicate, and cannot tell the version, so every read subtracts the charge until retention."""
    user_id = await new_user(db)
    holds = SpendHolds(client, RETENTION_MS)
    scope = scopes.user_balance(user_id)
    stale = user_reads(await fresh_directory(db).user(user_id))  # type: ignore[arg-type]
    written = held_record(user_id, 6_000, [scope])
    assert (await holds.admit(written.usage_id, stale, 9_000, 9_000)).held == 9_000
    assert await LedgerWriter(Settings(), db, None).write(held_record(user_id, 6_000, [], usage_id=written.usage_id))  # type: ignore[arg-type]
    assert await client.hexists(scope + ":live", written.usage_id)  # committed, hold not ended
    assert await LedgerWriter(Settings(), db, Outbox(client, "test:holds")).write(written)  # the duplicate
    assert not await client.hexists(scope + ":live", written.usage_id)
    assert (await holds.admit("b", stale, 5_000, 5_000)).available == BALANCE - 6_000


async def test_an_organisation_charge_ends_both_scopes_at_their_versions(db: asyncpg.Pool, client: aioredis.Redis) -> None:
    user_id = await new_user(db)
    org = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO organizations (id, name, total_microdollars_acquired) VALUES ($1, 'holds', 100000)", org
    )
    await db.execute("INSERT INTO organization_memberships (organization_id, kilo_user_id, role) VALUES ($1, $2, 'member')", org, user_id)
    await db.execute(
        "INSERT INTO organization_user_limits (organization_id, kilo_user_id, limit_type, microdollar_limit) VALUES ($1, $2, 'daily', 5000)",
        org, user_id,
    )  # fmt: skip
    account = await fresh_directory(db).organization_account(org, user_id)
    assert account is not None
    stale = organization_reads(org, user_id, account)
    assert [read.scope for read in stale] == [
        scopes.organization_balance(org),
        scopes.member_day(org, user_id, account.usage_date),
    ]
    holds = SpendHolds(client, RETENTION_MS)
    charged = held_record(user_id, 3_000, [read.scope for read in stale], organization_id=org)
    assert (await holds.admit(charged.usage_id, stale, 4_000, 4_000)).held == 4_000
    assert await LedgerWriter(Settings(), db, Outbox(client, "test:holds")).write(charged)
    late = await holds.admit("b", stale, 2_500, 2_500)  # the day had 5,000; 3,000 committed
    assert (late.held, late.binding, late.available) == (0, stale[1].scope, 2_000)
    fresh = organization_reads(org, user_id, await fresh_directory(db).organization_account(org, user_id))  # type: ignore[arg-type]
    assert (await holds.admit("c", fresh, 2_000, 2_000)).held == 2_000


async def test_the_reaper_releases_a_dead_replicas_holds_without_records(client: aioredis.Redis) -> None:
    """A hold whose request never got a write-ahead record (its replica died first) is released;
    one whose record the reaper moves to the outbox stays until the writer commits that row."""
    log = InFlightLog(replica=f"dead-{uuid.uuid4().hex[:6]}", ttl_ms=1_000)
    holds = SpendHolds(client, RETENTION_MS)
    scope = scopes.user_balance("someone")
    reads = [ScopeRead(scope, BALANCE, 0)]
    orphan, recorded = record(kilo_user_id="someone"), record(kilo_user_id="someone", held_scopes=[scope])
    for item in (orphan, recorded):
        await holds.admit(item.usage_id, reads, 3_000, 3_000, before=[log.index_hold(item.usage_id, [scope])])
    await RespConnection(client).execute([*log.heartbeat()[1:], log.write(recorded)])  # registered, never alive
    assert await Reaper(client, grace_seconds=0).reap() == 1
    assert await client.hkeys(scope + ":live") == [recorded.usage_id.encode()]
    assert not await client.sismember("gw:inflight:{gw:usage}:replicas", log.replica)
