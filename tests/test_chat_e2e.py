"""A real client through real Envoy and the ext_proc to the mock upstream."""

from __future__ import annotations

import time

import httpx
import openai
import orjson
import pytest

from extproc.local.mock_upstream import MockOptions, expected_text, expected_usage
from tests.conftest import Gateway

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the gateway, please"},
]
MODEL = "openai/gpt-4o-mini"


@pytest.fixture
def client(gateway: Gateway, account: dict) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.openai_base_url, api_key=account["token"])


def test_openai_sdk_streams_a_completion(client: openai.OpenAI, upstream: Gateway) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    chunks = list(stream)

    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    request = {"model": MODEL, "messages": MESSAGES}
    assert len(content) >= 5
    assert "".join(content) == expected_text(request, MockOptions())
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(exclude_none=True)["prompt_tokens"] == expected_usage(request, MockOptions())["prompt_tokens"]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]


def test_openai_sdk_non_streaming_completion(client: openai.OpenAI, upstream: Gateway) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)

    request = {"model": MODEL, "messages": MESSAGES}
    assert completion.choices[0].message.content == expected_text(request, MockOptions())
    assert completion.model == MODEL
    assert completion.usage is not None
    assert completion.usage.completion_tokens == expected_usage(request, MockOptions())["completion_tokens"]


def test_the_legacy_openrouter_prefix_serves_the_same(gateway: Gateway, account: dict) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/api/openrouter", api_key=account["token"])
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert completion.choices[0].message.content == expected_text({"model": MODEL, "messages": MESSAGES}, MockOptions())


def test_stream_chunks_reach_the_client_as_they_are_produced(gateway: Gateway, auth: dict) -> None:
    body = {
        "model": MODEL,
        "stream": True,
        "messages": MESSAGES,
        "mock": {"chunks": 4, "chunk_delay_ms": 300},
    }
    arrivals: list[float] = []
    started = time.monotonic()
    with httpx.stream("POST", gateway.chat_url, json=body, headers=auth, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content":"w' in line:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 4
    # Four content events 300 ms apart: had anything buffered the stream, they would all
    # arrive together at the end. Half the 0.9 s span is required: a busy machine can delay
    # the first arrival, never hasten the last.
    assert arrivals[-1] - arrivals[0] >= 0.45


def test_upstream_gets_the_provider_key_and_none_of_the_client_headers(
    gateway: Gateway, upstream: Gateway, account: dict
) -> None:
    response = httpx.post(
        f"{gateway.chat_url}?trace=1&x=y",
        json={"model": MODEL, "messages": MESSAGES, "models": ["a/b", "c/d"], "stream_options": {"foo": 1}},
        headers={
            "authorization": f"Bearer {account['token']}",
            "cookie": "session=client-cookie",
            "x-custom-client-header": "leak-me",
            "x-envoy-client-header": "leak-me",
            "user-agent": "test-client/1.0",
            "x-gateway-upstream": "provider_evil",
        },
    )
    assert response.status_code == 200

    [received] = upstream.upstream_requests()
    headers = received["headers"]
    assert headers["authorization"] == "Bearer mock-openrouter-key"
    assert headers["http-referer"] == "https://kilocode.ai"
    assert headers["x-title"] == "Kilo Code"
    assert headers["content-type"] == "application/json"
    assert set(headers) == {"host", "authorization", "http-referer", "x-title", "content-type", "content-length"}
    assert account["token"] not in orjson.dumps(received).decode()
    assert received["path"] == "/openrouter/api/v1/chat/completions"
    assert received["query"] == {"trace": "1", "x": "y"}
    body = received["body"]
    assert body["stream_options"] == {"foo": 1, "include_usage": True}
    assert "models" not in body
    assert body["model"] == MODEL


def test_client_headers_cannot_choose_the_upstream_cluster(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.url}/anything", headers={"x-gateway-upstream": "provider_openrouter"}, json={}
    )
    assert response.status_code == 404
    assert response.json() == {"error": "Not found"}


def test_response_headers_are_limited_to_the_whitelist(gateway: Gateway, auth: dict) -> None:
    for stream in (True, False):
        response = httpx.post(gateway.chat_url, json={"model": MODEL, "messages": MESSAGES, "stream": stream}, headers=auth)
        assert response.status_code == 200
        # The mock sends `server` and `cache-control`; framing headers are the HTTP layer's own.
        names = set(response.headers) - {"transfer-encoding", "content-length", "connection"}
        assert names == {"date", "content-type", "content-encoding"}
        assert response.headers["content-encoding"] == "identity"


def test_upstream_errors_pass_through_with_their_status(gateway: Gateway, auth: dict) -> None:
    response = httpx.post(
        gateway.chat_url, json={"model": MODEL, "messages": MESSAGES, "mock": {"status": 429}}, headers=auth
    )
    assert response.status_code == 429
    assert response.json() == {"error": {"message": "Mock upstream error 429", "code": 429}}


def test_metrics_count_requests_by_status_provider_and_model(gateway: Gateway, auth: dict) -> None:
    httpx.post(gateway.chat_url, json={"model": MODEL, "messages": MESSAGES}, headers=auth)
    httpx.post(gateway.chat_url, content=b"not json")
    text = gateway.metrics()
    assert f'llm_gateway_requests_total{{model="{MODEL}",provider="openrouter",status="200"}}' in text
    assert 'llm_gateway_requests_total{model="none",provider="none",status="400"}' in text
    for phase in ("request_headers", "request_body", "response_headers", "response_body"):
        assert f'llm_gateway_extproc_phase_seconds_count{{phase="{phase}"}}' in text
