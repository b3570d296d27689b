"""What one request makes the ext_proc's process do, counted: the gateway against the no-op.

`python -m bench.counts` drives the gateway's `Processor.Process` (as bench/instructions.py
does: tests/test_exchange.py's in-memory collaborators, the real usage submitter, a signed-in
user with credits) and the no-op's (bench/noop_extproc.py) with the same Envoy messages, for a
JSON request and a stream, three ways: fed directly (in process); behind a grpc.aio server with
the ext_proc's options and a grpc.aio client in the same loop (over gRPC: the client's share is
in both columns alike); and, for the gateway, in process with its usage submitter running
against an embedded Redis, each request waiting until its records are sent (one batch per
request, as at concurrency 1). Per request, side by side:

- the instructions executed (callgrind, as bench/instructions.py counts them, in a second run
  of this program on a plain uvloop loop; `--no-instructions` skips it);
- the gRPC messages each way and their bytes (serialised size, without gRPC's 5-byte frame);
- what the event loop is given: tasks created, futures created, timers (`call_at` and
  `call_later`) and callbacks (`call_soon`: each wake-up of a suspended task is one), as
  Python code (ours, asyncio's, gRPC's) hands them to the loop;
- the garbage collector's runs (by generation) and the objects it freed, and the memory blocks
  left per request with the collector off (objects only a collection frees: reference cycles);
- the peak of traced memory (tracemalloc) during one request.

These are counts, not times: the shared machine's load does not move them. It writes
`bench/results/counts.md` (`--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import grpc
import uvloop

from bench.instructions import KINDS, _callgrind, _exchanges, _totals
from bench.run import RESULTS

LOOP_COUNTS = ("tasks", "futures", "timers", "callbacks")
SUBMITTER = "the gateway's submitter sending each request's records"


class CountingLoop(uvloop.Loop):  # type: ignore[misc]  # uvloop ships no annotations for Loop's bases
    """uvloop's loop, counting what Python code (ours, asyncio's, gRPC's) hands it. uvloop's
    own internal scheduling (its C calls) is not seen, and is the same for both servers."""

    counts: Counter[str]
    _in_timer: bool

    def __init__(self) -> None:
        super().__init__()
        self.counts = Counter()
        self._in_timer = False  # uvloop's call_at calls call_later: one timer, counted once

    def create_task(self, *args: Any, **kwargs: Any) -> Any:
        self.counts["tasks"] += 1
        return super().create_task(*args, **kwargs)

    def create_future(self) -> Any:
        self.counts["futures"] += 1
        return super().create_future()

    def call_at(self, *args: Any, **kwargs: Any) -> Any:
        self.counts["timers"] += 1
        self._in_timer = True
        try:
            return super().call_at(*args, **kwargs)
        finally:
            self._in_timer = False

    def call_later(self, *args: Any, **kwargs: Any) -> Any:
        self.counts["timers"] += not self._in_timer
        return super().call_later(*args, **kwargs)

    def call_soon(self, *args: Any, **kwargs: Any) -> Any:
        self.counts["callbacks"] += 1
        return super().call_soon(*args, **kwargs)


class Tally:
    """Counts per request: messages and bytes each way, the loop's, the collector's."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def request(self, message: Any) -> None:
        self.counts["messages in"] += 1
        self.counts["bytes in"] += message.ByteSize()

    async def feed(self, messages: list[Any]) -> AsyncIterator[Any]:
        for message in messages:
            self.request(message)
            yield message

    def reply(self, reply: Any) -> None:
        self.counts["messages out"] += 1
        self.counts["bytes out"] += reply.ByteSize()

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            self.counts[f"gc gen{info['generation']}"] += 1
            self.counts["gc freed objects"] += info["collected"]

    def per_request(self, requests: int) -> dict[str, float]:
        return {name: value / requests for name, value in self.counts.items()}


# One request's messages through a servicer, counted in `tally`.
Driver = Callable[[list[Any], Tally], Awaitable[None]]


def in_process(servicer: Any) -> Driver:
    """The servicer's `Process` fed the messages directly, as bench/instructions.py does."""

    async def one(messages: list[Any], tally: Tally) -> None:
        async for reply in servicer.Process(tally.feed(messages), None):
            tally.reply(reply)

    return one


@asynccontextmanager
async def over_grpc(servicer: Any) -> AsyncIterator[Driver]:
    """The servicer behind a grpc.aio server with the ext_proc's options, and a grpc.aio client
    in the same loop sending each message after the reply to the one before, as Envoy does.
    Both servers carry the client's share alike."""
    from envoy.service.ext_proc.v3.external_processor_pb2_grpc import (
        ExternalProcessorStub,
        add_ExternalProcessorServicer_to_server,
    )

    from extproc.server import grpc_options
    from tests.test_exchange import make_settings

    server = grpc.aio.server(options=grpc_options(make_settings()))
    add_ExternalProcessorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = ExternalProcessorStub(channel)

    async def one(messages: list[Any], tally: Tally) -> None:
        call = stub.Process()
        for message in messages:
            tally.request(message)
            await call.write(message)
            tally.reply(await call.read())
        if await call.code() != grpc.StatusCode.OK:
            raise RuntimeError(f"the stream failed: {await call.details()}")

    try:
        yield one
    finally:
        await channel.close()
        await server.stop(None)


@contextmanager
def _gc_counted(tally: Tally) -> Iterator[None]:
    gc.callbacks.append(tally.on_gc)
    try:
        yield
    finally:
        gc.callbacks.remove(tally.on_gc)


async def measure(
    serve: Driver,
    build: Callable[[], list[Any]],
    requests: int,
    after: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Per-request counts of `requests` requests through `serve`, after a warm-up. Under
    callgrind (a plain uvloop loop, see `main`), the counted requests' instructions are one
    dump, and nothing else is measured."""
    loop = asyncio.get_running_loop()
    for _ in range(20):
        await serve(build(), Tally())
        after()
    batches = [build() for _ in range(requests)]
    tally = Tally()
    gc.collect()
    if not isinstance(loop, CountingLoop):
        _callgrind("-i", "on")
        for messages in batches:
            await serve(messages, tally)
            after()
        _callgrind("-i", "off")
        _callgrind("-d")
        return {}
    loop.counts.clear()
    with _gc_counted(tally):
        for messages in batches:
            await serve(messages, tally)
            after()
    tally.counts.update({name: loop.counts[name] for name in LOOP_COUNTS})
    # Blocks left per request with the collector off: what only a collection frees.
    batches = [build() for _ in range(requests)]
    gc.collect()
    gc.disable()
    try:
        blocks = sys.getallocatedblocks()
        for messages in batches:
            await serve(messages, Tally())
            after()
        # Before the messages (built beforehand) are freed.
        tally.counts["blocks left for the collector"] = sys.getallocatedblocks() - blocks
        del batches
    finally:
        gc.enable()
        gc.collect()
    # The peak of traced memory during one request, above what was traced before it.
    messages = build()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        await serve(messages, Tally())
        after()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    counts = tally.per_request(requests)
    counts["peak traced bytes (one request)"] = peak
    return counts


@asynccontextmanager
async def with_submitter(world: Any, serve: Driver) -> AsyncIterator[Driver]:
    """The world's usage submitter running, as in the ext_proc, against an embedded Redis; each
    request waits until its records are in Redis: one batch per request, as at concurrency 1
    (under load a batch carries the records of every request that ended in its 20 ms)."""
    from redis import asyncio as aioredis

    from extproc.accounting.outbox import Outbox
    from extproc.local.embedded import start_redis
    from extproc.local.processes import free_port

    with tempfile.TemporaryDirectory(prefix="bench-counts-") as tmp:
        redis, url = start_redis(Path(tmp), free_port(), durable=False)
        submitter = world.submitter
        submitter.outbox = Outbox(aioredis.Redis.from_url(url), "bench")
        waiting: list[asyncio.Future[None]] = []
        send = submitter.outbox.send

        async def sent(commands: list[bytes]) -> None:
            await send(commands)
            if not (submitter.pending or submitter._ahead):
                for future in waiting:
                    future.set_result(None)
                waiting.clear()

        submitter.outbox.send = sent

        async def one(messages: list[Any], tally: Tally) -> None:
            await serve(messages, tally)
            # Not the loop's create_future, so not counted; its wake-up of this task is (one
            # callback, taken off below).
            done: asyncio.Future[None] = asyncio.Future()
            waiting.append(done)
            await done
            tally.counts["callbacks"] -= 1

        stop = asyncio.Event()
        running = asyncio.get_running_loop().create_task(submitter.run(stop))
        try:
            yield one
        finally:
            stop.set()
            submitter._wake.set()
            await running
            redis.stop()


async def compare(
    kinds: list[str], requests: int, chunks: int, submitter: bool
) -> dict[str, dict[str, dict[str, float]]]:
    """(mode and kind) -> side -> per-request counts."""
    from bench.noop_extproc import Noop
    from extproc.processor import Processor

    world, builders = _exchanges(chunks)
    servicers = {"no-op": Noop("openrouter", "/api/v1/chat/completions"), "gateway": Processor(world.core())}
    clear = world.submitter.pending.clear
    results: dict[str, dict[str, dict[str, float]]] = {}
    for kind in kinds:
        results[f"{kind}, in process"] = {
            side: await measure(in_process(servicer), builders[kind], requests, clear)
            for side, servicer in servicers.items()
        }
        sides = {}
        for side, servicer in servicers.items():
            async with over_grpc(servicer) as serve:
                sides[side] = await measure(serve, builders[kind], requests, clear)
        results[f"{kind}, over gRPC"] = sides
        if submitter:
            async with with_submitter(world, in_process(servicers["gateway"])) as serve:
                results[f"{kind}, in process, {SUBMITTER}"] = {
                    "no-op": results[f"{kind}, in process"]["no-op"],
                    "gateway": await measure(serve, builders[kind], requests),
                }
    return results


ROWS = (
    "instructions", "messages in", "bytes in", "messages out", "bytes out",
    "tasks", "futures", "timers", "callbacks",
    "gc gen0", "gc gen1", "gc gen2", "gc freed objects", "blocks left for the collector",
    "peak traced bytes (one request)",
)  # fmt: skip


def markdown(results: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace) -> str:
    lines = [
        "# What one request makes the ext_proc do, counted",
        f"`python -m bench.counts`: {args.requests} requests of each kind after 20 of warm-up, on uvloop, "
        "each servicer fed directly (in process: the messages and replies counted where gRPC would carry "
        "them) and behind a grpc.aio server with a grpc.aio client in the same loop (over gRPC: the "
        "client's share is in both columns alike). The gateway has tests/test_exchange.py's in-memory "
        "collaborators and the real usage submitter, not running (its batches are never sent) but in the "
        f'tables marked "{SUBMITTER}" (against an embedded Redis, each request waiting for its batch: '
        "one batch per request, as at concurrency 1; under load a batch carries every request that "
        "ended in its 20 ms). Instructions: callgrind, in a run of their own on a plain uvloop loop. "
        "Counts per request; the machine's load does not move them.",
        "",
    ]
    for kind, sides in results.items():
        lines += [f"## {kind}", "| per request | no-op | gateway | gateway minus no-op |", "|---|---|---|---|"]
        for row in ROWS:
            noop, gateway = sides["no-op"].get(row, 0.0), sides["gateway"].get(row, 0.0)
            lines.append(f"| {row} | {noop:,.2f} | {gateway:,.2f} | {gateway - noop:+,.2f} |")
        lines.append("")
    return "\n".join(lines)


def instructions(args: argparse.Namespace, work: Path) -> list[float]:
    """Instructions per request of each `measure` call, in order: this program re-run under
    callgrind (bench/instructions.py's way), on a plain uvloop loop (no counting overrides)."""
    out = work / "callgrind.out"
    command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        sys.executable, "-m", "bench.counts", "--child-callgrind", *_passed(args),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dumps = sorted(work.glob("callgrind.out.*"), key=lambda path: int(path.suffix[1:]))
    return [_totals(dump) / args.requests for dump in dumps]  # numbered: not the one at exit


def _passed(args: argparse.Namespace) -> list[str]:
    return [
        "--requests", str(args.requests), "--chunks", str(args.chunks), "--kinds", ",".join(args.kinds),
        *(["--no-submitter"] if args.no_submitter else []),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=20, help="content chunks of the streamed response")
    parser.add_argument("--kinds", type=lambda s: s.split(","), default=list(KINDS), help="json,stream")
    parser.add_argument("--no-submitter", action="store_true", help="skip the run with the submitter sending to Redis")
    parser.add_argument("--no-instructions", action="store_true", help="skip the run under callgrind")
    parser.add_argument("--out", type=Path, default=RESULTS / "counts.md")
    parser.add_argument("--child-callgrind", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from extproc import logs

    logs.configure("ext_proc")
    if args.child_callgrind:
        with asyncio.Runner(loop_factory=uvloop.Loop) as runner:
            runner.run(compare(args.kinds, args.requests, args.chunks, not args.no_submitter))
        return
    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        results = runner.run(compare(args.kinds, args.requests, args.chunks, not args.no_submitter))
    if not args.no_instructions and shutil.which("valgrind") and shutil.which("callgrind_control"):
        with tempfile.TemporaryDirectory(prefix="bench-counts-") as tmp:
            counted = iter(instructions(args, Path(tmp)))
            for table, sides in results.items():
                for side, counts in sides.items():
                    if not (SUBMITTER in table and side == "no-op"):  # the in-process no-op's, shared
                        counts["instructions"] = next(counted)
    text = markdown(results, args)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
