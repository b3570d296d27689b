"""The ext_proc service: one gRPC stream per HTTP request, one coroutine per stream.

Envoy sends request headers, request body, response headers and response body chunks in
order, and waits for exactly one matching reply to each (envoy-extproc.md B1). The state of
the request lives in this coroutine and nowhere else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    ProcessingRequest,
    ProcessingResponse,
)
from envoy.service.ext_proc.v3.external_processor_pb2_grpc import (
    ExternalProcessorServicer,
)

from extproc import errors, metrics, protocol
from extproc.phases.finish import finish_request
from extproc.phases.request_body import on_request_body
from extproc.phases.request_headers import on_request_headers
from extproc.phases.response_body import reply_to_chunk, tap_response_body
from extproc.phases.response_headers import on_response_headers
from extproc.services import Services
from extproc.state import RequestState

logger = logging.getLogger(__name__)

_PHASE_TIMERS = {
    phase: metrics.PHASE_SECONDS.labels(phase=phase)
    for phase in ("request_headers", "request_body", "response_headers", "response_body")
}


# xds-protos ships no stubs, so mypy sees the generated servicer base class as Any.
class Processor(ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, services: Services) -> None:
        self.services = services

    async def Process(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[ProcessingRequest],
        context: grpc.aio.ServicerContext[ProcessingRequest, ProcessingResponse],
    ) -> AsyncIterator[ProcessingResponse]:
        state = RequestState()
        finished = False
        untapped: ProcessingRequest | None = None
        try:
            async for request in request_iterator:
                phase = request.WhichOneof("request")
                started = time.perf_counter()
                if phase == "response_body":
                    finished = request.response_body.end_of_stream
                    # Answer first: the chunk goes on to the client while we parse it. Envoy
                    # may close the stream as soon as it has the last answer, ending this
                    # coroutine at the yield; the chunk is then tapped in `finally`.
                    untapped = request
                    reply = self._reply_to_chunk(state, request)
                    elapsed = time.perf_counter() - started
                    yield reply
                    started = time.perf_counter()
                    untapped = None
                    self._tap(state, request)
                    elapsed += time.perf_counter() - started
                else:
                    reply = await self._decide(state, request, phase)
                    finished = reply.HasField("immediate_response") or (
                        phase == "response_headers" and request.response_headers.end_of_stream
                    )
                    elapsed = time.perf_counter() - started
                    yield reply
                # Our own time on this message, not the wait for gRPC to send the answer.
                timer = _PHASE_TIMERS.get(phase)
                if timer is not None:
                    timer.observe(elapsed)
                if finished:
                    break
        finally:
            if untapped is not None:
                self._tap(state, untapped)
            # Reached on completion, and also when Envoy resets the stream because the client
            # went away: the request is summarised either way, marked aborted in the latter.
            services = self.services
            finish_request(services.settings, services.submitter, services.side, state, aborted=not finished)

    async def _decide(self, state: RequestState, request: ProcessingRequest, phase: str | None) -> ProcessingResponse:
        try:
            if phase == "request_headers":
                return on_request_headers(state, request.request_headers, dict(request.attributes))
            if phase == "request_body":
                return await on_request_body(self.services, state, request.request_body)
            if phase == "response_headers":
                return on_response_headers(self.services.settings, state, request.response_headers)
        except Exception:
            logger.exception("ext_proc phase failed", extra={"phase": phase, "request_id": state.request_id})
            if phase != "response_headers":
                state.status = errors.INTERNAL_ERROR.status
                return protocol.immediate(errors.INTERNAL_ERROR)
            # The upstream answered; never cut an admitted response over our own bug.
            return protocol.response_headers_reply(protocol.header_mutation(), protocol.STREAMED)
        raise RuntimeError(f"unexpected ext_proc message: {phase}")

    def _reply_to_chunk(self, state: RequestState, request: ProcessingRequest) -> ProcessingResponse:
        try:
            return reply_to_chunk(self.services.settings, state, request.response_body)
        except Exception:
            # Never cut an admitted response over our own bug: pass the chunk through.
            logger.exception("response rewrite failed", extra={"request_id": state.request_id})
            return protocol.RESPONSE_BODY_CONTINUE

    @staticmethod
    def _tap(state: RequestState, request: ProcessingRequest) -> None:
        try:
            tap_response_body(state, request.response_body)
        except Exception:
            # Accounting must never break the stream the client is reading.
            logger.exception("response tap failed", extra={"request_id": state.request_id})
