"""The ext_proc service: one gRPC stream per HTTP request, one `ChatExchange` per stream.

Envoy sends request headers, request body, response headers and response body chunks in
order, and waits for exactly one matching reply to each (envoy-extproc.md B1). This adapter
only moves messages between gRPC and the exchange (extproc/exchange.py), which holds the
request's state and decides every reply.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    ProcessingRequest,
    ProcessingResponse,
)
from envoy.service.ext_proc.v3.external_processor_pb2_grpc import (
    ExternalProcessorServicer,
)

from extproc import metrics, tracing
from extproc.collaborators import Collaborators
from extproc.exchange import ChatExchange

_PHASE_TIMERS = {
    phase: metrics.PHASE_SECONDS.labels(phase=phase)
    for phase in ("request_headers", "request_body", "response_headers", "response_body")
}


def _handler(exchange: ChatExchange, phase: str | None) -> Callable[[ProcessingRequest], Awaitable[ProcessingResponse]]:
    if phase == "request_headers":
        return exchange.on_request_headers
    if phase == "request_body":
        return exchange.on_request_body
    if phase == "response_headers":
        return exchange.on_response_headers
    return exchange.on_unexpected


async def _close(messages: AsyncIterator[ProcessingRequest]) -> None:
    close = getattr(messages, "aclose", None)
    if close is not None:
        await close()


# xds-protos ships no stubs, so mypy sees the generated servicer base class as Any.
class Processor(ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, core: Collaborators) -> None:
        self.core = core

    async def Process(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[ProcessingRequest],
        context: grpc.aio.ServicerContext[ProcessingRequest, ProcessingResponse],
    ) -> AsyncIterator[ProcessingResponse]:
        exchange = ChatExchange(self.core)
        if tracing.TRACER is not None:
            # Envoy's span of this stream, from its gRPC metadata (off: this check is all).
            from extproc import request_trace

            exchange.trace = request_trace.begin(tracing.TRACER, context.invocation_metadata())
        finished = False
        # A stream's chunks' times, written to the histogram once, when the stream ends.
        body_seconds: list[float] = []
        untapped: ProcessingRequest | None = None
        # gRPC's request iterator is an async generator we leave unfinished (we stop at the last
        # message, before Envoy half-closes). Closed here, at once: left to the garbage
        # collector, asyncio's finaliser would schedule its closing as a task of its own and wake
        # the loop from outside (a syscall), per request.
        messages = aiter(request_iterator)
        ended = metrics.STREAM_FAILED
        try:
            async for request in messages:
                phase = request.WhichOneof("request")
                started = time.perf_counter()
                if phase == "response_body":
                    finished = request.response_body.end_of_stream
                    # Answer first: the chunk goes on to the client while we parse it. Envoy
                    # may close the stream as soon as it has the last answer, ending this
                    # coroutine at the yield; the chunk is then tapped in `finally`.
                    untapped = request
                    reply = await exchange.on_response_body(request)
                    elapsed = time.perf_counter() - started
                    yield reply
                    started = time.perf_counter()
                    untapped = None
                    exchange.tap_response_body(request)
                    # Our own time on this message, not the wait for gRPC to send the answer.
                    body_seconds.append(elapsed + time.perf_counter() - started)
                else:
                    reply = await _handler(exchange, phase)(request)
                    finished = reply.HasField("immediate_response") or (
                        phase == "response_headers" and request.response_headers.end_of_stream
                    )
                    elapsed = time.perf_counter() - started
                    yield reply
                    timer = _PHASE_TIMERS.get(phase)
                    if timer is not None:
                        metrics.observe(timer, elapsed)
                if finished:
                    # Wait for Envoy to end its side. Without the graceful-close guard Envoy
                    # half-closes and resets at once: gRPC reports the end of the messages
                    # first, and cancels this task on the reset, delivered with it, which the
                    # one turn of the loop lets in. The stream then ends cancelled.
                    await anext(messages, None)
                    await asyncio.sleep(0)
                    break
            # Envoy ended the stream before the response did: the client went away.
            ended = metrics.STREAM_OK if finished else metrics.STREAM_CANCELLED
        except (asyncio.CancelledError, GeneratorExit):
            # Cancelled while we waited for a message; closed by gRPC at a `yield` whose reply
            # could no longer be sent. Either way Envoy reset the stream.
            ended = metrics.STREAM_CANCELLED
            raise
        finally:
            if untapped is not None:
                exchange.tap_response_body(untapped)
            # Reached on completion, and also when Envoy resets the stream because the client
            # went away: the request is summarised either way, marked aborted in the latter.
            exchange.finish(aborted=not finished)
            metrics.observe_all(_PHASE_TIMERS["response_body"], body_seconds)
            ended.inc()
            # After `finish`: nothing that closing the stream might raise costs the usage record.
            await _close(messages)
