"""Step 2.11: refuse absurd token limits and models that no longer exist."""

from __future__ import annotations

from typing import Any

from extproc import errors
from extproc.catalogue import Catalogue
from extproc.pipeline.parse import ChatRequest
from extproc.pipeline.rejection import Rejection

# Far above any real model: a request past it is probing, so it gets a generic 503.
MAX_TOKENS_LIMIT = 99_999_999_999


def validate_request(chat: ChatRequest, catalogue: Catalogue) -> None:
    """Checks in the contract's order: token cap, dead free model, rate-limited-to-death."""
    # Decision 5: `max_completion_tokens` counts when `max_tokens` is not given.
    max_tokens = _number(chat.body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = _number(chat.body.get("max_completion_tokens"))
    if max_tokens is not None and max_tokens > MAX_TOKENS_LIMIT:
        raise Rejection(errors.SERVICE_UNAVAILABLE)
    if catalogue.is_dead_free_model(chat.model_lower):
        raise Rejection(errors.MODEL_ALPHA_ENDED)
    if catalogue.is_rate_limited_to_death(chat.model_lower):
        raise Rejection(errors.MODEL_NOT_FOUND)


def _number(value: Any) -> int | float | None:
    """A JSON number; booleans are JSON `true`/`false`, not numbers, even though Python says so."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value
