"""Phase 3: the response header whitelist (contract 6.1) and the body mode for this response."""

from __future__ import annotations

import time

from envoy.service.ext_proc.v3.external_processor_pb2 import HttpHeaders, ProcessingResponse

from extproc import protocol
from extproc.state import RequestState
from extproc.usage import StreamTap

WHITELIST = frozenset({"date", "content-type", "request-id"})
# Stops a client or proxy from recompressing what the gateway streams.
ADDED = {"content-encoding": "identity"}


def on_response_headers(state: RequestState, message: HttpHeaders) -> ProcessingResponse:
    headers = protocol.read_headers(message)
    state.status = int(headers.get(":status", "0") or 0)
    state.first_byte_at = time.monotonic()
    if state.log_request:
        state.response_copy = bytearray()
    if state.chat is not None:
        if state.chat.stream:
            state.stream_tap = StreamTap(state.status)
        else:
            state.json_body = bytearray()
    remove = [name for name in headers if not name.startswith(":") and name not in WHITELIST]
    event_stream = headers.get("content-type", "").startswith("text/event-stream")
    # SSE chunks must reach the client as they come; anything else is one small document
    # that is cheaper to receive in one message (and can be replaced as a whole).
    mode = protocol.STREAMED if event_stream else protocol.BUFFERED
    return protocol.response_headers_reply(protocol.header_mutation(ADDED, remove), mode)
