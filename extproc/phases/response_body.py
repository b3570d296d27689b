"""Phase 4: tap the response body for accounting. Chunks are answered before this runs."""

from __future__ import annotations

import time

from envoy.service.ext_proc.v3.external_processor_pb2 import HttpBody

from extproc.accounting.record import MAX_LOGGED_RESPONSE_BYTES
from extproc.state import RequestState

# A non-streamed completion is one JSON document; beyond this it is not a chat response.
MAX_JSON_BODY_BYTES = 16 * 1024 * 1024


def on_response_body(state: RequestState, message: HttpBody) -> None:
    if state.first_chunk_at is None:
        state.first_chunk_at = time.monotonic()
    if state.response_copy is not None and len(state.response_copy) < MAX_LOGGED_RESPONSE_BYTES:
        state.response_copy += message.body[: MAX_LOGGED_RESPONSE_BYTES - len(state.response_copy)]
    if state.stream_tap is not None:
        state.stream_tap.feed(message.body)
    elif state.json_body is not None and len(state.json_body) + len(message.body) <= MAX_JSON_BODY_BYTES:
        state.json_body += message.body
