"""Behaviour of the OpenRouter-compatible mock upstream (extproc/local/mock_upstream.py)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import re
import statistics
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from extproc.local import mock_upstream
from extproc.local.mock_upstream import (
    MockOptions,
    MockRequestError,
    add_cli_arguments,
    build_app,
    expected_text,
    expected_usage,
    options_from_cli,
    serve,
)

CHAT = "/api/v1/chat/completions"
GENERATION = "/api/v1/generation"
DEFAULTS = MockOptions()


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(build_app())) as test_client:
        yield test_client


def chat_body(text: str = "hello there world", **extra: Any) -> dict[str, Any]:
    return {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def split_events(raw: str) -> list[str]:
    assert raw.endswith("\n\n")
    return raw[:-2].split("\n\n")


def data_events(events: list[str]) -> list[dict[str, Any]]:
    """The JSON payloads of the `data:` events, excluding [DONE]."""
    return [orjson.loads(e[len("data: ") :]) for e in events if e.startswith("data: {")]


def content_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


async def stream(client: TestClient[Any, Any], body: dict[str, Any]) -> list[str]:
    response = await client.post(CHAT, json={**body, "stream": True})
    assert response.status == 200
    return split_events(await response.text())


async def generation(client: TestClient[Any, Any], generation_id: str) -> aiohttp.ClientResponse:
    return await client.get(GENERATION, params={"id": generation_id})


async def test_stream_event_sequence(client: TestClient[Any, Any]) -> None:
    body = chat_body()
    response = await client.post(CHAT, json={**body, "stream": True})
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in response.headers
    events = split_events(await response.text())

    assert events[0] == ": OPENROUTER PROCESSING"
    assert events[-1] == "data: [DONE]"
    role, *content, finish, usage_chunk = data_events(events)
    assert len(events) == 1 + 1 + len(content) + 2 + 1
    for chunk in (role, *content, finish, usage_chunk):
        assert chunk["id"] == role["id"] and re.fullmatch(r"gen-[0-9a-f]+", chunk["id"])
        assert chunk["provider"] == "MockProvider"
        assert chunk["model"] == "openai/gpt-4o-mini"
        assert chunk["object"] == "chat.completion.chunk"
        assert isinstance(chunk["created"], int)
    assert role["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "finish_reason": None,
            "native_finish_reason": None,
            "logprobs": None,
        }
    ]
    assert [c["choices"][0]["delta"]["content"] for c in content] == [
        "Mock ",
        "reply: ",
        "hello ",
        "there ",
        "world",
    ]
    assert content_of(content) == "Mock reply: hello there world" == expected_text(body, DEFAULTS)
    assert finish["choices"][0]["delta"]["content"] == ""
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["choices"][0]["native_finish_reason"] == "stop"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == expected_usage(body, DEFAULTS)
    assert usage_chunk["usage"]["completion_tokens"] == len(content)


async def test_stream_reasoning_keepalives_and_chunks(client: TestClient[Any, Any]) -> None:
    body = chat_body(mock={"reasoning": "think hard", "keepalives": 3, "chunks": 4})
    events = await stream(client, body)
    assert events[:3] == [": OPENROUTER PROCESSING"] * 3
    _role, *chunks, _finish, usage_chunk = data_events(events)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert [d.get("reasoning_content") for d in deltas[:2]] == ["think ", "hard"]
    assert content_of(chunks) == "w1 w2 w3 w4"
    assert len(chunks) == 6
    usage = usage_chunk["usage"]
    assert usage == expected_usage(body, DEFAULTS)
    assert usage["completion_tokens"] == 6
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 2}


async def test_json_response(client: TestClient[Any, Any]) -> None:
    body = {
        "model": "m/x",
        "messages": [
            {"role": "user", "content": "ignored, not the last user message"},
            {"role": "assistant", "content": "ok"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "part one"},
                    {"type": "image_url", "image_url": {"url": "data:"}},
                    {"type": "text", "text": "part two"},
                ],
            },
        ],
        "mock": {"provider": "Acme"},
    }
    response = await client.post("/v1/code/chat/completions", json=body)
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    payload = await response.json()
    assert set(payload) == {"id", "provider", "model", "object", "created", "choices", "usage"}
    assert payload["provider"] == "Acme" and payload["model"] == "m/x"
    assert payload["object"] == "chat.completion"
    assert payload["choices"] == [
        {
            "index": 0,
            "logprobs": None,
            "finish_reason": "stop",
            "native_finish_reason": "stop",
            "message": {
                "role": "assistant",
                "content": "Mock reply: part one part two",
                "refusal": None,
                "reasoning": None,
            },
        }
    ]
    assert payload["usage"] == expected_usage(body, DEFAULTS)


async def test_reply_text_rules() -> None:
    long_text = "x" * 500
    assert expected_text(chat_body(long_text), DEFAULTS) == ("Mock reply: " + long_text)[:200]
    assert expected_text(chat_body(mock={"content": " a  b "}), DEFAULTS) == " a  b "
    assert expected_text({"model": "m", "messages": []}, DEFAULTS) == "Mock reply: "
    # chunks wins over content: a benchmark asking for N chunks gets N chunks.
    assert expected_text(chat_body(mock={"content": "c", "chunks": 2}), DEFAULTS) == "w1 w2"


def test_cost_formula_is_exact() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "mock": {"content": "a b c"}}
    # len('[{"role":"user","content":"hi"}]') == 32 -> 8 prompt tokens, 2 cached.
    usage = expected_usage(body, DEFAULTS)
    assert usage == {
        "prompt_tokens": 8,
        "completion_tokens": 3,
        "total_tokens": 11,
        # 6 * 0.3 + 2 * 0.075 + 3 * 1.5 = 6.45 micro-USD
        "cost": float(Decimal("0.00000645")),
        "is_byok": False,
        "prompt_tokens_details": {"cached_tokens": 2},
        "cost_details": {"upstream_inference_cost": None},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    byok = expected_usage(body, MockOptions(is_byok=True, cached_tokens=0))
    # 8 * 0.3 + 3 * 1.5 = 6.9 micro-USD upstream; 5 % of it charged.
    assert byok["cost_details"] == {"upstream_inference_cost": float(Decimal("0.0000069"))}
    assert byok["cost"] == float(Decimal("0.000000345"))
    assert byok["is_byok"] is True


async def test_error_status_and_custom_body(client: TestClient[Any, Any]) -> None:
    response = await client.post(CHAT, json=chat_body(stream=True, mock={"status": 429}))
    assert response.status == 429
    assert response.headers["Content-Type"] == "application/json"
    assert await response.json() == {"error": {"message": "Mock upstream error 429", "code": 429}}

    custom = {"error": {"message": "boom", "code": 503, "metadata": {"raw": "x"}}}
    response = await client.post(CHAT, json=chat_body(mock={"status": 503, "error_body": custom}))
    assert response.status == 503
    assert await response.json() == custom


@pytest.mark.parametrize(
    ("raw", "message_part"),
    [
        (b"{not json", "invalid JSON"),
        (b"[]", "JSON object"),
        (orjson.dumps(chat_body(mock={"nope": 1})), "unknown mock option 'nope'"),
        (orjson.dumps(chat_body(mock={"chunks": -1})), "'chunks' must be"),
        (orjson.dumps(chat_body(mock={"is_byok": 1})), "'is_byok' must be"),
        (orjson.dumps(chat_body(mock={"status": 99})), "'status' must be"),
        (orjson.dumps(chat_body(mock=[])), '"mock" must be'),
        (orjson.dumps({"messages": []}), '"model"'),
    ],
)
async def test_bad_requests(client: TestClient[Any, Any], raw: bytes, message_part: str) -> None:
    response = await client.post(CHAT, data=raw, headers={"Content-Type": "application/json"})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == 400
    assert message_part in error["message"]


def test_expected_usage_rejects_what_the_server_rejects() -> None:
    with pytest.raises(MockRequestError):
        expected_usage(chat_body(mock={"nope": 1}), DEFAULTS)


def test_every_option_is_validated() -> None:
    names = {f.name for f in dataclasses.fields(MockOptions)}
    assert set(mock_upstream._OPTION_CHECKS) == names


async def test_mid_stream_error(client: TestClient[Any, Any]) -> None:
    events = await stream(client, chat_body(mock={"content": "a b c d", "error_after": 2}))
    assert events[-1] == "data: [DONE]"
    role, first, second, error = data_events(events)
    assert content_of([first, second]) == "a b "
    assert error["id"] == role["id"]
    assert error["error"] == {"code": 502, "message": "Mock mid-stream error"}
    assert error["choices"] == [
        {"index": 0, "delta": {"content": ""}, "finish_reason": "error", "native_finish_reason": "error"}
    ]
    data = (await (await generation(client, role["id"])).json())["data"]
    assert data["native_tokens_completion"] == 2
    assert data["finish_reason"] == "error"
    assert data["cancelled"] is False


async def test_cut_after_drops_the_connection_inside_an_event(client: TestClient[Any, Any]) -> None:
    response = await client.post(CHAT, json=chat_body(mock={"content": "a b c d", "cut_after": 2, "keepalives": 0}, stream=True))
    assert response.status == 200
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async for data in response.content.iter_any():
            received += data
    events = received.decode().split("\n\n")
    # Role chunk, two content chunks, then half of the third: no [DONE], no usage.
    role, first, second, half = events
    assert content_of(data_events([first, second])) == "a b "
    assert half.startswith("data: {") and not half.endswith("}")
    data = (await (await generation(client, orjson.loads(role[6:])["id"])).json())["data"]
    assert data["native_tokens_completion"] == 2
    assert data["finish_reason"] is None


async def test_malformed_after_sends_one_event_that_is_not_json(client: TestClient[Any, Any]) -> None:
    events = await stream(client, chat_body(mock={"content": "a b c", "malformed_after": 1, "keepalives": 0}))
    assert events[-1] == "data: [DONE]"
    bad = [e for e in events if e.startswith("data: {") and not e.endswith("}")]
    assert bad == ['data: {"id":"gen-malformed","choices":[{"delta":{"content":"unterminated']
    assert events.index(bad[0]) == 2  # after the role chunk and one content chunk
    chunks = data_events([e for e in events if e not in bad])
    assert content_of(chunks) == "a b c"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_answer_log_records_each_request_with_its_tag(client: TestClient[Any, Any]) -> None:
    served = await client.post(CHAT, json=chat_body(mock={"tag": "one"}))
    generation_id = (await served.json())["id"]
    await client.post(CHAT, json=chat_body(mock={"tag": "two", "status": 429}))
    answers = await (await client.get("/__mock/answers")).json()
    provider = CHAT.strip("/").partition("/")[0]
    assert answers == [
        {"tag": "one", "status": 200, "generation": generation_id, "provider": provider},
        {"tag": "two", "status": 429, "generation": None, "provider": provider},
    ]


async def test_faults_per_provider_and_attempt(client: TestClient[Any, Any]) -> None:
    """Issue 25: the n-th arrival of a tag at a provider gets the n-th fault, then it is served."""
    faults = {
        "openrouter": [{"status": 503, "retry_after": 7}, {"status": 429, "error_body": {"e": 1}}],
        "*": [{"status": 502}],
    }
    body = chat_body(mock={"tag": "f", "faults": faults})
    first = await client.post("/openrouter/api/v1/chat/completions", json=body)
    assert first.status == 503 and first.headers["Retry-After"] == "7"
    assert await first.json() == {"error": {"message": "Mock upstream error 503", "code": 503}}
    second = await client.post("/openrouter/api/v1/chat/completions", json=body)
    assert second.status == 429 and "Retry-After" not in second.headers and await second.json() == {"e": 1}
    third = await client.post("/openrouter/api/v1/chat/completions", json=body)
    assert third.status == 200
    # Another provider counts its own attempts, under "*".
    assert (await client.post("/vercel/v1/chat/completions", json=body)).status == 502
    assert (await client.post("/vercel/v1/chat/completions", json=body)).status == 200
    answers = [(a["provider"], a["attempt"], a["status"]) for a in await (await client.get("/__mock/answers")).json()]
    assert answers == [("openrouter", 1, 503), ("openrouter", 2, 429), ("openrouter", 3, 200), ("vercel", 1, 502), ("vercel", 2, 200)]


async def test_fault_reset_cuts_the_connection_before_any_status_line(client: TestClient[Any, Any]) -> None:
    body = chat_body(mock={"tag": "r", "faults": {"*": [{"reset": True}]}})
    with pytest.raises(aiohttp.ClientError):
        await client.post(CHAT, json=body)
    answers = await (await client.get("/__mock/answers")).json()
    assert [a["status"] for a in answers] == ["reset"]


async def test_fault_hang_holds_the_request_until_the_client_leaves(client: TestClient[Any, Any]) -> None:
    body = chat_body(mock={"tag": "h", "faults": {"*": [{"hang": True}]}})
    with pytest.raises(asyncio.TimeoutError):
        await client.post(CHAT, json=body, timeout=aiohttp.ClientTimeout(total=0.5))
    answers = await (await client.get("/__mock/answers")).json()
    assert [a["status"] for a in answers] == ["hang"]


@pytest.mark.parametrize(
    ("mock", "message_part"),
    [
        ({"faults": {"*": [{"status": 503}]}}, 'needs a "tag"'),
        ({"tag": "x", "faults": {"*": [{"bogus": 1}]}}, "faults"),
        ({"tag": "x", "faults": {"*": {"status": 503}}}, "faults"),
    ],
)
async def test_bad_faults_are_refused(client: TestClient[Any, Any], mock: dict[str, Any], message_part: str) -> None:
    response = await client.post(CHAT, json=chat_body(mock=mock))
    assert response.status == 400
    assert message_part in (await response.json())["error"]["message"]


async def test_no_usage(client: TestClient[Any, Any]) -> None:
    events = await stream(client, chat_body(mock={"no_usage": True, "keepalives": 0}))
    chunks = data_events(events)
    assert all(c["choices"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert events[-1] == "data: [DONE]"


async def test_chunk_delay_spaces_events(client: TestClient[Any, Any]) -> None:
    delay = 0.05
    body = chat_body(stream=True, mock={"content": "a b", "chunk_delay_ms": delay * 1000})
    response = await client.post(CHAT, json=body)
    arrivals = []
    while not response.content.at_eof():
        event = await response.content.readuntil(b"\n\n")
        if event:
            arrivals.append(time.monotonic())
    # keep-alive, role, 2 content, finish, usage, [DONE]: six gaps.
    assert len(arrivals) == 7
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    # A late arrival shortens the gap after it, so no single gap is bounded; the typical gap
    # and the whole span are (without the delay both would be about zero).
    assert statistics.median(gaps) >= delay * 0.6
    assert arrivals[-1] - arrivals[0] >= 6 * delay * 0.5


async def test_headers_delay(client: TestClient[Any, Any]) -> None:
    start = time.monotonic()
    response = await client.post(CHAT, json=chat_body(mock={"headers_delay_ms": 150}))
    assert response.status == 200
    assert time.monotonic() - start >= 0.12


async def test_generation_endpoint(client: TestClient[Any, Any]) -> None:
    body = chat_body(mock={"reasoning": "hmm", "is_byok": True, "provider": "P"})
    payload = await (await client.post(CHAT, json=body)).json()
    response = await client.get("/v1/generation", params={"id": payload["id"]})
    assert response.status == 200
    data = (await response.json())["data"]
    assert set(data) == {
        "id", "model", "provider_name", "total_cost", "upstream_inference_cost",
        "cache_discount", "native_tokens_prompt", "native_tokens_completion",
        "native_tokens_cached", "native_tokens_reasoning", "finish_reason", "latency",
        "generation_time", "moderation_latency", "streamed", "cancelled", "is_byok",
        "created_at",
    }  # fmt: skip
    usage = payload["usage"]
    assert data == {
        **data,
        "id": payload["id"],
        "model": "openai/gpt-4o-mini",
        "provider_name": "P",
        "total_cost": usage["cost"],
        "upstream_inference_cost": usage["cost_details"]["upstream_inference_cost"],
        "native_tokens_prompt": usage["prompt_tokens"],
        "native_tokens_completion": usage["completion_tokens"],
        "native_tokens_cached": usage["prompt_tokens_details"]["cached_tokens"],
        "native_tokens_reasoning": 1,
        "finish_reason": "stop",
        "moderation_latency": None,
        "streamed": False,
        "cancelled": False,
        "is_byok": True,
    }
    assert data["cache_discount"] == float(
        data["native_tokens_cached"] * (Decimal("0.225") * Decimal("0.000001"))
    )
    assert isinstance(data["latency"], int) and isinstance(data["generation_time"], int)
    assert isinstance(data["created_at"], str)

    unknown = await generation(client, "gen-unknown")
    assert unknown.status == 404
    assert await unknown.json() == {"error": {"message": "Generation not found", "code": 404}}


async def test_generation_delay(client: TestClient[Any, Any]) -> None:
    # 404 right after the stream, for a delay far longer than any stall of this machine; then
    # found once the delay has passed (polled, the timeout guards against a hang only).
    events = await stream(client, chat_body(mock={"generation_delay_ms": 3000}))
    generation_id = data_events(events)[0]["id"]
    assert (await generation(client, generation_id)).status == 404
    deadline = time.monotonic() + 30
    while (found := await generation(client, generation_id)).status == 404:
        assert time.monotonic() < deadline, "the generation was never recorded"
        await asyncio.sleep(0.1)
    data = (await found.json())["data"]
    assert data["streamed"] is True and data["finish_reason"] == "stop"


async def test_generations_are_bounded(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mock_upstream, "MAX_GENERATIONS", 2)
    ids = [(await (await client.post(CHAT, json=chat_body())).json())["id"] for _ in range(3)]
    assert len(set(ids)) == 3
    assert [(await generation(client, i)).status for i in ids] == [404, 200, 200]


async def test_client_disconnect_records_cancelled_generation(
    client: TestClient[Any, Any],
) -> None:
    body = chat_body(stream=True, mock={"chunks": 50, "chunk_delay_ms": 20, "keepalives": 0})
    response = await client.post(CHAT, json=body)
    role = orjson.loads((await response.content.readuntil(b"\n\n"))[len("data: ") :])
    for _ in range(3):
        await response.content.readuntil(b"\n\n")
    response.close()

    deadline = time.monotonic() + 3
    while (found := await generation(client, role["id"])).status == 404:
        assert time.monotonic() < deadline, "cancelled generation was never recorded"
        await asyncio.sleep(0.02)
    data = (await found.json())["data"]
    sent = data["native_tokens_completion"]
    assert data["cancelled"] is True
    assert data["finish_reason"] is None
    assert 3 <= sent < 50
    # Charged exactly like a complete reply of `sent` tokens.
    as_if_complete = expected_usage(chat_body(mock={"chunks": sent}), DEFAULTS)
    assert data["total_cost"] == as_if_complete["cost"]


async def test_request_recording(client: TestClient[Any, Any]) -> None:
    assert (await client.delete("/__mock/requests")).status == 204
    body = chat_body(mock={"content": "x"})
    await client.post(CHAT + "?trace=1", json=body, headers={"X-Custom-Header": "abc"})
    await client.post("/v1/chat/completions", data=b"{bad", headers={"Content-Type": "text/plain"})
    recorded = await (await client.get("/__mock/requests")).json()
    assert len(recorded) == 2
    first, second = recorded
    assert first["method"] == "POST"
    assert first["path"] == CHAT
    assert first["query"] == {"trace": "1"}
    assert first["headers"]["x-custom-header"] == "abc"
    assert first["body"] == body
    assert second["path"] == "/v1/chat/completions" and second["body"] is None

    assert (await client.delete("/__mock/requests")).status == 204
    assert await (await client.get("/__mock/requests")).json() == []


async def test_routing(client: TestClient[Any, Any]) -> None:
    health = await client.get("/__mock/health")
    assert health.status == 200 and await health.json() == {"status": "ok"}
    for path in ("/chat/completions", "/v1/chat/completions", "/a/b/c/chat/completions"):
        assert (await client.post(path, json=chat_body())).status == 200
    assert (await client.post("/v1/xchat/completions", json=chat_body())).status == 404
    assert (await client.get(CHAT)).status == 405
    assert (await client.get(GENERATION)).status == 400


async def test_many_chunks_stream(client: TestClient[Any, Any]) -> None:
    events = await stream(client, chat_body(mock={"chunks": 5000, "keepalives": 0}))
    chunks = data_events(events)
    assert len(chunks) == 5000 + 3
    assert chunks[-1]["usage"]["completion_tokens"] == 5000


def test_cli_options() -> None:
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 8090)
    assert options_from_cli(args) == MockOptions()

    args = parser.parse_args(
        ["--port", "0", "--chunk-delay-ms", "5", "--headers-delay-ms", "1.5", "--chunks", "7", "--keepalives", "0"]
    )
    assert options_from_cli(args) == MockOptions(
        chunk_delay_ms=5, headers_delay_ms=1.5, chunks=7, keepalives=0
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--chunks", "-1"])


async def test_serve(caplog: pytest.LogCaptureFixture) -> None:
    """serve() applies its defaults, and (with handler cancellation) records an
    aborted stream as soon as the client hangs up, without waiting out the delay."""
    caplog.set_level(logging.INFO, logger="extproc.local.mock_upstream")
    task = asyncio.create_task(serve("127.0.0.1", 0, MockOptions(chunks=3)))
    try:
        deadline = time.monotonic() + 5
        while not (match := re.search(r"mock upstream listening on (http://\S+)", caplog.text)):
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.01)
        async with aiohttp.ClientSession(match.group(1)) as session:
            async with session.post(CHAT, json=chat_body()) as response:
                payload = await response.json()
            assert payload["choices"][0]["message"]["content"] == "w1 w2 w3"

            slow = chat_body(stream=True, mock={"chunk_delay_ms": 5000, "keepalives": 0})
            async with session.post(CHAT, json=slow) as response:
                role = orjson.loads((await response.content.readuntil(b"\n\n"))[len("data: ") :])
                response.close()
            deadline = time.monotonic() + 2
            while (found := await session.get(GENERATION, params={"id": role["id"]})).status == 404:
                assert time.monotonic() < deadline, "cancelled generation was never recorded"
                await asyncio.sleep(0.01)
            data = (await found.json())["data"]
        assert data["cancelled"] is True and data["native_tokens_completion"] == 0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_max_tokens_cuts_the_reply_reasoning_first(client: TestClient[Any, Any]) -> None:
    body = chat_body(max_tokens=5, mock={"chunks": 10, "reasoning": "one two three"})
    response = await client.post(CHAT, json=body)
    reply = await response.json()
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["choices"][0]["message"]["content"] == "w1 w2 "
    assert reply["usage"]["completion_tokens"] == 5
    assert reply["usage"]["completion_tokens_details"]["reasoning_tokens"] == 3
    assert reply["usage"] == expected_usage(body, DEFAULTS)

    streamed = await client.post(CHAT, json={**body, "stream": True, "max_completion_tokens": 2})
    chunks = data_events(split_events(await streamed.text()))
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert content_of(chunks) == "" and chunks[-1]["usage"]["completion_tokens"] == 2
    generation = await client.get(GENERATION, params={"id": chunks[0]["id"]})
    assert (await generation.json())["data"]["finish_reason"] == "length"


@pytest.mark.parametrize("limit", [-1, 0, 2.5, "3", True, None])
async def test_a_limit_that_is_not_a_positive_integer_is_ignored(client: TestClient[Any, Any], limit: Any) -> None:
    reply = await (await client.post(CHAT, json=chat_body(max_tokens=limit, mock={"chunks": 4}))).json()
    assert reply["choices"][0]["finish_reason"] == "stop" and reply["usage"]["completion_tokens"] == 4


async def test_models_lists_the_prices_the_mock_bills(client: TestClient[Any, Any]) -> None:
    listed = (await (await client.get("/openrouter/api/v1/models")).json())["data"]
    gpt = next(m for m in listed if m["id"] == "openai/gpt-4o-mini")
    assert gpt["pricing"]["prompt"] == "0.0000003" and gpt["pricing"]["completion"] == "0.0000015"
    assert gpt["pricing"]["input_cache_read"] == "0.000000075"
    assert gpt["top_provider"]["max_completion_tokens"] == 65_536
    # 8 prompt tokens (2 cached) and 3 completion tokens at those prices: docs/mock-upstream.md.
    assert Decimal("6") * Decimal(gpt["pricing"]["prompt"]) + 2 * Decimal(gpt["pricing"]["input_cache_read"]) + 3 * Decimal(
        gpt["pricing"]["completion"]
    ) == Decimal("0.00000645")
    vercel = (await (await client.get("/vercel/v1/models")).json())["data"]
    assert {"id": "zai/glm-5"}.items() <= next(m for m in vercel if m["id"] == "zai/glm-5").items()
    assert all(m["pricing"]["output"] == "0.0000015" for m in vercel)

    assert (await client.put("/__mock/models", json={"status": 502, "raw": "not json"})).status == 204
    broken = await client.get("/openrouter/api/v1/models")
    assert broken.status == 502 and await broken.text() == "not json"
    assert (await client.delete("/__mock/models")).status == 204
    assert (await client.get("/openrouter/api/v1/models")).status == 200
