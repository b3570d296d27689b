"""The OpenCode reasoning fix of behaviour.md 2.14.

The OpenRouter AI SDK provider used by OpenCode clients repeats reasoning_details entries when
it replays a conversation; Anthropic rejects modified thinking blocks, so the repeats (and, for
Anthropic models, unsigned reasoning text it cannot verify) are removed before forwarding.
"""

from __future__ import annotations

from typing import Any


def _dedupe_details(details: list[Any], anthropic: bool) -> list[Any]:
    seen_data: set[str] = set()
    seen_text: set[str] = set()
    kept: list[Any] = []
    for detail in details:
        kind = detail.get("type") if isinstance(detail, dict) else None
        # As in the reference, only entries with a non-empty payload are compared; the rest
        # (including unsigned empty text) are kept.
        if kind == "reasoning.encrypted" and isinstance(data := detail.get("data"), str) and data:
            if data in seen_data:
                continue
            seen_data.add(data)
        elif kind == "reasoning.text" and isinstance(text := detail.get("text"), str) and text:
            if (anthropic and not detail.get("signature")) or text in seen_text:
                continue
            seen_text.add(text)
        kept.append(detail)
    return kept


def dedupe_opencode_reasoning(body: dict[str, Any], model_lower: str) -> None:
    """Replace each message's `reasoning_details` list by its filtered copy; order is kept."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    anthropic = model_lower.startswith("anthropic/")
    for message in messages:
        if isinstance(message, dict) and isinstance(message.get("reasoning_details"), list):
            message["reasoning_details"] = _dedupe_details(message["reasoning_details"], anthropic)
