"""bench/counts.py's counting: what a known piece of code hands the event loop, and the
messages and bytes a known servicer exchanges, counted exactly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from envoy.service.ext_proc.v3.external_processor_pb2 import HttpBody, ProcessingRequest, ProcessingResponse

from bench.counts import CountingLoop, Tally, in_process, measure


def run(coroutine: Any) -> Any:
    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        return runner.run(coroutine)


def test_the_loop_counts_tasks_futures_timers_and_callbacks() -> None:
    async def known() -> dict[str, int]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, CountingLoop)
        loop.counts.clear()
        await loop.create_task(asyncio.sleep(0))  # 1 task; its first step and sleep(0)'s wake-up
        future = loop.create_future()  # 1 future
        loop.call_soon(future.set_result, None)  # 1 callback, then the awaiting task's wake-up
        await future
        async with asyncio.timeout(10):  # 1 timer (call_at, which uvloop builds on call_later)
            pass
        loop.call_later(10, print).cancel()  # 1 timer
        return dict(loop.counts)

    counts = run(known())
    assert counts["tasks"] == 1
    assert counts["futures"] == 1
    assert counts["timers"] == 2
    # The new task's first step, its sleep(0) wake-up, the main task woken when it ended; the
    # set_result callback and the main task woken by the future.
    assert counts["callbacks"] == 5


def message(body: bytes) -> ProcessingRequest:
    return ProcessingRequest(response_body=HttpBody(body=body))


class Echo:
    """One reply per message, the message's body as the reply's size."""

    async def Process(
        self, requests: AsyncIterator[ProcessingRequest], context: Any
    ) -> AsyncIterator[ProcessingResponse]:  # noqa: N802
        async for request in requests:
            reply = ProcessingResponse()
            reply.response_body.response.body_mutation.body = request.response_body.body
            yield reply


def test_messages_and_bytes_each_way_per_request() -> None:
    sizes = [message(b"x" * 10).ByteSize(), message(b"y" * 300).ByteSize()]
    assert sizes[0] != sizes[1]
    counts = run(measure(in_process(Echo()), lambda: [message(b"x" * 10), message(b"y" * 300)], requests=5))
    assert counts["messages in"] == 2 and counts["messages out"] == 2
    assert counts["bytes in"] == sum(sizes)
    reply = ProcessingResponse()
    reply.response_body.response.body_mutation.body = b"x" * 10
    other = ProcessingResponse()
    other.response_body.response.body_mutation.body = b"y" * 300
    assert counts["bytes out"] == reply.ByteSize() + other.ByteSize()
    # The echo suspends nowhere: nothing for the loop.
    assert (counts["tasks"], counts["futures"], counts["timers"], counts["callbacks"]) == (0, 0, 0, 0)


def test_collector_runs_and_what_they_freed_are_counted() -> None:
    tally = Tally()
    tally.on_gc("start", {"generation": 0, "collected": 0, "uncollectable": 0})
    tally.on_gc("stop", {"generation": 0, "collected": 7, "uncollectable": 0})
    tally.on_gc("stop", {"generation": 2, "collected": 3, "uncollectable": 0})
    assert tally.per_request(2) == {"gc gen0": 0.5, "gc gen2": 0.5, "gc freed objects": 5.0}


def test_cyclic_garbage_shows_as_blocks_left_for_the_collector() -> None:
    class Cycle(Echo):
        async def Process(
            self, requests: AsyncIterator[ProcessingRequest], context: Any
        ) -> AsyncIterator[ProcessingResponse]:  # noqa: N802
            async for reply in super().Process(requests, context):
                loop: list[Any] = []
                loop.append(loop)  # a cycle only the collector frees, per message
                yield reply

    clean = run(measure(in_process(Echo()), lambda: [message(b"x")], requests=50))
    cyclic = run(measure(in_process(Cycle()), lambda: [message(b"x")], requests=50))
    assert cyclic["blocks left for the collector"] - clean["blocks left for the collector"] >= 1
