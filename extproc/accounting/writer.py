"""Drains the outbox into the ledger, in its own process (`llm-gateway ledger-writer`).

Per record: refetch the generation when the provider has the endpoint (contract 7.3), price it
(7.4), write it idempotently (7.5; users' records many per statement), then acknowledge the
outbox entry (in batches). A lost connection (or a serialization failure, a deadlock) leaves
the entry pending; it is retried with backoff until it commits, so an outage delays rows and
never drops them. Data Postgres refuses is never retried: the record is charged without the
refused descriptive text and moves to the dead letters (see `_dead_letter`). Its own process
because this work (a generation lookup per record, statements, Redis reads and
acknowledgements) would otherwise share the ext_proc's event loop with the requests and add
to their latency.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import asyncpg
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from extproc import logs, metrics, tracing
from extproc.accounting import cost, ledger
from extproc.accounting.generation import fetch_generation
from extproc.accounting.http1 import Client
from extproc.accounting.outbox import Outbox
from extproc.accounting.record import UsageRecord
from extproc.admission import counters as hold_metrics
from extproc.admission import settle
from extproc.admission.scopes import Kind, kind, member_day
from extproc.db import POSTGRES_ERRORS, Connection, refuses_data
from extproc.event_loop import sleep_or_stop
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
# `charged`: "true" when the row and its charge were written without the refused text.
DEAD_LETTERS = Counter(
    "llm_gateway_ledger_dead_letters",
    "Usage records the ledger refused for their data, moved to the dead-letter stream.",
    ["charged"],
)
for _charged in ("true", "false"):  # both series exist from the start: rates and alerts read 0
    DEAD_LETTERS.labels(_charged)
# One writer sets these; under the stack's multiprocess metrics, a dead writer's value is dropped.
OUTBOX_DEPTH = Gauge(
    "llm_gateway_outbox_depth", "Usage records waiting for the ledger.", multiprocess_mode="livemax"
)
OUTBOX_AGE = Gauge(
    "llm_gateway_outbox_oldest_seconds", "Age of the oldest record waiting for the ledger.", multiprocess_mode="livemax"
)

# What failing to reach Postgres or Redis raises: the record is retried later.
_STORE_ERRORS: tuple[type[BaseException], ...] = (*POSTGRES_ERRORS, RedisError)
_BATCH = 100
_RESCAN_SECONDS = 30.0
_GAUGE_SECONDS = 1.0
# Accounting may lag a little; the requests may not. The writer lets records gather (in the
# outbox between reads, before each ledger statement) instead of paying a read, a statement and
# a commit for a few records at a time on the cores the requests run on: a statement's fixed
# cost (its lookup CTEs, the commit) is shared by more rows. At most ~0.2 s added to a row's
# delay. Measured with bench/accounting.py at 500 records/s: from 0.05 and 0.02 s to 0.1 and
# 0.1 s, the writer's CPU per record fell ~10 % and Postgres' ~15 %.
_READ_PAUSE_SECONDS = 0.1
_STATEMENT_PAUSE_SECONDS = 0.1


class LedgerWriter:
    def __init__(self, settings: Settings, db: asyncpg.Pool, outbox: Outbox, side: SideServices | None = None) -> None:
        self.settings = settings
        self.db = db
        self.outbox = outbox
        # The optional side services (extproc/side): the abuse cost report and the analytics
        # events follow a written row.
        self.side = side
        self.http = Client(ca_bundle=settings.ca_bundle, timeout=10)
        # Records in flight at once; most of them are just waiting on a generation lookup.
        self._slots = asyncio.Semaphore(1024)
        # Entries being written, or written and waiting for the next acknowledgement batch.
        self._inflight: set[bytes] = set()
        self._written: list[bytes] = []
        self._failures = 0
        self._gauges_at = float("-inf")
        self._tasks: set[asyncio.Task[None]] = set()
        # Records' tasks waiting on a generation lookup, cancelled at shutdown (`_abandon_lookups`).
        self._lookups: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._batch = _Batch(db)
        # Failed attempts per usage id for errors that are neither transient nor refused data.
        self._attempts: dict[str, int] = {}
        # Spend holds (extproc/admission): ended when their record's row commits.
        self._retention_ms = settle.retention_ms(settings.directory_cache_seconds, settings.directory_stale_seconds)
        self._settle_script: Any = None

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
                    await sleep_or_stop(stop, _READ_PAUSE_SECONDS)
            except (RedisError, OSError, TimeoutError) as exc:
                self._failures += 1
                logger.error("outbox read failed", extra=logs.failure(exc))
                await sleep_or_stop(stop, self._retry_delay())
        await watcher

    async def _abandon_lookups_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._abandon_lookups()

    def _abandon_lookups(self) -> None:
        self._stopping = True
        for lookup in self._lookups:
            lookup.cancel()

    def _retry_delay(self) -> float:
        return min(10.0, 0.5 * 2.0 ** min(self._failures, 5))

    async def _write_entry(self, entry_id: bytes, record: UsageRecord) -> None:
        written = False
        try:
            written = await self.write(record)
        except LookupAbandoned:
            logger.info("generation lookup abandoned at shutdown; the record stays in the outbox",
                        extra={"usage_id": record.usage_id})
        except Exception:
            # Not acknowledged: the entry stays pending and is read again, like a failed write.
            logger.exception("ledger write failed unexpectedly; the record stays in the outbox",
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
            logger.error("outbox acknowledge failed", extra=logs.failure(exc))
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
        await self.http.close()
        if self.side is not None:
            # Cost reports and analytics events of the rows just written get a moment to leave.
            await self.side.close(timeout=max(1.0, deadline - time.monotonic()))

    async def write(self, record: UsageRecord) -> bool:
        """Price and write one record. True: done with it (written, or in the dead letters), so
        its outbox entry may go; False: Postgres failed in a way worth retrying."""
        traced = tracing.TRACER is not None and record.traceparent is not None
        started_ns = time.time_ns() if traced else 0
        charge = await self._charge(record)
        charged, discount = cost.billable(
            charge, free_model=record.free_model, user_byok=record.user_byok, promotion=record.promotion
        )
        item: ledger.Item = (record, charge, charged, discount)
        try:
            written, first_usage, used_after = await self._commit(item)
        except POSTGRES_ERRORS as exc:
            if refuses_data(exc) or self._out_of_attempts(record.usage_id):
                return await self._dead_letter(item, exc)
            LEDGER_FAILURES.inc()
            operation = "ledger.write_many" if ledger.batchable(record) else "ledger.write"
            logger.error(
                "ledger write failed; will retry", extra={"usage_id": record.usage_id, **logs.failure(exc, operation)}
            )
            return False
        self._attempts.pop(record.usage_id, None)
        if not await self._end_hold(record, charged, written):
            return False  # read again: a duplicate then, whose hold ends with an unknown version
        self._after_commit(item, written, first_usage, used_after)
        if traced:
            _trace_write(record, charge, written, started_ns)
        return True

    async def _end_hold(self, record: UsageRecord, charged: int, written: ledger.Written | None) -> bool:
        """The request's spend hold ends now that its row committed (`written`; None: its
        dead letter could not be charged), in one atomic step with the charge's ledger version
        (extproc/admission/settle.py). False: Redis did not take it."""
        if not record.held_scopes:
            return True
        if self._settle_script is None:
            self._settle_script = self.outbox.redis.register_script(settle.SCRIPT)
        parts = settlements(record, charged, written)
        keys, args = settle.arguments(record.usage_id, self._retention_ms, parts)
        try:
            released = int(await self._settle_script(keys=keys, args=args))
        except (RedisError, OSError) as exc:
            hold_metrics.SETTLE_FAILURES.inc()
            logger.error("spend hold not ended; will retry", extra={"usage_id": record.usage_id, **logs.failure(exc)})
            return False
        if released:
            hold_metrics.RELEASED_HOLDS.inc()
            hold_metrics.RELEASED.inc(released)
            if written is not None and written.inserted:
                hold_metrics.SETTLED_HELD.inc(released)
                hold_metrics.SETTLED_CHARGED.inc(charged)
        return True

    async def _commit(self, item: ledger.Item) -> tuple[ledger.Written, bool, int | None]:
        """The ledger write; with the analytics' first-usage check where it applies."""
        record = item[0]
        side = self.side
        first_usage_check = side is not None and side.analytics.check_first_usage(record)
        if not first_usage_check and ledger.batchable(record):
            try:
                return await self._batch.write(item), False, None
            except POSTGRES_ERRORS as exc:
                if not refuses_data(exc):
                    raise
                # Some record of the batch holds data Postgres refuses: each is written alone,
                # so that only the one at fault ends in the dead letters.
        async with self.db.acquire(timeout=10) as connection:
            if first_usage_check:
                written, first_usage, used_after = await _write_checking_first_usage(connection, *item)
            else:
                written, first_usage, used_after = await ledger.write(connection, *item), False, None
        _count([(item, written)])
        return written, first_usage, used_after

    def _out_of_attempts(self, usage_id: str) -> bool:
        self._attempts[usage_id] = attempts = self._attempts.get(usage_id, 0) + 1
        return attempts >= self.settings.ledger_max_attempts

    def _after_commit(self, item: ledger.Item, written: ledger.Written, first_usage: bool, used_after: int | None) -> None:
        """What follows a written row (its metrics were counted with its statement: `_count`)."""
        record, charge, charged, _ = item
        side = self.side
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

    async def _dead_letter(self, item: ledger.Item, error: BaseException) -> bool:
        """A record Postgres will not take as it is (a bug: `extproc/storable.py` should have
        made it storable). The charge is still made, without the descriptive text Postgres
        refused: found by trying, in transactions that are rolled back, which columns the
        record can be written without. The record, the error and those columns go to the
        dead-letter stream, for `llm-gateway outbox replay` once the cause is fixed. A record
        that cannot be written even without its text (refused money or ids) is kept there
        uncharged. False (retry later) only when Postgres or Redis failed on the way."""
        record, charge, charged, discount = item
        self._attempts.pop(record.usage_id, None)
        try:
            columns = await self._refused_columns(item, error)
            written = None
            if columns is not None:
                async with self.db.acquire(timeout=10) as connection:
                    written = await ledger.write(connection, *item, emptied=columns)
                _count([(item, written)])
            await self.outbox.dead_letter(
                record.to_json(),
                _describe(error),
                columns=sorted(columns or ()),
                charged=written is not None,
                priced={"charge": charge, "cost": charged, "discount": discount},
            )
            # The hold ends with the row, charged or not: a letter replayed later is charged
            # without one (decision beside contract 2.12, docs/ARCHITECTURE.md).
            if not await self._end_hold(record, charged, written):
                raise RedisError("spend hold not ended")
        except _STORE_ERRORS as exc:
            LEDGER_FAILURES.inc()
            logger.error(
                "dead-lettering a usage record failed; will retry",
                extra={"usage_id": record.usage_id, **logs.failure(exc)},
            )
            return False
        DEAD_LETTERS.labels("true" if written is not None else "false").inc()
        logger.error(
            "ledger refused a usage record; dead-lettered",
            extra={
                "usage_id": record.usage_id,
                "columns": sorted(columns) if columns is not None else None,
                "charged": written is not None,
                "error": _describe(error),
            },
        )
        if written is not None:
            self._after_commit(item, written, False, None)
        return True

    async def _refused_columns(self, item: ledger.Item, error: BaseException) -> frozenset[str] | None:
        """The descriptive columns the record can be written without: those whose emptying
        alone lets the write through, else all of them; None when even that fails."""
        record, charge, charged, discount = item
        candidates = sorted(ledger.EMPTIABLE)
        named = getattr(error, "column_name", None)
        if named in ledger.EMPTIABLE:
            candidates.remove(named)
            candidates.insert(0, named)  # Postgres named it: tried first
        async with self.db.acquire(timeout=10) as connection:

            async def writable(emptied: frozenset[str]) -> bool:
                transaction = connection.transaction()
                await transaction.start()
                try:
                    await ledger.write(connection, *item, emptied=emptied)
                    return True
                except POSTGRES_ERRORS as exc:
                    if not refuses_data(exc):
                        raise
                    return False
                finally:
                    await transaction.rollback()

            if not await writable(frozenset(candidates)):
                return None
            for column in candidates:
                if await writable(frozenset({column})):
                    return frozenset({column})
        return frozenset(candidates)

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
        # The record's own task is what shutdown cancels while it waits on the lookup (no task
        # of the lookup's own: one task per record is enough, and a task costs CPU per record).
        task = asyncio.current_task()
        assert task is not None
        self._lookups.add(task)
        try:
            data = await fetch_generation(
                self.http,
                provider.api_url,
                provider.api_key.get_secret_value() if provider.api_key else None,
                record.message_id,
                {"HTTP-Referer": self.settings.http_referer, "X-Title": self.settings.x_title},
            )
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            task.uncancel()  # abandoned by `_abandon_lookups`: the record stays in the outbox
            raise LookupAbandoned(record.usage_id) from None
        finally:
            self._lookups.discard(task)
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
            _count(zip((item for item, _ in batch), results, strict=True))
            for (_, future), written in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(written)


def _count(written: Iterable[tuple[ledger.Item, ledger.Written]]) -> None:
    """The metrics of the rows a statement wrote: one increment per series for a whole batch. A
    counter's increment under the stack's multiprocess metrics takes a lock, checks the pid
    and writes its file; three per record were ~8 % of the writer's CPU (cProfile)."""
    inserted = duplicates = 0
    charged: dict[str, int] = {}
    for (record, _, price, _), result in written:
        if not result.inserted:
            duplicates += 1
            continue
        inserted += 1
        if price:
            charged[record.provider] = charged.get(record.provider, 0) + price
    if inserted:
        metrics.child(LEDGER_ROWS, "inserted").inc(inserted)
    if duplicates:
        metrics.child(LEDGER_ROWS, "duplicate").inc(duplicates)
    for provider, microdollars in charged.items():
        metrics.child(CHARGED, provider).inc(microdollars)


def _describe(error: BaseException) -> str:
    """The error as an operator needs it: class, SQLSTATE, message, and the column when it is
    known; never the values (they may hold prompt text, which asyncpg's own messages quote)."""
    state = getattr(error, "sqlstate", None)
    message = _QUOTED_ARGUMENT.sub(r"\1\2", str(error))
    column = getattr(error, "column_name", None)
    return f"{type(error).__name__}{f' [{state}]' if state else ''}: {message}{f' (column {column})' if column else ''}"


# asyncpg: "invalid input for query argument $5: ['the value'] (value out of int64 range)".
_QUOTED_ARGUMENT = re.compile(r"(query argument \$\d+): .*( \([^()]*\))$", re.DOTALL)


async def _write_checking_first_usage(
    connection: Connection, record: UsageRecord, charge: cost.Charge, charged: int, discount: int | None
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


def _trace_write(record: UsageRecord, charge: cost.Charge, written: ledger.Written, started_ns: int) -> None:
    """The write's span, a child of the request's span (its context came with the record):
    from the record's pricing (the generation lookup included) to its commit."""
    from extproc import otel_sdk

    tracer, parent = tracing.TRACER, otel_sdk.parent_from_traceparent(record.traceparent or "")
    if tracer is None or parent is None:
        return
    try:
        span = tracer.start_span("ledger.write", context=parent, start_time=started_ns)
        span.set_attribute("llm_gateway.usage_id", record.usage_id)
        span.set_attribute("llm_gateway.inserted", written.inserted)
        span.set_attribute("llm_gateway.cost_microdollars", written.cost_microdollars)
        span.set_attribute("gen_ai.usage.input_tokens", charge.usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", charge.usage.output_tokens)
        span.end()
    except Exception:
        logger.exception("ledger write span failed", extra={"usage_id": record.usage_id})
def settlements(record: UsageRecord, charged: int, written: ledger.Written | None) -> list[settle.Settlement]:
    """What ends the hold of `record` in each of its scopes, after its row's commit (`written`).
    A duplicate (the row committed before, and this writer cannot tell at which version) is
    subtracted by every read until the retention ends; a row not charged releases only."""
    parts = []
    for scope in record.held_scopes or ():
        if written is None:
            parts.append(settle.Settlement(scope))
            continue
        if not written.inserted:
            parts.append(settle.Settlement(scope, charged, settle.UNKNOWN_VERSION))
            continue
        match kind(scope):
            case Kind.USER_BALANCE:
                parts.append(settle.Settlement(scope, charged, written.user_used))
            case Kind.ORGANIZATION_BALANCE:
                parts.append(settle.Settlement(scope, charged, written.organization_used))
            case Kind.MEMBER_DAILY_LIMIT:
                day = written.member_day
                committed = member_day(record.organization_id or "", record.kilo_user_id, day[0]) if day else scope
                if committed != scope:  # held on the day before midnight, charged on the next
                    parts.append(settle.Settlement(scope))
                parts.append(settle.Settlement(committed, charged, day[1] if day else None))
    return parts
