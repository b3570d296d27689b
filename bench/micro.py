"""Micro-benchmarks of the accounting's hot operations, in CPU time of this process only
(`time.process_time`), so a loaded machine changes them little:

- a generation lookup (GET, small JSON answer, keep-alive): aiohttp as the writer used it
  against the writer's own client (extproc/accounting/http1.py);
- the outbox's XADD of a usage record: a redis-py pipeline as `Outbox.add` used it against the
  lean RESP connection (extproc/accounting/resp.py), alone and in batches of 10;
- the submitter (extproc/accounting/submit.py) at a steady 600 requests/s, each a write-ahead
  record then a final one: flushed at every wake-up against gathered for 20 ms;
- the ext_proc's per-request work: the request-body reply built with nested keyword
  constructors (as extproc/protocol.py did) against `protocol.request_body_replace`; a labelled
  metric through `labels()` against `metrics.child`; gRPC's request iterator (an async
  generator) left unfinished to asyncio's finaliser against closed by the Processor;
- the spend bound H of a coding agent's request (extproc/pricing/bound.py, 40 messages and 20
  tools, ~50 KB): the body serialised to measure it, against its size passed in.

The servers (a raw HTTP/1.1 responder, an embedded Redis) run in processes of their own.

    .venv/bin/python -m bench.micro
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import cast

import aiohttp
import orjson
import redis.asyncio as aioredis
import uvloop
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    BodyMutation,
    BodyResponse,
    CommonResponse,
    HeaderMutation,
    ProcessingResponse,
)

from extproc import metrics, protocol
from extproc.accounting import submit
from extproc.accounting.http1 import Client
from extproc.accounting.inflight import InFlightLog
from extproc.accounting.outbox import Outbox
from extproc.accounting.record import UsageRecord
from extproc.accounting.resp import RespConnection, pack
from extproc.accounting.writer import LedgerWriter
from extproc.local.embedded import start_redis
from extproc.local.processes import free_port

GETS = 3000
XADDS = 10_000
BODY = orjson.dumps({"data": {"id": "gen-1", "total_cost": 0.0012, "native_tokens_prompt": 12,
                              "native_tokens_completion": 40, "provider_name": "X"}})
RECORD = orjson.dumps({"usage_id": "0d3c2f7e-8a1b-4c2d-9e8f-123456789abc", "provider": "openrouter",
                       "model": "m", "text": "a" * 400})
HEADERS = {"Authorization": "Bearer sk-bench", "HTTP-Referer": "https://kilocode.ai", "X-Title": "Kilo Code"}

# The generation endpoint's stand-in: answers every request on a connection with BODY.
_RESPONDER = """
import asyncio, sys, uvloop
BODY = sys.stdin.buffer.read()
HEAD = b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: %d\\r\\n\\r\\n" % len(BODY)
async def answer(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(HEAD + BODY)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
uvloop.run(main())
"""


async def _cpu_per_call(call: Callable[[int], Awaitable[object]], total: int, concurrency: int) -> float:
    """Microseconds of this process's CPU per call, after a warm-up."""
    await asyncio.gather(*(call(i) for i in range(concurrency)))
    started = time.process_time()
    for first in range(0, total, concurrency):
        await asyncio.gather(*(call(i) for i in range(first, first + concurrency)))
    return (time.process_time() - started) * 1e6 / total


async def _gets(url: str) -> list[tuple[str, int, float]]:
    rows = []
    for concurrency in (1, 20):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

            async def with_aiohttp(i: int) -> object:
                async with session.get(url, params={"id": f"gen-{i}"}, headers=HEADERS) as response:
                    return await response.json(content_type=None)

            rows.append(("GET, aiohttp", concurrency, await _cpu_per_call(with_aiohttp, GETS, concurrency)))
        client = Client()

        async def with_http1(i: int) -> object:
            return orjson.loads((await client.get(url, {"id": f"gen-{i}"}, HEADERS)).body)

        rows.append(("GET, accounting.http1", concurrency, await _cpu_per_call(with_http1, GETS, concurrency)))
        await client.close()
    return rows


async def _xadds(redis_url: str) -> list[tuple[str, int, float]]:
    redis = aioredis.Redis.from_url(redis_url)
    resp = RespConnection(redis)
    rows = []
    for batch in (1, 10):

        async def with_redis_py(_: int) -> object:
            async with redis.pipeline(transaction=False) as pipe:
                for _ in range(batch):
                    pipe.xadd("bench:a", {b"record": RECORD})
                return await pipe.execute()

        async def with_resp(_: int) -> object:
            return await resp.execute([pack(b"XADD", b"bench:b", b"*", b"record", RECORD) for _ in range(batch)])

        for name, call in (("XADD, redis-py pipeline", with_redis_py), ("XADD, accounting.resp", with_resp)):
            per_batch = await _cpu_per_call(call, XADDS // batch, 1)
            rows.append((name, batch, per_batch / batch))
    resp.close()
    await redis.aclose()
    return rows


def _record() -> UsageRecord:
    """A paid streamed request's record, as the ext_proc writes it ahead."""
    return UsageRecord(
        usage_id=str(uuid.uuid4()), created_at=time.time(), kilo_user_id="bench-user", organization_id=None,
        provider="openrouter", requested_model="openai/gpt-4o-mini", auto_model=None, status_code=0, streamed=True,
        aborted=True, free_model=False, stealth_model=False, user_byok=False, promotion=False, message_id=None,
        model=None, inference_provider=None, finish_reason=None, has_error=True, input_tokens=0, output_tokens=0,
        cache_hit_tokens=0, cost_microdollars=0, is_byok=None, user_agent="Kilo-Code/4.1.0", session_id="bench-task",
    )


SUBMITTED_PER_SECOND = 600
SUBMITTED = 3_000


async def _submitter(redis_url: str) -> list[tuple[str, int, float]]:
    """The submitter's CPU per request at a steady rate: each request's write-ahead record, then
    5 ms later its final record, sent with and without the gather window. The first row is the
    same loop with nothing sent: subtract it."""
    redis = aioredis.Redis.from_url(redis_url)
    rows = []
    for name, gather, sends in (("requests alone, nothing sent", 0.0, False),
                                ("submitter, flushed at each wake-up", 0.0, True),
                                ("submitter, 20 ms gather window", submit._GATHER_SECONDS, True)):
        submit._GATHER_SECONDS = gather
        outbox = Outbox(redis, "bench:ledger")
        submitter = submit.UsageSubmitter(outbox, cast(LedgerWriter, None), InFlightLog(uuid.uuid4().hex, 10_000))
        stop = asyncio.Event()
        task = asyncio.create_task(submitter.run(stop))

        async def request(record: UsageRecord) -> None:
            if sends:
                submitter.write_ahead(record)
            await asyncio.sleep(0.005)
            if sends:
                submitter.submit(record)

        started, cpu = time.monotonic(), time.process_time()
        requests = []
        for n in range(SUBMITTED):
            requests.append(asyncio.create_task(request(_record())))
            await asyncio.sleep(max(0.0, started + (n + 1) / SUBMITTED_PER_SECOND - time.monotonic()))
        await asyncio.gather(*requests)
        while submitter.pending or submitter._ahead:
            await asyncio.sleep(0.005)
        rows.append((name, SUBMITTED_PER_SECOND, (time.process_time() - cpu) / SUBMITTED * 1e6))
        stop.set()
        submitter._wake.set()
        await task
    await redis.aclose()
    return rows


REPLIES = 20_000
UPSTREAM_HEADERS = {"x-gateway-upstream": "provider_openrouter", ":path": "/api/v1/chat/completions",
                    "http-referer": "https://kilocode.ai", "x-title": "Kilo Code", "content-type": "application/json",
                    "content-length": "420", "authorization": "Bearer sk-or-v1-" + "0" * 64}
CLIENT_HEADERS = ["user-agent", "accept", "x-kilocode-taskid"]


def _keyword_reply() -> bytes:
    mutation = HeaderMutation(
        set_headers=[
            HeaderValueOption(header=HeaderValue(key=key, raw_value=value.encode("latin-1")),
                              append_action=HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD)
            for key, value in UPSTREAM_HEADERS.items()
        ],
        remove_headers=CLIENT_HEADERS,
    )
    return ProcessingResponse(request_body=BodyResponse(response=CommonResponse(
        header_mutation=mutation, body_mutation=BodyMutation(body=RECORD), clear_route_cache=True,
    ))).SerializeToString()


def _protocol_reply() -> bytes:
    reply = protocol.request_body_replace(RECORD, UPSTREAM_HEADERS, CLIENT_HEADERS, clear_route_cache=True)
    return reply.SerializeToString()


def _cpu_per_sync_call(call: Callable[[], object], total: int) -> float:
    call()
    started = time.process_time()
    for _ in range(total):
        call()
    return (time.process_time() - started) * 1e6 / total


async def _streams_closed() -> list[tuple[str, int, float]]:
    async def messages() -> AsyncIterator[bytes]:
        while True:
            yield RECORD

    async def left_to_finaliser(_: int) -> None:
        stream = messages()
        await anext(stream)
        del stream
        await asyncio.sleep(0)  # the finaliser's task runs

    async def closed(_: int) -> None:
        stream = messages()
        await anext(stream)
        await stream.aclose()
        await asyncio.sleep(0)  # the same loop iteration, for a fair comparison

    return [(name, 1, await _cpu_per_call(call, REPLIES, 1))
            for name, call in (("request iterator, left to the finaliser", left_to_finaliser),
                               ("request iterator, closed by the Processor", closed))]


def _ext_proc() -> list[tuple[str, int, float]]:
    assert _keyword_reply() == _protocol_reply()
    labels = ("chat", "openrouter", "openai/gpt-4o-mini", "input")
    return [
        ("request-body reply, keyword constructors", 1, _cpu_per_sync_call(_keyword_reply, REPLIES)),
        ("request-body reply, extproc.protocol", 1, _cpu_per_sync_call(_protocol_reply, REPLIES)),
        ("labelled histogram, labels()", 1, _cpu_per_sync_call(lambda: metrics.TOKEN_USAGE.labels(*labels), REPLIES)),
        ("labelled histogram, metrics.child", 1,
         _cpu_per_sync_call(lambda: metrics.child(metrics.TOKEN_USAGE, *labels), REPLIES)),
        *uvloop.run(_streams_closed()),
        *_spend_bound(),
    ]


def _agent_body() -> dict[str, object]:
    """A coding agent's request as they come: a long conversation, tools, a reply limit."""
    tool = {"type": "function", "function": {"name": "read_file", "description": "Read a file. " * 20,
                                             "parameters": {"type": "object", "properties": {
                                                 "path": {"type": "string"}, "line_ranges": {"type": "array"}}}}}
    messages = [{"role": "system", "content": "You are Kilo Code. " * 200}]
    for i in range(20):
        messages.append({"role": "user", "content": [{"type": "text", "text": f"step {i}: " + "fix the bug " * 60}]})
        messages.append({"role": "assistant", "content": "Looking at the file now. " * 40})
    return {"model": "anthropic/claude-sonnet-4.6", "messages": messages, "tools": [tool] * 20,
            "max_tokens": 8192, "stream": True, "stream_options": {"include_usage": True}}


def _spend_bound() -> list[tuple[str, int, float]]:
    from extproc.local.mock_upstream import openrouter_models
    from extproc.pricing.bound import spend_bound
    from extproc.pricing.catalogue import PriceCatalogue, PriceTable
    from extproc.pricing.prices import parse_openrouter_models

    catalogue = PriceCatalogue()
    catalogue.replace(PriceTable.build("openrouter", parse_openrouter_models(openrouter_models()).models, 0.0))
    body = _agent_body()
    size = len(orjson.dumps(body))
    model = "anthropic/claude-sonnet-4.6"

    def measured() -> object:
        return spend_bound(body, catalogue.candidates([("openrouter", model)]), model_id=model)

    def sized() -> object:
        return spend_bound(body, catalogue.candidates([("openrouter", model)]), model_id=model, body_bytes=size)

    return [
        (f"spend bound H, {size // 1000} KB body serialised to measure it", 1, _cpu_per_sync_call(measured, REPLIES)),
        (f"spend bound H, {size // 1000} KB body, its size passed in", 1, _cpu_per_sync_call(sized, REPLIES)),
    ]


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> None:
    rows = _ext_proc()
    port = free_port()
    responder = subprocess.Popen([sys.executable, "-c", _RESPONDER, str(port)], stdin=subprocess.PIPE)
    assert responder.stdin is not None
    responder.stdin.write(BODY)
    responder.stdin.close()
    with tempfile.TemporaryDirectory() as data:
        redis_child, redis_url = start_redis(Path(data), free_port(), durable=False)
        try:
            _wait_for_port(port)
            rows += uvloop.run(_gets(f"http://127.0.0.1:{port}/api/v1/generation"))
            rows += uvloop.run(_xadds(redis_url))
            rows += uvloop.run(_submitter(redis_url))
        finally:
            responder.kill()
            responder.wait()
            redis_child.stop()
    print("| operation | concurrency or batch | CPU per operation, us |\n|---|---|---|")
    for name, n, micros in rows:
        print(f"| {name} | {n} | {micros:.1f} |")


if __name__ == "__main__":
    main()
