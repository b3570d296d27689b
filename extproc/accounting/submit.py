"""The request side of accounting, in the ext_proc: finished requests' records to the outbox.

`submit` is called when a request ends and is never awaited by the stream. One task sends the
records in batches, one Redis round trip (a pipeline of XADDs) for all the requests that ended
while the previous batch was on its way: under load that is a fraction of a round trip per
request, and alone a record still leaves at once. If Redis refuses a batch, its records are
kept in memory and offered again every second; on shutdown what Redis still refuses is
written straight to the ledger, so a Redis outage loses no usage.

The same pipelines carry the replica's write-ahead records (accounting/inflight.py): `write_ahead`
when a request is admitted or its message id is first seen, `forget` when it ends without a
record, and the heartbeat that keeps them from being reaped. Every command leaves in the order
the requests made them, so a record's final XADD and the deletion of its write-ahead copy come
after that copy. Write-ahead records Redis refuses are not offered again: they only matter if
the replica dies, and the final record is what is kept.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable

from prometheus_client import Counter
from redis.exceptions import RedisError

from extproc import logs
from extproc.accounting.inflight import InFlightLog
from extproc.accounting.outbox import Outbox
from extproc.accounting.record import UsageRecord
from extproc.accounting.resp import pack
from extproc.accounting.writer import LedgerWriter
from extproc.admission import settle

logger = logging.getLogger(__name__)

OUTBOX_FAILURES = Counter("llm_gateway_outbox_failures", "Usage records Redis refused at submit (kept in memory).")

_RETRY_SECONDS = 1.0
_BATCH = 256
# After a wake-up, the commands of the next few milliseconds join the same round trip: under
# load a request would otherwise cost two (its write-ahead record, then its final record), each
# ~0.1 ms of the ext_proc's CPU alone against ~0.015 ms per command in a batch of ten
# (bench/micro.py). Delays only bookkeeping; a crash loses at most this window's write-aheads.
_GATHER_SECONDS = 0.02
# EVAL, not EVALSHA: in a pipeline a NOSCRIPT could not be retried; releases are rare.
_RELEASE = settle.SCRIPT.encode()


class UsageSubmitter:
    def __init__(self, outbox: Outbox, fallback: LedgerWriter, inflight: InFlightLog) -> None:
        self.outbox = outbox
        # Used only at shutdown, for records Redis never took.
        self.fallback = fallback
        self.inflight = inflight
        self.pending: list[UsageRecord] = []  # waiting for the next batch
        self.unsent: collections.deque[UsageRecord] = collections.deque()  # refused by Redis
        # Write-ahead commands (inflight.py), sent before the batch's final records; the first
        # heartbeat registers the replica before any of its records reach Redis.
        self._ahead: list[bytes] = inflight.heartbeat()
        self._heartbeat_every = min(_RETRY_SECONDS, inflight.ttl_ms / 3000)
        self._heartbeat_due = time.monotonic() + self._heartbeat_every
        self._wake = asyncio.Event()
        self._waiting: set[asyncio.Task[None]] = set()  # records waiting for their abuse id

    def write_ahead(self, record: UsageRecord) -> None:
        """The record the request gets if this replica dies before it ends (again, to update it)."""
        self._ahead.append(self.inflight.write(record))
        self._wake.set()

    def forget(self, usage_id: str) -> None:
        """The request ended and is not accounted (contract 6.2): its write-ahead record goes."""
        self._ahead.append(self.inflight.forget(usage_id))
        self._wake.set()

    def release(self, usage_id: str, scopes: list[str]) -> None:
        """The request's spend hold ends without a ledger row (not accounted, contract 6.2; or
        refused, holding nothing): the hold goes (settle.lua, nothing committed), then its index
        entry (accounting/inflight.py)."""
        if scopes:
            keys, args = settle.arguments(usage_id, 0, settle.release(scopes))
            self._ahead.append(pack(b"EVAL", _RELEASE, b"%d" % len(keys), *keys, *args))
        self._ahead.append(self.inflight.unindex_hold(usage_id))
        self._wake.set()

    def submit(self, record: UsageRecord, abuse_request_id: Awaitable[int] | None = None) -> None:
        """`abuse_request_id`: the abuse classification's id, awaited first (bounded by its own
        budget, never raising)."""
        if abuse_request_id is None:
            self._enqueue(record)
            return
        task = asyncio.get_running_loop().create_task(self._after_abuse_id(record, abuse_request_id))
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _after_abuse_id(self, record: UsageRecord, abuse_request_id: Awaitable[int]) -> None:
        try:
            record.abuse_request_id = await abuse_request_id
        except Exception:  # a side service never costs a usage record
            logger.exception("abuse request id unavailable", extra={"usage_id": record.usage_id})
        self._enqueue(record)

    def _enqueue(self, record: UsageRecord) -> None:
        self.pending.append(record)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Sends what requests left until `stop`; refused records are offered again every second."""
        retry_at = 0.0
        while not stop.is_set():
            try:
                async with asyncio.timeout(self._heartbeat_every):
                    await self._wake.wait()
                await asyncio.sleep(_GATHER_SECONDS)
            except TimeoutError:
                pass
            self._wake.clear()
            if time.monotonic() >= self._heartbeat_due:
                self._heartbeat_due = time.monotonic() + self._heartbeat_every
                self._ahead[:0] = self.inflight.heartbeat()
            if self.unsent and time.monotonic() >= retry_at:
                if await self._resend():
                    retry_at = 0.0
                else:
                    retry_at = time.monotonic() + _RETRY_SECONDS
            await self._flush()

    async def _flush(self) -> None:
        while self.pending or self._ahead:
            ahead, self._ahead = self._ahead, []
            batch, self.pending = self.pending[:_BATCH], self.pending[_BATCH:]
            if not await self._send(batch, ahead):
                OUTBOX_FAILURES.inc(len(batch))
                self.unsent.extend(batch)
                self._heartbeat_due = 0.0  # the next batch registers the replica again first

    async def _resend(self) -> bool:
        while self.unsent:
            batch = [self.unsent[i] for i in range(min(_BATCH, len(self.unsent)))]
            if not await self._send(batch):
                return False
            for _ in batch:
                self.unsent.popleft()
        return True

    async def _send(self, batch: list[UsageRecord], ahead: list[bytes] | None = None) -> bool:
        commands = list(ahead or ())
        for record in batch:
            commands.append(self.outbox.entry(record))
            if record.held_scopes:
                # After the XADD, before the write-ahead record goes: whatever prefix of these
                # Redis runs, a hold is either in the outbox with its record, or in the index
                # with its write-ahead record, or (that record gone) in the index alone.
                commands.append(self.inflight.unindex_hold(record.usage_id))
            commands.append(self.inflight.forget(record.usage_id))
        try:
            async with asyncio.timeout(2):
                await self.outbox.send(commands)
            return True
        except (RedisError, OSError, TimeoutError) as exc:
            logger.error("outbox unavailable; keeping usage records in memory",
                         extra={"count": len(batch), **logs.failure(exc)})
            return False

    async def drain(self, timeout: float) -> None:
        """On shutdown: let the last records get their abuse ids, then hand everything over, to
        the outbox if Redis takes it, else straight to the ledger, within `timeout`."""
        deadline = time.monotonic() + timeout
        if self._waiting:
            await asyncio.wait(self._waiting, timeout=max(0.0, deadline - time.monotonic()))
        if await self._resend():
            await self._flush()
        self.unsent.extend(self.pending)
        self.pending = []
        while self.unsent and time.monotonic() < deadline:
            # A generation lookup alone may retry for 20 s: the deadline bounds each write too.
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    written = await self.fallback.write(self.unsent[0])
            except TimeoutError:
                break
            if not written:
                break
            self.unsent.popleft()
        if self.unsent:
            logger.error("usage records could not be saved before exit", extra={"count": len(self.unsent)})
        await self._leave(deadline)
        await self.fallback.close(deadline)

    async def _leave(self, deadline: float) -> None:
        """Says this replica stopped, so that whatever it could not finish is reaped now."""
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                await self.outbox.send([self.inflight.leave()])
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("could not mark this replica stopped; its in-flight records are reaped after their expiry",
                           extra=logs.failure(exc))
