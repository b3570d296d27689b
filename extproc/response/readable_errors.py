"""Readable replacements for upstream error responses (contract 6.2 and 6.3).

Upstream errors are replaced in this order: `upstream_402_replacement` first (a 402 of the
gateway's own provider account is the gateway's problem, answered as 503 before accounting),
then `make_error_readable`; when both give None the upstream body goes to the client
(through the free-model rewrite for free models, decision 16).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from extproc import errors
from extproc.catalogue import Catalogue
from extproc.errors import GatewayError

__all__ = [
    "estimate_token_count",
    "js_string_length",
    "make_error_readable",
    "requested_max_tokens",
    "upstream_402_replacement",
]

def upstream_402_replacement(status: int, is_byok: bool) -> GatewayError | None:
    """Contract 6.2: an upstream 402 on the gateway's own key becomes the 503 body."""
    if status == 402 and not is_byok:
        return errors.SERVICE_UNAVAILABLE
    return None


def make_error_readable(
    status: int,
    *,
    is_byok: bool,
    model_lower: str,
    catalogue: Catalogue,
    request_body_json_length: int,
    max_tokens: int | float | None,
) -> GatewayError | None:
    """Contract 6.3: the replacement for an upstream error, or None to pass the body through.

    `model_lower` is the public id the client asked for (resolved, lowercased), not the
    internal id sent upstream. `request_body_json_length` is `JSON.stringify(body).length`
    of the final request body as sent upstream (`js_string_length(upstream_body_bytes)`),
    `max_tokens` its `max_completion_tokens ?? max_tokens` (`requested_max_tokens(body)`).
    """
    if status < 400:
        return None

    if is_byok:
        message = errors.BYOK_MESSAGES.get(status)
        if message is not None:
            return errors.readable(status, message)

    # Context overflows often come back as a generic or nonsensical upstream error. The
    # reference looks the model up in the whole list, disabled entries included.
    entry = catalogue.free_models.get(model_lower)
    if entry is not None:
        estimate = estimate_token_count(request_body_json_length, max_tokens)
        if estimate >= entry.context_length:
            return errors.context_length_exceeded(status, entry.context_length, estimate)

    if catalogue.is_kilo_stealth_model(model_lower):
        return errors.readable(status, errors.STEALTH_MODEL_ERROR)

    return None


def estimate_token_count(request_body_json_length: int, max_tokens: int | float | None) -> int:
    """`Math.round(length / 4 + (max_tokens ?? 0))`; JS rounds halves up, Python's round() would not."""
    return math.floor(request_body_json_length / 4 + (max_tokens or 0) + 0.5)


def requested_max_tokens(body: Mapping[str, Any]) -> int | float | None:
    """`max_completion_tokens ?? max_tokens` as the estimate reads it (not decision 5's order).

    A value that is not a number counts as absent (the reference would concatenate strings).
    """
    value = body.get("max_completion_tokens")
    if value is None:
        value = body.get("max_tokens")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def js_string_length(utf8: bytes) -> int:
    """The JavaScript `.length` of UTF-8 text: UTF-16 code units, so a character outside the
    Basic Multilingual Plane (an emoji) counts two. Invalid bytes count as U+FFFD would."""
    return len(utf8.decode("utf-8", "replace").encode("utf-16-le")) // 2
