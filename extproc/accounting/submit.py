"""The request side of accounting, in the ext_proc: one XADD per finished request.

`submit` is called when a request ends and is never awaited by the stream. If Redis refuses a
record, the record is kept in memory and offered again every second; on shutdown what Redis
still refuses is written straight to the ledger, so a Redis outage loses no usage.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable

from prometheus_client import Counter
from redis.exceptions import RedisError

from extproc.accounting.outbox import Outbox
from extproc.accounting.record import UsageRecord
from extproc.accounting.writer import LedgerWriter

logger = logging.getLogger(__name__)

OUTBOX_FAILURES = Counter("llm_gateway_outbox_failures", "Usage records Redis refused at submit (kept in memory).")

_RETRY_SECONDS = 1.0


class UsageSubmitter:
    def __init__(self, outbox: Outbox, fallback: LedgerWriter) -> None:
        self.outbox = outbox
        # Used only at shutdown, for records Redis never took.
        self.fallback = fallback
        self.unsent: collections.deque[UsageRecord] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, record: UsageRecord, abuse_request_id: Awaitable[int] | None = None) -> None:
        """`abuse_request_id`: the abuse classification's id, awaited first (bounded by its own
        budget, never raising)."""
        task = asyncio.get_running_loop().create_task(self._submit(record, abuse_request_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _submit(self, record: UsageRecord, abuse_request_id: Awaitable[int] | None) -> None:
        if abuse_request_id is not None:
            try:
                record.abuse_request_id = await abuse_request_id
            except Exception:  # a side service never costs a usage record
                logger.exception("abuse request id unavailable", extra={"usage_id": record.usage_id})
        try:
            async with asyncio.timeout(2):
                await self.outbox.add(record)
        except (RedisError, OSError, TimeoutError) as exc:
            OUTBOX_FAILURES.inc()
            logger.error("outbox unavailable; keeping the usage record in memory", extra={"error": repr(exc)})
            self.unsent.append(record)

    async def retry_unsent(self, stop: asyncio.Event) -> None:
        """Offers the records Redis refused again, oldest first, until `stop`."""
        while not stop.is_set():
            try:
                await self._resend()
            except (RedisError, OSError, TimeoutError):
                pass  # still down: the next round tries again
            try:
                await asyncio.wait_for(stop.wait(), _RETRY_SECONDS)
            except TimeoutError:
                pass

    async def _resend(self) -> None:
        while self.unsent:
            async with asyncio.timeout(2):
                await self.outbox.add(self.unsent[0])
            self.unsent.popleft()

    async def drain(self, timeout: float) -> None:
        """On shutdown: let the last submits finish, then hand over what Redis refused, to the
        outbox if it is back, else straight to the ledger, within `timeout`."""
        deadline = time.monotonic() + timeout
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=max(0.0, deadline - time.monotonic()))
        try:
            await self._resend()
        except (RedisError, OSError, TimeoutError) as exc:
            logger.error("outbox unavailable during drain; writing to the ledger", extra={"error": repr(exc)})
        while self.unsent and time.monotonic() < deadline:
            if not await self.fallback.write(self.unsent[0]):
                break
            self.unsent.popleft()
        if self.unsent:
            logger.error("usage records could not be saved before exit", extra={"count": len(self.unsent)})
        await self.fallback.close(deadline)
