"""The request transform of behaviour.md 2.14, up to (not including) the provider-specific rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from extproc.shaping.hashing import provider_hash
from extproc.shaping.reasoning import dedupe_opencode_reasoning
from extproc.shaping.tools import repair_tools, tools_available, tools_used


@dataclass(frozen=True, slots=True)
class TransformResult:
    tools_available: list[str]  # metrics labels (8.1), taken before provider mutations
    tools_used: list[str]


def transform_request(
    body: dict[str, Any],
    *,
    user_id: str,
    task_id: str | None,
    provider_id: str,
    provider_base_url: str,
    model_lower: str,
    is_opencode: bool,
) -> TransformResult:
    """Mutate `body` in place. `user_id` is the account id, or `anon:<ip>` for anonymous callers."""

    def hashed(payload: str) -> str:
        return provider_hash(payload, provider_id, provider_base_url)

    # One cache key per (user, task) so upstream prompt caches are shared within a task only;
    # the client's own value is never forwarded when a task id is known.
    if task_id:
        body["prompt_cache_key"] = hashed(user_id + task_id)
    body["safety_identifier"] = hashed(user_id)
    # `user` is deprecated by OpenAI but is the field OpenRouter reads.
    body["user"] = body["safety_identifier"]
    # Always on (the reference's ENABLE_TOOL_REPAIR): mostly a workaround for an old editor
    # extension that sends broken tool-call sequences.
    repair_tools(body)
    if is_opencode:
        dedupe_opencode_reasoning(body, model_lower)
    return TransformResult(tools_available=tools_available(body), tools_used=tools_used(body))
