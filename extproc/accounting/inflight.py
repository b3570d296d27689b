"""Write-ahead records of the requests a replica has in flight, so its crash loses no usage.

A request's usage record is built when its response ends, in the ext_proc's memory: a replica
that is SIGKILLed (or OOM-killed, or whose host dies) would take the records of the requests it
was serving with it, though the upstream served and billed them. So, when a request is
admitted, its replica writes ahead the record it would get if it never heard back (no status,
cut, charged nothing) into a Redis hash of its own, updates it when the response's message id
is first seen (then the ledger writer's generation lookup finds the upstream's bill, contract
7.3), and deletes it in the same pipeline that adds the final record to the outbox. The
record's usage id is the final one's, so a record written both ways is one row (the ledger
writes are idempotent by usage id).

Each replica keeps a key alive while it runs (`heartbeat`, every second or so, expiring after
`inflight_ttl_seconds`). The ledger writer's `Reaper` moves the records of a replica whose key
has been gone for as long again into the outbox, atomically (one Lua script), so two writers
never move them twice. A clean shutdown deletes the key at the end, so what a replica could not
finish is moved after that grace, not after the expiry too.

A replica taken for dead that was not (cut off from Redis for longer than both, while the
writer was not) has the records of its requests in flight written from their write-ahead
copies; their final records then come second and are skipped as duplicates: those requests
are charged what the write-ahead copy allowed (the upstream's bill if the message id was in
it, else nothing).

The commands are packed here and sent by the submitter (accounting/submit.py) on its own
connection, in the order the requests made them, batched with the outbox's XADDs: the hot
path pays no round trip for them. What is lost is only what was not yet sent when the
replica died (milliseconds).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError

from extproc import logs
from extproc.accounting.outbox import RECORD_FIELD, STREAM
from extproc.accounting.record import UsageRecord
from extproc.accounting.resp import pack
from extproc.admission import counters as hold_metrics
from extproc.admission import settle
from extproc.event_loop import sleep_or_stop

logger = logging.getLogger(__name__)

# The hash tag puts every key in the outbox stream's Redis Cluster slot (a key without one
# hashes its whole name, so `{gw:usage}` hashes as `gw:usage` does): the reaper's script
# touches them and the stream together, which Redis Cluster allows within one slot only.
_SLOT = "{" + STREAM + "}"
REPLICAS = f"gw:inflight:{_SLOT}:replicas"
ALIVE_PREFIX = f"gw:inflight:{_SLOT}:alive:"
RECORDS_PREFIX = f"gw:inflight:{_SLOT}:records:"
# Each replica's spend holds (extproc/admission), usage id -> the scopes held, written in the
# admission's own round trip just before its script: a hold whose request never got a
# write-ahead record (the replica died first) is still found, and released by the reaper.
HOLDS_PREFIX = f"gw:inflight:{_SLOT}:holds:"

REAPED = Counter(
    "llm_gateway_inflight_reaped",
    "Write-ahead usage records of requests whose replica stopped without finishing them, moved to the outbox.",
)

# Atomic, so a replica's records move once however many writers reap: nothing if its key is
# still alive, else every record into the outbox (the writer ends their holds when it commits
# them), then the hash goes. Holds without a record are returned, to be released, and the
# registration goes once none is left (`Reaper.reap` releases them, then calls again).
_REAP = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1} end
local moved = redis.call('HGETALL', KEYS[2])
for i = 1, #moved, 2 do
  redis.call('XADD', KEYS[3], '*', ARGV[2], moved[i + 1])
  redis.call('HDEL', KEYS[5], moved[i])
end
redis.call('DEL', KEYS[2])
local orphans = redis.call('HGETALL', KEYS[5])
if #orphans == 0 then redis.call('SREM', KEYS[4], ARGV[1]) end
local reply = {#moved / 2}
for _, value in ipairs(orphans) do reply[#reply + 1] = value end
return reply
"""


@dataclass(frozen=True, slots=True)
class InFlightLog:
    """A replica's commands on its write-ahead records (packed RESP, for the submitter)."""

    replica: str  # unique per process start: a restarted replica is another one
    ttl_ms: int

    @property
    def _alive(self) -> bytes:
        return (ALIVE_PREFIX + self.replica).encode()

    @property
    def _records(self) -> bytes:
        return (RECORDS_PREFIX + self.replica).encode()

    def heartbeat(self) -> list[bytes]:
        # SADD each time, not once: a Redis that lost the set (no AOF) gets it back.
        return [
            pack(b"SET", self._alive, b"%d" % int(time.time()), b"PX", b"%d" % self.ttl_ms),
            pack(b"SADD", REPLICAS.encode(), self.replica.encode()),
        ]

    def write(self, record: UsageRecord) -> bytes:
        """Writes (or rewrites) the record a request gets if its replica dies."""
        return pack(b"HSET", self._records, record.usage_id.encode(), record.to_json())

    def forget(self, usage_id: str) -> bytes:
        return pack(b"HDEL", self._records, usage_id.encode())

    @property
    def _holds(self) -> bytes:
        return (HOLDS_PREFIX + self.replica).encode()

    def index_hold(self, usage_id: str, scopes: list[str]) -> bytes:
        return pack(b"HSET", self._holds, usage_id.encode(), orjson.dumps(scopes))

    def unindex_hold(self, usage_id: str) -> bytes:
        """Once the request's record is in the outbox (its row ends the hold) or it held nothing."""
        return pack(b"HDEL", self._holds, usage_id.encode())

    def leave(self) -> bytes:
        """At a clean exit: the records left (none, unless a record could not be finished)
        move to the outbox at the reaper's next pass instead of after the key's expiry."""
        return pack(b"DEL", self._alive)


class Reaper:
    """The ledger writer's side: moves the records of replicas that stopped to the outbox.

    A replica is reaped once its key has been missing for `grace_seconds` as this reaper saw
    it, with Redis answering all along. A Redis outage restarts that clock: while Redis was
    down (or after it came back without the keys) no replica could renew its key, and the
    live ones get the grace to do so before their records are taken for a dead replica's.
    """

    def __init__(self, redis: aioredis.Redis, grace_seconds: float, interval_seconds: float = 1.0) -> None:
        self.redis = redis
        self.grace = grace_seconds
        self.interval = interval_seconds
        self._script = redis.register_script(_REAP)
        self._release = redis.register_script(settle.SCRIPT)
        self._missing_since: dict[str, float] = {}

    async def reap(self) -> int:
        """Records moved in this pass."""
        moved = 0
        now = time.monotonic()
        for replica in await self.redis.smembers(REPLICAS):
            name = replica.decode() if isinstance(replica, bytes) else str(replica)
            if await self.redis.exists(ALIVE_PREFIX + name):
                self._missing_since.pop(name, None)
                continue
            if now - self._missing_since.setdefault(name, now) < self.grace:
                continue
            keys = [ALIVE_PREFIX + name, RECORDS_PREFIX + name, STREAM, REPLICAS, HOLDS_PREFIX + name]
            count, *orphans = await self._script(keys=keys, args=[name, RECORD_FIELD])
            count = int(count)
            if orphans:
                await self._release_orphans(name, orphans)
                await self._script(keys=keys, args=[name, RECORD_FIELD])
            self._missing_since.pop(name, None)
            if count > 0:
                REAPED.inc(count)
                moved += count
                logger.warning(
                    "replica stopped with requests in flight; their usage records moved to the outbox",
                    extra={"replica": name, "count": count},
                )
        return moved

    async def _release_orphans(self, replica: str, orphans: list[bytes]) -> None:
        """Holds of a dead replica's requests that never got a record: none will ever be written
        (the usage the table of docs/ARCHITECTURE.md counts as lost), so nothing is charged."""
        held = 0
        for usage_id, scopes in zip(orphans[::2], orphans[1::2], strict=True):
            keys, args = settle.arguments(usage_id.decode(), 0, settle.release(orjson.loads(scopes)))
            held += int(await self._release(keys=keys, args=args))
            await self.redis.hdel(HOLDS_PREFIX + replica, usage_id)
        hold_metrics.RELEASED_HOLDS.inc(len(orphans) // 2)
        hold_metrics.RELEASED.inc(held)
        logger.warning(
            "replica stopped holding spend for requests without a record; holds released",
            extra={"replica": replica, "count": len(orphans) // 2, "microdollars": held},
        )

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.reap()
            except (RedisError, OSError) as exc:
                self._missing_since.clear()
                logger.error("in-flight records not reaped (next pass soon)", extra=logs.failure(exc))
            await sleep_or_stop(stop, self.interval)
