"""Provider-specific request logic (behaviour.md 5.2), BYOK request shape (3.3), the Vercel
split (3.5) and the Vercel id mappings (3.6)."""

from __future__ import annotations

import copy
import hashlib
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.catalogue import Catalogue
from extproc.shaping.provider_rules import (
    AWS_CREDENTIALS_ERROR,
    FINE_GRAINED_TOOL_STREAMING,
    GIGA_POTATO_RULE,
    ByokKey,
    apply_provider_specific_logic,
)
from extproc.shaping.vercel import (
    map_model_id_to_vercel,
    map_provider_id_to_vercel,
    preferred_models,
    route_to_vercel,
    vercel_bucket,
    vercel_eligible,
    vercel_percentage,
)
from tests.contract_models import catalogue as contract_catalogue

CATALOGUE = contract_catalogue()
EPHEMERAL = {"type": "ephemeral"}
ATTEMPT_COMPLETION = {"type": "function", "function": {"name": "attempt_completion", "parameters": {}}}
RULE_PART = {"type": "text", "text": GIGA_POTATO_RULE}


def apply(
    provider_id: str,
    model: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    byok: list[ByokKey] | None = None,
    catalogue: Catalogue = CATALOGUE,
) -> tuple[dict[str, Any], dict[str, str]]:
    body = copy.deepcopy(body)
    headers = dict(headers or {})
    apply_provider_specific_logic(provider_id, model, body, headers, catalogue, byok)
    return body, headers


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def is_uuid4(value: str) -> bool:
    return str(uuid.UUID(value, version=4)) == value


# --- 3.6 model and provider ids ------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "vercel_id"),
    [
        # hard overrides
        ("arcee-ai/trinity-large-preview:free", "arcee-ai/trinity-large-preview"),
        ("mistralai/codestral-2508", "mistral/codestral"),
        ("mistralai/devstral-2512", "mistral/devstral-2"),
        # enabled free models served through OpenRouter: internal id, then the prefix rename
        ("moonshotai/kimi-k2.5:free", "moonshotai/kimi-k2.5"),
        ("minimax/minimax-m2.5:free", "minimax/minimax-m2.5"),
        # disabled ones are not resolved
        ("minimax/minimax-m2.1:free", "minimax/minimax-m2.1:free"),
        ("z-ai/glm-5:free", "zai/glm-5:free"),
        ("x-ai/grok-code-fast-1:optimized:free", "xai/grok-code-fast-1:optimized:free"),
        # prefix renames
        ("anthropic/claude-sonnet-4.6", "anthropic/claude-sonnet-4.6"),
        ("google/gemini-3.1-pro-preview", "google/gemini-3.1-pro-preview"),
        ("openai/gpt-5.2", "openai/gpt-5.2"),
        ("minimax/minimax-m2.5", "minimax/minimax-m2.5"),
        ("mistralai/mistral-large-2512", "mistral/mistral-large-2512"),
        ("qwen/qwen3-coder", "alibaba/qwen3-coder"),  # decision 14
        ("x-ai/grok-code-fast-1", "xai/grok-code-fast-1"),
        ("z-ai/glm-5", "zai/glm-5"),
        # untouched
        ("openai/gpt-oss-120b", "openai/gpt-oss-120b"),
        ("meta-llama/llama-4-maverick", "meta-llama/llama-4-maverick"),
        ("moonshotai/kimi-k2.5", "moonshotai/kimi-k2.5"),
        ("giga-potato", "giga-potato"),
        ("corethink:free", "corethink:free"),
        ("kilo/auto", "kilo/auto"),
    ],
)
def test_map_model_id_to_vercel(model: str, vercel_id: str) -> None:
    assert map_model_id_to_vercel(model, CATALOGUE) == vercel_id


def test_map_model_id_resolves_free_model_before_renaming_its_prefix() -> None:
    assert map_model_id_to_vercel("z-ai/glm-5:free", contract_catalogue({"z-ai/glm-5:free": True})) == "zai/glm-5"


@pytest.mark.parametrize(
    ("provider", "vercel_id"),
    [
        ("amazon-bedrock", "bedrock"),
        ("google-ai-studio", "google"),
        ("google-vertex", "vertex"),
        ("z-ai", "zai"),
        ("minimax/fp8", "minimax"),
        ("Google-Vertex/europe", "vertex"),
        ("Anthropic", "anthropic"),
        ("deepinfra", "deepinfra"),
        ("stealth", "stealth"),
    ],
)
def test_map_provider_id_to_vercel(provider: str, vercel_id: str) -> None:
    assert map_provider_id_to_vercel(provider) == vercel_id


# --- 3.5 the split -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["", "user-1", "anon:203.0.113.7", "5f0c3b8e-task", "ünïcödé"])
def test_bucket_is_sha256_prefix_mod_100(seed: str) -> None:
    digest = hashlib.sha256(("vercel_routing_" + seed).encode("utf-8")).digest()
    expected = (digest[0] << 24 | digest[1] << 16 | digest[2] << 8 | digest[3]) % 100
    assert vercel_bucket(seed) == expected
    assert route_to_vercel(seed, 10) is (expected < 10)
    assert route_to_vercel(seed, 90) is (expected < 90)


@pytest.mark.parametrize("percentage", [10, 90])
def test_share_routed_to_vercel(percentage: int) -> None:
    routed = sum(route_to_vercel(f"task-{i}", percentage) for i in range(10_000))
    assert abs(routed / 10_000 * 100 - percentage) <= 1


def test_same_seed_always_same_side() -> None:
    for i in range(200):
        seed = f"user-{i}"
        sides = {route_to_vercel(seed, 10) for _ in range(5)}
        assert len(sides) == 1
        # raising the share never moves a seed that was on Vercel back to OpenRouter
        if route_to_vercel(seed, 10):
            assert route_to_vercel(seed, 90)


@pytest.mark.parametrize(
    ("openrouter", "vercel", "percentage"),
    [(0.0, 0.0, 10), (0.5, 0.0, 10), (0.51, 0.0, 90), (1.0, 0.49, 90), (0.9, 0.5, 10), (0.9, 0.9, 10)],
)
def test_vercel_percentage(openrouter: float, vercel: float, percentage: int) -> None:
    assert vercel_percentage(openrouter, vercel) == percentage


@pytest.mark.parametrize(
    ("model", "body", "eligible"),
    [
        ("z-ai/glm-5", {}, True),
        ("z-ai/glm-5", {"provider": {"data_collection": "allow"}}, True),
        ("z-ai/glm-5", {"provider": "odd"}, True),
        ("z-ai/glm-5", {"provider": {"data_collection": "deny"}}, False),
        ("kilo/auto", {}, True),
        ("kilo/auto-free", {}, True),
        ("minimax/minimax-m2.5:free", {}, True),
        ("minimax/minimax-m2.5", {}, False),  # the free entry is enabled, so only it is listed
        ("moonshotai/kimi-k2.5:free", {}, True),
        ("moonshotai/kimi-k2.5", {}, False),
        ("arcee-ai/trinity-large-preview:free", {}, True),
        ("google/gemini-3.1-pro-preview", {}, True),
        ("x-ai/grok-code-fast-1", {}, True),
        ("openrouter/free", {}, False),
        ("giga-potato-thinking", {}, False),  # listed, but served by its own gateway
        ("corethink:free", {}, False),
        ("anthropic/claude-opus-4.6", {}, False),  # listed, but Anthropic is excluded
        ("anthropic/claude-sonnet-4.6", {}, False),
        ("openai/gpt-5.2", {}, False),  # listed, but OpenAI is excluded
        ("openai/gpt-oss-120b", {}, False),  # not OpenAI's, but not listed either
        ("meta-llama/llama-4-maverick", {}, False),
        ("x-ai/grok-code-fast-1:optimized:free", {}, False),
    ],
)
def test_vercel_eligible(model: str, body: dict[str, Any], eligible: bool) -> None:
    assert vercel_eligible(model, body, CATALOGUE) is eligible


@pytest.mark.parametrize(
    ("model", "body", "eligible"),
    [
        ("meta-llama/llama-4-maverick", {}, True),
        ("anthropic/claude-sonnet-4.6", {}, True),
        ("openai/gpt-5.2", {}, True),
        ("x-ai/grok-code-fast-1:optimized:free", {}, True),  # disabled, so its gateway does not count
        ("meta-llama/llama-4-maverick", {"provider": {"data_collection": "deny"}}, False),
        ("openrouter/auto", {}, False),
        ("giga-potato", {}, False),
        ("corethink:free", {}, False),
    ],
)
def test_universal_routing_skips_only_the_later_exclusions(model: str, body: dict[str, Any], eligible: bool) -> None:
    assert vercel_eligible(model, body, CATALOGUE, universal_routing=True) is eligible


def test_preferred_models_follow_free_entries() -> None:
    default = preferred_models(CATALOGUE)
    assert {"minimax/minimax-m2.5:free", "moonshotai/kimi-k2.5:free", "giga-potato-thinking"} <= default
    assert not {"minimax/minimax-m2.5", "moonshotai/kimi-k2.5"} & default

    disabled = contract_catalogue(
        {"minimax/minimax-m2.5:free": False, "moonshotai/kimi-k2.5:free": False, "giga-potato-thinking": False}
    )
    preferred = preferred_models(disabled)
    assert {"minimax/minimax-m2.5", "moonshotai/kimi-k2.5"} <= preferred
    assert not {"minimax/minimax-m2.5:free", "moonshotai/kimi-k2.5:free", "giga-potato-thinking"} & preferred
    assert vercel_eligible("minimax/minimax-m2.5", {}, disabled)
    assert not vercel_eligible("minimax/minimax-m2.5:free", {}, disabled)
    assert len(default) == len(preferred) + 1 == 13


# --- 5.2 step 1: Kilo free models ----------------------------------------------------------


def test_free_model_gets_internal_id_and_only_its_providers() -> None:
    body, headers = apply(
        "corethink",
        "corethink:free",
        {"model": "corethink:free", "provider": {"order": ["x"], "zdr": False}, "messages": []},
    )
    assert body == {"model": "corethink", "provider": {"only": ["corethink"]}, "messages": []}
    assert headers == {}


def test_free_model_without_inference_providers_keeps_provider() -> None:
    body, _ = apply(
        "openrouter",
        "minimax/minimax-m2.5:free",
        {"model": "minimax/minimax-m2.5:free", "provider": {"zdr": False}, "temperature": 1},
    )
    # step 4 then adds the vendor order to the client's object
    assert body == {"model": "minimax/minimax-m2.5", "provider": {"zdr": False, "order": ["minimax"]}, "temperature": 1}


def test_disabled_free_entry_still_maps() -> None:
    body, _ = apply("openrouter", "minimax/minimax-m2.1:free", {"model": "minimax/minimax-m2.1:free"})
    assert body == {"model": "minimax/minimax-m2.1", "provider": {"order": ["minimax"]}}


# --- step 2: Anthropic ---------------------------------------------------------------------


def test_anthropic_beta_headers_appended() -> None:
    _, headers = apply(
        "openrouter",
        "anthropic/claude-sonnet-4.6",
        {"messages": []},
        headers={"anthropic-beta": "context-1m-2025-08-07", "x-other": "1"},
    )
    assert headers == {
        "anthropic-beta": f"context-1m-2025-08-07,{FINE_GRAINED_TOOL_STREAMING}",
        "x-anthropic-beta": FINE_GRAINED_TOOL_STREAMING,
        "x-other": "1",
    }


def test_anthropic_cache_breakpoints_and_tool_call_ids() -> None:
    body, _ = apply(
        "openrouter",
        "anthropic/claude-opus-4.6",
        {
            "messages": [
                {"role": "system", "content": "You are Kilo."},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "functions.read_file:0", "type": "function", "function": {"name": "read_file"}},
                        {"id": "toolu_01", "type": "function", "function": {"name": "list"}},
                    ],
                },
                {"role": "tool", "tool_call_id": "functions.read_file:0", "content": "x"},
                {"role": "tool", "tool_call_id": "toolu_01", "content": "y"},
                {"role": "assistant", "content": "done"},
            ],
        },
    )
    assert body == {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "You are Kilo.", "cache_control": EPHEMERAL}]},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": sha("functions.read_file:0"), "type": "function", "function": {"name": "read_file"}},
                    {"id": "toolu_01", "type": "function", "function": {"name": "list"}},
                ],
            },
            {"role": "tool", "tool_call_id": sha("functions.read_file:0"), "content": "x"},
            {"role": "tool", "tool_call_id": "toolu_01", "content": [{"type": "text", "text": "y", "cache_control": EPHEMERAL}]},
            {"role": "assistant", "content": "done"},
        ],
        "provider": {"order": ["amazon-bedrock", "anthropic"]},
    }


def test_anthropic_cache_breakpoint_on_last_array_part() -> None:
    body, _ = apply(
        "openrouter",
        "anthropic/claude-sonnet-4.6",
        {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "s1"}, {"type": "text", "text": "s2"}]},
                {"role": "user", "content": [{"type": "text", "text": "u1"}, {"type": "image_url", "image_url": {"url": "u"}}]},
            ]
        },
    )
    assert body["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "s1"}, {"type": "text", "text": "s2", "cache_control": EPHEMERAL}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "u1"}, {"type": "image_url", "image_url": {"url": "u"}, "cache_control": EPHEMERAL}],
        },
    ]


@pytest.mark.parametrize(
    "messages",
    [
        # the client manages caching itself
        [
            {"role": "system", "content": [{"type": "text", "text": "s", "cache_control": EPHEMERAL}]},
            {"role": "user", "content": "u"},
        ],
        [{"role": "system", "content": "s", "cache_control": EPHEMERAL}, {"role": "user", "content": "u"}],
        # no system prompt: too small to benefit
        [{"role": "user", "content": "u"}],
    ],
)
def test_anthropic_cache_breakpoints_left_alone(messages: list[dict[str, Any]]) -> None:
    body, _ = apply("openrouter", "anthropic/claude-sonnet-4.6", {"messages": messages})
    assert body["messages"] == messages


# --- step 3: tool_choice -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "reasoning", "required"),
    [
        ("x-ai/grok-4", None, True),
        ("openai/gpt-5.2", None, True),
        ("openai/gpt-oss-120b", None, False),
        ("google/gemini-2.5-pro", None, True),
        ("google/gemma-3-27b-it", None, False),
        ("anthropic/claude-haiku-4.5", None, True),
        ("anthropic/claude-haiku-4.5", {"enabled": False}, True),
        ("anthropic/claude-haiku-4.5", {"effort": "none"}, True),
        ("anthropic/claude-haiku-4.5", {"effort": None, "max_tokens": 0}, True),
        ("anthropic/claude-haiku-4.5", "high", True),
        ("anthropic/claude-haiku-4.5", {"enabled": True}, False),
        ("anthropic/claude-haiku-4.5", {"effort": "low"}, False),
        ("anthropic/claude-haiku-4.5", {"max_tokens": 1024}, False),
        ("anthropic/claude-sonnet-4.6", None, False),
        ("z-ai/glm-5", None, False),
    ],
)
def test_tool_choice_required(model: str, reasoning: Any, required: bool) -> None:
    request: dict[str, Any] = {"tools": [ATTEMPT_COMPLETION]}
    if reasoning is not None:
        request["reasoning"] = reasoning
    body, _ = apply("openrouter", model, request)
    assert ("tool_choice" in body) is required
    if required:
        assert body["tool_choice"] == "required"


def test_tool_choice_untouched_without_attempt_completion() -> None:
    tools = [{"type": "function", "function": {"name": "read_file"}}, {"type": "custom", "custom": {"name": "attempt_completion"}}]
    body, _ = apply("openrouter", "openai/gpt-5.2", {"tools": tools, "tool_choice": "auto"})
    assert body == {"tools": tools, "tool_choice": "auto"}


# --- step 4: preferred provider order ------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "order"),
    [
        ("anthropic/claude-sonnet-4.6", ["amazon-bedrock", "anthropic"]),
        ("minimax/minimax-m2.5", ["minimax"]),
        ("mistralai/mistral-large-2512", ["mistral"]),
        ("moonshotai/kimi-k2.5", ["moonshotai"]),
        ("z-ai/glm-5", ["z-ai"]),
    ],
)
def test_preferred_provider_order(model: str, order: list[str]) -> None:
    assert apply("openrouter", model, {})[0]["provider"] == {"order": order}
    assert apply("openrouter", model, {"provider": None})[0]["provider"] == {"order": order}
    assert apply("openrouter", model, {"provider": {"zdr": True}})[0]["provider"] == {"zdr": True, "order": order}
    assert apply("openrouter", model, {"provider": {"order": None}})[0]["provider"] == {"order": order}
    # the client's own order wins, even an empty one
    assert apply("openrouter", model, {"provider": {"order": ["x"]}})[0]["provider"] == {"order": ["x"]}
    assert apply("openrouter", model, {"provider": {"order": []}})[0]["provider"] == {"order": []}


@pytest.mark.parametrize("model", ["x-ai/grok-4", "google/gemini-2.5-pro", "openai/gpt-5.2", "qwen/qwen3-coder", "meta-llama/llama-4"])
def test_no_preferred_provider_order(model: str) -> None:
    assert "provider" not in apply("openrouter", model, {})[0]


# --- step 5: xAI ---------------------------------------------------------------------------


def test_xai_headers_use_prompt_cache_key() -> None:
    request = {"model": "x-ai/grok-4", "prompt_cache_key": "cache-key"}
    body, headers = apply("openrouter", "x-ai/grok-4", request, headers={"anthropic-beta": "b"})
    assert body == request
    assert set(headers) == {"anthropic-beta", "x-grok-conv-id", "x-grok-req-id"}
    assert headers["x-grok-conv-id"] == "cache-key"
    assert is_uuid4(headers["x-grok-req-id"])


def test_xai_headers_random_without_prompt_cache_key() -> None:
    _, first = apply("openrouter", "x-ai/grok-code-fast-1", {"prompt_cache_key": ""})
    _, second = apply("openrouter", "x-ai/grok-code-fast-1", {})
    for headers in (first, second):
        assert set(headers) == {"x-grok-conv-id", "x-grok-req-id"}
        assert is_uuid4(headers["x-grok-conv-id"]) and is_uuid4(headers["x-grok-req-id"])
        assert headers["x-grok-conv-id"] != headers["x-grok-req-id"]
    assert first["x-grok-conv-id"] != second["x-grok-conv-id"]


# --- step 6: Gemini's read_file tool on Vercel ---------------------------------------------


def read_file_tool(line_ranges: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": "read_file",
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {
                    "files": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"path": {"type": "string"}, "line_ranges": line_ranges}},
                    }
                },
            },
        },
    }


def test_gemini_line_ranges_nullable_on_vercel() -> None:
    items = {"type": "array", "items": {"type": "integer"}}
    request = {
        "model": "google/gemini-3.1-pro-preview",
        "tools": [{"type": "function", "function": {"name": "write_file"}}, read_file_tool({"type": ["array", "null"], "description": "d", "items": items})],
    }
    body, headers = apply("vercel", "google/gemini-3.1-pro-preview", request)
    assert body == {
        "model": "google/gemini-3.1-pro-preview",
        "tools": [
            {"type": "function", "function": {"name": "write_file"}},
            read_file_tool({"description": "d", "anyOf": [{"type": "null"}, {"type": "array", "items": items}]}),
        ],
        "providerOptions": {"gateway": {}},
    }
    assert headers == {}


@pytest.mark.parametrize(
    ("provider_id", "model", "line_ranges"),
    [
        ("openrouter", "google/gemini-3.1-pro-preview", {"type": "array", "items": {"type": "integer"}}),
        ("vercel", "z-ai/glm-5", {"type": "array", "items": {"type": "integer"}}),
        ("vercel", "google/gemini-3.1-pro-preview", {"type": "array"}),
        ("vercel", "google/gemini-3.1-pro-preview", {"anyOf": [{"type": "null"}]}),
    ],
)
def test_gemini_line_ranges_left_alone(provider_id: str, model: str, line_ranges: dict[str, Any]) -> None:
    tools = [read_file_tool(line_ranges)]
    assert apply(provider_id, model, {"tools": tools})[0]["tools"] == tools


# --- steps 7 and 8: Moonshot, Qwen ---------------------------------------------------------


def test_moonshot_drops_temperature() -> None:
    body, _ = apply("openrouter", "moonshotai/kimi-k2.5", {"temperature": 0.7, "top_p": 0.9})
    assert body == {"top_p": 0.9, "provider": {"order": ["moonshotai"]}}


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        ({"max_tokens": 65_536, "max_completion_tokens": 40_000}, {"max_tokens": 32_768, "max_completion_tokens": 32_768}),
        ({"max_tokens": 1000}, {"max_tokens": 1000}),
        ({"max_completion_tokens": 32_769}, {"max_completion_tokens": 32_768}),
        ({"max_tokens": 0, "max_completion_tokens": None}, {"max_tokens": 0, "max_completion_tokens": None}),
        ({"max_tokens": "65536"}, {"max_tokens": "65536"}),
    ],
)
def test_qwen_output_tokens_clamped(request_fields: dict[str, Any], expected: dict[str, Any]) -> None:
    assert apply("openrouter", "qwen/qwen3-coder", request_fields)[0] == expected


# --- step 9: Giga Potato -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
            [{"role": "system", "content": [{"type": "text", "text": "Be brief."}, RULE_PART]}, {"role": "user", "content": "hi"}],
        ),
        (
            [{"role": "user", "content": "hi"}, {"role": "system", "content": [{"type": "text", "text": "a"}]}],
            [{"role": "user", "content": "hi"}, {"role": "system", "content": [{"type": "text", "text": "a"}, RULE_PART]}],
        ),
        (
            [{"role": "system", "content": ""}],
            [{"role": "system", "content": [RULE_PART]}],
        ),
        (
            [{"role": "user", "content": "hi"}],
            [{"role": "system", "content": [RULE_PART]}, {"role": "user", "content": "hi"}],
        ),
    ],
)
def test_giga_potato_system_prompt(messages: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    body, headers = apply("gigapotato", "giga-potato", {"model": "giga-potato", "messages": messages})
    assert body == {
        "model": "ep-20260109111813-hztxv",
        "messages": expected,
        "provider": {"only": ["stealth"]},
        "thinking": {"type": "disabled"},
    }
    assert headers == {}


def test_giga_potato_thinking() -> None:
    body, _ = apply("gigapotato", "giga-potato-thinking", {"messages": [], "thinking": {"type": "disabled", "budget": 1}})
    assert body == {
        "messages": [{"role": "system", "content": [RULE_PART]}],
        "model": "ep-20260109111813-hztxv",
        "provider": {"only": ["stealth"]},
        "thinking": {"type": "enabled"},
    }


# --- step 10: CoreThink --------------------------------------------------------------------


def test_corethink_deletions() -> None:
    body, _ = apply(
        "corethink",
        "corethink:free",
        {
            "model": "corethink:free",
            "transforms": ["middle-out"],
            "prompt_cache_key": "k",
            "safety_identifier": "s",
            "user": "s",
            "description": "d",
            "usage": {"include": True},
            "reasoning": {"effort": "high"},
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "a", "reasoning": "r", "reasoning_details": [{"type": "reasoning.text"}]},
            ],
        },
    )
    assert body == {
        "model": "corethink",
        "user": "s",
        "reasoning": {"effort": "high"},
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}],
        "provider": {"only": ["corethink"]},
    }


# --- step 11: Mistral ----------------------------------------------------------------------


MISTRAL_MESSAGES = [
    {"role": "user", "content": "hi"},
    {
        "role": "assistant",
        "content": "",
        "reasoning_details": [{"type": "reasoning.text", "text": "t"}],
        "tool_calls": [
            {"id": "call_abcdefghijkl", "type": "function", "function": {"name": "read_file"}},
            {"id": "abc123XYZ", "type": "function", "function": {"name": "attempt_completion"}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_abcdefghijkl", "content": "x"},
    {"role": "tool", "tool_call_id": "abc123XYZ", "content": "y"},
]
MISTRAL_TOOLS = [ATTEMPT_COMPLETION, {"type": "function", "function": {"name": "read_file", "strict": True}}]


def test_mistral_direct() -> None:
    body, headers = apply(
        "mistral",
        "mistralai/devstral-2512",
        {
            "model": "mistralai/devstral-2512",
            "messages": MISTRAL_MESSAGES,
            "tools": MISTRAL_TOOLS,
            "reasoning": {"effort": "high"},
            "reasoning_effort": "high",
            "transforms": [],
            "safety_identifier": "s",
            "prompt_cache_key": "cache-key",
            "user": "s",
            "provider": {"zdr": True},
            "stream": True,
        },
    )
    hashed = sha("call_abcdefghijkl")[:9]
    assert body == {
        "model": "mistralai/devstral-2512",
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": hashed, "type": "function", "function": {"name": "read_file"}},
                    {"id": "abc123XYZ", "type": "function", "function": {"name": "attempt_completion"}},
                ],
            },
            {"role": "tool", "tool_call_id": hashed, "content": "x"},
            {"role": "tool", "tool_call_id": "abc123XYZ", "content": "y"},
        ],
        "tools": [ATTEMPT_COMPLETION, {"type": "function", "function": {"name": "read_file"}}],
        "stream": True,
        "temperature": 0.2,
        "tool_choice": "required",
    }
    assert headers == {"x-affinity": "cache-key"}


def test_mistral_model_elsewhere() -> None:
    request = {
        "messages": MISTRAL_MESSAGES,
        "tools": MISTRAL_TOOLS,
        "temperature": None,
        "prompt_cache_key": "cache-key",
        "reasoning": {"effort": "high"},
    }
    body, headers = apply("openrouter", "mistralai/mistral-large-2512", request)
    hashed = sha("call_abcdefghijkl")[:9]
    assert body == {
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": "",
                "reasoning_details": [{"type": "reasoning.text", "text": "t"}],
                "tool_calls": [
                    {"id": hashed, "type": "function", "function": {"name": "read_file"}},
                    {"id": "abc123XYZ", "type": "function", "function": {"name": "attempt_completion"}},
                ],
            },
            {"role": "tool", "tool_call_id": hashed, "content": "x"},
            {"role": "tool", "tool_call_id": "abc123XYZ", "content": "y"},
        ],
        "tools": [ATTEMPT_COMPLETION, {"type": "function", "function": {"name": "read_file"}}],
        "temperature": None,  # only an absent temperature gets the default
        "prompt_cache_key": "cache-key",
        "reasoning": {"effort": "high"},
        "provider": {"order": ["mistral"]},
        "tool_choice": "required",
    }
    assert headers == {}


def test_mistral_direct_without_cache_key_or_tools() -> None:
    body, headers = apply("mistral", "mistralai/codestral-2508", {"temperature": 0.5, "messages": []})
    assert body == {"temperature": 0.5, "messages": []}
    assert headers == {}


# --- step 12: Vercel -----------------------------------------------------------------------


def test_vercel_maps_provider_preferences() -> None:
    body, headers = apply(
        "vercel",
        "z-ai/glm-5",
        {
            "model": "z-ai/glm-5",
            "provider": {
                "only": ["amazon-bedrock", "Google-Vertex/europe"],
                "order": ["z-ai", "minimax/fp8"],
                "zdr": True,
                "data_collection": "allow",
            },
            "providerOptions": {"gateway": {"only": ["client"]}},
        },
    )
    assert body == {
        "model": "zai/glm-5",
        "providerOptions": {
            "gateway": {"only": ["bedrock", "vertex"], "order": ["zai", "minimax"], "zeroDataRetention": True}
        },
    }
    assert headers == {}


def test_vercel_always_sets_gateway_options() -> None:
    # decision 13: set even without a provider object; absent fields stay absent
    body, _ = apply("vercel", "google/gemini-3.1-pro-preview", {"model": "google/gemini-3.1-pro-preview"})
    assert body == {"model": "google/gemini-3.1-pro-preview", "providerOptions": {"gateway": {}}}
    body, _ = apply("vercel", "google/gemini-3.1-pro-preview", {"provider": {"zdr": None, "only": None}})
    assert body == {"model": "google/gemini-3.1-pro-preview", "providerOptions": {"gateway": {"zeroDataRetention": None}}}


def test_vercel_free_model_and_verbosity() -> None:
    body, headers = apply(
        "vercel",
        "moonshotai/kimi-k2.5:free",
        {"model": "moonshotai/kimi-k2.5:free", "temperature": 0.6, "verbosity": "high"},
    )
    assert body == {
        "model": "moonshotai/kimi-k2.5",
        "verbosity": "high",
        "providerOptions": {"gateway": {"order": ["moonshotai"]}, "anthropic": {"effort": "high"}},
    }
    assert headers == {}


def test_vercel_empty_verbosity_ignored() -> None:
    body, _ = apply("vercel", "x-ai/grok-code-fast-1", {"verbosity": ""})
    assert body["providerOptions"] == {"gateway": {}}


BEDROCK = {"accessKeyId": "AKIA", "secretAccessKey": "secret", "region": "us-east-1"}


def test_vercel_byok() -> None:
    keys = [
        ByokKey("anthropic", "sk-ant", None),
        ByokKey("codestral", "codestral-key", None),
        ByokKey("zai", "zai-key", None),
        ByokKey("bedrock", None, {**BEDROCK, "sessionNote": "ignored"}),
        ByokKey("mistral", "mistral-key", None),
    ]
    body, headers = apply(
        "vercel",
        "anthropic/claude-sonnet-4.6",
        {"model": "anthropic/claude-sonnet-4.6", "messages": [{"role": "user", "content": "hi"}], "verbosity": "low"},
        byok=keys,
    )
    assert body == {
        "model": "anthropic/claude-sonnet-4.6",
        "messages": [{"role": "user", "content": "hi"}],
        "verbosity": "low",
        "providerOptions": {
            "gateway": {
                "only": ["anthropic", "mistral", "zai", "bedrock"],
                "byok": {
                    "anthropic": [{"apiKey": "sk-ant"}],
                    "mistral": [{"apiKey": "codestral-key"}, {"apiKey": "mistral-key"}],
                    "zai": [{"apiKey": "zai-key", "baseURL": "https://api.z.ai/api/coding/paas/v4"}, {"apiKey": "zai-key"}],
                    "bedrock": [BEDROCK],
                },
            },
            "anthropic": {"effort": "low"},
        },
    }
    assert headers == {"anthropic-beta": FINE_GRAINED_TOOL_STREAMING, "x-anthropic-beta": FINE_GRAINED_TOOL_STREAMING}


def test_vercel_byok_codestral_model() -> None:
    body, _ = apply(
        "vercel",
        "mistralai/codestral-2508",
        {"model": "mistralai/codestral-2508", "provider": {"only": ["mistral"]}},
        byok=[ByokKey("codestral", "k", None)],
    )
    assert body == {
        "model": "mistral/codestral",
        "temperature": 0.2,
        "providerOptions": {"gateway": {"only": ["mistral"], "byok": {"mistral": [{"apiKey": "k"}]}}},
    }


@pytest.mark.parametrize("bedrock", [None, {}, {"accessKeyId": "AKIA", "secretAccessKey": "s"}, {**BEDROCK, "region": 1}])
def test_bedrock_key_needs_credentials(bedrock: dict[str, Any] | None) -> None:
    with pytest.raises(ValueError, match=AWS_CREDENTIALS_ERROR):
        ByokKey("bedrock", None, bedrock)


# --- odd client bodies ---------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
FIELDS = st.sampled_from(
    ["messages", "tools", "provider", "reasoning", "prompt_cache_key", "verbosity", "max_tokens", "temperature", "tool_choice"]
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"])},
    optional={"content": JSON, "tool_calls": JSON, "tool_call_id": JSON, "cache_control": JSON, "reasoning_details": JSON},
)
BODY = st.dictionaries(FIELDS, JSON, max_size=6) | st.fixed_dictionaries(
    {"messages": st.lists(MESSAGE | JSON, max_size=4)}, optional={"tools": JSON, "provider": JSON}
)
CASES = st.sampled_from(
    [
        ("openrouter", "anthropic/claude-haiku-4.5"),
        ("mistral", "mistralai/devstral-2512"),
        ("vercel", "google/gemini-3.1-pro-preview"),
        ("vercel", "z-ai/glm-5"),
        ("gigapotato", "giga-potato-thinking"),
        ("corethink", "corethink:free"),
        ("openrouter", "qwen/qwen3-coder"),
        ("openrouter", "x-ai/grok-4"),
    ]
)


@settings(max_examples=150, deadline=None)
@given(case=CASES, body=BODY)
def test_odd_bodies_never_raise(case: tuple[str, str], body: dict[str, Any]) -> None:
    provider_id, model = case
    apply_provider_specific_logic(provider_id, model, body, {}, CATALOGUE, None)
    assert vercel_eligible(model, body, CATALOGUE) in (True, False)
