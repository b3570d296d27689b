"""The request core: one `ChatExchange` per ext_proc stream, built from explicit collaborators.

Each phase method takes Envoy's message for that phase and returns the one reply Envoy waits
for; none raises. Our own bug in a request phase answers 500 (Appendix A #20); once the
upstream answered, a bug never cuts the admitted response: the message passes unchanged.
`tap_response_body` (after the chunk's reply went out) and `finish` (once, at the end) feed
accounting and never touch the client's stream.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from envoy.service.ext_proc.v3.external_processor_pb2 import (
    ProcessingRequest,
    ProcessingResponse,
)

from extproc import errors, logs, protocol
from extproc.accounting.record import UsageRecord
from extproc.collaborators import Collaborators
from extproc.db.cache import DirectoryUnavailable
from extproc.errors import GatewayError
from extproc.phases.finish import finish_request, unanswered_record
from extproc.phases.request_body import identify_caller, send_upstream
from extproc.phases.request_headers import read_request
from extproc.phases.response_body import reply_to_chunk, tap_response_body
from extproc.phases.response_headers import open_response
from extproc.pipeline.rejection import Rejection
from extproc.response_usage import StreamTap
from extproc.state import AdmittedRequest, ClientRequest, ResponseTap

if TYPE_CHECKING:
    from extproc.request_trace import RequestTrace

logger = logging.getLogger(__name__)


class ChatExchange:
    __slots__ = ("core", "request", "admitted", "response", "refused_status", "provider_id", "written_ahead", "message_id_written", "trace")

    def __init__(self, core: Collaborators) -> None:
        self.core = core
        self.request: ClientRequest | None = None
        self.admitted: AdmittedRequest | None = None
        self.response: ResponseTap | None = None
        self.refused_status: int | None = None  # the status we answered with ourselves
        self.provider_id: str | None = None  # once a route is chosen, even if refused later
        # The record written ahead for this request (accounting/inflight.py); the final one is
        # this with the response's fields.
        self.written_ahead: UsageRecord | None = None
        self.message_id_written = False
        self.trace: RequestTrace | None = None  # set by the processor when traced

    @property
    def request_id(self) -> str:
        return self.request.request_id if self.request is not None else ""

    async def on_request_headers(self, message: ProcessingRequest) -> ProcessingResponse:
        try:
            self.request = request = read_request(message.request_headers, dict(message.attributes))
            logs.REQUEST_ID.set(request.request_id or None)
            if message.request_headers.end_of_stream:
                # No body will follow: an empty body is not valid JSON (contract 2.1).
                return protocol.with_request_id(self._refuse(errors.INVALID_JSON), request.request_id)
            return protocol.with_request_id(protocol.request_headers_continue(), request.request_id)
        except Exception:
            return self._failed("request_headers")

    async def on_request_body(self, message: ProcessingRequest) -> ProcessingResponse:
        try:
            if self.request is None:
                raise RuntimeError("request body before its headers")
            request, trace = self.request, self.trace
            if trace is not None:
                trace.body_at = time.monotonic()
            caller = await identify_caller(self.core, request, message.request_body.body)
            if trace is not None:
                trace.identified_at = time.monotonic()
            route = await self.core.router.select(caller.chat, caller.identity, caller.client.task_id)  # 3.2
            self.provider_id = route.provider.id
            if trace is not None:
                trace.routed_at = time.monotonic()
            self.admitted, forwarded = await send_upstream(self.core, request, caller, route)
            if trace is not None:
                trace.admitted_at = time.monotonic()
            self.written_ahead = unanswered_record(self.core.settings, self.admitted)
            self.core.submitter.write_ahead(self.written_ahead)
            return forwarded.reply
        except Rejection as rejection:
            return self._refuse(rejection.error)
        except DirectoryUnavailable:
            return self._refuse(errors.SERVICE_UNAVAILABLE)
        except Exception:
            return self._failed("request_body")

    async def on_response_headers(self, message: ProcessingRequest) -> ProcessingResponse:
        try:
            self.response, reply = open_response(self.core.settings, self.admitted, message.response_headers)
            status = self.response.status
            if self.admitted is not None and (status == 429 or status >= 500):
                self._observe_failure(self.admitted, status, message)
            return reply
        except Exception:
            logger.exception("ext_proc phase failed", extra={"phase": "response_headers", "request_id": self.request_id})
            # The upstream answered; never cut an admitted response over our own bug.
            return protocol.response_headers_reply(None, (), protocol.STREAMED)

    def _observe_failure(self, admitted: AdmittedRequest, status: int, message: ProcessingRequest) -> None:
        """Issue 25: a 429 or 5xx of one of the gateway's own providers may cool it down for
        the model. A BYOK caller's answer is its own key's, a custom LLM is one organisation's."""
        route = admitted.route
        if route.user_byok or route.custom_llm is not None:
            return
        retry_after = protocol.read_headers(message.response_headers).get("retry-after")
        self.core.cooldowns.observe(route.provider.id, admitted.chat.model_lower, status, retry_after)

    async def on_response_body(self, message: ProcessingRequest) -> ProcessingResponse:
        """The chunk's reply, from the chunk alone; the accounting tap reads it afterwards."""
        try:
            if self.response is None:
                raise RuntimeError("response body before its headers")
            return reply_to_chunk(self.core.settings, self.admitted, self.response, message.response_body)
        except Exception:
            # Never cut an admitted response over our own bug: pass the chunk through.
            logger.exception("response rewrite failed", extra={"request_id": self.request_id})
            return protocol.RESPONSE_BODY_CONTINUE

    def tap_response_body(self, message: ProcessingRequest) -> None:
        """The accounting tap, on the original upstream bytes."""
        try:
            if self.response is not None:
                tap_response_body(self.admitted, self.response, message.response_body)
                self._write_ahead_message_id(self.response)
        except Exception:
            # Accounting must never break the stream the client is reading.
            logger.exception("response tap failed", extra={"request_id": self.request_id})

    def _write_ahead_message_id(self, response: ResponseTap) -> None:
        """Once a stream's message id is known, the written-ahead record gets it (and the
        status), so that if this replica dies the ledger writer can still look the upstream's
        bill up (contract 7.3). A whole JSON body ends the request at once: no update."""
        written = self.written_ahead
        if written is None or self.message_id_written or not isinstance(response.reader, StreamTap):
            return
        message_id = response.reader.message_id
        if message_id is None:
            return
        self.message_id_written = True
        # In place, as finish_request completes it: what was written ahead before is already sent.
        written.message_id, written.status_code = message_id, response.status
        self.core.submitter.write_ahead(written)

    def finish(self, aborted: bool) -> None:
        """Once, at the end of the stream: completed, refused, or reset by Envoy (aborted)."""
        response = self.response
        status = response.status if response is not None else self.refused_status or 0
        trace = self.trace
        if trace is not None and self.written_ahead is not None:
            self.written_ahead.traceparent = trace.traceparent
        try:
            finish_request(
                self.core,
                self.admitted,
                self.written_ahead,
                response,
                status=status,
                provider_id=self.provider_id,
                aborted=aborted,
            )
        except Exception:
            # Logged, never raised into gRPC; the record is what failed, so say so loudly.
            logger.exception("request summary failed: usage record not submitted", extra={"request_id": self.request_id})
        if trace is not None:
            from extproc import request_trace

            try:
                request_trace.end(
                    trace,
                    self.admitted,
                    response,
                    self.written_ahead,
                    status=status,
                    provider_id=self.provider_id,
                    aborted=aborted,
                )
            except Exception:
                logger.exception("request span failed", extra={"request_id": self.request_id})

    async def on_unexpected(self, message: ProcessingRequest) -> ProcessingResponse:
        """A message the filter's processing mode never asks Envoy for (trailers)."""
        logger.error(
            "unexpected ext_proc message",
            extra={"phase": message.WhichOneof("request"), "request_id": self.request_id},
        )
        return self._refuse(errors.INTERNAL_ERROR)

    def _refuse(self, error: GatewayError) -> ProcessingResponse:
        self.refused_status = error.status
        return protocol.immediate(error)

    def _failed(self, phase: str) -> ProcessingResponse:
        logger.exception("ext_proc phase failed", extra={"phase": phase, "request_id": self.request_id})
        return self._refuse(errors.INTERNAL_ERROR)
