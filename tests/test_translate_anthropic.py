"""Chat completions <-> Anthropic Messages (contract 3.4): the exact provider body for each
request rule, and the chat chunks for a provider stream split at every byte offset."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.translate.chat import ChunkWriter
from extproc.translate.chat_to_anthropic import AnthropicTranslator, anthropic_request

MODEL = "kilo-internal/claude"
PNG = "data:image/png;base64,iVBORw0KGgo="


def request(body: dict[str, Any], *, legacy: bool = False) -> dict[str, Any]:
    return anthropic_request(body, model="claude-internal", api_key="sk-ant", default_max_tokens=8192,
                             legacy_extension=legacy).body


def test_request_headers_and_path() -> None:
    translated = anthropic_request({"messages": []}, model="m", api_key="sk-ant", default_max_tokens=1,
                                   legacy_extension=False)
    assert translated.path == "/messages"
    assert translated.headers == {
        "x-api-key": "sk-ant",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "context-1m-2025-08-07",
    }


def test_request_conversation_tools_images_and_options() -> None:
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 100,
        "max_completion_tokens": 200,
        "temperature": 0.2,
        "verbosity": "high",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": PNG}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ]},
            {"role": "assistant", "content": "Calling.", "reasoning_details": [
                {"type": "reasoning.text", "text": "Think", "index": 0, "format": "anthropic-claude-v1"},
                {"type": "reasoning.text", "text": "ing.", "index": 0, "format": "anthropic-claude-v1"},
                {"type": "reasoning.text", "text": "", "signature": "sig-1", "index": 0},
                {"type": "reasoning.encrypted", "data": "opaque", "index": 1},
            ], "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "read", "arguments": "{\"path\":\"a.py\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "print(1)"},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "read", "description": "Read a file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        }}],
        "tool_choice": {"type": "function", "function": {"name": "read"}},
        "parallel_tool_calls": False,
    }
    assert request(body) == {
        "model": "claude-internal",
        "max_tokens": 200,  # max_completion_tokens ?? max_tokens
        "thinking": {"type": "adaptive"},
        "system": [{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Thinking.", "signature": "sig-1"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Calling."},
                {"type": "tool_use", "id": "call_1", "name": "read", "input": {"path": "a.py"}},
            ]},
            # The tool result and the next user turn share one user turn.
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "print(1)"},
                {"type": "text", "text": "Thanks"},
            ]},
        ],
        "output_config": {"effort": "high"},
        "tools": [{"name": "read", "description": "Read a file",
                   "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}],
        "tool_choice": {"type": "tool", "name": "read", "disable_parallel_tool_use": True},
        "stream": True,
    }


def test_request_max_tokens_falls_back_to_max_tokens_then_the_row() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert request({"messages": messages, "max_tokens": 50})["max_tokens"] == 50
    assert request({"messages": messages})["max_tokens"] == 8192


def test_request_tool_choice_rules() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    messages = [{"role": "user", "content": "hi"}]
    converted = [{"name": "f", "input_schema": {"type": "object"}}]
    assert request({"messages": messages, "tools": tools, "tool_choice": "required"})["tool_choice"] == {"type": "any"}
    assert request({"messages": messages, "tools": tools, "tool_choice": "auto"})["tool_choice"] == {"type": "auto"}
    assert "tool_choice" not in request({"messages": messages, "tools": tools})
    # `none`: Anthropic is not offered the tools at all.
    none = request({"messages": messages, "tools": tools, "tool_choice": "none"})
    assert "tools" not in none and "tool_choice" not in none
    # The legacy extension never gets parallel tool use.
    legacy = request({"messages": messages, "tools": tools}, legacy=True)
    assert legacy["tools"] == converted
    assert legacy["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


# --- response -----------------------------------------------------------------------------------


def events(*pairs: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(f"event: {name}\r\ndata: {orjson.dumps(data).decode()}\r\n\r\n".encode() for name, data in pairs)


STREAM = events(
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-internal", "content": [],
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 3, "output_tokens": 1},
    }}),
    ("ping", {"type": "ping"}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "thinking_delta", "thinking": "Hmm, é."}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "signature_delta", "signature": "sig"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hel"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "lo"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("content_block_start", {"type": "content_block_start", "index": 2,
                             "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2,
                             "delta": {"type": "input_json_delta", "partial_json": "{\"a\""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2,
                             "delta": {"type": "input_json_delta", "partial_json": ":1}"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 2}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 20}}),
    ("message_stop", {"type": "message_stop"}),
)


def chunk(delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta}
    if "finish_reason" in extra:
        choice["finish_reason"] = extra.pop("finish_reason")
    return {"id": "msg_1", "object": "chat.completion.chunk", "model": MODEL, "choices": [choice], **extra}


def sse(*objects: dict[str, Any], done: bool = True) -> bytes:
    return b"".join(b"data: " + orjson.dumps(o) + b"\n\n" for o in objects) + (b"data: [DONE]\n\n" if done else b"")


FINAL_USAGE = {"prompt_tokens": 18, "completion_tokens": 20, "total_tokens": 38,
               "prompt_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 3}}
EXPECTED = sse(
    chunk({"reasoning": "Hmm, é.", "reasoning_details": [
        {"type": "reasoning.text", "text": "Hmm, é.", "index": 0, "format": "anthropic-claude-v1"}]}),
    chunk({"reasoning_details": [
        {"type": "reasoning.text", "text": "", "signature": "sig", "index": 0, "format": "anthropic-claude-v1"}]}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk({"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
    chunk({}, finish_reason="tool_calls", usage=FINAL_USAGE),
)


def translator() -> AnthropicTranslator:
    return AnthropicTranslator(ChunkWriter(model=MODEL))


def test_stream_split_at_every_byte_offset_gives_the_same_chat_stream() -> None:
    for offset in range(len(STREAM) + 1):
        t = translator()
        out = t.feed(STREAM[:offset]) + t.feed(STREAM[offset:]) + t.finish()
        assert out == EXPECTED, offset


def test_stream_cut_before_message_stop_still_reports_usage() -> None:
    cut = STREAM[: STREAM.index(b"event: message_delta")]
    t = translator()
    out = t.feed(cut) + t.finish()
    usage = {"prompt_tokens": 18, "completion_tokens": 1, "total_tokens": 19,
             "prompt_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 3}}
    assert out.endswith(sse(chunk({}, finish_reason="stop", usage=usage)))


def test_mid_stream_error_becomes_an_error_chunk() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    raw = STREAM[: STREAM.index(b"event: content_block_start")] + events(("error", error))
    t = translator()
    out = t.feed(raw) + t.finish()
    assert out == sse({"error": {"message": "Overloaded", "code": 529, "type": "error",
                                 "metadata": {"raw": orjson.dumps(error).decode()}}}, done=False)


def test_whole_message_becomes_a_chat_completion() -> None:
    message = {
        "id": "msg_2", "type": "message", "role": "assistant", "model": "claude-internal",
        "content": [
            {"type": "thinking", "thinking": "Plan.", "signature": "sig"},
            {"type": "text", "text": "Done."},
            {"type": "tool_use", "id": "toolu_9", "name": "g", "input": {"x": [1, 2]}},
        ],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 4, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 6, "output_tokens": 9},
    }
    out = orjson.loads(translator().translate_json(orjson.dumps(message)))
    assert out == {
        "id": "msg_2",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "length", "message": {
            "role": "assistant",
            "content": "Done.",
            "reasoning": "Plan.",
            "reasoning_details": [{"type": "reasoning.text", "text": "Plan.", "index": 0,
                                   "format": "anthropic-claude-v1", "signature": "sig"}],
            "tool_calls": [{"index": 0, "id": "toolu_9", "type": "function",
                            "function": {"name": "g", "arguments": "{\"x\":[1,2]}"}}],
        }}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19,
                  "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 6}},
    }

@pytest.mark.parametrize("verbosity", [[], {"a": 1}, 3, "huge"])
def test_a_verbosity_that_is_no_known_effort_is_left_out(verbosity: object) -> None:
    """Contract 3.4: effort = the request's `verbosity`; any other value (even a list or an
    object, which used to raise) is not sent."""
    assert "output_config" not in request({"messages": [], "verbosity": verbosity})
