"""Phase 3: the response header whitelist (contract 6.1) and the body mode for this response."""

from __future__ import annotations

import time

from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpHeaders,
    ProcessingResponse,
)

from extproc import protocol
from extproc.response.rewrite import SseRewriter
from extproc.response_usage import JsonTap, StreamTap
from extproc.settings import Settings
from extproc.state import AdmittedRequest, ResponseTap

WHITELIST = frozenset({"date", "content-type", "request-id"})
# Stops a client or proxy from recompressing what the gateway streams.
ADDED = {"content-encoding": "identity"}
LOWERED_MAX_TOKENS = "x-gateway-max-tokens"


def rewrites_free_model(settings: Settings, admitted: AdmittedRequest) -> bool:
    """Contract 6.4: an enabled Kilo free model (or a promotion) not served by a custom LLM."""
    if admitted.provider.id == "custom":
        return False
    return admitted.promotion or settings.catalogue.is_kilo_free_model(admitted.chat.model_lower)


def open_response(
    settings: Settings, admitted: AdmittedRequest | None, message: HttpHeaders
) -> tuple[ResponseTap, ProcessingResponse]:
    """`admitted` is None for Envoy's own reply to a request we never sent upstream."""
    headers = protocol.read_headers(message)
    status = int(headers.get(":status", "0") or 0)
    content_type = headers.get("content-type")
    event_stream = (content_type or "").startswith("text/event-stream")
    # SSE chunks must reach the client as they come. Anything else is one document that is
    # cheaper to receive in one message, and errors may be replaced as a whole (6.2, 6.3).
    streamed = event_stream and status < 400
    tap = ResponseTap(status=status, content_type=content_type, first_byte_at=time.monotonic(), buffered=not streamed)
    if admitted is not None:
        # The parser follows what the upstream sent, not the request's flag: an upstream may
        # stream for `"stream": 1` while the request counts as not streamed (contract 7.2),
        # and its usage must still be charged.
        tap.reader = StreamTap(status) if event_stream else JsonTap(status)
        if admitted.caller.log_request:
            tap.response_copy = bytearray()
        if streamed and rewrites_free_model(settings, admitted):
            tap.rewriter = SseRewriter(admitted.chat.model_lower)
    remove = [name for name in headers if not name.startswith(":") and name not in WHITELIST]
    mode = protocol.STREAMED if streamed else protocol.BUFFERED
    added = ADDED
    if admitted is not None and admitted.hold is not None and admitted.hold.max_tokens is not None:
        # Issue 23: the reply was limited to what the caller's balance covers.
        added = {**ADDED, LOWERED_MAX_TOKENS: str(admitted.hold.max_tokens)}
    return tap, protocol.response_headers_reply(added, remove, mode)
