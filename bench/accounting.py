"""Accounting alone: CPU per usage record of the ledger writer, Postgres and Redis.

The full benchmark measures accounting beside Envoy, the ext_proc and the load generator on
the same two cores, so its per-process figures move by ±15 % from run to run. This one starts
the gateway (`llm-gateway run`, OpenRouter pointed at the bench upstream, whose generation
endpoint answers at once), leaves its ext_proc idle and puts usage records straight into the
outbox at a steady rate, as the submitters of a loaded gateway do; then it waits until the
ledger holds every row and reports the CPU each accounting process spent per record. Records
are the bench's chat request as the ext_proc would record it (a user without an
organisation, a message id, so each one is looked up).

    .venv/bin/python -m bench.accounting --records 6000 --rate 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from bench.run import ProcessWatch
from bench.systems import MODEL, start_gateway, start_upstream
from extproc.accounting.outbox import STREAM
from extproc.accounting.record import PromptInfo, UsageRecord
from extproc.accounting.resp import RespConnection, pack

_ROLES = ("ledger_writer", "postgres", "redis")
_TICK = 0.01  # seconds between the batches of records put in the outbox


def _record(user_id: str) -> UsageRecord:
    return UsageRecord(
        usage_id=str(uuid.uuid4()), created_at=time.time(), kilo_user_id=user_id, organization_id=None,
        provider="openrouter", requested_model=MODEL, auto_model=None, status_code=200, streamed=False,
        aborted=False, free_model=False, stealth_model=False, user_byok=False, promotion=False,
        message_id="gen-bench", model=MODEL, inference_provider="OpenAI", finish_reason="stop", has_error=False,
        input_tokens=12, output_tokens=8, cache_hit_tokens=0, cost_microdollars=123, is_byok=False,
        project_id="llm-gateway", prompt=PromptInfo("You are a helpful assistant.", 28, "Say hello."),
        max_tokens=64, editor_name="bench", machine_id="bench-machine", session_id=str(uuid.uuid4()),
        mode="code", feature="bench", user_agent="bench/1.0", forwarded_for="127.0.0.1",
    )


async def _feed(redis_url: str, user_id: str, records: int, rate: float) -> None:
    """`records` records at `rate` a second, in one XADD pipeline per tick."""
    client = aioredis.Redis.from_url(redis_url)
    connection = RespConnection(client)
    started = time.monotonic()
    sent = 0
    while sent < records:
        due = min(records, int((time.monotonic() - started) * rate) + 1)
        if due > sent:
            await connection.execute([
                pack(b"XADD", STREAM.encode(), b"*", b"record", _record(user_id).to_json()) for _ in range(due - sent)
            ])
            sent = due
        await asyncio.sleep(_TICK)
    connection.close()
    await client.aclose()


async def _rows(database_url: str, user_id: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM microdollar_usage WHERE kilo_user_id = $1", user_id))
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=6000)
    parser.add_argument("--rate", type=float, default=500.0, help="records a second")
    parser.add_argument("--warmup", type=int, default=500, help="records written before measuring")
    parser.add_argument("--profile", type=Path, help="py-spy's raw samples of the writer while measuring, to this file")
    parser.add_argument("--perf", type=Path, help="`perf record` of the writer while measuring, to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-accounting-") as tmp:
        work = Path(tmp)
        upstream, upstream_children = start_upstream(work, chunks=1, interval_ms=1)
        gateway = start_gateway(work, upstream, workers=1)
        try:
            assert gateway.ledger is not None
            ledger = gateway.ledger
            redis_url = json.loads((work / "gateway" / "stack.json").read_text())["redis_url"]
            asyncio.run(_feed(redis_url, ledger.user_id, args.warmup, args.rate))
            while asyncio.run(_rows(ledger.database_url, ledger.user_id)) < args.warmup:
                time.sleep(0.2)
            watch = ProcessWatch({role: gateway.measured[role] for role in _ROLES})
            profiler = None
            [writer] = gateway.measured["ledger_writer"]
            seconds = str(int(args.records / args.rate))
            if args.profile:
                profiler = subprocess.Popen([
                    str(Path(sys.executable).with_name("py-spy")), "record", "--native", "-r", "200", "--format", "raw",
                    "-p", str(writer), "-o", str(args.profile), "-d", seconds,
                ])
            elif args.perf:
                profiler = subprocess.Popen(["perf", "record", "-F", "997", "-g", "-p", str(writer), "-o", str(args.perf),
                                             "--", "sleep", seconds])
            started = time.monotonic()
            asyncio.run(_feed(redis_url, ledger.user_id, args.records, args.rate))
            expected = args.warmup + args.records
            while (rows := asyncio.run(_rows(ledger.database_url, ledger.user_id))) < expected:
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            processes = watch.finish()
            if profiler is not None:
                profiler.wait()
        finally:
            gateway.stop()
            for child in reversed(upstream_children):
                child.stop()
    per_record = {role: processes[role]["cpu_seconds"] * 1000 / args.records for role in _ROLES}
    print(f"{args.records} records at {args.rate:.0f}/s, written in {elapsed:.1f} s; rows {rows} (expected {expected})")
    print("CPU per record, ms: " + " · ".join(f"{role} {ms:.3f}" for role, ms in per_record.items())
          + f" · accounting {sum(per_record.values()):.3f}")


if __name__ == "__main__":
    main()
