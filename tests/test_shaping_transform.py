"""The request transform of behaviour.md 2.14: tracking ids, repair, OpenCode reasoning fix."""

from __future__ import annotations

import base64
import copy
import hashlib
from typing import Any

import pytest

from extproc.shaping.hashing import provider_hash
from extproc.shaping.reasoning import dedupe_opencode_reasoning
from extproc.shaping.transform import TransformResult, transform_request


def expected_hash(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def transform(body: dict[str, Any], **overrides: Any) -> TransformResult:
    args: dict[str, Any] = {
        "user_id": "user-123",
        "task_id": None,
        "provider_id": "openrouter",
        "provider_base_url": "https://openrouter.ai/api/v1",
        "model_lower": "openai/gpt-5",
        "is_opencode": False,
    }
    return transform_request(body, **{**args, **overrides})


# --- hash -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider_id", "base_url", "pepper"),
    [
        ("openrouter", "https://openrouter.ai/api/v1", "henk is a boss"),
        ("custom", "https://llm.example.com/v1", "https://llm.example.com/v1"),
        ("vercel", "https://ai-gateway.vercel.sh/v1", "vercel"),
        ("gigapotato", "https://giga.example", "gigapotato"),
        ("mistral", "", "mistral"),
    ],
)
def test_hash_pepper_rules(provider_id: str, base_url: str, pepper: str) -> None:
    expected = expected_hash("d20250815" + pepper + "user-123")
    assert provider_hash("user-123", provider_id, base_url) == expected


def test_hash_known_values() -> None:
    # Computed with Node's crypto.createHash('sha256').update(...).digest('base64'), as R does.
    assert (
        provider_hash("user-123", "openrouter", "ignored")
        == "i0pwOEZOeJ0BPxAerfhIamscwVAJ5zZ9pf6F54u6XTI="
    )
    assert (
        provider_hash("user-123task-9", "vercel", "ignored")
        == "7y+W9H9tmPXOJBxUj991r+NyPZsHGCFMi/tdfZ/0Eic="
    )
    assert (
        provider_hash("anon:203.0.113.7", "custom", "https://llm.example.com/v1")
        == "hbUGNoI2xqziIOXQliUitcw2Aa6UUQ0obzv/T7UWLsE="
    )
    assert provider_hash("ü€😀", "gigapotato", "") == "V+T0x5opacNzvf6cC7BpWDdt2pWZYNDsxg8e2f6nU2E="


def test_hash_is_padded_standard_base64() -> None:
    value = provider_hash("x", "vercel", "")
    assert len(value) == 44 and value.endswith("=")
    assert base64.b64decode(value, validate=True) == hashlib.sha256(b"d20250815vercelx").digest()


def test_base_url_only_matters_for_custom() -> None:
    assert provider_hash("u", "vercel", "https://a") == provider_hash("u", "vercel", "https://b")
    assert provider_hash("u", "openrouter", "https://a") == provider_hash("u", "openrouter", "https://b")
    assert provider_hash("u", "custom", "https://a") != provider_hash("u", "custom", "https://b")


# --- tracking ids -----------------------------------------------------------------------------


def test_safety_identifier_and_user() -> None:
    body: dict[str, Any] = {"model": "m", "messages": [], "user": "client-value", "safety_identifier": "x"}
    transform(body, provider_id="vercel")
    expected = expected_hash("d20250815vercel" + "user-123")
    assert body["safety_identifier"] == expected
    assert body["user"] == expected


def test_prompt_cache_key_with_task_id_overwrites_client_value() -> None:
    body: dict[str, Any] = {"messages": [], "prompt_cache_key": "client-key"}
    transform(body, task_id="task-9")
    assert body["prompt_cache_key"] == expected_hash("d20250815henk is a boss" + "user-123" + "task-9")


@pytest.mark.parametrize("task_id", [None, ""])
def test_prompt_cache_key_untouched_without_task_id(task_id: str | None) -> None:
    with_key: dict[str, Any] = {"messages": [], "prompt_cache_key": "client-key"}
    transform(with_key, task_id=task_id)
    assert with_key["prompt_cache_key"] == "client-key"
    without: dict[str, Any] = {"messages": []}
    transform(without, task_id=task_id)
    assert "prompt_cache_key" not in without


def test_anonymous_caller_hashes_anon_ip() -> None:
    body: dict[str, Any] = {"messages": []}
    transform(
        body,
        user_id="anon:203.0.113.7",
        task_id="t1",
        provider_id="custom",
        provider_base_url="https://c/v1",
    )
    assert body["safety_identifier"] == expected_hash("d20250815https://c/v1anon:203.0.113.7")
    assert body["user"] == body["safety_identifier"]
    assert body["prompt_cache_key"] == expected_hash("d20250815https://c/v1anon:203.0.113.7t1")


# --- repair and tools lists -------------------------------------------------------------------


def test_repair_runs_and_tool_lists_are_taken_after_it() -> None:
    body: dict[str, Any] = {
        "tools": [{"type": "function", "function": {"name": "read_file", "strict": True}}, {"type": "x"}],
        "messages": [
            {"role": "tool", "tool_call_id": "orphan", "content": "r"},
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "read_file"}},
                    {"id": "a", "type": "function", "function": {"name": "write_file"}},
                ],
            },
        ],
    }
    result = transform(body)
    assert body["messages"][0] == {"role": "user", "content": "hi"}
    assert body["messages"][2] == {
        "role": "tool",
        "tool_call_id": "a",
        "content": "Tool execution was interrupted before completion.",
    }
    assert result == TransformResult(
        tools_available=["function:read_file", "unknown:unknown"], tools_used=["function:read_file"]
    )
    # Provider-specific rules are not part of this step.
    assert body["tools"][0]["function"]["strict"] is True


@pytest.mark.parametrize("body", [{}, {"messages": None, "tools": "x"}, {"messages": [None, 1, "x", []]}])
def test_malformed_bodies_do_not_raise(body: dict[str, Any]) -> None:
    result = transform(body, task_id="t", is_opencode=True, model_lower="anthropic/claude-sonnet-4.6")
    assert result.tools_available == [] and result.tools_used == []
    assert "safety_identifier" in body


# --- OpenCode reasoning fix -------------------------------------------------------------------


def enc(data: str, **extra: Any) -> dict[str, Any]:
    return {"type": "reasoning.encrypted", "data": data, **extra}


def text(value: str, signature: str | None = None, **extra: Any) -> dict[str, Any]:
    detail: dict[str, Any] = {"type": "reasoning.text", "text": value, **extra}
    if signature is not None:
        detail["signature"] = signature
    return detail


def with_details(*details: Any) -> dict[str, Any]:
    assistant = {"role": "assistant", "reasoning_details": list(details)}
    return {"messages": [{"role": "user", "content": "q"}, assistant]}


def details_after(body: dict[str, Any], model: str = "openai/gpt-5", opencode: bool = True) -> list[Any]:
    transform(body, is_opencode=opencode, model_lower=model)
    return body["messages"][1]["reasoning_details"]


def test_opencode_drops_repeated_encrypted_and_text() -> None:
    summary = {"type": "reasoning.summary", "summary": "s"}
    body = with_details(
        enc("E1", index=0), text("t1"), enc("E1", index=1), summary, text("t1"), enc("E2"), summary
    )
    assert details_after(body) == [enc("E1", index=0), text("t1"), summary, enc("E2"), summary]


def test_opencode_anthropic_drops_unsigned_text() -> None:
    body = with_details(
        text("unsigned"), text("signed", "sig"), text("signed", "sig2"), text("empty sig", ""), enc("E")
    )
    assert details_after(body, "anthropic/claude-sonnet-4.6") == [text("signed", "sig"), enc("E")]


def test_opencode_non_anthropic_keeps_unsigned_text() -> None:
    body = with_details(text("unsigned"), text("signed", "sig"))
    assert details_after(body, "google/gemini-2.5-pro") == [text("unsigned"), text("signed", "sig")]


def test_opencode_dedupe_is_per_message() -> None:
    body = {
        "messages": [
            {"role": "assistant", "reasoning_details": [enc("E"), text("t")]},
            {"role": "assistant", "reasoning_details": [enc("E"), text("t"), text("t")]},
        ]
    }
    transform(body, is_opencode=True)
    assert body["messages"][0]["reasoning_details"] == [enc("E"), text("t")]
    assert body["messages"][1]["reasoning_details"] == [enc("E"), text("t")]


def test_opencode_keeps_entries_without_payload() -> None:
    # Only non-empty data/text is compared (as in the reference); such entries are kept as-is.
    odd = [
        enc(""),
        enc(""),
        {"type": "reasoning.encrypted"},
        text(""),
        text(""),
        {"type": "reasoning.text"},
        None,
        3,
    ]
    body = with_details(*copy.deepcopy(odd))
    assert details_after(body, "anthropic/claude-opus-4.6") == odd


def test_not_opencode_leaves_reasoning_alone() -> None:
    body = with_details(enc("E"), enc("E"), text("t"), text("t"))
    after = details_after(body, "anthropic/claude-sonnet-4.6", opencode=False)
    assert after == [enc("E"), enc("E"), text("t"), text("t")]


def test_dedupe_tolerates_malformed_messages() -> None:
    messages = [None, "x", {"role": "assistant", "reasoning_details": None}, {"reasoning_details": {"a": 1}}]
    body: dict[str, Any] = {"messages": copy.deepcopy(messages)}
    dedupe_opencode_reasoning(body, "anthropic/claude-sonnet-4.6")
    assert body["messages"] == messages
    for odd in ({}, {"messages": "x"}):
        dedupe_opencode_reasoning(odd, "anthropic/x")
