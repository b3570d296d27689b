"""Routing and request shaping through real Envoy (behaviour.md 2.14, 2.15, 3 and 5).

Every test sends a chat request to Envoy and asserts what the mock upstream received: the path
(each provider lives under `/<provider id><real base path>` on the mock), the headers (the
provider's own key, `HTTP-Referer`, `X-Title`, `Content-Type`, the extra headers of 5.2, and
nothing the client sent) and the body, exactly wherever the contract is exact.

Each test has its own users and client addresses (the custom-LLM refusals and the metrics test
share one organisation, each with its own custom LLM row). Users are created with the functions
`llm-gateway user create` runs, in-process, to save a process start per test; organisations and
BYOK keys go through the operator CLI. The BYOK tests run on a stack of their own: the
newest `models_by_provider` map is cached for 300 s in each ext_proc process as one entry (the
whole map, for every model), so once any earlier test of the session made an authenticated
request, a row inserted into the shared stack would stay invisible for minutes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from extproc.admin.queries import create_user
from extproc.auth.tokens import mint_token
from tests.bodies import GATEWAY_REPLIES, Reply
from tests.conftest import SESSION_STACK, Gateway, fresh_ip, running_stack

MESSAGES = [{"role": "user", "content": "hi"}]
SYSTEM_AND_USER = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}]
STREAM_OPTIONS = {"include_usage": True}

# What the gateway itself sends upstream (2.15); anything else would be a leak.
GATEWAY_HEADERS = {"host", "authorization", "http-referer", "x-title", "content-type", "content-length"}
# Sent with every request: none of them may reach a provider (contract 10).
CLIENT_HEADERS = {
    "cookie": "session=client-cookie",
    "x-custom-client-header": "leak-me",
    "user-agent": "test-client/1.0",
    "x-kilocode-editorname": "vscode",
}
FINE_GRAINED = "fine-grained-tool-streaming-2025-05-14"
GIGA_POTATO_RULE = (
    "You are an AI assistant in Kilo. Your name is Giga Potato. Do not reveal your model size, architecture, "
    "or any information that could hint at your origin or capabilities."
)
GIGA_POTATO_INTERNAL_ID = "ep-20260109111813-hztxv"
INTERRUPTED = "Tool execution was interrupted before completion."


# --- helpers ----------------------------------------------------------------------------------


def chat(
    gateway: Gateway,
    model: str,
    *,
    token: str | None = None,
    ip: str | None = None,
    task_id: str | None = None,
    org: str | None = None,
    headers: dict[str, str] | None = None,
    messages: list[dict[str, Any]] | None = None,
    **body: Any,
) -> httpx.Response:
    all_headers = {"x-forwarded-for": ip or fresh_ip(), **CLIENT_HEADERS, **(headers or {})}
    if token is not None:
        all_headers["authorization"] = f"Bearer {token}"
    if task_id is not None:
        all_headers["x-kilocode-taskid"] = task_id
    if org is not None:
        all_headers["x-kilocode-organizationid"] = org
    payload = {"model": model, "messages": MESSAGES if messages is None else messages, **body}
    return httpx.post(gateway.chat_url, json=payload, headers=all_headers, timeout=30)


def sent(gateway: Gateway, response: httpx.Response) -> dict[str, Any]:
    """The one request the mock received for `response` (records cleared before each)."""
    assert response.status_code == 200, response.text
    [received] = gateway.upstream_requests()
    gateway.clear_upstream_requests()
    assert received["method"] == "POST"
    return received


def assert_gateway_headers(received: dict[str, Any], key: str, extra: frozenset[str] = frozenset()) -> None:
    """The provider's key, the identification headers, and nothing from the client."""
    headers = received["headers"]
    assert headers["authorization"] == f"Bearer {key}"
    assert headers["http-referer"] == "https://kilocode.ai"
    assert headers["x-title"] == "Kilo Code"
    assert headers["content-type"] == "application/json"
    assert set(headers) == GATEWAY_HEADERS | extra, set(headers) ^ (GATEWAY_HEADERS | extra)
    text = orjson.dumps(received["headers"]).decode()
    assert "client-cookie" not in text and "leak-me" not in text and "test-client" not in text


def refused(gateway: Gateway, response: httpx.Response, error: Reply) -> None:
    assert response.status_code == error.status, response.text
    assert response.json() == error.body
    assert gateway.upstream_requests() == []


def h(payload: str, provider_id: str, base_url: str = "") -> str:
    """Contract 2.14: H = base64(SHA-256("d20250815" + pepper + payload)); the pepper is the base
    URL for `custom`, "henk is a boss" for `openrouter`, otherwise the provider id."""
    pepper = {"custom": base_url, "openrouter": "henk is a boss"}.get(provider_id, provider_id)
    return base64.b64encode(hashlib.sha256(("d20250815" + pepper + payload).encode()).digest()).decode()


def _vercel_bucket(seed: str) -> int:
    """Contract 3.5: the first 4 bytes (big-endian) of SHA-256("vercel_routing_" + seed), mod 100."""
    return int.from_bytes(hashlib.sha256(("vercel_routing_" + seed).encode()).digest()[:4], "big") % 100


def task_id(*, vercel: bool) -> str:
    """A fresh task id on the given side of the A/B split (3.5). OpenRouter's side is taken from
    buckets >= 90, so it stays there even while the 90 % failover percentage is in force."""
    while True:
        candidate = f"task-{uuid.uuid4().hex}"
        bucket = _vercel_bucket(candidate)
        if (bucket < 10) if vercel else (bucket >= 90):
            return candidate



def new_user(gateway: Gateway, credits_usd: int = 10) -> dict[str, Any]:
    """What `llm-gateway user create` does (the same functions), without a process per user."""

    async def create() -> dict[str, Any]:
        connection = await asyncpg.connect(gateway.database_url)
        try:
            email = f"routing-{uuid.uuid4().hex[:12]}@example.com"
            return await create_user(connection, email, credits_microdollars=credits_usd * 1_000_000)
        finally:
            await connection.close()

    user = asyncio.run(create())
    secret = (gateway.data_dir / "nextauth_secret").read_text().strip()
    return {**user, "token": mint_token(user["id"], secret)}


def org_with_member(gateway: Gateway, user: dict[str, Any], credits: str = "0") -> str:
    org_id = gateway.cli("org", "create", "--name", f"org-{uuid.uuid4().hex[:6]}", "--credits-usd", credits)["id"]
    gateway.cli("org", "add-member", "--org", org_id, "--user", user["id"])
    return org_id


def add_custom_llm(
    gateway: Gateway,
    org_id: str,
    *,
    base_url: str,
    kind: str = "openai-compatible",
    extra_body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    row = {
        "public_id": f"kilo-internal/test-{uuid.uuid4().hex[:10]}",
        "internal_id": f"internal-model-{uuid.uuid4().hex[:6]}",
        "api_key": f"custom-key-{uuid.uuid4().hex[:8]}",
        "base_url": base_url,
    }
    gateway.sql(
        "INSERT INTO custom_llm (public_id, display_name, context_length, max_completion_tokens, internal_id,"
        " provider, base_url, api_key, organization_ids, extra_body)"
        " VALUES ($1, 'Test LLM', 128000, 8192, $2, $3, $4, $5, $6::jsonb, $7::jsonb)",
        row["public_id"],
        row["internal_id"],
        kind,
        base_url,
        row["api_key"],
        orjson.dumps([org_id]).decode(),
        None if extra_body is None else orjson.dumps(extra_body).decode(),
    )
    return row


class Metrics:
    """One scrape of the ext_proc's metrics."""

    def __init__(self, gateway: Gateway) -> None:
        self.samples = [
            sample for family in text_string_to_metric_families(gateway.metrics()) for sample in family.samples
        ]

    def get(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        return sum(
            sample.value
            for sample in self.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def routed(self, provider: str) -> float:
        return self.get("llm_gateway_routed_requests_total", provider=provider)

    def ab(self, **labels: str) -> float:
        return self.get("llm_gateway_vercel_ab_decisions_total", **labels)


@pytest.fixture
def user(gateway: Gateway) -> dict[str, Any]:
    return new_user(gateway, credits_usd=100)


@pytest.fixture(scope="module")
def custom_org(gateway: Gateway) -> tuple[dict[str, Any], str]:
    """A member with credits and their organisation, for custom LLM rows of the tests."""
    member = new_user(gateway)
    return member, org_with_member(gateway, member, credits="10")


def mock_port(gateway: Gateway) -> int:
    port = urlsplit(gateway.mock_url).port
    assert port is not None
    return port


# --- 1. one request per provider of the route table (3.1, 3.2, 2.15) ----------------------------


def test_openrouter_serves_a_paid_model(upstream: Gateway, user: dict) -> None:
    task = task_id(vercel=False)
    response = chat(
        upstream,
        "openai/gpt-4o-mini",
        token=user["token"],
        task_id=task,
        prompt_cache_key="client-cache-key",
        user="client-user",
        safety_identifier="client-safety-id",
    )
    received = sent(upstream, response)
    assert received["path"] == "/openrouter/api/v1/chat/completions"
    assert_gateway_headers(received, "mock-openrouter-key")
    assert user["token"] not in orjson.dumps(received).decode()
    safety = h(user["id"], "openrouter")
    assert received["body"] == {
        "model": "openai/gpt-4o-mini",
        "messages": MESSAGES,
        "stream_options": STREAM_OPTIONS,
        "prompt_cache_key": h(user["id"] + task, "openrouter"),
        "safety_identifier": safety,
        "user": safety,
    }


def test_vercel_ab_split_by_task_id(upstream: Gateway, user: dict) -> None:
    model = "google/gemini-3.1-pro-preview"
    to_vercel, to_openrouter = task_id(vercel=True), task_id(vercel=False)
    before = Metrics(upstream)
    received = sent(
        upstream,
        chat(
            upstream,
            model,
            token=user["token"],
            task_id=to_vercel,
            provider={"sort": "price"},
            providerOptions={"gateway": {"only": ["client-choice"]}},
        ),
    )
    assert received["path"] == "/vercel/v1/chat/completions"
    assert_gateway_headers(received, "mock-vercel-key")
    safety = h(user["id"], "vercel")
    assert received["body"] == {
        "model": "google/gemini-3.1-pro-preview",
        "messages": MESSAGES,
        "stream_options": STREAM_OPTIONS,
        "prompt_cache_key": h(user["id"] + to_vercel, "vercel"),
        "safety_identifier": safety,
        "user": safety,
        # Decision 13: always set, replacing the client's; OpenRouter's `provider` is removed.
        "providerOptions": {"gateway": {}},
    }
    assert Metrics(upstream).ab(routed_to="vercel") == before.ab(routed_to="vercel") + 1

    received = sent(upstream, chat(upstream, model, token=user["token"], task_id=to_openrouter))
    assert received["path"] == "/openrouter/api/v1/chat/completions"
    assert_gateway_headers(received, "mock-openrouter-key")
    assert received["body"]["model"] == model
    assert "providerOptions" not in received["body"]

    # The task id is the seed: the same task lands on the same side whoever sends it.
    other = new_user(upstream)
    for _ in range(2):
        for token in (user["token"], other["token"]):
            assert sent(upstream, chat(upstream, model, token=token, task_id=to_vercel))["path"] == "/vercel/v1/chat/completions"
            assert sent(upstream, chat(upstream, model, token=token, task_id=to_openrouter))["path"] == (
                "/openrouter/api/v1/chat/completions"
            )

    # A bucket between 10 and 90 follows the percentage in force, which depends on the whole
    # session's error rates here; tests/test_error_rates.py forces the rates and checks both.


def test_data_collection_deny_is_never_routed_to_vercel(upstream: Gateway, user: dict) -> None:
    before = Metrics(upstream)
    received = sent(
        upstream,
        chat(
            upstream,
            "google/gemini-3.1-pro-preview",
            token=user["token"],
            task_id=task_id(vercel=True),
            provider={"data_collection": "deny"},
        ),
    )
    assert received["path"] == "/openrouter/api/v1/chat/completions"
    assert received["body"]["provider"] == {"data_collection": "deny"}
    # Not eligible, so not a decision of the split.
    assert Metrics(upstream).ab() == before.ab()


def test_corethink_free_model_goes_to_corethink(upstream: Gateway, user: dict) -> None:
    task = task_id(vercel=False)
    messages = [
        {"role": "user", "content": "hi", "reasoning_details": [{"type": "reasoning.text", "text": "x"}]},
        {"role": "assistant", "content": "ok", "reasoning": "thought", "reasoning_details": [{"type": "reasoning.text", "text": "t"}]},
        {"role": "user", "content": "more"},
    ]
    response = chat(
        upstream,
        "corethink:free",
        token=user["token"],
        task_id=task,
        messages=messages,
        transforms=["middle-out"],
        description="a description",
        usage={"include": True},
        prompt_cache_key="client-key",
        provider={"sort": "price"},
    )
    received = sent(upstream, response)
    assert received["path"] == "/corethink/v1/code/chat/completions"
    assert_gateway_headers(received, "mock-corethink-key")
    assert received["body"] == {
        "model": "corethink",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "more"},
        ],
        "stream_options": STREAM_OPTIONS,
        # prompt_cache_key and safety_identifier are deleted (5.2 rule 10); `user` is not.
        "user": h(user["id"], "corethink"),
        "provider": {"only": ["corethink"]},
    }


def test_giga_potato_goes_to_gigapotato(upstream: Gateway, user: dict) -> None:
    received = sent(upstream, chat(upstream, "giga-potato", token=user["token"], messages=SYSTEM_AND_USER))
    assert received["path"] == "/gigapotato/v1/chat/completions"
    assert_gateway_headers(received, "mock-gigapotato-key")
    safety = h(user["id"], "gigapotato")
    assert received["body"] == {
        "model": GIGA_POTATO_INTERNAL_ID,
        "messages": [
            {
                "role": "system",
                "content": [{"type": "text", "text": "You are terse."}, {"type": "text", "text": GIGA_POTATO_RULE}],
            },
            {"role": "user", "content": "hi"},
        ],
        "stream_options": STREAM_OPTIONS,
        "safety_identifier": safety,
        "user": safety,
        "provider": {"only": ["stealth"]},
        "thinking": {"type": "disabled"},
    }


def test_giga_potato_thinking_anonymous_gets_a_system_prompt_and_thinking(upstream: Gateway) -> None:
    ip = fresh_ip()
    received = sent(upstream, chat(upstream, "giga-potato-thinking", ip=ip))
    assert received["path"] == "/gigapotato/v1/chat/completions"
    assert_gateway_headers(received, "mock-gigapotato-key")
    safety = h(f"anon:{ip}", "gigapotato")
    assert received["body"] == {
        "model": GIGA_POTATO_INTERNAL_ID,
        "messages": [{"role": "system", "content": [{"type": "text", "text": GIGA_POTATO_RULE}]}, *MESSAGES],
        "stream_options": STREAM_OPTIONS,
        "safety_identifier": safety,
        "user": safety,
        "provider": {"only": ["stealth"]},
        "thinking": {"type": "enabled"},
    }


def test_custom_llm_of_the_organisation(upstream: Gateway) -> None:
    # No credits anywhere: an organisation's own custom LLM skips the balance check (2.12).
    member = new_user(upstream, credits_usd=0)
    org = org_with_member(upstream, member, credits="0")
    base_url = f"http://127.0.0.1:{mock_port(upstream)}/custom/v1"
    llm = add_custom_llm(upstream, org, base_url=base_url, extra_body={"foo": 1})
    task = task_id(vercel=False)

    received = sent(upstream, chat(upstream, llm["public_id"], token=member["token"], org=org, task_id=task))
    assert received["path"] == "/custom/v1/chat/completions"
    assert_gateway_headers(received, llm["api_key"])
    safety = h(member["id"], "custom", base_url)
    assert received["body"] == {
        "model": llm["internal_id"],
        "messages": MESSAGES,
        "stream_options": STREAM_OPTIONS,
        "prompt_cache_key": h(member["id"] + task, "custom", base_url),
        "safety_identifier": safety,
        "user": safety,
        "foo": 1,
    }


@pytest.mark.parametrize("base_url", ["http://10.11.12.13/v1", "http://169.254.169.254/v1"])
def test_custom_llm_on_a_forbidden_network_is_refused(upstream: Gateway, custom_org: tuple, base_url: str) -> None:
    member, org = custom_org
    llm = add_custom_llm(upstream, org, base_url=base_url)
    refused(upstream, chat(upstream, llm["public_id"], token=member["token"], org=org), GATEWAY_REPLIES["CUSTOM_LLM_URL_REFUSED"])


# --- 2. the rules of 5.2, observed upstream -----------------------------------------------------


def _call(call_id: str, name: str = "read_file") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


def _tool(name: str, **extra: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}, **extra}}


ATTEMPT_COMPLETION_TOOLS = [_tool("read_file"), _tool("attempt_completion")]


def test_anthropic_rules(upstream: Gateway, user: dict) -> None:
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": None, "tool_calls": [_call("toolu.01"), _call("call_plain")]},
        {"role": "tool", "tool_call_id": "toolu.01", "content": "r1"},
        {"role": "tool", "tool_call_id": "call_plain", "content": "r2"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    response = chat(
        upstream,
        "anthropic/claude-sonnet-4.6",
        token=user["token"],
        messages=messages,
        # The client's own beta headers are not forwarded, so nothing is appended to.
        headers={"anthropic-beta": "client-beta", "x-anthropic-beta": "client-x-beta"},
    )
    received = sent(upstream, response)
    assert received["path"] == "/openrouter/api/v1/chat/completions"
    assert_gateway_headers(received, "mock-openrouter-key", frozenset({"anthropic-beta", "x-anthropic-beta"}))
    assert received["headers"]["anthropic-beta"] == FINE_GRAINED
    assert received["headers"]["x-anthropic-beta"] == FINE_GRAINED
    body = received["body"]
    hashed = hashlib.sha256(b"toolu.01").hexdigest()
    ephemeral = {"type": "ephemeral"}
    assert body["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "sys", "cache_control": ephemeral}]},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": None, "tool_calls": [_call(hashed), _call("call_plain")]},
        {"role": "tool", "tool_call_id": hashed, "content": "r1"},
        {"role": "tool", "tool_call_id": "call_plain", "content": "r2"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b", "cache_control": ephemeral}]},
    ]
    assert body["provider"] == {"order": ["amazon-bedrock", "anthropic"]}
    assert body["model"] == "anthropic/claude-sonnet-4.6"

    # A client that marks its system prompt manages caching itself; no system prompt, no marks.
    marked = [{"role": "system", "content": [{"type": "text", "text": "s", "cache_control": ephemeral}]}, *MESSAGES]
    for messages in (marked, MESSAGES):
        body = sent(upstream, chat(upstream, "anthropic/claude-sonnet-4.6", token=user["token"], messages=messages))["body"]
        assert body["messages"] == messages


@pytest.mark.parametrize(
    "model",
    ["x-ai/grok-code-fast-1", "openai/gpt-4o", "google/gemini-2.5-pro", "anthropic/claude-haiku-4.5"],
)
def test_tool_choice_required_with_attempt_completion(upstream: Gateway, user: dict, model: str) -> None:
    task = task_id(vercel=False)  # x-ai/grok-code-fast-1 is A/B-eligible: stay on OpenRouter
    body = sent(
        upstream, chat(upstream, model, token=user["token"], task_id=task, tools=ATTEMPT_COMPLETION_TOOLS, tool_choice="auto")
    )["body"]
    assert body["tool_choice"] == "required"
    assert body["tools"] == ATTEMPT_COMPLETION_TOOLS
    # Without the attempt_completion tool the client's choice stands.
    body = sent(upstream, chat(upstream, model, token=user["token"], task_id=task, tools=[_tool("read_file")], tool_choice="auto"))["body"]
    assert body["tool_choice"] == "auto"


def test_tool_choice_left_alone_for_other_models_and_reasoning_haiku(upstream: Gateway, user: dict) -> None:
    for model, extra in (
        ("meta-llama/llama-3.3-70b-instruct", {}),
        ("openai/gpt-oss-120b", {}),
        ("anthropic/claude-haiku-4.5", {"reasoning": {"enabled": True}}),
        ("anthropic/claude-haiku-4.5", {"reasoning": {"effort": "low"}}),
    ):
        body = sent(
            upstream,
            chat(upstream, model, token=user["token"], tools=ATTEMPT_COMPLETION_TOOLS, tool_choice="auto", **extra),
        )["body"]
        assert body["tool_choice"] == "auto", model


@pytest.mark.parametrize(
    ("model", "order"),
    [
        ("minimax/minimax-m2.5", ["minimax"]),
        ("mistralai/mistral-large-2512", ["mistral"]),
        ("moonshotai/kimi-k2.5", ["moonshotai"]),
        ("z-ai/glm-4.7", ["z-ai"]),
    ],
)
def test_preferred_provider_order(upstream: Gateway, user: dict, model: str, order: list[str]) -> None:
    received = sent(upstream, chat(upstream, model, token=user["token"]))
    assert received["path"] == "/openrouter/api/v1/chat/completions"
    assert received["body"]["provider"] == {"order": order}
    assert received["body"]["model"] == model
    # Added to a provider object without an order; a client's order wins.
    body = sent(upstream, chat(upstream, model, token=user["token"], provider={"sort": "price"}))["body"]
    assert body["provider"] == {"sort": "price", "order": order}
    body = sent(upstream, chat(upstream, model, token=user["token"], provider={"order": ["somewhere"]}))["body"]
    assert body["provider"] == {"order": ["somewhere"]}


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def test_xai_conversation_and_request_ids(upstream: Gateway, user: dict) -> None:
    task = task_id(vercel=False)
    req_ids = []
    for _ in range(2):
        received = sent(upstream, chat(upstream, "x-ai/grok-code-fast-1", token=user["token"], task_id=task))
        assert received["path"] == "/openrouter/api/v1/chat/completions"
        assert_gateway_headers(received, "mock-openrouter-key", frozenset({"x-grok-conv-id", "x-grok-req-id"}))
        cache_key = received["body"]["prompt_cache_key"]
        assert cache_key == h(user["id"] + task, "openrouter")
        assert received["headers"]["x-grok-conv-id"] == cache_key
        assert _is_uuid(received["headers"]["x-grok-req-id"])
        req_ids.append(received["headers"]["x-grok-req-id"])
    assert req_ids[0] != req_ids[1]

    # Without a task id there is no cache key: the conversation id is a random UUID.
    received = sent(upstream, chat(upstream, "x-ai/grok-4", token=user["token"]))
    assert "prompt_cache_key" not in received["body"]
    assert _is_uuid(received["headers"]["x-grok-conv-id"])
    assert _is_uuid(received["headers"]["x-grok-req-id"])
    assert received["headers"]["x-grok-conv-id"] != received["headers"]["x-grok-req-id"]


def test_moonshot_temperature_is_removed(upstream: Gateway, user: dict) -> None:
    body = sent(upstream, chat(upstream, "moonshotai/kimi-k2.5", token=user["token"], temperature=0.7, top_p=0.9))["body"]
    assert "temperature" not in body
    assert body["top_p"] == 0.9


def test_qwen_output_tokens_are_clamped(upstream: Gateway, user: dict) -> None:
    body = sent(
        upstream, chat(upstream, "qwen/qwen3-coder", token=user["token"], max_tokens=100_000, max_completion_tokens=40_000)
    )["body"]
    assert body["max_tokens"] == 32_768
    assert body["max_completion_tokens"] == 32_768
    body = sent(upstream, chat(upstream, "qwen/qwen3-coder", token=user["token"], max_tokens=1000))["body"]
    assert body["max_tokens"] == 1000
    assert "max_completion_tokens" not in body


def test_mistral_model_settings_on_openrouter(upstream: Gateway, user: dict) -> None:
    model = "mistralai/mistral-large-2512"
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [_call("call_abc123xyz"), _call("abcdefghi")]},
        {"role": "tool", "tool_call_id": "call_abc123xyz", "content": "r1"},
        {"role": "tool", "tool_call_id": "abcdefghi", "content": "r2"},
    ]
    tools = [_tool("read_file", strict=True), _tool("attempt_completion", strict=False)]
    received = sent(upstream, chat(upstream, model, token=user["token"], messages=messages, tools=tools))
    assert received["path"] == "/openrouter/api/v1/chat/completions"
    assert_gateway_headers(received, "mock-openrouter-key")
    body = received["body"]
    hashed = hashlib.sha256(b"call_abc123xyz").hexdigest()[:9]
    safety = h(user["id"], "openrouter")
    assert body == {
        "model": model,  # Vercel's `mistral/` name is for Vercel only
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [_call(hashed), _call("abcdefghi")]},
            {"role": "tool", "tool_call_id": hashed, "content": "r1"},
            {"role": "tool", "tool_call_id": "abcdefghi", "content": "r2"},
        ],
        "tools": [_tool("read_file"), _tool("attempt_completion")],
        "tool_choice": "required",
        "temperature": 0.2,
        "provider": {"order": ["mistral"]},
        "stream_options": STREAM_OPTIONS,
        "safety_identifier": safety,
        "user": safety,
    }
    # The client's temperature is kept.
    assert sent(upstream, chat(upstream, model, token=user["token"], temperature=0.7))["body"]["temperature"] == 0.7


def test_vercel_model_mapping_and_provider_options(upstream: Gateway, user: dict) -> None:
    task = task_id(vercel=True)
    received = sent(
        upstream,
        chat(
            upstream,
            "x-ai/grok-code-fast-1",
            token=user["token"],
            task_id=task,
            verbosity="low",
            provider={"only": ["z-ai", "amazon-bedrock"], "order": ["google-vertex/us-east5", "Google-AI-Studio"], "zdr": True},
        ),
    )
    assert received["path"] == "/vercel/v1/chat/completions"
    assert_gateway_headers(received, "mock-vercel-key", frozenset({"x-grok-conv-id", "x-grok-req-id"}))
    body = received["body"]
    assert body["model"] == "xai/grok-code-fast-1"
    assert "provider" not in body
    assert body["providerOptions"] == {
        "gateway": {"only": ["zai", "bedrock"], "order": ["vertex", "google"], "zeroDataRetention": True},
        "anthropic": {"effort": "low"},
    }
    assert received["headers"]["x-grok-conv-id"] == body["prompt_cache_key"] == h(user["id"] + task, "vercel")

    # z-ai -> zai for the model and for the preferred order of rule 4.
    body = sent(upstream, chat(upstream, "z-ai/glm-5", token=user["token"], task_id=task))["body"]
    assert body["model"] == "zai/glm-5"
    assert body["providerOptions"] == {"gateway": {"order": ["zai"]}}
    assert "provider" not in body


def test_gemini_read_file_line_ranges_on_vercel(upstream: Gateway, user: dict) -> None:
    items = {"type": "array", "items": {"type": "integer"}}
    read_file = {
        "type": "function",
        "function": {
            "name": "read_file",
            "parameters": {
                "type": "object",
                "properties": {
                    "files": {"type": "array", "items": {"type": "object", "properties": {"line_ranges": {"type": "array", "items": items}}}}
                },
            },
        },
    }
    model = "google/gemini-3.1-pro-preview"
    received = sent(upstream, chat(upstream, model, token=user["token"], task_id=task_id(vercel=True), tools=[read_file]))
    assert received["path"] == "/vercel/v1/chat/completions"
    line_ranges = received["body"]["tools"][0]["function"]["parameters"]["properties"]["files"]["items"]["properties"]["line_ranges"]
    assert line_ranges == {"anyOf": [{"type": "null"}, {"type": "array", "items": items}]}
    # Only on Vercel.
    received = sent(upstream, chat(upstream, model, token=user["token"], task_id=task_id(vercel=False), tools=[read_file]))
    assert received["path"] == "/openrouter/api/v1/chat/completions"
    assert received["body"]["tools"] == [read_file]


def test_kilo_free_model_via_openrouter(upstream: Gateway, user: dict) -> None:
    task = task_id(vercel=False)
    received = sent(upstream, chat(upstream, "minimax/minimax-m2.5:free", token=user["token"], task_id=task))
    assert received["path"] == "/openrouter/api/v1/chat/completions"
    assert_gateway_headers(received, "mock-openrouter-key")
    safety = h(user["id"], "openrouter")
    assert received["body"] == {
        "model": "minimax/minimax-m2.5",
        "messages": MESSAGES,
        "stream_options": STREAM_OPTIONS,
        "prompt_cache_key": h(user["id"] + task, "openrouter"),
        "safety_identifier": safety,
        "user": safety,
        "provider": {"order": ["minimax"]},
    }


def test_kilo_free_model_via_vercel(upstream: Gateway, user: dict) -> None:
    received = sent(upstream, chat(upstream, "minimax/minimax-m2.5:free", token=user["token"], task_id=task_id(vercel=True)))
    assert received["path"] == "/vercel/v1/chat/completions"
    assert received["body"]["model"] == "minimax/minimax-m2.5"
    assert received["body"]["providerOptions"] == {"gateway": {"order": ["minimax"]}}
    assert "provider" not in received["body"]


# --- 3. the transform of 2.14 ------------------------------------------------------------------


def test_prompt_cache_key_only_with_a_task_id(upstream: Gateway, user: dict) -> None:
    model = "openai/gpt-4o-mini"
    safety = h(user["id"], "openrouter")
    task = task_id(vercel=False)
    body = sent(upstream, chat(upstream, model, token=user["token"], task_id=task, prompt_cache_key="mine"))["body"]
    assert body["prompt_cache_key"] == h(user["id"] + task, "openrouter")
    # Without a task id the client's value (or its absence) is left as it is.
    body = sent(upstream, chat(upstream, model, token=user["token"], prompt_cache_key="mine", user="u", safety_identifier="s"))["body"]
    assert body["prompt_cache_key"] == "mine"
    assert body["safety_identifier"] == body["user"] == safety
    body = sent(upstream, chat(upstream, model, token=user["token"]))["body"]
    assert "prompt_cache_key" not in body
    assert body["safety_identifier"] == body["user"] == safety
    # The task id header is cut to 500 characters (2.9).
    long_task = task + "x" * 600
    body = sent(upstream, chat(upstream, model, token=user["token"], task_id=long_task))["body"]
    assert body["prompt_cache_key"] == h(user["id"] + long_task[:500], "openrouter")


def test_anonymous_free_model_caller_is_hashed_by_ip(upstream: Gateway) -> None:
    ip, task = fresh_ip(), task_id(vercel=False)
    received = sent(upstream, chat(upstream, "some-lab/some-model:free", ip=ip, task_id=task))
    assert received["path"] == "/openrouter/api/v1/chat/completions"
    assert_gateway_headers(received, "mock-openrouter-key")
    safety = h(f"anon:{ip}", "openrouter")
    assert received["body"] == {
        "model": "some-lab/some-model:free",
        "messages": MESSAGES,
        "stream_options": STREAM_OPTIONS,
        "prompt_cache_key": h(f"anon:{ip}" + task, "openrouter"),
        "safety_identifier": safety,
        "user": safety,
    }


def test_tool_repair_is_observed_upstream(upstream: Gateway, user: dict) -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "tool", "tool_call_id": "orphan-before", "content": "o"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [_call("a"), _call("b"), _call("a")]},
        {"role": "tool", "tool_call_id": "a", "content": "ra"},
        {"role": "tool", "tool_call_id": "a", "content": "ra again"},
        {"role": "tool", "tool_call_id": "nobody", "content": "orphan"},
        {"role": "user", "content": "next"},
    ]
    body = sent(upstream, chat(upstream, "openai/gpt-4o-mini", token=user["token"], messages=messages))["body"]
    assert body["messages"] == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [_call("a"), _call("b")]},
        {"role": "tool", "tool_call_id": "b", "content": INTERRUPTED},
        {"role": "tool", "tool_call_id": "a", "content": "ra"},
        {"role": "user", "content": "next"},
    ]


# --- 5. metrics --------------------------------------------------------------------------------


def test_routed_requests_are_counted_by_provider(upstream: Gateway, user: dict, custom_org: tuple) -> None:
    member, org = custom_org
    llm = add_custom_llm(upstream, org, base_url=f"http://127.0.0.1:{mock_port(upstream)}/custom/v1")
    requests = {
        "openrouter": lambda: chat(upstream, "openai/gpt-4o-mini", token=user["token"]),
        "vercel": lambda: chat(upstream, "google/gemini-3.1-pro-preview", token=user["token"], task_id=task_id(vercel=True)),
        "corethink": lambda: chat(upstream, "corethink:free", token=user["token"]),
        "gigapotato": lambda: chat(upstream, "giga-potato", token=user["token"]),
        "custom": lambda: chat(upstream, llm["public_id"], token=member["token"], org=org),
    }
    for provider, request in requests.items():
        before = Metrics(upstream)
        assert request().status_code == 200
        after = Metrics(upstream)
        assert {p: after.routed(p) - before.routed(p) for p in requests} == {p: float(p == provider) for p in requests}
        # Only the A/B-eligible request is a decision of the split.
        assert after.ab() - before.ab() == float(provider == "vercel")
    assert after.ab(routed_to="vercel") >= 1
    assert "llm_gateway_vercel_ab_decisions_total{" in upstream.metrics()


def test_refused_requests_are_not_counted_as_routed(upstream: Gateway) -> None:
    broke = new_user(upstream, credits_usd=0)
    before = Metrics(upstream)
    assert chat(upstream, "openai/gpt-4o-mini", token=broke["token"]).status_code == 402
    assert chat(upstream, "openai/gpt-4o-mini", token=broke["token"], max_tokens=10**12).status_code == 503
    assert upstream.upstream_requests() == []
    assert Metrics(upstream).routed("openrouter") == before.routed("openrouter")


# --- 4. BYOK (3.3), on a stack of its own ----------------------------------------------------------

BYOK_MODELS = {
    "anthropic/claude-sonnet-4.6": {
        "id": "anthropic/claude-sonnet-4.6",
        "name": "Claude Sonnet 4.6",
        "endpoints": [{"provider_name": "Anthropic", "tag": "anthropic", "context_length": 200000}],
    },
    "zai/glm-5": {
        "id": "zai/glm-5",
        "name": "GLM 5",
        "endpoints": [
            {"provider_name": "Z.AI", "tag": "zai", "context_length": 200000},
            {"provider_name": "Somewhere", "tag": "not-a-byok-provider", "context_length": 200000},
        ],
    },
}


@pytest.fixture(scope="module")
def byok_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_stack(tmp_path_factory.mktemp("byok-stack"), **SESSION_STACK) as gw:
        # Before any request: the map is cached for 300 s from the first authenticated request.
        gw.sql("INSERT INTO models_by_provider (vercel) VALUES ($1::jsonb)", orjson.dumps(BYOK_MODELS).decode())
        yield gw


@pytest.fixture
def byok(byok_stack: Gateway) -> Gateway:
    byok_stack.clear_upstream_requests()
    return byok_stack


def _byok_add(gateway: Gateway, provider: str, key: str, *, user: dict | None = None, org: str | None = None) -> None:
    owner = ["--user", user["id"]] if user is not None else ["--org", org or ""]
    gateway.cli("byok", "add", *owner, "--provider", provider, "--key", key)


def test_byok_key_goes_to_vercel_and_skips_the_balance_check(byok: Gateway) -> None:
    user = new_user(byok, credits_usd=0)
    _byok_add(byok, "anthropic", "sk-ant-test", user=user)
    received = sent(byok, chat(byok, "anthropic/claude-sonnet-4.6", token=user["token"], provider={"sort": "price"}))
    assert received["path"] == "/vercel/v1/chat/completions"
    # Kilo's Vercel key authenticates; the customer's key travels in the body only.
    assert_gateway_headers(received, "mock-vercel-key", frozenset({"anthropic-beta", "x-anthropic-beta"}))
    body = received["body"]
    safety = h(user["id"], "vercel")
    assert body == {
        "model": "anthropic/claude-sonnet-4.6",
        "messages": MESSAGES,
        "stream_options": STREAM_OPTIONS,
        "safety_identifier": safety,
        "user": safety,
        "providerOptions": {"gateway": {"only": ["anthropic"], "byok": {"anthropic": [{"apiKey": "sk-ant-test"}]}}},
    }
    # The same user without a key for the model is refused for lack of credits.
    response = chat(byok, "openai/gpt-4o-mini", token=user["token"])
    assert response.status_code == 402
    assert byok.upstream_requests() == []


def test_byok_zai_key_is_offered_twice(byok: Gateway) -> None:
    user = new_user(byok, credits_usd=0)
    _byok_add(byok, "zai", "zai-key", user=user)
    body = sent(byok, chat(byok, "z-ai/glm-5", token=user["token"]))["body"]
    assert body["model"] == "zai/glm-5"
    assert body["providerOptions"] == {
        "gateway": {
            "only": ["zai"],
            "byok": {"zai": [{"apiKey": "zai-key", "baseURL": "https://api.z.ai/api/coding/paas/v4"}, {"apiKey": "zai-key"}]},
        }
    }


def test_byok_codestral_key_is_a_mistral_key(byok: Gateway) -> None:
    user = new_user(byok, credits_usd=0)
    _byok_add(byok, "codestral", "codestral-key", user=user)
    received = sent(byok, chat(byok, "mistralai/codestral-2508", token=user["token"]))
    assert received["path"] == "/vercel/v1/chat/completions"
    body = received["body"]
    assert body["model"] == "mistral/codestral"
    assert body["providerOptions"] == {"gateway": {"only": ["mistral"], "byok": {"mistral": [{"apiKey": "codestral-key"}]}}}
    assert "provider" not in body


def test_byok_organisation_keys_replace_the_users(byok: Gateway) -> None:
    user = new_user(byok, credits_usd=0)
    _byok_add(byok, "anthropic", "users-key", user=user)
    org = org_with_member(byok, user, credits="10")
    # With the organisation header only its keys count: it has none, so Kilo's OpenRouter key.
    received = sent(byok, chat(byok, "anthropic/claude-sonnet-4.6", token=user["token"], org=org))
    assert received["path"] == "/openrouter/api/v1/chat/completions"
    assert "users-key" not in orjson.dumps(received).decode()

    other = new_user(byok, credits_usd=0)
    org_with_key = org_with_member(byok, other, credits="0")
    _byok_add(byok, "anthropic", "orgs-key", org=org_with_key)
    body = sent(byok, chat(byok, "anthropic/claude-sonnet-4.6", token=other["token"], org=org_with_key))["body"]
    assert body["providerOptions"]["gateway"] == {"only": ["anthropic"], "byok": {"anthropic": [{"apiKey": "orgs-key"}]}}


def _tampered_user(gateway: Gateway) -> dict[str, Any]:
    """A user whose stored key no longer decrypts (tampered before their first request, so
    nothing of theirs is cached)."""
    user = new_user(gateway, credits_usd=10)
    _byok_add(gateway, "anthropic", "sk-ant-test", user=user)
    [row] = gateway.sql("SELECT encrypted_api_key->>'data' AS data FROM byok_api_keys WHERE kilo_user_id = $1", user["id"])
    data = bytearray(base64.b64decode(row["data"]))
    data[0] ^= 0xFF
    gateway.sql(
        "UPDATE byok_api_keys SET encrypted_api_key = jsonb_set(encrypted_api_key, '{data}', to_jsonb($2::text))"
        " WHERE kilo_user_id = $1",
        user["id"],
        base64.b64encode(bytes(data)).decode(),
    )
    return user


def test_byok_unreadable_key_fails_the_request_before_the_upstream(byok: Gateway) -> None:
    user = _tampered_user(byok)
    response = chat(byok, "anthropic/claude-sonnet-4.6", token=user["token"])
    assert response.status_code == 500
    assert byok.upstream_requests() == []
    # Models without a BYOK provider are not affected.
    assert sent(byok, chat(byok, "openai/gpt-4o-mini", token=user["token"]))["path"] == "/openrouter/api/v1/chat/completions"


def test_byok_unreadable_key_error_body(byok: Gateway) -> None:
    user = _tampered_user(byok)
    refused(byok, chat(byok, "anthropic/claude-sonnet-4.6", token=user["token"]), GATEWAY_REPLIES["BYOK_KEY_UNREADABLE"])


# --- BYOK answers (6.2, 6.3) and accounting (7.4) ---------------------------------------------------

# Contract 6.3, verbatim.
BYOK_TEXTS = {
    401: "[BYOK] Your API key is invalid or has been revoked. Please check your API key configuration.",
    402: "[BYOK] Your API account has insufficient funds. Please check your billing details with your API provider.",
    403: "[BYOK] Your API key does not have permission to access this resource. Please check your API key permissions.",
    429: "[BYOK] Your API key has hit its rate limit. Please try again later or check your rate limit settings with your API provider.",
}


@pytest.mark.parametrize("status", sorted(BYOK_TEXTS))
def test_byok_upstream_refusals_keep_their_status_with_byok_texts(byok: Gateway, status: int) -> None:
    """An upstream 402 on the customer's key stays 402 (only Kilo's own key becomes 503)."""
    user = new_user(byok, credits_usd=0)
    _byok_add(byok, "anthropic", f"sk-ant-{uuid.uuid4().hex}", user=user)
    response = chat(byok, "anthropic/claude-sonnet-4.6", token=user["token"], mock={"status": status})
    assert response.status_code == status
    assert response.json() == {"error": BYOK_TEXTS[status], "message": BYOK_TEXTS[status]}


def test_byok_rows_cost_nothing_and_are_marked_user_byok(byok: Gateway) -> None:
    user = new_user(byok, credits_usd=0)
    _byok_add(byok, "anthropic", f"sk-ant-{uuid.uuid4().hex}", user=user)
    task = f"byok-{uuid.uuid4().hex}"
    response = chat(byok, "anthropic/claude-sonnet-4.6", token=user["token"], task_id=task, mock={"is_byok": True})
    assert response.status_code == 200
    sql = """SELECT u.cost, m.market_cost, m.is_user_byok, u.kilo_user_id FROM microdollar_usage u
             JOIN microdollar_usage_metadata m ON m.id = u.id WHERE m.session_id = $1"""
    deadline = time.monotonic() + 60
    while not (rows := byok.sql(sql, task)):
        assert time.monotonic() < deadline, "no ledger row"
        time.sleep(0.2)
    [row] = rows
    assert row["kilo_user_id"] == user["id"]
    assert row["is_user_byok"] is True
    assert row["cost"] == 0 and row["market_cost"] > 0  # the customer pays the provider, not Kilo
    balance = byok.sql("SELECT microdollars_used FROM kilocode_users WHERE id = $1", user["id"])
    assert balance[0]["microdollars_used"] == 0
