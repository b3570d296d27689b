"""Step 2.3: resolve the `kilo/auto*` pseudo-models to a real model before any other lookup."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from extproc.pipeline.parse import ChatRequest

AUTO_FREE_MODEL = "minimax/minimax-m2.5:free"
AUTO_SMALL_MODEL = "openai/gpt-5-nano"
_OPUS = "anthropic/claude-opus-4.6"
_SONNET = "anthropic/claude-sonnet-4.6"

# kilo/auto by editor mode: (model, verbosity). Reasoning is always enabled.
_BY_MODE: dict[str, tuple[str, str]] = {
    "plan": (_OPUS, "high"),
    "architect": (_OPUS, "high"),
    "orchestrator": (_OPUS, "high"),
    "ask": (_OPUS, "high"),
    "debug": (_OPUS, "high"),
    "general": (_OPUS, "medium"),
    "build": (_SONNET, "medium"),
    "explore": (_SONNET, "medium"),
    "code": (_SONNET, "low"),
}
# A missing or unknown mode gets what `code` gets.
_DEFAULT = _BY_MODE["code"]
MODE_HEADER_LIMIT = 500


@dataclass(frozen=True, slots=True)
class AutoModel:
    model: str  # resolved model id
    fields: dict[str, Any]  # shallow-merged into the body: model, and reasoning/verbosity for kilo/auto


def resolve_auto_model(model_lower: str, mode_header: str | None) -> AutoModel | None:
    """None when `model_lower` is not one of the auto ids (the request keeps its model)."""
    if model_lower == "kilo/auto-free":
        return AutoModel(AUTO_FREE_MODEL, {"model": AUTO_FREE_MODEL})
    if model_lower == "kilo/auto-small":
        return AutoModel(AUTO_SMALL_MODEL, {"model": AUTO_SMALL_MODEL})
    if model_lower != "kilo/auto":
        return None
    model, verbosity = _BY_MODE.get(_mode(mode_header) or "", _DEFAULT)
    # Fresh dicts on every call: the body they land in is mutated by later steps.
    return AutoModel(model, {"model": model, "reasoning": {"enabled": True}, "verbosity": verbosity})


def apply_auto_model(chat: ChatRequest, resolved: AutoModel) -> ChatRequest:
    """The resolved fields overwrite the client's; every later step sees the resolved model."""
    return replace(
        chat,
        body={**chat.body, **resolved.fields},
        model=resolved.model,
        model_lower=resolved.model.lower(),
    )


def _mode(value: str | None) -> str | None:
    if value is None:
        return None
    return value[:MODE_HEADER_LIMIT].strip().lower() or None
