"""Phase 4: answer each body chunk (unchanged, rewritten, or replaced) and tap the original.

The reply is computed from the chunk alone and sent before the accounting tap parses it.
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
from extproc.state import AdmittedRequest, ResponseTap
from extproc.translate.chat import DEFAULT_ERROR_STATUS, ResponseTranslator, error_json, error_stream

logger = logging.getLogger(__name__)

_LOGGED_ERROR_CHARS = 4096


def reply_to_chunk(
    settings: Settings, admitted: AdmittedRequest | None, tap: ResponseTap, message: HttpBody
) -> ProcessingResponse:
    if admitted is None:
        # Envoy's own reply (e.g. its 413) to a request the pipeline never admitted.
        return protocol.RESPONSE_BODY_CONTINUE
    if admitted.translator is not None:
        return _translate(admitted, admitted.translator, tap, message)
    if tap.rewriter is not None:
        out = tap.rewriter.feed(message.body)
        if message.end_of_stream:
            out += tap.rewriter.finish()
        return protocol.response_body_replace(out)
    if tap.buffered and message.end_of_stream:
        return _replace_buffered(settings, admitted, tap, message.body)
    return protocol.RESPONSE_BODY_CONTINUE


def _translate(
    admitted: AdmittedRequest, translator: ResponseTranslator, tap: ResponseTap, message: HttpBody
) -> ProcessingResponse:
    """A custom LLM of another protocol (contract 3.4): its bytes are replaced by chat completions."""
    if not tap.buffered:
        out = translator.feed(message.body)
        if message.end_of_stream:
            out += translator.finish()
        tap.translated = out
        return protocol.response_body_replace(out)
    if not message.end_of_stream:
        return protocol.RESPONSE_BODY_CONTINUE
    status = tap.status
    body = message.body
    stream = admitted.chat.stream
    if status < 400:
        try:
            out = translator.translate_json(body)
        except (ValueError, AttributeError, TypeError):  # not a provider response document
            logger.warning(
                "custom LLM response is not a JSON document", extra={"request_id": admitted.request.request_id}
            )
            status = DEFAULT_ERROR_STATUS
    if status >= 400:
        _log_upstream_error(admitted, tap, body)
        out = error_stream(status, body) if stream else error_json(status, body)
    # Contract 3.4: a stream's error is an SSE chunk on HTTP 200; a JSON error keeps its status.
    if stream and status >= 400:
        headers = {":status": "200", "content-type": "text/event-stream"}
    else:
        headers = {":status": str(status), "content-type": "application/json"}
    tap.translated = out
    return protocol.response_body_replace(out, headers)


def _replace_buffered(
    settings: Settings, admitted: AdmittedRequest, tap: ResponseTap, body: bytes
) -> ProcessingResponse:
    status = tap.status
    if status >= 400:
        _log_upstream_error(admitted, tap, body)
        replacement = _error_replacement(settings, admitted, status)
        if replacement is not None:
            headers = {":status": str(replacement.status), "content-type": "application/json"}
            return protocol.response_body_replace(replacement.json(), headers)
    if rewrites_free_model(settings, admitted):
        # Decision 16: free-model error bodies go through the rewriter too.
        return protocol.response_body_replace(rewrite_body(body, tap.content_type, admitted.chat.model_lower))
    return protocol.RESPONSE_BODY_CONTINUE


def _error_replacement(settings: Settings, admitted: AdmittedRequest, status: int) -> GatewayError | None:
    byok = admitted.user_byok
    replacement = upstream_402_replacement(status, byok)
    if replacement is not None:
        logger.error(
            f"{admitted.provider.id} returned 402 Payment Required",
            extra={"request_id": admitted.request.request_id},
        )
        return replacement
    return make_error_readable(
        status,
        is_byok=byok,
        model_lower=admitted.chat.model_lower,
        catalogue=settings.catalogue,
        request_body_json_length=js_string_length(admitted.upstream_body),
        max_tokens=requested_max_tokens(admitted.chat.body),
    )


def _log_upstream_error(admitted: AdmittedRequest, tap: ResponseTap, body: bytes) -> None:
    identity = admitted.identity
    logger.warning(
        f"{admitted.provider.id} returned error {tap.status}",
        extra={
            "request_id": admitted.request.request_id,
            "user_id": identity.user_id,
            "organization_id": identity.organization_id,
            "model": admitted.chat.model_lower,
            "status": tap.status,
            "content_type": tap.content_type,
            "body": body[:_LOGGED_ERROR_CHARS].decode("utf-8", "replace"),
        },
    )


def tap_response_body(admitted: AdmittedRequest | None, tap: ResponseTap, message: HttpBody) -> None:
    """The accounting tap, on the original upstream bytes."""
    if admitted is None or tap.reader is None:
        return
    if tap.first_chunk_at is None:
        tap.first_chunk_at = time.monotonic()
    if tap.response_copy is not None and len(tap.response_copy) < MAX_LOGGED_RESPONSE_BYTES:
        tap.response_copy += message.body[: MAX_LOGGED_RESPONSE_BYTES - len(tap.response_copy)]
    body = message.body
    if admitted.translator is not None:
        # Contract 3.4: a custom LLM's usage comes from the synthesized chat stream.
        body, tap.translated = tap.translated or b"", None
    tap.reader.feed(body)
