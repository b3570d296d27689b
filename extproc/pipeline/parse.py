"""Step 2.1: parse the body, force usage reporting, drop `models`, require `model`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from extproc import errors
from extproc.pipeline.rejection import Rejection


@dataclass(slots=True)
class ChatRequest:
    """The parsed client request after contract 2.1 (body already normalised)."""

    body: dict[str, Any]
    model: str  # as sent, for the upstream body
    model_lower: str  # trimmed and lowercased, for every lookup (contract 2.1)
    stream: bool


def parse_chat_request(raw: bytes) -> ChatRequest:
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Rejection(errors.INVALID_JSON) from None
    if isinstance(body, list):
        # The reference assigns properties to the parsed value: a JSON array accepts them
        # (and then has no model), any other non-object throws inside the parse step.
        raise Rejection(errors.MODEL_NOT_FOUND)
    if not isinstance(body, dict):
        raise Rejection(errors.INVALID_JSON)

    # The upstream must always report usage, or the request cannot be charged.
    options = body.get("stream_options")
    body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    # OpenRouter's fallback list is not supported: the gateway picks the provider.
    body.pop("models", None)

    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise Rejection(errors.MODEL_NOT_FOUND)
    return ChatRequest(
        body=body,
        model=model,
        model_lower=model.strip().lower(),
        stream=body.get("stream") is True,
    )
