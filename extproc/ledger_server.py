"""The ledger writer process (`llm-gateway ledger-writer`): drains the outbox into Postgres.

One or more run beside the ext_proc processes; they share the outbox's consumer group, so
each record is written by one of them. On SIGTERM it finishes what it has in flight, writes
what is waiting within `accounting_drain_seconds`, and leaves the rest for its next start.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from extproc import metrics, tracing
from extproc.accounting.inflight import Reaper
from extproc.accounting.outbox import Outbox
from extproc.accounting.writer import LedgerWriter
from extproc.event_loop import run_event_loop
from extproc.resources import Resources
from extproc.settings import Settings
from extproc.side import SideServices

logger = logging.getLogger(__name__)


async def serve(settings: Settings) -> None:
    tracing.configure("ledger-writer")
    resources = await Resources.open(settings)
    writer = LedgerWriter(
        settings, resources.db, Outbox(resources.redis, settings.ledger_consumer), SideServices.build(settings)
    )
    stop_metrics = metrics.serve(settings.metrics_host, settings.ledger_metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # What start-up built (modules, settings, pools) lives as long as the process: out of the
    # collector's way, so that its full collections walk only the records' objects.
    gc.freeze()
    logger.info("ledger writer running", extra={"consumer": settings.ledger_consumer})
    # Moves the write-ahead records of replicas that died into the outbox (accounting/inflight.py).
    reaper = asyncio.create_task(Reaper(resources.redis, grace_seconds=settings.inflight_ttl_seconds).run(stop))
    await writer.run(stop)
    await reaper
    await writer.drain(timeout=settings.accounting_drain_seconds)
    await resources.close()
    stop_metrics()
    tracing.shutdown()
    logger.info("ledger writer stopped")


def run(settings: Settings) -> None:
    run_event_loop(serve(settings))
