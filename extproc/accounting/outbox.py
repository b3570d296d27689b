"""The accounting outbox: a Redis stream with one consumer group shared by all replicas.

`add` XADDs a batch of records, milliseconds after their responses ended (accounting/submit.py);
from then on a record is durable (Redis' append-only file). Each writer reads with a stable
consumer name, so after a crash and restart it first takes back what it had read but not
acknowledged; entries of a writer that never came back are claimed by the others after
`claim_idle_ms`.
An entry is acknowledged and deleted only after its ledger transaction committed, or after it
moved to the dead-letter stream `gw:usage:dead` (a record Postgres refuses for its data, or an
entry that is not a record at all): there it waits, with its error, for an operator to fix the
cause and replay it (`llm-gateway outbox dead-letters`, `llm-gateway outbox replay`).

A Redis error leaving here carries the command that failed as a note (PEP 678), which the
writer's logs show as `operation` (`extproc.logs.failure`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError
from redis.typing import EncodableT, FieldT

from extproc import logs
from extproc.accounting.record import UsageRecord
from extproc.accounting.resp import RespConnection, pack

logger = logging.getLogger(__name__)

STREAM = "gw:usage"
_STREAM_KEY = STREAM.encode()
GROUP = "ledger"
_GROUP_KEY = GROUP.encode()
DEAD_LETTERS = "gw:usage:dead"
RECORD_FIELD = b"record"  # the one field of an entry: the record's JSON
# The stream (and its group) is gone: "NOGROUP" from any read; "UNBLOCKED" (Redis 7.0+) from
# an XREADGROUP that was blocked when the key was deleted; 6.2 keeps such a read blocked
# until its timeout instead.
_STREAM_GONE = ("NOGROUP", "UNBLOCKED")


@contextmanager
def _command(name: str, key: str = STREAM) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        exc.add_note(f"redis {name} {key}")
        raise


# A stream entry as this client receives it (RESP2, bytes). redis-py annotates its replies for
# every protocol and decoding at once (str or bytes, RESP3's dicts), so they are narrowed here.
_Entry = tuple[bytes, dict[bytes, bytes]]


def _read_entries(reply: object) -> list[_Entry]:
    """XREADGROUP's reply for one stream: [[stream, entries]], or nothing."""
    streams = cast(list[tuple[bytes, list[tuple[bytes, Any]]]], reply)
    return [(entry_id, _fields(fields)) for entry_id, fields in streams[0][1]] if streams else []


def _fields(fields: dict[bytes, bytes] | list[bytes] | None) -> dict[bytes, bytes]:
    """redis-py hands an entry's fields over as a dict; a RESP connection as the flat list
    [name, value, ...], or None for an entry deleted while pending."""
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[::2], fields[1::2], strict=True)) if fields else {}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record the ledger refused, as the dead-letter stream keeps it."""

    entry_id: str
    record: bytes  # the usage record's JSON, as it was in the outbox
    error: str  # what Postgres (or the record's parser) said
    columns: list[str]  # the descriptive columns written empty so that the charge was made
    charged: bool  # the usage row (and its charge) is in the ledger, without `columns`
    priced: dict[str, Any] | None  # the charge as priced: replayed as is, never priced again
    at: float

    def summary(self) -> dict[str, Any]:
        """What an operator sees of it (no prompt text: the record stays in Redis)."""
        try:
            usage_id = orjson.loads(self.record).get("usage_id")
        except (orjson.JSONDecodeError, AttributeError):
            usage_id = None
        return {
            "entry_id": self.entry_id,
            "usage_id": usage_id,
            "error": self.error,
            "columns": self.columns,
            "charged": self.charged,
            "cost_microdollars": self.priced.get("cost") if self.priced else None,
            "at": self.at,
        }


class Outbox:
    def __init__(self, redis: aioredis.Redis, consumer: str, claim_idle_ms: int = 60_000) -> None:
        self.redis = redis
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self._group_ready = False
        # The frequent commands get lean connections of their own (accounting/resp.py): `add`
        # on the ext_proc's hot path; the writer's reads of new entries and acknowledgements.
        self._resp = RespConnection(redis)
        self._reads = RespConnection(redis)
        self._acks = RespConnection(redis)
        self._consumer_key = consumer.encode()

    @staticmethod
    def entry(record: UsageRecord) -> bytes:
        """The XADD of one record, packed for `send`."""
        return pack(b"XADD", _STREAM_KEY, b"*", RECORD_FIELD, record.to_json())

    async def send(self, commands: list[bytes]) -> None:
        """One round trip for the batch (a pipeline, not a transaction: each command stands
        alone), in order: the submitter's XADDs and its in-flight records' commands."""
        with _command("pipeline (XADD, in-flight records)"):
            await self._resp.execute(commands)

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From the start of the stream: entries added before any writer existed count too.
            with _command("XGROUP CREATE"):
                await self.redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def read(self, count: int, block_ms: int, *, pending: bool) -> list[tuple[bytes, UsageRecord]]:
        """`pending`: this consumer's delivered-but-unacknowledged entries (after a restart or a
        failed write), then entries idle too long at other consumers; else new entries."""
        await self._ensure_group()
        try:
            return await self._read(count, block_ms, pending=pending)
        except ResponseError as exc:
            if not str(exc).startswith(_STREAM_GONE):
                raise
            # Redis lost the stream (restarted without persistence, or the key was deleted):
            # create it again.
            self._group_ready = False
            await self._ensure_group()
            return await self._read(count, block_ms, pending=pending)

    async def _read(self, count: int, block_ms: int, *, pending: bool) -> list[tuple[bytes, UsageRecord]]:
        if pending:
            with _command("XREADGROUP 0"):
                entries = _read_entries(await self.redis.xreadgroup(GROUP, self.consumer, {STREAM: "0"}, count=count))
            if not entries:
                # Redis 6.2 answers [cursor, entries], 7+ adds the deleted ids.
                with _command("XAUTOCLAIM"):
                    claimed = await self.redis.xautoclaim(
                        STREAM, GROUP, self.consumer, min_idle_time=self.claim_idle_ms, start_id="0", count=count
                    )
                entries = cast(list[_Entry], claimed[1])
        else:
            command = pack(b"XREADGROUP", b"GROUP", _GROUP_KEY, self._consumer_key, b"COUNT", b"%d" % count,
                           b"BLOCK", b"%d" % block_ms, b"STREAMS", _STREAM_KEY, b">")
            with _command("XREADGROUP >"):
                entries = _read_entries((await self._reads.execute([command], wait=block_ms / 1000))[0])
        # An entry deleted while pending has no fields left: nothing to write, just release it.
        done = [entry_id for entry_id, fields in entries if not fields]
        records: list[tuple[bytes, UsageRecord]] = []
        for entry_id, fields in entries:
            if not fields:
                continue
            try:
                records.append((entry_id, UsageRecord.from_json(fields[RECORD_FIELD])))
            except (KeyError, TypeError, ValueError) as exc:  # orjson's decode error is a ValueError
                # Not a record this version can read: retrying cannot help, so it waits in the
                # dead letters instead of failing every read.
                logger.error("outbox entry unreadable; dead-lettered", extra={"entry_id": entry_id, **logs.failure(exc)})
                await self.dead_letter(fields.get(RECORD_FIELD) or repr(fields).encode(), f"{type(exc).__name__}: {exc}")
                done.append(entry_id)
        await self.acknowledge(done)
        return records

    async def acknowledge(self, entry_ids: list[bytes]) -> None:
        if entry_ids:
            with _command("XACK+XDEL"):
                await self._acks.execute([
                    pack(b"MULTI"),
                    pack(b"XACK", _STREAM_KEY, _GROUP_KEY, *entry_ids),
                    pack(b"XDEL", _STREAM_KEY, *entry_ids),
                    pack(b"EXEC"),
                ])

    async def dead_letter(
        self,
        record: bytes,
        error: str,
        *,
        columns: list[str] | None = None,
        charged: bool = False,
        priced: dict[str, Any] | None = None,
    ) -> None:
        fields: dict[FieldT, EncodableT] = {
            RECORD_FIELD: record,
            b"error": error,
            b"columns": orjson.dumps(columns or []),
            b"charged": b"1" if charged else b"0",
            b"priced": orjson.dumps(priced),
            b"at": repr(time.time()),
        }
        with _command("XADD", DEAD_LETTERS):
            await self.redis.xadd(DEAD_LETTERS, fields)

    async def dead_letters(self, count: int = 10_000) -> list[DeadLetter]:
        return [
            DeadLetter(
                entry_id=entry_id.decode(),
                record=fields[RECORD_FIELD],
                error=fields[b"error"].decode(),
                columns=orjson.loads(fields[b"columns"]),
                charged=fields[b"charged"] == b"1",
                priced=orjson.loads(fields[b"priced"]),
                at=float(fields[b"at"]),
            )
            for entry_id, fields in await self._dead_letter_entries(count)
        ]

    async def _dead_letter_entries(self, count: int) -> list[_Entry]:
        with _command("XRANGE", DEAD_LETTERS):
            return cast(list[_Entry], await self.redis.xrange(DEAD_LETTERS, count=count))

    async def forget_dead_letter(self, entry_id: str) -> None:
        with _command("XDEL", DEAD_LETTERS):
            await self.redis.xdel(DEAD_LETTERS, entry_id)

    async def depth_and_age(self) -> tuple[int, float]:
        """Entries not yet written to the ledger, and the age in seconds of the oldest."""
        with _command("XLEN"):
            depth = await self.redis.xlen(STREAM)
        with _command("XRANGE"):
            oldest = cast(list[_Entry], await self.redis.xrange(STREAM, count=1))
        if not oldest:
            return depth, 0.0
        millis = int(oldest[0][0].split(b"-")[0])
        return depth, max(0.0, time.time() - millis / 1000)
