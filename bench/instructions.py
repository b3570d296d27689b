"""Instructions the ext_proc's own Python executes per request (issue 16), counted by valgrind.

`python -m bench.instructions` drives `Processor.Process` in process, with the in-memory
collaborators of tests/test_exchange.py and the real usage submitter (no gRPC, no Redis, no
Postgres: its batches are never sent), through the four Envoy
messages of a JSON request and of a streamed one (a role chunk, `--chunks` content chunks, the
usage chunk and `[DONE]`), `--requests` times each after a warm-up, and prints the instructions
per request. Instruction counts do not move with the load of the shared machine, as CPU time
does, so one run tells whether a change saved work.

How: this process re-runs itself under `valgrind --tool=callgrind --instr-atstart=no`; the
child switches instrumentation on and off around the measured requests with
`callgrind_control -i on|off` (vgdb; it runs while the child waits for it, so the count starts
and stops in the child's wait for that command: under 1 M instructions per run, under 0.5 % of
200 JSON requests) and dumps the counters after each kind (`callgrind_control
-d`), whose totals this process reads. `--cpu-time`, or no valgrind installed: CPU time per
request of the process (time.process_time), which the machine's load does move.

As the gateway runs: metrics in process (under `llm-gateway run` too: extproc/metrics_export.py),
logs configured as the ext_proc's, uvloop, a fixed hash seed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

KINDS = ("json", "stream")


# --- the child: the requests ---------------------------------------------------------------------


def _exchanges(chunks: int) -> tuple[Any, dict[str, Callable[[], list[Any]]]]:
    """The world (a signed-in user with credits) and, per kind, the Envoy messages of one
    request. Imported here: the parent process needs none of the gateway."""
    import orjson
    from redis import asyncio as aioredis

    from bench.systems import COMPLETION, MODEL
    from extproc.accounting.inflight import InFlightLog
    from extproc.accounting.outbox import Outbox
    from extproc.accounting.submit import UsageSubmitter
    from extproc.accounting.writer import LedgerWriter
    from tests.test_exchange import (
        World,
        make_settings,
        request_body,
        request_headers,
        response_chunk,
        response_headers,
        signed_in,
    )

    settings = make_settings()
    # The real submitter (write-ahead records packed as it sends them), its batches never sent:
    # the outbox's Redis client connects only when used.
    outbox = Outbox(aioredis.Redis(), "bench")
    submitter = UsageSubmitter(outbox, LedgerWriter(settings, None, outbox), InFlightLog("bench", 30_000))  # type: ignore[arg-type]
    world = World(settings, submitter=submitter)  # type: ignore[arg-type]
    world.api_metrics.enabled = False  # as the benchmark's gateway runs: no API metrics service
    headers = signed_in(world)
    messages = [{"role": "user", "content": "Say hello to the benchmark."}]
    # As bench/sse_upstream.py streams them.
    head = {"id": "gen-bench", "object": "chat.completion.chunk", "created": 1764230400, "model": MODEL, "provider": "OpenAI"}

    def event(choice: dict[str, Any], **fields: Any) -> bytes:
        return b"data: " + orjson.dumps({**head, "choices": [choice], **fields}) + b"\n\n"

    usage = {**COMPLETION["usage"], "completion_tokens": chunks}  # type: ignore[dict-item]
    events = [
        event({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}),
        *[event({"index": 0, "delta": {"content": "word "}, "finish_reason": None})] * chunks,
        event({"index": 0, "delta": {}, "finish_reason": "stop"}, usage=usage),
        b"data: [DONE]\n\n",
    ]

    def json_request() -> list[Any]:
        return [
            request_headers(headers),
            request_body({"model": MODEL, "messages": messages, "stream": False}),
            response_headers(200, "application/json"),
            response_chunk(orjson.dumps(COMPLETION), end_of_stream=True),
        ]

    def stream_request() -> list[Any]:
        return [
            request_headers(headers),
            request_body({"model": MODEL, "messages": messages, "stream": True}),
            response_headers(200, "text/event-stream"),
            *[response_chunk(data, end_of_stream=False) for data in events[:-1]],
            response_chunk(events[-1], end_of_stream=True),
        ]

    return world, {"json": json_request, "stream": stream_request}


async def _feed(messages: list[Any]) -> AsyncIterator[Any]:
    # An async generator, as grpc.aio's request iterator is.
    for message in messages:
        yield message


async def _requests(world: Any, requests: list[list[Any]]) -> None:
    """Each request's messages through the processor; they are built beforehand, so that
    building them is not counted."""
    from extproc.processor import Processor

    processor = Processor(world.core())
    for messages in requests:
        replies = [reply async for reply in processor.Process(_feed(messages), None)]
        if replies[-1].WhichOneof("response") != "response_body" or len(world.submitter.pending) != 1:
            raise RuntimeError(f"the request was not served and accounted: {replies[-1]}")
        world.submitter.pending.clear()


def _callgrind(*command: str) -> None:
    subprocess.run(["callgrind_control", *command, str(os.getpid())], check=True, stdout=subprocess.DEVNULL)


def child(kinds: list[str], count: int, warmup: int, chunks: int, callgrind: bool) -> dict[str, float]:
    """Runs under callgrind (returns nothing measured) or alone (returns CPU us per request)."""
    from extproc import logs
    from extproc.event_loop import run_event_loop

    logs.configure("ext_proc")
    world, builders = _exchanges(chunks)
    cpu_us: dict[str, float] = {}

    async def main() -> None:
        for kind in kinds:
            await _requests(world, [builders[kind]() for _ in range(warmup)])
            measured = [builders[kind]() for _ in range(count)]
            if callgrind:
                _callgrind("-i", "on")
            started = time.process_time()
            await _requests(world, measured)
            cpu_us[kind] = (time.process_time() - started) / count * 1e6
            if callgrind:
                _callgrind("-i", "off")
                _callgrind("-d", kind)

    run_event_loop(main())
    return cpu_us


# --- the parent: valgrind and the report --------------------------------------------------------


def _totals(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def under_callgrind(args: argparse.Namespace, work: Path) -> dict[str, int]:
    """Instructions per request, by kind."""
    out = work / "callgrind.out"
    command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        sys.executable, "-m", "bench.instructions", "--child", "--callgrind", *_passed(args),
    ]  # fmt: skip
    subprocess.run(command, check=True, env=_child_env(), stderr=subprocess.DEVNULL)
    # One dump per kind, in order (callgrind numbers them), then the one at exit.
    dumps = sorted(work.glob("callgrind.out.*"), key=lambda path: int(path.suffix[1:]))
    return {kind: round(_totals(dump) / args.requests) for kind, dump in zip(args.kinds, dumps, strict=False)}


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": "0"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="measured requests of each kind")
    parser.add_argument("--warmup", type=int, default=50, help="requests of each kind before measuring")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks of the streamed response")
    parser.add_argument("--kinds", type=lambda s: s.split(","), default=list(KINDS), help="json,stream")
    parser.add_argument("--cpu-time", action="store_true", help="CPU time per request, without valgrind")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--callgrind", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if unknown := set(args.kinds) - set(KINDS):
        parser.error(f"unknown kinds: {sorted(unknown)}")
    if args.child:
        cpu_us = child(args.kinds, args.requests, args.warmup, args.chunks, args.callgrind)
        if not args.callgrind:
            print(" ".join(f"{kind}={us:.1f}" for kind, us in cpu_us.items()))
        return
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        work = Path(tmp)
        if args.cpu_time or shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
            command = [sys.executable, "-m", "bench.instructions", "--child", *_passed(args)]
            done = subprocess.run(command, check=True, env=_child_env(), capture_output=True, text=True)
            for pair in done.stdout.split():
                kind, us = pair.split("=")
                print(f"{kind}: {float(us):,.1f} us CPU per request ({args.requests} requests; machine load moves it)")
            return
        for kind, count in under_callgrind(args, work).items():
            print(f"{kind}: {count:,} instructions per request ({args.requests} requests, callgrind)")


def _passed(args: argparse.Namespace) -> list[str]:
    return [
        "--requests", str(args.requests), "--warmup", str(args.warmup), "--chunks", str(args.chunks),
        "--kinds", ",".join(args.kinds),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
