"""The spend-hold scripts (admit.lua, settle.lua) against a real Redis: all-or-nothing holds,
lowering to what is left, the committed charges a balance read has not seen, settling twice."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from extproc.admission import scopes, settle
from extproc.admission.holds import ScopeRead, SpendHolds

RETENTION_MS = 60_000
USER = scopes.user_balance("user-1")
ORG = scopes.organization_balance("org-1")
DAY = scopes.member_day("org-1", "user-1", "2026-12-04")


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    await redis.flushdb()
    try:
        yield redis
    finally:
        await redis.aclose()


@pytest.fixture
def holds(client: aioredis.Redis) -> SpendHolds:
    return SpendHolds(client, RETENTION_MS)


async def settle_now(client: aioredis.Redis, usage_id: str, parts: list[settle.Settlement]) -> int:
    keys, args = settle.arguments(usage_id, RETENTION_MS, parts)
    return int(await client.eval(settle.SCRIPT, len(keys), *keys, *args))


async def test_concurrent_holds_never_exceed_the_balance(holds: SpendHolds) -> None:
    reads = [ScopeRead(USER, balance=1_000, version=0)]
    results = await asyncio.gather(*(holds.admit(uuid.uuid4().hex, reads, 300, 300) for _ in range(50)))
    assert sorted(r.held for r in results if r.admitted) == [300, 300, 300]
    refused = [r for r in results if not r.admitted]
    assert len(refused) == 47
    assert all(r.binding == USER and r.available == 100 for r in refused)


async def test_lowered_to_what_is_left_when_the_floor_fits(holds: SpendHolds) -> None:
    reads = [ScopeRead(USER, balance=1_000, version=0)]
    assert (await holds.admit("a", reads, 700, 100)).held == 700
    lowered = await holds.admit("b", reads, 700, 100)
    assert (lowered.held, lowered.available) == (300, 300)
    refused = await holds.admit("c", reads, 700, 100)
    assert (refused.held, refused.available) == (0, 0)


async def test_all_scopes_or_none_and_the_binding_scope(client: aioredis.Redis, holds: SpendHolds) -> None:
    reads = [ScopeRead(ORG, balance=10_000, version=5), ScopeRead(DAY, balance=500, version=7)]
    refused = await holds.admit("a", reads, 600, 600)
    assert (refused.held, refused.binding, refused.available) == (0, DAY, 500)
    assert await client.keys("gw:hold:*") == []  # nothing written
    admitted = await holds.admit("b", reads, 400, 400)
    assert admitted.held == 400
    assert await client.get(ORG + ":held") == await client.get(DAY + ":held") == b"400"
    assert len({key_slot(key) for key in scopes.keys(ORG) + scopes.keys(DAY)}) == 1


async def test_admission_is_idempotent_per_usage_id(holds: SpendHolds) -> None:
    reads = [ScopeRead(USER, balance=1_000, version=0)]
    assert (await holds.admit("a", reads, 600, 600)).held == 600
    assert (await holds.admit("a", reads, 600, 600)).held == 600
    assert (await holds.admit("b", reads, 400, 400)).held == 400


async def test_a_commit_between_the_read_and_the_script_is_still_counted(
    client: aioredis.Redis, holds: SpendHolds
) -> None:
    """The race of issue 23: admission reads the balance (1,000 used 0), then the writer commits
    request a's charge (used 0 -> 800) and ends its hold, then admission's script runs."""
    stale_read = [ScopeRead(USER, balance=1_000, version=0)]
    assert (await holds.admit("a", stale_read, 900, 900)).held == 900
    assert await settle_now(client, "a", [settle.Settlement(USER, charged=800, version=800)]) == 900
    late = await holds.admit("b", stale_read, 300, 300)
    assert (late.held, late.available) == (0, 200)
    # A read that saw the commit (balance 200, used 800) is not charged twice.
    fresh = await holds.admit("c", [ScopeRead(USER, balance=200, version=800)], 200, 200)
    assert fresh.held == 200


async def test_settling_twice_releases_once(client: aioredis.Redis, holds: SpendHolds) -> None:
    reads = [ScopeRead(USER, balance=1_000, version=0)]
    await holds.admit("a", reads, 500, 500)
    await holds.admit("b", reads, 500, 500)
    part = [settle.Settlement(USER, charged=100, version=100)]
    assert await settle_now(client, "a", part) == 500
    assert await settle_now(client, "a", part) == 0
    assert await client.get(USER + ":held") == b"500"
    assert await client.zcard(USER + ":done") == 1


async def test_released_hold_without_a_charge_frees_everything(client: aioredis.Redis, holds: SpendHolds) -> None:
    reads = [ScopeRead(USER, balance=1_000, version=0)]
    await holds.admit("a", reads, 1_000, 1_000)
    await settle_now(client, "a", settle.release([USER]))
    assert await client.keys("gw:hold:*") == []
    assert (await holds.admit("b", reads, 1_000, 1_000)).held == 1_000


async def test_unknown_version_is_subtracted_by_every_read(client: aioredis.Redis, holds: SpendHolds) -> None:
    await settle_now(client, "a", [settle.Settlement(USER, charged=400, version=settle.UNKNOWN_VERSION)])
    refused = await holds.admit("b", [ScopeRead(USER, balance=1_000, version=10**12)], 700, 700)
    assert (refused.held, refused.available) == (0, 600)


async def test_committed_charges_are_pruned_after_the_retention(client: aioredis.Redis) -> None:
    short = SpendHolds(client, retention_ms=50)
    keys, args = settle.arguments("a", 50, [settle.Settlement(USER, charged=400, version=400)])
    await client.eval(settle.SCRIPT, len(keys), *keys, *args)
    read = [ScopeRead(USER, balance=1_000, version=0)]
    assert (await short.admit("b", read, 1_000, 1_000)).held == 0
    await asyncio.sleep(0.1)
    assert (await short.admit("c", read, 1_000, 1_000)).held == 1_000


async def test_script_loaded_again_after_a_flush(client: aioredis.Redis, holds: SpendHolds) -> None:
    reads = [ScopeRead(USER, balance=1_000, version=0)]
    await holds.admit("a", reads, 100, 100)
    await client.script_flush()
    assert (await holds.admit("b", reads, 100, 100)).held == 100
