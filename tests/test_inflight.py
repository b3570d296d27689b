"""Write-ahead records of requests in flight (extproc/accounting/inflight.py), against a real
Redis: what a replica leaves in Redis while it serves, when it finishes, and what the ledger
writer's reaper moves to the outbox once the replica has stopped renewing its heartbeat.

The rule under test (docs/ARCHITECTURE.md, "Durability of the accounting outbox"): a request
admitted on a replica that then dies still reaches the outbox, once, under the usage id its
final record would have had; a request that finished leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import cast

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from extproc.accounting.inflight import ALIVE_PREFIX, RECORDS_PREFIX, REPLICAS, InFlightLog, Reaper
from extproc.accounting.outbox import STREAM, Outbox
from extproc.accounting.record import UsageRecord
from extproc.accounting.submit import UsageSubmitter
from extproc.accounting.writer import LedgerWriter
from extproc.settings import Settings
from tests.test_side_services import record

TTL_MS = 60_000  # a live replica's key never expires during a test; "dying" deletes it


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_url)
    await redis.flushdb()
    yield redis
    await redis.aclose()


class Replica:
    """A running submitter, as an ext_proc process has one."""

    def __init__(self, client: aioredis.Redis) -> None:
        outbox = Outbox(client, "test:ledger")
        self.log = InFlightLog(replica=uuid.uuid4().hex, ttl_ms=TTL_MS)
        self.submitter = UsageSubmitter(outbox, LedgerWriter(Settings(), cast(asyncpg.Pool, None), outbox), self.log)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.submitter.run(self.stop))

    @property
    def records_key(self) -> str:
        return RECORDS_PREFIX + self.log.replica

    async def halt(self) -> None:
        """Stops sending, as a SIGKILL would (nothing more reaches Redis)."""
        self.stop.set()
        self.submitter._wake.set()
        await self.task


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def outbox_records(client: aioredis.Redis) -> list[UsageRecord]:
    return [UsageRecord.from_json(fields[b"record"]) for _, fields in await client.xrange(STREAM)]


def unanswered(**overrides: object) -> UsageRecord:
    return record(status_code=0, aborted=True, has_error=True, message_id=None, input_tokens=0, output_tokens=0,
                  cache_hit_tokens=0, cost_microdollars=0, **overrides)


async def test_a_live_replica_keeps_its_requests_in_flight_and_a_finished_one_leaves_nothing(
    client: aioredis.Redis,
) -> None:
    replica = Replica(client)
    finished, in_flight, unaccounted = unanswered(), unanswered(), unanswered()
    for ahead in (finished, in_flight, unaccounted):
        replica.submitter.write_ahead(ahead)
    # Same flush: the final record's XADD and the deletion come after the write-ahead HSET.
    replica.submitter.submit(replace(finished, status_code=200, cost_microdollars=1234))
    replica.submitter.forget(unaccounted.usage_id)  # a 402 on Kilo's key (contract 6.2)

    async def settled() -> bool:
        return await client.hkeys(replica.records_key) == [in_flight.usage_id.encode()]

    await until(settled, "only the request in flight left written ahead")
    assert await client.exists(ALIVE_PREFIX + replica.log.replica) == 1
    assert await client.smembers(REPLICAS) == {replica.log.replica.encode()}
    assert [(r.usage_id, r.cost_microdollars) for r in await outbox_records(client)] == [(finished.usage_id, 1234)]
    # Alive: the reaper leaves its requests alone.
    assert await Reaper(client, grace_seconds=0).reap() == 0
    assert await client.hlen(replica.records_key) == 1
    await replica.halt()


async def test_a_dead_replicas_requests_reach_the_outbox_once_with_the_last_message_id(
    client: aioredis.Redis,
) -> None:
    replica = Replica(client)
    stream, json = unanswered(streamed=True), unanswered(streamed=False)
    replica.submitter.write_ahead(stream)
    replica.submitter.write_ahead(json)
    replica.submitter.write_ahead(replace(stream, message_id="gen-42", status_code=200))  # first chunk seen
    # The exchange completes its written-ahead record in place (phases/finish.py): what was
    # written ahead stays as it was.
    json.status_code, json.cost_microdollars = 200, 1234

    async def both_written() -> bool:
        return await client.hlen(replica.records_key) == 2

    await until(both_written, "the write-ahead records")
    await replica.halt()  # SIGKILL: no final record, no clean leave
    await client.delete(ALIVE_PREFIX + replica.log.replica)  # its heartbeat expired

    # Two writers reap at once: the script is atomic, the records move once.
    moved = await asyncio.gather(Reaper(client, grace_seconds=0).reap(), Reaper(client, grace_seconds=0).reap())
    assert sorted(moved) == [0, 2]
    reaped = {r.usage_id: r for r in await outbox_records(client)}
    assert set(reaped) == {stream.usage_id, json.usage_id}
    assert (reaped[stream.usage_id].message_id, reaped[stream.usage_id].status_code) == ("gen-42", 200)
    assert (reaped[json.usage_id].message_id, reaped[json.usage_id].aborted) == (None, True)
    assert (reaped[json.usage_id].status_code, reaped[json.usage_id].cost_microdollars) == (0, 0)
    assert await client.exists(replica.records_key) == 0
    assert await client.smembers(REPLICAS) == set()
    assert await Reaper(client, grace_seconds=0).reap() == 0


async def test_a_clean_shutdown_hands_over_at_once_what_it_could_not_finish(client: aioredis.Redis) -> None:
    replica = Replica(client)
    lost_finish = unanswered()  # a request whose finish failed: only its write-ahead record is left
    replica.submitter.write_ahead(lost_finish)
    await replica.halt()
    await replica.submitter.drain(timeout=2)  # SIGTERM's path: the key goes, no expiry to wait for
    assert await Reaper(client, grace_seconds=0).reap() == 1
    assert [r.usage_id for r in await outbox_records(client)] == [lost_finish.usage_id]


async def test_a_replica_is_reaped_only_after_its_key_stayed_missing_for_the_grace(client: aioredis.Redis) -> None:
    """After a Redis outage every key may be gone: live replicas get the grace to renew theirs."""
    replica = Replica(client)
    replica.submitter.write_ahead(unanswered())

    async def written() -> bool:
        return await client.hlen(replica.records_key) == 1

    await until(written, "the write-ahead record")
    await replica.halt()
    await client.delete(ALIVE_PREFIX + replica.log.replica)
    reaper = Reaper(client, grace_seconds=0.2)
    assert await reaper.reap() == 0  # missing since now
    first_seen = time.monotonic()
    await until(lambda: asyncio.sleep(0, time.monotonic() - first_seen > 0.2), "the grace to pass")
    assert await reaper.reap() == 1


def test_every_key_the_reaper_touches_is_in_the_outbox_streams_cluster_slot() -> None:
    """Redis Cluster runs a script only on keys of one slot (CRC16 of the key or its hash tag)."""
    replica = uuid.uuid4().hex
    keys = [REPLICAS, ALIVE_PREFIX + replica, RECORDS_PREFIX + replica]
    assert {key_slot(key.encode()) for key in keys} == {key_slot(STREAM.encode())}
