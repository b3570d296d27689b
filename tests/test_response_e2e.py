"""Response handling through real Envoy (behaviour.md section 6): pass-through byte for byte,
the free-model rewrite, 402 to 503, readable errors."""

from __future__ import annotations

import httpx
import orjson

from tests.bodies import SERVICE_UNAVAILABLE
from tests.conftest import Gateway, fresh_ip

PAID = "anthropic/claude-sonnet-4.6"
KILO_FREE = "minimax/minimax-m2.5:free"
STEALTH_FREE = "giga-potato"
MESSAGES = [{"role": "user", "content": "Tell me something"}]


def post(gateway: Gateway, body: dict, auth: dict | None = None) -> httpx.Response:
    headers = {"x-forwarded-for": fresh_ip(), **(auth or {})}
    return httpx.post(gateway.chat_url, json={"messages": MESSAGES, **body}, headers=headers, timeout=30)


def test_a_paid_models_stream_passes_through_byte_for_byte(upstream: Gateway, auth: dict) -> None:
    response = post(upstream, {"model": PAID, "stream": True, "mock": {"keepalives": 2, "reasoning": "hmm"}}, auth)
    assert response.status_code == 200
    [received] = upstream.upstream_requests()
    assert response.content == received["response"].encode()
    assert b": OPENROUTER PROCESSING" in response.content


def test_a_paid_models_json_passes_through_byte_for_byte(upstream: Gateway, auth: dict) -> None:
    response = post(upstream, {"model": PAID}, auth)
    [received] = upstream.upstream_requests()
    assert response.content == received["response"].encode()


def _events(body: bytes) -> list[bytes]:
    return [event for event in body.split(b"\n\n") if event]


def test_free_model_stream_is_rewritten(gateway: Gateway) -> None:
    response = post(gateway, {"model": KILO_FREE, "stream": True, "mock": {"keepalives": 2, "reasoning": "deep thought"}})
    assert response.status_code == 200
    events = _events(response.content)
    assert events[:2] == [b": KILO PROCESSING", b": KILO PROCESSING"]
    assert events[-1] == b"data: [DONE]"
    assert response.content.count(b"[DONE]") == 1
    chunks = [orjson.loads(event[6:]) for event in events[2:-1]]
    assert all(chunk["model"] == KILO_FREE for chunk in chunks)
    assert all("choices" in chunk for chunk in chunks)
    reasoning = [c["choices"][0]["delta"] for c in chunks if c["choices"] and "reasoning" in c["choices"][0]["delta"]]
    assert reasoning[0]["reasoning"] == "deep "
    assert reasoning[0]["reasoning_details"] == [{"type": "reasoning.text", "text": "deep "}]
    assert all("reasoning_content" not in c["choices"][0]["delta"] for c in chunks if c["choices"])
    usage = chunks[-1]["usage"]
    assert usage["prompt_tokens"] > 0
    assert not {"cost", "cost_details", "is_byok"} & set(usage)


def test_free_model_json_is_rewritten(gateway: Gateway) -> None:
    response = post(gateway, {"model": KILO_FREE, "mock": {"reasoning": "why not"}})
    body = response.json()
    assert body["model"] == KILO_FREE
    assert not {"cost", "cost_details", "is_byok"} & set(body["usage"])
    message = body["choices"][0]["message"]
    assert message["reasoning"] == "why not"


def test_upstream_402_on_the_gateways_key_becomes_503(upstream: Gateway, auth: dict) -> None:
    response = post(upstream, {"model": PAID, "mock": {"status": 402}}, auth)
    assert response.status_code == 503
    assert response.json() == SERVICE_UNAVAILABLE
    assert set(response.headers) - {"content-length", "transfer-encoding", "connection"} == {
        "date",
        "content-type",
        "content-encoding",
    }


def test_stealth_model_errors_are_masked(gateway: Gateway) -> None:
    response = post(gateway, {"model": STEALTH_FREE, "mock": {"status": 500}})
    assert response.status_code == 500
    text = "Stealth model unable to process request"
    assert response.json() == {"error": text, "message": text}


def test_free_model_context_overflow_is_explained(gateway: Gateway) -> None:
    # minimax-m2.5:free has 204,800 tokens of context; max_tokens alone exceeds it.
    response = post(gateway, {"model": KILO_FREE, "max_tokens": 300_000, "mock": {"status": 400}})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == body["message"]
    assert body["error"].startswith("The maximum context length is 204800 tokens. However, about 3000")


def test_other_upstream_errors_pass_through(gateway: Gateway, auth: dict) -> None:
    response = post(gateway, {"model": PAID, "mock": {"status": 500, "error_body": {"error": "boom"}}}, auth)
    assert response.status_code == 500
    assert response.json() == {"error": "boom"}
