"""Phase 3: the response header whitelist (contract 6.1) and the body mode for this response."""

from __future__ import annotations

import time

from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpHeaders,
    ProcessingResponse,
)

from extproc import protocol
from extproc.response.rewrite import SseRewriter
from extproc.response_usage import StreamTap
from extproc.settings import Settings
from extproc.state import RequestState

WHITELIST = frozenset({"date", "content-type", "request-id"})
# Stops a client or proxy from recompressing what the gateway streams.
ADDED = {"content-encoding": "identity"}


def rewrites_free_model(settings: Settings, state: RequestState) -> bool:
    """Contract 6.4: an enabled Kilo free model (or a promotion) not served by a custom LLM."""
    if state.chat is None or state.provider is None or state.provider.id == "custom":
        return False
    return state.promotion or settings.catalogue.is_kilo_free_model(state.chat.model_lower)


def on_response_headers(settings: Settings, state: RequestState, message: HttpHeaders) -> ProcessingResponse:
    headers = protocol.read_headers(message)
    state.status = status = int(headers.get(":status", "0") or 0)
    state.first_byte_at = time.monotonic()
    state.response_content_type = headers.get("content-type")
    if state.log_request:
        state.response_copy = bytearray()
    event_stream = (state.response_content_type or "").startswith("text/event-stream")
    if state.chat is not None:
        # The parser follows what the upstream sent, not the request's flag: an upstream may
        # stream for `"stream": 1` while the request counts as not streamed (contract 7.2),
        # and its usage must still be charged.
        if event_stream:
            state.stream_tap = StreamTap(status)
        else:
            state.json_body = bytearray()
    remove = [name for name in headers if not name.startswith(":") and name not in WHITELIST]
    # SSE chunks must reach the client as they come. Anything else is one document that is
    # cheaper to receive in one message, and errors may be replaced as a whole (6.2, 6.3).
    streamed = event_stream and status < 400
    state.buffered = not streamed
    if streamed and rewrites_free_model(settings, state):
        assert state.chat is not None
        state.rewriter = SseRewriter(state.chat.model_lower)
    mode = protocol.STREAMED if streamed else protocol.BUFFERED
    return protocol.response_headers_reply(protocol.header_mutation(ADDED, remove), mode)
