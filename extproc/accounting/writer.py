"""Drains the outbox into the ledger, in its own process (`llm-gateway ledger-writer`).

Per record: refetch the generation when the provider has the endpoint (contract 7.3), price it
(7.4), write it idempotently (7.5; users' records many per statement), then acknowledge the
outbox entry (in batches). A Postgres failure leaves the entry pending; it is retried with
backoff until it commits, so an outage delays rows and never drops them. Its own process
because this work (a generation lookup per record, statements, Redis reads and
acknowledgements) would otherwise share the ext_proc's event loop with the requests and add
to their latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from extproc.accounting import cost, ledger
from extproc.accounting.generation import fetch_generation
from extproc.accounting.outbox import Outbox
from extproc.accounting.record import UsageRecord
from extproc.db import POSTGRES_ERRORS
from extproc.settings import Settings
from extproc.side import analytics

if TYPE_CHECKING:
    from extproc.side import SideServices

logger = logging.getLogger(__name__)

CHARGED = Counter(
    "llm_gateway_charged_microdollars", "Microdollars charged to users and organisations.", ["provider"]
)
LEDGER_ROWS = Counter("llm_gateway_ledger_rows", "Usage rows written (duplicates skipped).", ["result"])
LEDGER_FAILURES = Counter("llm_gateway_ledger_write_failures", "Ledger transactions that failed (retried).")
# One writer sets these; under the stack's multiprocess metrics, a dead writer's value is dropped.
OUTBOX_DEPTH = Gauge(
    "llm_gateway_outbox_depth", "Usage records waiting for the ledger.", multiprocess_mode="livemax"
)
OUTBOX_AGE = Gauge(
    "llm_gateway_outbox_oldest_seconds", "Age of the oldest record waiting for the ledger.", multiprocess_mode="livemax"
)

_BATCH = 100
_RESCAN_SECONDS = 30.0
_GAUGE_SECONDS = 1.0
# Accounting may lag a little; the requests may not. Under light load the writer lets records
# gather (in the outbox between reads, before each ledger statement) instead of paying a read,
# a statement and a commit per record on the cores the requests run on. At most ~0.1 s added
# to a row's delay, which the generation lookup's 0.2 s wait already dwarfs.
_READ_PAUSE_SECONDS = 0.05
_STATEMENT_PAUSE_SECONDS = 0.02


class LedgerWriter:
    def __init__(self, settings: Settings, db: asyncpg.Pool, outbox: Outbox, side: SideServices | None = None) -> None:
        self.settings = settings
        self.db = db
        self.outbox = outbox
        # The optional side services (extproc/side): the abuse cost report and the analytics
        # events follow a written row.
        self.side = side
        self.session: aiohttp.ClientSession | None = None
        # Records in flight at once; most of them are just waiting on a generation lookup.
        self._slots = asyncio.Semaphore(1024)
        # Entries being written, or written and waiting for the next acknowledgement batch.
        self._inflight: set[bytes] = set()
        self._written: list[bytes] = []
        self._failures = 0
        self._gauges_at = float("-inf")
        self._tasks: set[asyncio.Task[None]] = set()
        # Generation lookups under way, abandoned at shutdown (`_abandon_lookups`).
        self._lookups: set[asyncio.Task[dict[str, Any] | None]] = set()
        self._stopping = False
        self._batch = _Batch(db)

    async def run(self, stop: asyncio.Event) -> None:
        """Read new entries continuously and write each as soon as it is priced; a slow
        generation lookup holds up only its own record. Our pending entries (left by a crash or
        a failed write) are read again at start, after failures, and every `_RESCAN_SECONDS`
        (which also claims entries of replicas that went away)."""
        rescan_at = 0.0
        # Once stopping, lookups end at once: slots held by retrying lookups free up, so this
        # loop sees `stop` within a read, even with every slot taken.
        watcher = asyncio.get_running_loop().create_task(self._abandon_lookups_on(stop))
        while not stop.is_set():
            try:
                await self._acknowledge_written()
                rescan = time.monotonic() >= rescan_at
                # While records are in flight, come back soon to acknowledge them.
                entries = await self.outbox.read(_BATCH, 100 if self._inflight else 1000, pending=rescan)
                if rescan:
                    rescan_at = time.monotonic() + (self._retry_delay() if self._failures else _RESCAN_SECONDS)
                for entry_id, record in entries:
                    if entry_id in self._inflight:
                        continue
                    await self._slots.acquire()
                    self._inflight.add(entry_id)
                    task = asyncio.get_running_loop().create_task(self._write_entry(entry_id, record))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                if self._failures:
                    rescan_at = min(rescan_at, time.monotonic() + self._retry_delay())
                await self._update_gauges()
                if len(entries) < _BATCH:
                    await _sleep_or_stop(stop, _READ_PAUSE_SECONDS)
            except (RedisError, OSError, TimeoutError) as exc:
                self._failures += 1
                logger.error("outbox read failed", extra={"error": repr(exc)})
                await _sleep_or_stop(stop, self._retry_delay())
        await watcher

    async def _abandon_lookups_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._abandon_lookups()

    def _abandon_lookups(self) -> None:
        self._stopping = True
        for lookup in self._lookups:
            lookup.cancel()

    def _retry_delay(self) -> float:
        return min(10.0, 0.5 * 2 ** min(self._failures, 5))

    async def _write_entry(self, entry_id: bytes, record: UsageRecord) -> None:
        written = False
        try:
            written = await self.write(record)
        except LookupAbandoned:
            logger.info("generation lookup abandoned at shutdown; the record stays in the outbox",
                        extra={"usage_id": record.usage_id})
        finally:
            if written:
                self._failures = 0
                self._written.append(entry_id)
            else:
                self._failures += 1
                self._inflight.discard(entry_id)
            self._slots.release()

    async def _acknowledge_written(self) -> None:
        """One XACK+XDEL for every entry written since the last call: a Redis command costs
        ~0.1-0.2 ms of CPU in redis-py, more than the rest of a record's bookkeeping."""
        if not self._written:
            return
        done, self._written = self._written, []
        try:
            await self.outbox.acknowledge(done)
        except (RedisError, OSError, TimeoutError) as exc:
            # Written but not acknowledged: the entries come back and are skipped as duplicates.
            logger.error("outbox acknowledge failed", extra={"error": repr(exc)})
        finally:
            self._inflight.difference_update(done)

    async def drain(self, timeout: float) -> None:
        """On shutdown, within `timeout`: records whose generation lookup is still retrying (up
        to 20 s) are abandoned, unacknowledged, so they stay pending in the outbox under this
        consumer and the next writer takes them; records already priced finish their write,
        and what was written is acknowledged. Unread entries wait in the outbox as well.
        Nothing is lost, and a write that commits but is not acknowledged is skipped as a
        duplicate when read again."""
        deadline = time.monotonic() + timeout
        self._abandon_lookups()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=max(0.0, deadline - time.monotonic()))
        await self._acknowledge_written()
        await self.close(deadline)

    async def close(self, deadline: float) -> None:
        if self.session is not None:
            await self.session.close()
        if self.side is not None:
            # Cost reports and analytics events of the rows just written get a moment to leave.
            await self.side.close(timeout=max(1.0, deadline - time.monotonic()))

    async def write(self, record: UsageRecord) -> bool:
        """Price and write one record; False when Postgres failed (the caller retries)."""
        charge = await self._charge(record)
        charged, discount = cost.billable(
            charge, free_model=record.free_model, user_byok=record.user_byok, promotion=record.promotion
        )
        side = self.side
        first_usage_check = side is not None and side.analytics.check_first_usage(record)
        first_usage, used_after = False, None
        try:
            if not first_usage_check and ledger.batchable(record):
                written = await self._batch.write((record, charge, charged, discount))
            else:
                async with self.db.acquire(timeout=10) as connection:
                    if first_usage_check:
                        written, first_usage, used_after = await _write_checking_first_usage(
                            connection, record, charge, charged, discount
                        )
                    else:
                        written = await ledger.write(connection, record, charge, charged, discount)
        except POSTGRES_ERRORS as exc:
            LEDGER_FAILURES.inc()
            logger.error("ledger write failed; will retry", extra={"usage_id": record.usage_id, "error": repr(exc)})
            return False
        LEDGER_ROWS.labels("inserted" if written.inserted else "duplicate").inc()
        if written.inserted and charged:
            CHARGED.labels(record.provider).inc(charged)
        if written.inserted and side is not None:
            # After the commit, fire-and-forget (extproc/side): 8.3's cost report with the
            # market cost, and 7.5's first-usage events.
            side.abuse.report_cost(record, charge.usage)
            side.analytics.usage_written(
                self.db,
                record,
                model=ledger.stored_model(record),
                cost=charged,
                first_usage=first_usage,
                microdollars_used=used_after,
            )
        return True

    async def _charge(self, record: UsageRecord) -> cost.Charge:
        charge = cost.Charge(
            usage=record.stream_usage(),
            cache_discount_microdollars=None,
            inference_provider=record.inference_provider,
            finish_reason=record.finish_reason,
        )
        provider = self.settings.providers.get(record.provider)
        if provider is None or not provider.has_generation_endpoint or not record.message_id or not provider.api_url:
            return charge
        if self._stopping:
            raise LookupAbandoned(record.usage_id)
        if self.session is None:  # created inside the running loop, which it belongs to
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        lookup = asyncio.get_running_loop().create_task(
            fetch_generation(
                self.session,
                provider.api_url,
                provider.api_key.get_secret_value() if provider.api_key else None,
                record.message_id,
                {"HTTP-Referer": self.settings.http_referer, "X-Title": self.settings.x_title},
            )
        )
        self._lookups.add(lookup)
        lookup.add_done_callback(self._lookups.discard)
        try:
            data = await lookup
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]  # we are cancelled ourselves
                raise
            raise LookupAbandoned(record.usage_id) from None
        return cost.from_generation(charge, data, record.streamed) if data is not None else charge

    async def _update_gauges(self) -> None:
        # Two Redis round trips: at most once a second, not once per batch read under load.
        if time.monotonic() - self._gauges_at < _GAUGE_SECONDS:
            return
        self._gauges_at = time.monotonic()
        depth, age = await self.outbox.depth_and_age()
        OUTBOX_DEPTH.set(depth)
        OUTBOX_AGE.set(age)


class LookupAbandoned(Exception):
    """The generation lookup was cut short by shutdown (`LedgerWriter.drain`)."""


class _Batch:
    """Users' records written many per statement (`ledger.write_many`): the records priced within
    `_STATEMENT_PAUSE_SECONDS` of each other, or while the previous batch was being written, go
    together, in one statement and one commit: a commit and most of a statement saved per
    record, on the writer and on Postgres."""

    def __init__(self, db: asyncpg.Pool) -> None:
        self.db = db
        self.waiting: list[tuple[ledger.Item, asyncio.Future[ledger.Written]]] = []
        self.flusher: asyncio.Task[None] | None = None

    async def write(self, item: ledger.Item) -> ledger.Written:
        """Raises what the batch's statement raised (a Postgres error: the caller retries)."""
        future: asyncio.Future[ledger.Written] = asyncio.get_running_loop().create_future()
        self.waiting.append((item, future))
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(_STATEMENT_PAUSE_SECONDS)
        while self.waiting:
            batch, self.waiting = self.waiting[:_BATCH], self.waiting[_BATCH:]
            try:
                async with self.db.acquire(timeout=10) as connection:
                    results = await ledger.write_many(connection, [item for item, _ in batch])
            except Exception as exc:  # handed to each record's writer, which retries
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), written in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(written)


async def _write_checking_first_usage(
    connection: asyncpg.Connection, record: UsageRecord, charge: cost.Charge, charged: int, discount: int | None
) -> tuple[ledger.Written, bool, int | None]:
    """Decision 22: `ledger.write` inside a transaction that first looks for an earlier usage
    row of the user (before the insert, as the reference does) and afterwards reads the usage
    the charge left (still under the UPDATE's row lock). Used only for users whose usage was 0
    when the request came in, without an organisation, when analytics is on; everyone else
    gets the ledger transaction alone."""
    async with connection.transaction():  # ledger.write's own transaction becomes a savepoint
        earlier = await analytics.has_earlier_usage(connection, record.kilo_user_id)
        written = await ledger.write(connection, record, charge, charged, discount)
        used_after = None
        if written.inserted and charged > 0:
            used_after = await analytics.microdollars_used(connection, record.kilo_user_id)
    return written, written.inserted and not earlier, used_after


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
