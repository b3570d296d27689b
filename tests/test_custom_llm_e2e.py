"""Custom LLMs of kind `anthropic` and `openai` through real Envoy (behaviour.md 3.4).

The official `openai` client speaks chat completions to the gateway; the organisation's custom
LLM rows point at in-process mocks of the Anthropic Messages and OpenAI Responses APIs (the
session stack allows 127.0.0.0/8 for custom LLMs). Each test checks what the client assembled
(text, reasoning, tool calls with their arguments, usage, the public model id), what the
provider received, and the one ledger row the request wrote (provider `custom`, the tokens the
mock reported, cache reads and writes included).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import openai
import orjson
import pytest

from extproc.local.mock_anthropic import mock_anthropic
from extproc.local.mock_openai_responses import mock_openai_responses
from tests.bodies import GATEWAY_REPLIES
from tests.conftest import Gateway, fresh_ip
from tests.translate_support import RunningMock, directive

SCRIPT = {
    "text": "The answer is 42.",
    "thinking": "Let me think.",
    "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}],
    "chunks": 3,
    "input_tokens": 100,
    "output_tokens": 40,
    "cache_read_tokens": 30,
    "cache_write_tokens": 20,
    "reasoning_tokens": 5,
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]



@dataclass(frozen=True)
class Llm:
    public_id: str
    internal_id: str
    api_key: str
    mock: RunningMock


@dataclass(frozen=True)
class Setup:
    gateway: Gateway
    token: str
    org: str
    anthropic: Llm
    openai: Llm

    def client(self, task: str) -> openai.OpenAI:
        headers = {"x-kilocode-organizationid": self.org, "x-kilocode-taskid": task, "x-forwarded-for": fresh_ip()}
        return openai.OpenAI(
            base_url=self.gateway.openai_base_url, api_key=self.token, default_headers=headers, max_retries=0
        )


def _add_llm(gateway: Gateway, org: str, kind: str, mock: RunningMock, base_path: str) -> Llm:
    llm = Llm(
        public_id=f"kilo-internal/{kind}-{uuid.uuid4().hex[:8]}",
        internal_id=f"{kind}-internal-model",
        api_key=f"{kind}-key-{uuid.uuid4().hex[:8]}",
        mock=mock,
    )
    gateway.sql(
        "INSERT INTO custom_llm (public_id, display_name, context_length, max_completion_tokens, internal_id,"
        " provider, base_url, api_key, organization_ids, force_reasoning)"
        " VALUES ($1, 'Test LLM', 200000, 4096, $2, $3, $4, $5, $6::jsonb, true)",
        llm.public_id, llm.internal_id, kind, mock.url(base_path), llm.api_key, orjson.dumps([org]).decode(),
    )
    return llm


@pytest.fixture(scope="module")
def setup(gateway: Gateway) -> Iterator[Setup]:
    member = gateway.new_user(credits_usd="0")  # an organisation's custom LLM needs no balance
    org = gateway.cli("org", "create", "--name", f"custom-{uuid.uuid4().hex[:6]}")["id"]
    gateway.cli("org", "add-member", "--org", org, "--user", member["id"])
    with RunningMock(mock_anthropic()) as anthropic_mock, RunningMock(mock_openai_responses()) as responses_mock:
        yield Setup(
            gateway=gateway,
            token=member["token"],
            org=org,
            anthropic=_add_llm(gateway, org, "anthropic", anthropic_mock, "/anthropic/v1"),
            openai=_add_llm(gateway, org, "openai", responses_mock, "/openai/v1"),
        )


def ledger_rows(gateway: Gateway, task: str, timeout: float = 60) -> list[asyncpg.Record]:
    """The rows of one task (its session id), once the writer wrote one (the outbox is async)."""
    sql = """
    SELECT u.*, m.session_id FROM microdollar_usage u JOIN microdollar_usage_metadata m ON m.id = u.id
    WHERE m.session_id = $1
    """
    deadline = time.monotonic() + timeout
    while True:
        rows = gateway.sql(sql, task)
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def assert_one_row(setup: Setup, task: str, llm: Llm, *, prompt: int, completion: int, read: int, write: int) -> None:
    [row] = ledger_rows(setup.gateway, task)
    assert row["provider"] == "custom"
    assert row["model"] == llm.public_id
    assert (row["input_tokens"], row["output_tokens"]) == (prompt, completion)
    assert (row["cache_hit_tokens"], row["cache_write_tokens"]) == (read, write)
    assert row["has_error"] is False


def last_request(llm: Llm) -> dict[str, Any]:
    return llm.mock.requests[-1]


def assemble_stream(stream: Any, llm: Llm) -> dict[str, Any]:
    text, reasoning, calls, usage, finish = [], [], {}, None, None
    for chunk in stream:
        assert chunk.model == llm.public_id
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            finish = choice.finish_reason or finish
            text.append(delta.content or "")
            reasoning.append((delta.model_extra or {}).get("reasoning") or "")
            for call in delta.tool_calls or ():
                entry = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = call.id or entry["id"]
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
    return {"text": "".join(text), "reasoning": "".join(reasoning), "calls": list(calls.values()),
            "usage": usage, "finish": finish}


def test_streamed_chat_through_an_anthropic_custom_llm(setup: Setup) -> None:
    llm, task = setup.anthropic, f"task-{uuid.uuid4().hex}"
    stream = setup.client(task).chat.completions.create(
        model=llm.public_id, stream=True, tools=TOOLS, messages=[{"role": "user", "content": directive(SCRIPT)}],
    )
    got = assemble_stream(stream, llm)
    assert got["text"] == "The answer is 42."
    assert got["reasoning"] == "Let me think."
    assert got["calls"] == [{"id": "toolu_mock_0", "name": "get_weather", "arguments": '{"city":"Paris","days":3}'}]
    assert got["finish"] == "tool_calls"
    # Anthropic's input excludes cached and cache-written tokens; chat's prompt_tokens includes them.
    assert (got["usage"].prompt_tokens, got["usage"].completion_tokens) == (150, 40)
    assert got["usage"].prompt_tokens_details.cached_tokens == 30
    assert got["usage"].prompt_tokens_details.to_dict()["cache_write_tokens"] == 20

    received = last_request(llm)
    assert received["path"] == "/anthropic/v1/messages"
    headers = received["headers"]
    assert headers["x-api-key"] == llm.api_key
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "context-1m-2025-08-07"
    assert "authorization" not in headers and setup.token not in orjson.dumps(headers).decode()
    body = received["body"]
    assert (body["model"], body["stream"], body["max_tokens"]) == (llm.internal_id, True, 4096)
    assert body["thinking"] == {"type": "adaptive"}
    assert body["tools"] == [{"name": "get_weather", "input_schema": {"type": "object"}}]

    assert_one_row(setup, task, llm, prompt=150, completion=40, read=30, write=20)


def test_plain_chat_through_an_anthropic_custom_llm(setup: Setup) -> None:
    llm, task = setup.anthropic, f"task-{uuid.uuid4().hex}"
    completion = setup.client(task).chat.completions.create(
        model=llm.public_id, tools=TOOLS, messages=[{"role": "user", "content": directive(SCRIPT)}],
    )
    assert completion.model == llm.public_id
    message = completion.choices[0].message
    assert message.content == "The answer is 42."
    assert message.model_extra["reasoning"] == "Let me think."
    [call] = message.tool_calls
    assert (call.function.name, orjson.loads(call.function.arguments)) == ("get_weather", {"city": "Paris", "days": 3})
    assert completion.choices[0].finish_reason == "tool_calls"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (150, 40)
    assert last_request(llm)["body"].get("stream") is None
    assert_one_row(setup, task, llm, prompt=150, completion=40, read=30, write=20)


def test_streamed_chat_through_an_openai_responses_custom_llm(setup: Setup) -> None:
    llm, task = setup.openai, f"task-{uuid.uuid4().hex}"
    stream = setup.client(task).chat.completions.create(
        model=llm.public_id, stream=True, tools=TOOLS, messages=[{"role": "user", "content": directive(SCRIPT)}],
        extra_body={"reasoning": {"effort": "low"}, "verbosity": "max"},
    )
    got = assemble_stream(stream, llm)
    assert got["text"] == "The answer is 42."
    assert got["reasoning"] == "Let me think."
    assert got["calls"] == [{"id": "call_mock_0", "name": "get_weather", "arguments": '{"city":"Paris","days":3}'}]
    assert got["finish"] == "tool_calls"
    # Responses' input_tokens already include the cached ones; it reports no cache writes.
    assert (got["usage"].prompt_tokens, got["usage"].completion_tokens) == (130, 40)
    assert got["usage"].prompt_tokens_details.cached_tokens == 30
    assert got["usage"].completion_tokens_details.reasoning_tokens == 5

    received = last_request(llm)
    assert received["path"] == "/openai/v1/responses"
    assert received["headers"]["authorization"] == f"Bearer {llm.api_key}"
    body = received["body"]
    assert body["model"] == llm.internal_id
    assert body["reasoning"] == {"effort": "low", "summary": "auto"}  # the row forces reasoning
    assert body["text"] == {"verbosity": "high"}
    assert (body["store"], body["include"], body["stream"]) == (False, ["reasoning.encrypted_content"], True)
    # The gateway's own hashes (2.14) travel as the Responses API's fields.
    assert {"prompt_cache_key", "safety_identifier", "user"} <= set(body)

    assert_one_row(setup, task, llm, prompt=130, completion=40, read=30, write=0)


def test_plain_chat_through_an_openai_responses_custom_llm(setup: Setup) -> None:
    llm, task = setup.openai, f"task-{uuid.uuid4().hex}"
    completion = setup.client(task).chat.completions.create(
        model=llm.public_id, messages=[{"role": "user", "content": directive({"text": "Hi there.", "output_tokens": 3})}],
    )
    assert completion.model == llm.public_id
    assert completion.choices[0].message.content == "Hi there."
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, 3)
    assert_one_row(setup, task, llm, prompt=11, completion=3, read=0, write=0)


def _raw(setup: Setup, llm: Llm, script: dict[str, Any], *, stream: bool) -> httpx.Response:
    headers = {"authorization": f"Bearer {setup.token}", "x-kilocode-organizationid": setup.org,
               "x-forwarded-for": fresh_ip()}
    body = {"model": llm.public_id, "stream": stream, "messages": [{"role": "user", "content": directive(script)}]}
    return httpx.post(setup.gateway.chat_url, json=body, headers=headers, timeout=30)


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_upstream_error_of_a_plain_request_keeps_its_status(setup: Setup, kind: str) -> None:
    llm = getattr(setup, kind)
    response = _raw(setup, llm, {"status": 429, "error_message": "Slow down"}, stream=False)
    assert response.status_code == 429
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"error": {"message": "Slow down", "code": 429, "type": "error"}}


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_upstream_error_of_a_streamed_request_is_an_error_chunk_on_200(setup: Setup, kind: str) -> None:
    llm = getattr(setup, kind)
    response = _raw(setup, llm, {"status": 503, "error_message": "Try later"}, stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    [event] = [line for line in response.text.splitlines() if line.startswith("data: ")]
    error = orjson.loads(event[6:])["error"]
    assert (error["message"], error["code"], error["type"]) == ("Try later", 503, "error")


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_mid_stream_error_reaches_the_openai_client(setup: Setup, kind: str) -> None:
    llm = getattr(setup, kind)
    script = {"error_after": 4, "error_message": "Overloaded now"}
    response = _raw(setup, llm, script, stream=True)
    assert response.status_code == 200
    events = [orjson.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["error"]["message"] == "Overloaded now"
    assert events[-1]["error"]["type"] == "error"
    with pytest.raises(openai.APIError, match="Overloaded now"):
        for _ in setup.client(f"task-{uuid.uuid4().hex}").chat.completions.create(
            model=llm.public_id, stream=True, messages=[{"role": "user", "content": directive(script)}]
        ):
            pass


def test_a_stream_the_client_cuts_is_charged_what_the_provider_reported(setup: Setup) -> None:
    llm, task = setup.anthropic, f"task-{uuid.uuid4().hex}"
    script = {k: v for k, v in SCRIPT.items() if k not in ("thinking", "tool_calls")} | {"chunks": 20, "gap_ms": 200}
    stream = setup.client(task).chat.completions.create(
        model=llm.public_id, stream=True, messages=[{"role": "user", "content": directive(script)}],
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break  # the first text delta: message_start (input and cache tokens) came before it
    stream.close()
    [row] = ledger_rows(setup.gateway, task)
    assert row["provider"] == "custom"
    assert (row["input_tokens"], row["cache_hit_tokens"], row["cache_write_tokens"]) == (150, 30, 20)
    assert row["has_error"] is True  # aborted


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_the_ssrf_guard_applies_to_translated_custom_llms(setup: Setup, kind: str) -> None:
    public_id = f"kilo-internal/{kind}-private-{uuid.uuid4().hex[:8]}"
    setup.gateway.sql(
        "INSERT INTO custom_llm (public_id, display_name, context_length, max_completion_tokens, internal_id,"
        " provider, base_url, api_key, organization_ids) VALUES ($1, 'Private', 1000, 100, 'm', $2,"
        " 'http://169.254.169.254/v1', 'k', $3::jsonb)",
        public_id, kind, orjson.dumps([setup.org]).decode(),
    )
    llm = Llm(public_id=public_id, internal_id="m", api_key="k", mock=setup.anthropic.mock)
    response = _raw(setup, llm, {}, stream=False)
    refused = GATEWAY_REPLIES["CUSTOM_LLM_URL_REFUSED"]
    assert (response.status_code, response.json()) == (refused.status, refused.body)


def test_the_legacy_extension_sees_the_obscured_reasoning_format(setup: Setup) -> None:
    llm, task = setup.openai, f"task-{uuid.uuid4().hex}"
    client = setup.client(task).with_options(default_headers={"user-agent": "Kilo-Code/4.0.0"})
    stream = client.chat.completions.create(
        model=llm.public_id, stream=True, tools=TOOLS,
        messages=[{"role": "user", "content": directive({"thinking": "Hmm."})}],
    )
    formats = {
        detail["format"]
        for chunk in stream for choice in chunk.choices
        for detail in (choice.delta.model_extra or {}).get("reasoning_details") or ()
    }
    assert formats == {"openai-responses-v1-obscured"}
    assert last_request(llm)["body"]["parallel_tool_calls"] is False
