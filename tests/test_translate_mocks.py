"""The custom-LLM mocks speak the real protocols: the official SDKs consume them.

A mock that only our own translator understood would prove nothing, so each mock is driven by
the provider's SDK (`anthropic`'s streaming client, `openai`'s `responses.create(stream=True)`)
and what the SDK assembles is compared with the directives' values.
"""

from __future__ import annotations

import anthropic
import httpx
import openai
import orjson
import pytest

from extproc.local.mock_anthropic import mock_anthropic
from extproc.local.mock_openai_responses import mock_openai_responses
from tests.translate_support import RunningMock, directive

SCRIPT = {
    "text": "The answer is 42.",
    "thinking": "Let me think about it.",
    "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}],
    "chunks": 4,
    "input_tokens": 120,
    "output_tokens": 45,
    "cache_read_tokens": 30,
    "cache_write_tokens": 20,
    "reasoning_tokens": 9,
}


@pytest.fixture(scope="module")
def anthropic_mock() -> RunningMock:
    with RunningMock(mock_anthropic()) as mock:
        yield mock


@pytest.fixture(scope="module")
def responses_mock() -> RunningMock:
    with RunningMock(mock_openai_responses()) as mock:
        yield mock


def test_anthropic_sdk_streams_thinking_text_tool_use_and_usage(anthropic_mock: RunningMock) -> None:
    client = anthropic.Anthropic(api_key="k", base_url=anthropic_mock.url("/anthropic"))
    with client.messages.stream(
        model="claude-x", max_tokens=100, messages=[{"role": "user", "content": directive(SCRIPT)}]
    ) as stream:
        texts = [event.text for event in stream if event.type == "text"]
        message = stream.get_final_message()
    assert "".join(texts) == "The answer is 42."
    assert len(texts) == 4
    thinking, text, tool = message.content
    assert (thinking.type, thinking.thinking, thinking.signature) == ("thinking", "Let me think about it.", "mock-signature")
    assert (text.type, text.text) == ("text", "The answer is 42.")
    assert (tool.type, tool.name, tool.input) == ("tool_use", "get_weather", {"city": "Paris", "days": 3})
    assert message.stop_reason == "tool_use"
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (120, 45)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (30, 20)


def test_anthropic_sdk_sees_errors(anthropic_mock: RunningMock) -> None:
    client = anthropic.Anthropic(api_key="k", base_url=anthropic_mock.url("/anthropic"), max_retries=0)
    messages = [{"role": "user", "content": directive({"status": 429, "error_message": "slow down"})}]
    with pytest.raises(anthropic.RateLimitError, match="slow down"):
        client.messages.create(model="claude-x", max_tokens=10, messages=messages)
    messages = [{"role": "user", "content": directive({"error_after": 5, "error_message": "overloaded now"})}]
    with pytest.raises(anthropic.APIStatusError, match="overloaded now"):
        with client.messages.stream(model="claude-x", max_tokens=10, messages=messages) as stream:
            for _ in stream:
                pass


def test_anthropic_mock_refuses_a_request_without_its_key_headers(anthropic_mock: RunningMock) -> None:
    import httpx

    response = httpx.post(anthropic_mock.url("/anthropic/v1/messages"), json={"model": "m", "messages": []})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_openai_sdk_streams_responses_events(responses_mock: RunningMock) -> None:
    client = openai.OpenAI(api_key="k", base_url=responses_mock.url("/openai/v1"))
    stream = client.responses.create(model="gpt-x", input=[{"role": "user", "content": directive(SCRIPT)}], stream=True)
    events = list(stream)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    summaries = [e.delta for e in events if e.type == "response.reasoning_summary_text.delta"]
    arguments = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert "".join(deltas) == "The answer is 42." and len(deltas) == 4
    assert "".join(summaries) == "Let me think about it."
    assert orjson.loads("".join(arguments)) == {"city": "Paris", "days": 3}
    completed = events[-1]
    assert completed.type == "response.completed"
    response = completed.response
    assert response.output_text == "The answer is 42."
    reasoning, _message, call = response.output
    assert reasoning.encrypted_content == "mock-encrypted-reasoning"
    assert (call.name, call.call_id) == ("get_weather", "call_mock_0")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (150, 45)
    assert response.usage.input_tokens_details.cached_tokens == 30
    assert response.usage.output_tokens_details.reasoning_tokens == 9


def test_openai_sdk_reads_a_whole_response_and_errors(responses_mock: RunningMock) -> None:
    client = openai.OpenAI(api_key="k", base_url=responses_mock.url("/openai/v1"), max_retries=0)
    response = client.responses.create(model="gpt-x", input=[{"role": "user", "content": directive({"text": "Hi."})}])
    assert response.output_text == "Hi."
    assert response.usage.output_tokens == 7
    with pytest.raises(openai.BadRequestError, match="bad input"):
        client.responses.create(
            model="gpt-x", input=[{"role": "user", "content": directive({"status": 400, "error_message": "bad input"})}]
        )
    stream = client.responses.create(
        model="gpt-x", input=[{"role": "user", "content": directive({"error_after": 3, "error_message": "boom"})}],
        stream=True,
    )
    events = list(stream)
    assert events[-1].type == "error" and events[-1].message == "boom"


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_a_mock_records_each_request_and_what_it_answered(anthropic_mock: RunningMock, stream: bool) -> None:
    body = {"model": "claude-x", "max_tokens": 10, "stream": stream,
            "messages": [{"role": "user", "content": directive({"text": "Hi.", "chunks": 1})}]}
    answered = httpx.post(
        anthropic_mock.url("/anthropic/v1/messages"), json=body,
        headers={"X-Api-Key": "k", "anthropic-version": "2023-06-01"},
    )
    assert answered.status_code == 200
    recorded = httpx.get(anthropic_mock.url("/__mock/requests")).json()[-1]
    assert (recorded["method"], recorded["path"], recorded["body"]) == ("POST", "/anthropic/v1/messages", body)
    assert recorded["headers"]["x-api-key"] == "k"
    assert recorded["response"] == answered.text and "Hi." in answered.text
    assert anthropic_mock.requests[-1] == recorded
