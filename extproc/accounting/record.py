"""The usage record: everything the ledger needs about one request, as plain JSON-able data.

Built when the request ends, from the request state and the response summary (the original
upstream bytes, never the rewritten ones). It carries no secret: the writer looks provider
keys up in its own settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from sys import intern
from typing import Any

import orjson

from extproc.response_usage import ReportedUsage, ResponseSummary

# Contract 7.6: the prompt prefixes kept with each row.
_PREFIX_CHARS = 100
# Employee request logging (8.2) keeps a bounded copy of the response.
MAX_LOGGED_RESPONSE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class PromptInfo:
    system_prompt_prefix: str
    system_prompt_length: int
    user_prompt_prefix: str


def message_text(content: Any) -> str:
    """A message's text: the string, or the text parts of an array joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What accounting (contract 7.6) and the abuse service (8.3) read from the request as the
    client sent it: taken once, before shaping changes the body (e.g. clamps max_tokens)."""

    system_prompt: str | None  # system and developer texts joined by "\n"; None: no message list
    user_prompt: str  # the last user message's text
    max_tokens: int | float | None
    has_middle_out_transform: bool
    has_tools: bool

    def prompt_info(self) -> PromptInfo:
        if self.system_prompt is None:  # 7.6: extraction failure
            return PromptInfo("", -1, "")
        return PromptInfo(self.system_prompt[:_PREFIX_CHARS], len(self.system_prompt), self.user_prompt[:_PREFIX_CHARS])


def request_facts(body: dict[str, Any]) -> RequestFacts:
    messages = body.get("messages")
    system: str | None = None
    user = ""
    if isinstance(messages, list):
        messages = [m for m in messages if isinstance(m, dict)]
        system = "\n".join(message_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer"))
        users = [m for m in messages if m.get("role") == "user"]
        user = message_text(users[-1].get("content")) if users else ""
    max_tokens = body.get("max_tokens")
    transforms = body.get("transforms")
    tools = body.get("tools")
    return RequestFacts(
        system_prompt=system,
        user_prompt=user,
        max_tokens=max_tokens if isinstance(max_tokens, (int, float)) and not isinstance(max_tokens, bool) else None,
        has_middle_out_transform=isinstance(transforms, list) and "middle-out" in transforms,
        has_tools=isinstance(tools, list) and len(tools) > 0,
    )


@dataclass(slots=True)
class UsageRecord:
    usage_id: str  # the microdollar_usage id: the idempotency key of every write
    created_at: float
    kilo_user_id: str
    organization_id: str | None
    provider: str
    requested_model: str  # resolved, lowercased
    auto_model: str | None
    status_code: int
    streamed: bool
    aborted: bool
    # Classification decided at request time.
    free_model: bool
    stealth_model: bool
    user_byok: bool
    promotion: bool
    # From the upstream response (contract 7.2).
    message_id: str | None
    model: str | None
    inference_provider: str | None
    finish_reason: str | None
    has_error: bool
    input_tokens: int
    output_tokens: int
    cache_hit_tokens: int
    cost_microdollars: int
    is_byok: bool | None
    # Request facts for the metadata row (contract 7.5, 7.6).
    project_id: str | None = None
    prompt: PromptInfo | None = None
    max_tokens: int | None = None
    has_middle_out_transform: bool = False
    has_tools: bool = False
    editor_name: str | None = None
    machine_id: str | None = None
    session_id: str | None = None
    mode: str | None = None
    feature: str | None = None
    user_agent: str | None = None
    forwarded_for: str | None = None
    # Employees only (8.2): the final request and a bounded copy of the response.
    request_log: dict[str, Any] | None = field(default=None)
    # Side services (extproc/side): the abuse service's id for this request (0: none, 8.3),
    # and for the analytics events (7.5) the user's e-mail and usage before this request.
    abuse_request_id: int = 0
    cache_write_tokens: int = 0  # only custom LLMs report them (contract 3.4)
    posthog_distinct_id: str | None = None
    prior_microdollar_usage: int | None = None
    # The W3C `traceparent` of the request's span when the request was traced, so the ledger
    # writer's span joins the request's trace (extproc/request_trace.py); never a ledger column.
    traceparent: str | None = None
    # Spend holds (extproc/admission): the scopes this request holds in, and how much; the
    # ledger writer ends the hold when this record's row commits.
    held_scopes: list[str] | None = None
    held_microdollars: int = 0

    def stream_usage(self) -> ReportedUsage:
        """The usage the response itself reported (before any generation refetch)."""
        return ReportedUsage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_hit_tokens=self.cache_hit_tokens,
            cache_write_tokens=self.cache_write_tokens,
            cost_microdollars=self.cost_microdollars,
            is_byok=self.is_byok,
        )

    def to_json(self) -> bytes:
        # orjson serialises dataclasses natively, several times faster than asdict().
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> UsageRecord:
        # Keys interned: Python matches keyword arguments by identity first, and orjson's keys
        # are new strings, so 47 of them matched by comparison cost more than interning them
        # (a record's decoding in the writer ~19.5 -> ~12.7 us).
        values = {intern(key): value for key, value in orjson.loads(data).items()}
        prompt = values.pop("prompt", None)
        # Fields this version does not know (written by a newer replica) are ignored; checked
        # for the whole record at once, as a record nearly always has none.
        if not values.keys() <= _RECORD_FIELDS:
            values = {key: value for key, value in values.items() if key in _RECORD_FIELDS}
        return cls(**values, prompt=PromptInfo(**prompt) if prompt else None)


_RECORD_FIELDS = frozenset(f.name for f in fields(UsageRecord)) - {"prompt"}


def response_fields(summary: ResponseSummary, usage: ReportedUsage) -> dict[str, Any]:
    """The record's fields from the response: its summary, and the usage it reported."""
    return {
        "message_id": summary.message_id,
        "model": summary.model,
        "inference_provider": summary.inference_provider,
        "finish_reason": summary.finish_reason,
        "has_error": summary.has_error,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_hit_tokens": usage.cache_hit_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "cost_microdollars": usage.cost_microdollars,
        "is_byok": usage.is_byok,
    }
