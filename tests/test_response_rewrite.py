"""The free-model response rewrite (contract 6.4, decision 16): golden bytes, chunking, errors."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.errors import INVALID_UPSTREAM_STREAM
from extproc.response.rewrite import (
    DONE,
    SseRewriter,
    is_json_content_type,
    rewrite_body,
    rewrite_json_body,
)

PUBLIC = "moonshotai/kimi-k2.5:free"

# A free-model stream as OpenRouter sends it: keep-alives, a role chunk, a chunk with
# `role: null` (some providers), reasoning in DeepSeek style (`reasoning_content`), content
# with multi-byte characters, the finish chunk, a usage chunk without `choices` and with
# the cost fields, and `[DONE]`.
UPSTREAM = (
    ": OPENROUTER PROCESSING\n\n"
    ": OPENROUTER PROCESSING\n\n"
    'data: {"id":"gen-1","provider":"Moonshot AI","model":"moonshotai/kimi-k2.5","object":"chat.completion.chunk","created":1767225600,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}\n\n'
    'data: {"id":"gen-1","provider":"Moonshot AI","model":"moonshotai/kimi-k2.5","object":"chat.completion.chunk","created":1767225600,"choices":[{"index":0,"delta":{"role":null,"content":"","reasoning_content":"The user greets me."},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}\n\n'
    'data: {"id":"gen-1","provider":"Moonshot AI","model":"moonshotai/kimi-k2.5","object":"chat.completion.chunk","created":1767225600,"choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning":"","reasoning_content":" Reply in kind \u2713.","reasoning_details":[{"type":"reasoning.text","text":"kept","index":0}]},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}\n\n'
    ": OPENROUTER PROCESSING\n\n"
    'data: {"id":"gen-1","provider":"Moonshot AI","model":"moonshotai/kimi-k2.5","object":"chat.completion.chunk","created":1767225600,"choices":[{"index":0,"delta":{"role":"assistant","content":"H\u00e9llo","reasoning_content":""},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}\n\n'
    'data: {"id":"gen-1","provider":"Moonshot AI","model":"moonshotai/kimi-k2.5","object":"chat.completion.chunk","created":1767225600,"choices":[{"index":0,"delta":{"role":"assistant","content":" \U0001f44b world"},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}\n\n'
    'data: {"id":"gen-1","provider":"Moonshot AI","model":"moonshotai/kimi-k2.5","object":"chat.completion.chunk","created":1767225600,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"stop","native_finish_reason":"stop","logprobs":null}]}\n\n'
    'data: {"id":"gen-1","provider":"Moonshot AI","model":"moonshotai/kimi-k2.5","object":"chat.completion.chunk","created":1767225600,"usage":{"prompt_tokens":14,"completion_tokens":12,"total_tokens":26,"cost":0,"is_byok":false,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"cost_details":{"upstream_inference_cost":null,"upstream_inference_prompt_cost":0,"upstream_inference_completions_cost":0},"completion_tokens_details":{"reasoning_tokens":7,"image_tokens":0}}}\n\n'
    "data: [DONE]\n\n"
).encode()

# Written by hand from the rules of 6.4, not produced by the code under test.
EXPECTED = (
    ": KILO PROCESSING\n\n"
    ": KILO PROCESSING\n\n"
    'data: {"id":"gen-1","provider":"Moonshot AI","model":"moonshotai/kimi-k2.5:free","object":"chat.completion.chunk","created":1767225600,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}\n\n'
    'data: {"id":"gen-1","provider":"Moonshot AI","model":"moonshotai/kimi-k2.5:free","object":"chat.completion.chunk","created":1767225600,"choices":[{"index":0,"delta":{"content":"","reasoning":"The user greets me.","reasoning_details":[{"type":"reasoning.text","text":"The user greets me."}]},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}\n\n'
    'data: {"id":"gen-1","provider":"Moonshot AI","model":"moonshotai/kimi-k2.5:free","object":"chat.completion.chunk","created":1767225600,"choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning":" Reply in kind \u2713.","reasoning_details":[{"type":"reasoning.text","text":"kept","index":0}]},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}\n\n'
    ": KILO PROCESSING\n\n"
    'data: {"id":"gen-1","provider":"Moonshot AI","model":"moonshotai/kimi-k2.5:free","object":"chat.completion.chunk","created":1767225600,"choices":[{"index":0,"delta":{"role":"assistant","content":"H\u00e9llo","reasoning_content":""},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}\n\n'
    'data: {"id":"gen-1","provider":"Moonshot AI","model":"moonshotai/kimi-k2.5:free","object":"chat.completion.chunk","created":1767225600,"choices":[{"index":0,"delta":{"role":"assistant","content":" \U0001f44b world"},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}\n\n'
    'data: {"id":"gen-1","provider":"Moonshot AI","model":"moonshotai/kimi-k2.5:free","object":"chat.completion.chunk","created":1767225600,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"stop","native_finish_reason":"stop","logprobs":null}]}\n\n'
    'data: {"id":"gen-1","provider":"Moonshot AI","model":"moonshotai/kimi-k2.5:free","object":"chat.completion.chunk","created":1767225600,"usage":{"prompt_tokens":14,"completion_tokens":12,"total_tokens":26,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":7,"image_tokens":0}},"choices":[]}\n\n'
    "data: [DONE]\n\n"
).encode()


def rewrite(*chunks: bytes, model: str = PUBLIC) -> bytes:
    rewriter = SseRewriter(model)
    return b"".join(rewriter.feed(chunk) for chunk in chunks) + rewriter.finish()


def split_everywhere(stream: bytes) -> list[tuple[bytes, bytes]]:
    return [(stream[:i], stream[i:]) for i in range(len(stream) + 1)]


def test_golden_stream() -> None:
    assert rewrite(UPSTREAM) == EXPECTED


def test_split_at_every_byte_offset() -> None:
    for offset, (head, tail) in enumerate(split_everywhere(UPSTREAM)):
        assert rewrite(head, tail) == EXPECTED, offset


def test_one_byte_chunks() -> None:
    assert rewrite(*(UPSTREAM[i : i + 1] for i in range(len(UPSTREAM)))) == EXPECTED


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(UPSTREAM)), max_size=40))
def test_any_chunking(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(UPSTREAM)]
    assert rewrite(*(UPSTREAM[a:b] for a, b in zip(bounds, bounds[1:]))) == EXPECTED


def test_crlf_input() -> None:
    crlf = UPSTREAM.replace(b"\n", b"\r\n")
    assert rewrite(crlf) == EXPECTED
    for offset, (head, tail) in enumerate(split_everywhere(crlf)):
        assert rewrite(head, tail) == EXPECTED, offset


def test_each_chunk_is_answered_with_the_events_it_completed() -> None:
    rewriter = SseRewriter(PUBLIC)
    assert rewriter.feed(b": OPENROUTER PROCESSING\n") == b": KILO PROCESSING\n\n"
    assert rewriter.feed(b"\n") == b""
    assert rewriter.feed(b'data: {"model":"m","choices":[]}') == b""
    assert rewriter.feed(b"\n") == b""  # the event is complete only at its blank line
    assert rewriter.feed(b"\n") == b'data: {"model":"moonshotai/kimi-k2.5:free","choices":[]}\n\n'
    assert rewriter.feed(b'data: {"choices":[]}\n\ndata: {"a":1}\n\n') == (
        b'data: {"choices":[]}\n\ndata: {"a":1,"choices":[]}\n\n'
    )
    assert rewriter.feed(b"data: [DONE]\n\n") == b""
    assert rewriter.finish() == DONE
    assert rewriter.feed(b'data: {"choices":[]}\n\n') == b""  # after the end, nothing
    assert rewriter.finish() == b""
    assert not rewriter.failed


def test_finish_flushes_an_event_without_its_blank_line() -> None:
    assert rewrite(b'data: {"model":"x","choices":[]}') == (
        b'data: {"model":"moonshotai/kimi-k2.5:free","choices":[]}\n\n' + DONE
    )


def test_empty_upstream_body_ends_with_done() -> None:
    assert rewrite() == DONE
    assert rewrite(b"") == DONE


def test_event_id_and_other_fields_are_not_reemitted() -> None:
    stream = b'event: message\nid: 7\nretry: 100\ndata: {"model":"x",\ndata: "choices":[]}\n\n'
    # Two data lines join with "\n", still one JSON document; output is compact again.
    assert rewrite(stream) == b'data: {"model":"moonshotai/kimi-k2.5:free","choices":[]}\n\n' + DONE


def test_every_comment_becomes_kilo_processing() -> None:
    stream = b":\n: anything\n:OPENROUTER PROCESSING\n\n"
    assert rewrite(stream) == b": KILO PROCESSING\n\n" * 3 + DONE


def test_only_exact_done_is_dropped_wherever_it_is() -> None:
    stream = b'data: [DONE]\n\ndata: {"choices":[]}\n\ndata: [DONE]\n\n'
    assert rewrite(stream) == b'data: {"choices":[]}\n\n' + DONE
    # "[DONE] " is not the marker; it is not JSON either, so the stream errors.
    assert rewrite(b"data: [DONE] \n\n").startswith(b'data: {"error":')


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        pytest.param({"choices": []}, {"choices": []}, id="model-absent-not-added"),
        pytest.param({"model": "", "choices": []}, {"model": "", "choices": []}, id="model-empty-kept"),
        pytest.param({"model": None, "choices": []}, {"model": None, "choices": []}, id="model-null-kept"),
        pytest.param({"choices": None}, {"choices": []}, id="choices-null"),
        pytest.param({"usage": {"total_tokens": 1}}, {"usage": {"total_tokens": 1}, "choices": []}, id="choices-missing"),
        pytest.param(
            {"choices": [{"delta": {"role": "assistant"}}]},
            {"choices": [{"delta": {"role": "assistant"}}]},
            id="role-set-kept",
        ),
        pytest.param(
            {"choices": [{"delta": {"content": "a"}}, {"delta": {"role": None}}]},
            {"choices": [{"delta": {"content": "a"}}, {"delta": {"role": None}}]},
            id="only-first-choice",
        ),
        pytest.param(
            {"choices": [{"delta": {"reasoning_content": "r", "reasoning": "own"}}]},
            {"choices": [{"delta": {"reasoning": "own", "reasoning_details": [{"type": "reasoning.text", "text": "r"}]}}]},
            id="reasoning-kept-when-set",
        ),
        pytest.param(
            {"choices": [{"delta": {"reasoning_content": "r", "reasoning": None, "reasoning_details": None}}]},
            {"choices": [{"delta": {"reasoning": "r", "reasoning_details": [{"type": "reasoning.text", "text": "r"}]}}]},
            id="reasoning-null-filled",
        ),
        pytest.param(
            {"choices": [{"delta": {"reasoning_content": "r", "reasoning_details": []}}]},
            {"choices": [{"delta": {"reasoning_details": [], "reasoning": "r"}}]},
            id="empty-details-list-kept",  # JS: [] is truthy
        ),
        pytest.param(
            {"choices": [{"delta": {"reasoning_content": None}}]},
            {"choices": [{"delta": {"reasoning_content": None}}]},
            id="reasoning-content-null-kept",
        ),
        pytest.param(
            {"choices": [], "usage": {"cost": 1.5, "cost_details": {}, "is_byok": True, "total_tokens": 3}},
            {"choices": [], "usage": {"total_tokens": 3}},
            id="usage-cost-stripped",
        ),
        pytest.param(
            {"error": {"code": 502, "message": "Provider disconnected"}, "model": "up", "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]},
            {"error": {"code": 502, "message": "Provider disconnected"}, "model": PUBLIC, "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]},
            id="mid-stream-error-chunk-passes",
        ),
    ],
)
def test_chunk_rules(chunk: dict[str, object], expected: dict[str, object]) -> None:
    out = rewrite(b"data: " + orjson.dumps(chunk) + b"\n\n")
    assert out == b"data: " + orjson.dumps(expected) + b"\n\n" + DONE


# --- Invalid JSON in a data event ----------------------------------------------------------

GOOD = b'data: {"id":"gen-9","model":"up","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
GOOD_OUT = b'data: {"id":"gen-9","model":"moonshotai/kimi-k2.5:free","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
ERROR_EVENT = (
    b'data: {"id":"gen-9","error":{"code":502,"message":"The upstream provider returned an invalid response.",'
    b'"type":"invalid_response"}}\n\n'
)
BROKEN_STREAM = b": OPENROUTER PROCESSING\n\n" + GOOD + b'data: {"choices":[{"delta":{"content":"tr\n\n' + GOOD + b": x\n\ndata: [DONE]\n\n"
BROKEN_EXPECTED = b": KILO PROCESSING\n\n" + GOOD_OUT + ERROR_EVENT + DONE


def test_invalid_json_ends_the_stream_cleanly() -> None:
    rewriter = SseRewriter(PUBLIC)
    assert rewriter.feed(BROKEN_STREAM) == BROKEN_EXPECTED
    assert rewriter.failed
    assert rewriter.feed(GOOD) == b""  # the rest of the upstream is swallowed
    assert rewriter.finish() == b""
    assert orjson.loads(ERROR_EVENT[6:])["error"] == INVALID_UPSTREAM_STREAM.body["error"]


def test_invalid_json_at_any_split_gives_the_same_bytes() -> None:
    for offset, (head, tail) in enumerate(split_everywhere(BROKEN_STREAM)):
        assert rewrite(head, tail) == BROKEN_EXPECTED, offset


def test_invalid_pending_event_at_finish() -> None:
    rewriter = SseRewriter(PUBLIC)
    assert rewriter.feed(GOOD + b"data: {") == GOOD_OUT
    assert rewriter.finish() == ERROR_EVENT + DONE
    assert rewriter.failed


@pytest.mark.parametrize(
    "data",
    [b"42", b'"text"', b"null", b"[1,2]", b"{'a':1}", b'{"a":NaN}', b'{"a":Infinity}', b""],
)
def test_non_object_or_invalid_json_errors_the_stream(data: bytes) -> None:
    out = rewrite(b"data: " + data + b"\n\n")
    assert out == b'data: {"error":' + orjson.dumps(INVALID_UPSTREAM_STREAM.body["error"]) + b"}\n\n" + DONE


def test_oversized_event_errors_the_stream() -> None:
    # The parser drops an event beyond its limit instead of buffering it; a piece of the
    # answer is then missing, so the stream ends as for invalid JSON.
    rewriter = SseRewriter(PUBLIC, max_event_bytes=len(GOOD))
    assert rewriter.feed(GOOD + b"data: " + b"x" * len(GOOD)) == GOOD_OUT + ERROR_EVENT + DONE
    assert rewriter.failed
    assert rewriter.feed(b"\n\n" + GOOD) == b""


def test_escaped_lone_surrogate_is_accepted_like_json_parse() -> None:
    # A provider splitting an escaped surrogate pair across chunks; JSON.parse accepts it and
    # JSON.stringify escapes it again.
    out = rewrite(b'data: {"model":"up","choices":[{"delta":{"content":"\\ud83d \xc3\xa9"}}]}\n\n')
    assert out == (
        b'data: {"model":"moonshotai/kimi-k2.5:free","choices":[{"delta":{"content":"\\ud83d \\u00e9"}}]}\n\n' + DONE
    )


def test_number_beyond_double_range_becomes_null_like_json_stringify() -> None:
    assert rewrite(b'data: {"a":1e400,"choices":[]}\n\n') == b'data: {"a":null,"choices":[]}\n\n' + DONE


# --- Non-streamed bodies --------------------------------------------------------------------

JSON_UPSTREAM = (
    '{"id":"gen-2","provider":"GigaPotato","model":"ep-20260109111813-hztxv","object":"chat.completion",'
    '"created":1767225600,"choices":[{"logprobs":null,"finish_reason":"stop","native_finish_reason":"stop",'
    '"index":0,"message":{"role":"assistant","content":"Hello \u2014 hi!","refusal":null,'
    '"reasoning_content":"Greet back."}}],'
    '"usage":{"prompt_tokens":20,"completion_tokens":5,"total_tokens":25,"cost":0.00001,"is_byok":false,'
    '"prompt_tokens_details":{"cached_tokens":0},"cost_details":{"upstream_inference_cost":null}}}'
).encode()
JSON_EXPECTED = (
    '{"id":"gen-2","provider":"GigaPotato","model":"giga-potato","object":"chat.completion",'
    '"created":1767225600,"choices":[{"logprobs":null,"finish_reason":"stop","native_finish_reason":"stop",'
    '"index":0,"message":{"role":"assistant","content":"Hello \u2014 hi!","refusal":null,'
    '"reasoning":"Greet back.","reasoning_details":[{"type":"reasoning.text","text":"Greet back."}]}}],'
    '"usage":{"prompt_tokens":20,"completion_tokens":5,"total_tokens":25,'
    '"prompt_tokens_details":{"cached_tokens":0}}}'
).encode()


def test_json_body_golden() -> None:
    assert rewrite_json_body(JSON_UPSTREAM, "giga-potato") == JSON_EXPECTED
    assert rewrite_body(JSON_UPSTREAM, "application/json; charset=utf-8", "giga-potato") == JSON_EXPECTED


def test_json_body_rules() -> None:
    # No `choices: []` added and no `role` removal outside the stream; model only when set.
    body = b'{"choices":[{"message":{"role":null}}],"usage":{"is_byok":true}}'
    assert rewrite_json_body(body, PUBLIC) == b'{"choices":[{"message":{"role":null}}],"usage":{}}'
    assert rewrite_json_body(b'{\n  "usage": null\n}', PUBLIC) == b'{"usage":null}'


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b"null", b'{"a":', b"\xff"])
def test_json_body_that_is_not_an_object_passes_unchanged(body: bytes) -> None:
    assert rewrite_json_body(body, PUBLIC) == body


# --- Decision 16: upstream error bodies of free models go through the rewriter -------------


def test_json_error_body_through_the_rewriter() -> None:
    upstream = (
        b'{\n  "error": {"message": "Provider returned error", "code": 429,\n'
        b'    "metadata": {"raw": "moonshotai/kimi-k2.5 is temporarily rate-limited upstream", "provider_name": "Moonshot AI"}},\n'
        b'  "user_id": "user_123"\n}'
    )
    assert rewrite_body(upstream, "application/json", PUBLIC) == (
        b'{"error":{"message":"Provider returned error","code":429,'
        b'"metadata":{"raw":"moonshotai/kimi-k2.5 is temporarily rate-limited upstream","provider_name":"Moonshot AI"}},'
        b'"user_id":"user_123"}'
    )


def test_non_json_error_body_through_the_rewriter() -> None:
    # As in the reference: a text body is read as SSE, its lines are unknown fields, and
    # only the closing [DONE] remains.
    assert rewrite_body(b"Internal Server Error", "text/plain", PUBLIC) == DONE
    assert rewrite_body(b"<html><body>502 Bad Gateway</body></html>\n", None, PUBLIC) == DONE


def test_sse_error_body_through_the_rewriter() -> None:
    upstream = b'data: {"error":{"message":"No endpoints found","code":404}}\n\n'
    assert rewrite_body(upstream, "text/event-stream", PUBLIC) == (
        b'data: {"error":{"message":"No endpoints found","code":404},"choices":[]}\n\n' + DONE
    )


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("text/event-stream", False),
        ("text/plain", False),
        (None, False),
    ],
)
def test_is_json_content_type(content_type: str | None, expected: bool) -> None:
    assert is_json_content_type(content_type) is expected
