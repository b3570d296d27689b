"""Phase 4: answer each body chunk (unchanged, rewritten, or replaced) and tap the original.

The reply is computed from the chunk alone and sent before the tap parses it for accounting.
"""

from __future__ import annotations

import logging
import time

from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    ProcessingResponse,
)

from extproc import protocol
from extproc.accounting.record import MAX_LOGGED_RESPONSE_BYTES
from extproc.errors import GatewayError
from extproc.phases.response_headers import rewrites_free_model
from extproc.response.readable_errors import (
    js_string_length,
    make_error_readable,
    requested_max_tokens,
    upstream_402_replacement,
)
from extproc.response.rewrite import rewrite_body
from extproc.settings import Settings
from extproc.state import RequestState
from extproc.translate.chat import DEFAULT_ERROR_STATUS, error_json, error_stream

logger = logging.getLogger(__name__)

# A non-streamed completion is one JSON document; beyond this it is not a chat response.
MAX_JSON_BODY_BYTES = 16 * 1024 * 1024
_LOGGED_ERROR_CHARS = 4096


def reply_to_chunk(settings: Settings, state: RequestState, message: HttpBody) -> ProcessingResponse:
    if state.translator is not None:
        return _translate(state, message)
    if state.rewriter is not None:
        out = state.rewriter.feed(message.body)
        if message.end_of_stream:
            out += state.rewriter.finish()
        return protocol.response_body_replace(out)
    if state.buffered and message.end_of_stream:
        return _replace_buffered(settings, state, message.body)
    return protocol.RESPONSE_BODY_CONTINUE


def _translate(state: RequestState, message: HttpBody) -> ProcessingResponse:
    """A custom LLM of another protocol (contract 3.4): its bytes are replaced by chat completions."""
    translator = state.translator
    assert translator is not None and state.chat is not None
    if not state.buffered:
        out = translator.feed(message.body)
        if message.end_of_stream:
            out += translator.finish()
        state.translated = out
        return protocol.response_body_replace(out)
    if not message.end_of_stream:
        return protocol.RESPONSE_BODY_CONTINUE
    status = state.status or 0
    body = message.body
    if status < 400:
        try:
            out = translator.translate_json(body)
        except (ValueError, AttributeError, TypeError):  # not a provider response document
            logger.warning("custom LLM response is not a JSON document", extra={"request_id": state.request_id})
            status = DEFAULT_ERROR_STATUS
    if status >= 400:
        _log_upstream_error(state, body)
        out = error_stream(status, body) if state.chat.stream else error_json(status, body)
    # Contract 3.4: a stream's error is an SSE chunk on HTTP 200; a JSON error keeps its status.
    if state.chat.stream and status >= 400:
        headers = {":status": "200", "content-type": "text/event-stream"}
    else:
        headers = {":status": str(status), "content-type": "application/json"}
    state.translated = out
    return protocol.response_body_replace(out, protocol.header_mutation(headers))


def _replace_buffered(settings: Settings, state: RequestState, body: bytes) -> ProcessingResponse:
    status = state.status or 0
    if state.chat is None:
        # Envoy's own reply (e.g. its 413) to a request the pipeline never admitted.
        return protocol.RESPONSE_BODY_CONTINUE
    if status >= 400:
        _log_upstream_error(state, body)
        replacement = _error_replacement(settings, state, status)
        if replacement is not None:
            mutation = protocol.header_mutation(
                {":status": str(replacement.status), "content-type": "application/json"}
            )
            return protocol.response_body_replace(replacement.json(), mutation)
    if rewrites_free_model(settings, state):
        assert state.chat is not None
        # Decision 16: free-model error bodies go through the rewriter too.
        return protocol.response_body_replace(rewrite_body(body, state.response_content_type, state.chat.model_lower))
    return protocol.RESPONSE_BODY_CONTINUE


def _error_replacement(settings: Settings, state: RequestState, status: int) -> GatewayError | None:
    byok = state.user_byok
    replacement = upstream_402_replacement(status, byok)
    if replacement is not None:
        logger.error(
            f"{state.provider.id if state.provider else 'upstream'} returned 402 Payment Required",
            extra={"request_id": state.request_id},
        )
        return replacement
    if state.chat is None:
        return None
    return make_error_readable(
        status,
        is_byok=byok,
        model_lower=state.chat.model_lower,
        catalogue=settings.catalogue,
        request_body_json_length=js_string_length(state.upstream_body or b""),
        max_tokens=requested_max_tokens(state.chat.body),
    )


def _log_upstream_error(state: RequestState, body: bytes) -> None:
    identity = state.identity
    logger.warning(
        f"{state.provider.id if state.provider else 'upstream'} returned error {state.status}",
        extra={
            "request_id": state.request_id,
            "user_id": identity.user_id if identity else None,
            "organization_id": identity.organization_id if identity else None,
            "model": state.chat.model_lower if state.chat else None,
            "status": state.status,
            "content_type": state.response_content_type,
            "body": body[:_LOGGED_ERROR_CHARS].decode("utf-8", "replace"),
        },
    )


def tap_response_body(state: RequestState, message: HttpBody) -> None:
    """The accounting tap, on the original upstream bytes."""
    if state.first_chunk_at is None:
        state.first_chunk_at = time.monotonic()
    if state.response_copy is not None and len(state.response_copy) < MAX_LOGGED_RESPONSE_BYTES:
        state.response_copy += message.body[: MAX_LOGGED_RESPONSE_BYTES - len(state.response_copy)]
    body = message.body
    if state.translator is not None:
        # Contract 3.4: a custom LLM's usage comes from the synthesized chat stream.
        body, state.translated = state.translated or b"", None
    if state.stream_tap is not None:
        state.stream_tap.feed(body)
    elif state.json_body is not None and len(state.json_body) + len(body) <= MAX_JSON_BODY_BYTES:
        state.json_body += body


