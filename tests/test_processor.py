"""The gRPC adapter (extproc/processor.py) fed one JSON request's four Envoy messages, with the
in-memory collaborators of tests/test_exchange.py: what it answers, what it counts, and that it
leaves nothing of the stream behind when the request ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest, ProcessingResponse
from prometheus_client import REGISTRY

from extproc.processor import Processor
from tests.test_exchange import (
    PAID,
    World,
    chat,
    make_settings,
    request_body,
    request_headers,
    response_chunk,
    response_headers,
    signed_in,
)

UPSTREAM_MODEL = "z-ai/glm-5-20260101"  # as the upstream reports it: the metrics' model label
COMPLETION = {
    "id": "gen-1",
    "model": UPSTREAM_MODEL,
    "choices": [{"message": {"content": "ok"}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "cost": 0.001, "is_byok": False},
}


class EnvoyStream:
    """Envoy's side of one stream: its messages, and whether the stream was closed."""

    def __init__(self, messages: list[ProcessingRequest]) -> None:
        self.messages = messages
        self.closed = False

    async def read(self) -> AsyncIterator[ProcessingRequest]:
        # An async generator, as grpc.aio's request iterator is.
        try:
            for message in self.messages:
                yield message
        finally:
            self.closed = True


async def process(world: World, stream: EnvoyStream) -> list[ProcessingResponse]:
    replies: Any = Processor(world.core()).Process(stream.read(), None)
    return [reply async for reply in replies]


def json_exchange(world: World) -> EnvoyStream:
    return EnvoyStream(
        [
            request_headers(signed_in(world)),
            request_body(chat(PAID)),
            response_headers(200, "application/json"),
            response_chunk(orjson.dumps(COMPLETION), end_of_stream=True),
        ]
    )


def requests_counted(status: str, model: str = UPSTREAM_MODEL) -> float:
    labels = {"status": status, "provider": "openrouter", "model": model}
    return REGISTRY.get_sample_value("llm_gateway_requests_total", labels) or 0.0


async def test_a_json_request_is_answered_counted_and_its_stream_closed() -> None:
    world = World(make_settings())
    stream = json_exchange(world)
    before = requests_counted("200")

    replies = await process(world, stream)

    assert [reply.WhichOneof("response") for reply in replies] == [
        "request_headers",
        "request_body",
        "response_headers",
        "response_body",
    ]
    # envoy-extproc.md: routing on the header set in the body reply needs both in one
    # CommonResponse.
    routed = replies[1].request_body.response
    assert routed.clear_route_cache
    assert routed.header_mutation.set_headers
    # Closed by the time the exchange ends, not later by the garbage collector's finaliser.
    assert stream.closed
    assert [record.status_code for record in world.submitter.records] == [200]
    assert requests_counted("200") == before + 1


async def test_each_request_counts_once_under_its_own_labels() -> None:
    world = World(make_settings())
    before_ok, before_aborted = requests_counted("200"), requests_counted("aborted", "none")

    await process(world, json_exchange(world))
    await process(world, json_exchange(world))
    cut = json_exchange(world)
    cut.messages.pop()  # Envoy resets the stream before the response body: no model reported
    await process(world, cut)

    assert requests_counted("200") == before_ok + 2
    assert requests_counted("aborted", "none") == before_aborted + 1
    assert cut.closed


def phase_observations(phase: str) -> float:
    return REGISTRY.get_sample_value("llm_gateway_extproc_phase_seconds_count", {"phase": phase}) or 0.0


async def test_each_message_of_a_stream_is_timed_once_in_its_phase() -> None:
    world = World(make_settings())
    first = {"id": "gen-1", "model": UPSTREAM_MODEL, "choices": [{"delta": {"content": "ok"}}]}
    last = {"id": "gen-1", "model": UPSTREAM_MODEL, "choices": [], "usage": COMPLETION["usage"]}
    chunks = [b"data: " + orjson.dumps(first) + b"\n\n"] * 3 + [b"data: " + orjson.dumps(last) + b"\n\n"]
    stream = EnvoyStream(
        [
            request_headers(signed_in(world)),
            request_body(chat(PAID, stream=True)),
            response_headers(200, "text/event-stream"),
            *[response_chunk(chunk, end_of_stream=False) for chunk in chunks],
            response_chunk(b"data: [DONE]\n\n", end_of_stream=True),
        ]
    )
    phases = ("request_headers", "request_body", "response_headers", "response_body")
    before = {phase: phase_observations(phase) for phase in phases}

    await process(world, stream)

    assert {phase: phase_observations(phase) - before[phase] for phase in phases} == {
        "request_headers": 1,
        "request_body": 1,
        "response_headers": 1,
        "response_body": 5,
    }
    assert [record.output_tokens for record in world.submitter.records] == [2]
