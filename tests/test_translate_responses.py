"""Chat completions <-> OpenAI Responses (contract 3.4): the exact provider body for each
request rule, and the chat chunks for a provider stream split at every byte offset."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.translate.chat import ChunkWriter
from extproc.translate.chat_to_responses import ResponsesTranslator, responses_request

MODEL = "kilo-internal/gpt"


def request(body: dict[str, Any], *, model: str = "my-model", force: bool = False, legacy: bool = False) -> dict[str, Any]:
    return responses_request(body, model=model, api_key="sk-oa", force_reasoning=force, legacy_extension=legacy).body


def test_request_headers_and_path() -> None:
    translated = responses_request({"messages": []}, model="m", api_key="sk-oa", force_reasoning=False,
                                   legacy_extension=False)
    assert translated.path == "/responses"
    assert translated.headers == {"authorization": "Bearer sk-oa"}


def test_request_conversation_and_options_of_a_forced_reasoning_model() -> None:
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 300,
        "temperature": 0.5,
        "verbosity": "max",
        "reasoning": {"effort": "high"},
        "prompt_cache_key": "pck",
        "safety_identifier": "sid",
        "user": "sid",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": [{"type": "text", "text": "Look:"},
                                         {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
            {"role": "assistant", "content": "Calling.", "reasoning_details": [
                {"type": "reasoning.text", "text": "Plan.", "id": "rs_1", "index": 0, "format": "openai-responses-v1"},
                {"type": "reasoning.encrypted", "data": "enc", "id": "rs_1", "index": 0, "format": "openai-responses-v1"},
                {"type": "reasoning.text", "text": "other provider", "index": 1, "format": "anthropic-claude-v1"},
            ], "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "read", "arguments": "{\"p\":1}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "data"},
        ],
        "tools": [{"type": "function", "function": {"name": "read", "description": "Read", "parameters": {"type": "object"}}}],
        "tool_choice": "required",
    }
    assert request(body, force=True) == {
        "model": "my-model",
        "input": [
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": [{"type": "input_text", "text": "Look:"},
                                         {"type": "input_image", "image_url": "https://example.com/a.png"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Plan."}],
             "encrypted_content": "enc"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Calling."}]},
            {"type": "function_call", "call_id": "call_1", "name": "read", "arguments": "{\"p\":1}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "data"},
        ],
        "max_output_tokens": 300,
        "reasoning": {"effort": "high", "summary": "auto"},
        "text": {"verbosity": "high"},  # max becomes high
        "tools": [{"type": "function", "name": "read", "description": "Read", "parameters": {"type": "object"}}],
        "tool_choice": "required",
        "parallel_tool_calls": True,
        "include": ["reasoning.encrypted_content"],
        "store": False,
        "prompt_cache_key": "pck",
        "safety_identifier": "sid",
        "user": "sid",
        "stream": True,
    }


def test_request_without_forced_reasoning_or_with_effort_none() -> None:
    body = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
            "temperature": 0.5, "reasoning": {"effort": "none"}, "max_completion_tokens": 9, "max_tokens": 99,
            "parallel_tool_calls": False}
    expected = {
        "model": "my-model",
        "input": [{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "max_output_tokens": 9,
        "temperature": 0.5,
        "parallel_tool_calls": False,
        "include": ["reasoning.encrypted_content"],
        "store": False,
    }
    assert request(body, force=True) == expected  # forceReasoning only when effort is not none
    assert request(body) == expected


def test_request_of_the_legacy_extension_maps_the_obscured_format_back() -> None:
    body = {"messages": [{"role": "assistant", "content": "", "reasoning_details": [
        {"type": "reasoning.encrypted", "data": "enc", "id": "rs_1", "format": "openai-responses-v1-obscured"}]}]}
    assert request(body, legacy=True)["input"] == [{"type": "reasoning", "id": "rs_1", "summary": [],
                                                    "encrypted_content": "enc"}]
    assert request(body, legacy=True)["parallel_tool_calls"] is False


# --- response -----------------------------------------------------------------------------------


def events(*objects: dict[str, Any]) -> bytes:
    return b"".join(f"event: {o['type']}\ndata: {orjson.dumps(o).decode()}\n\n".encode() for o in objects)


STREAM = events(
    {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "output": []}},
    {"type": "response.output_item.added", "output_index": 0, "item": {"id": "rs_1", "type": "reasoning", "summary": []}},
    {"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "output_index": 0, "summary_index": 0,
     "delta": "Thinking ü."},
    {"type": "response.output_item.done", "output_index": 0,
     "item": {"id": "rs_1", "type": "reasoning", "summary": [], "encrypted_content": "enc"}},
    {"type": "response.output_item.added", "output_index": 1,
     "item": {"id": "msg_1", "type": "message", "role": "assistant", "content": []}},
    {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 1, "content_index": 0, "delta": "Hi"},
    {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 1, "content_index": 0, "delta": "!"},
    {"type": "response.output_item.added", "output_index": 2,
     "item": {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f", "arguments": ""}},
    {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 2, "delta": "{\"a\""},
    {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 2, "delta": ":1}"},
    {"type": "response.completed", "response": {"id": "resp_1", "status": "completed", "usage": {
        "input_tokens": 30, "input_tokens_details": {"cached_tokens": 12},
        "output_tokens": 8, "output_tokens_details": {"reasoning_tokens": 3}, "total_tokens": 38}}},
)


def chunk(delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta}
    if "finish_reason" in extra:
        choice["finish_reason"] = extra.pop("finish_reason")
    return {"id": "resp_1", "object": "chat.completion.chunk", "model": MODEL, "choices": [choice], **extra}


def sse(*objects: dict[str, Any], done: bool = True) -> bytes:
    return b"".join(b"data: " + orjson.dumps(o) + b"\n\n" for o in objects) + (b"data: [DONE]\n\n" if done else b"")


def expected(fmt: str) -> bytes:
    return sse(
        chunk({"reasoning": "Thinking ü.", "reasoning_details": [
            {"type": "reasoning.text", "text": "Thinking ü.", "index": 0, "id": "rs_1", "format": fmt}]}),
        chunk({"reasoning_details": [{"type": "reasoning.encrypted", "data": "enc", "index": 0, "id": "rs_1", "format": fmt}]}),
        chunk({"content": "Hi"}),
        chunk({"content": "!"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
        chunk({}, finish_reason="tool_calls", usage={
            "prompt_tokens": 30, "completion_tokens": 8, "total_tokens": 38,
            "prompt_tokens_details": {"cached_tokens": 12}, "completion_tokens_details": {"reasoning_tokens": 3}}),
    )


def translator(legacy: bool = False) -> ResponsesTranslator:
    return ResponsesTranslator(ChunkWriter(model=MODEL, legacy_extension=legacy))


def test_stream_split_at_every_byte_offset_gives_the_same_chat_stream() -> None:
    want = expected("openai-responses-v1")
    for offset in range(len(STREAM) + 1):
        t = translator()
        assert t.feed(STREAM[:offset]) + t.feed(STREAM[offset:]) + t.finish() == want, offset


def test_legacy_extension_is_shown_the_obscured_format() -> None:
    t = translator(legacy=True)
    assert t.feed(STREAM) + t.finish() == expected("openai-responses-v1-obscured")


def test_mid_stream_error_becomes_an_error_chunk() -> None:
    error = {"type": "error", "code": "server_error", "message": "boom", "param": None}
    raw = STREAM[: STREAM.index(b"event: response.output_text.delta")] + events(error)
    t = translator()
    out = t.feed(raw) + t.finish()
    assert out.endswith(sse({"error": {"message": "boom", "code": 500, "type": "error",
                                       "metadata": {"raw": orjson.dumps(error).decode()}}}, done=False))
    assert b"[DONE]" not in out


def test_whole_response_becomes_a_chat_completion() -> None:
    response = {
        "id": "resp_2", "object": "response", "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
        "output": [
            {"id": "rs_2", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Why."}],
             "encrypted_content": "enc2"},
            {"id": "msg_2", "type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Because.", "annotations": []}]},
        ],
        "usage": {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 4,
                  "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 9},
    }
    assert orjson.loads(translator().translate_json(orjson.dumps(response))) == {
        "id": "resp_2",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "length", "message": {
            "role": "assistant",
            "content": "Because.",
            "reasoning": "Why.",
            "reasoning_details": [
                {"type": "reasoning.text", "text": "Why.", "index": 0, "id": "rs_2", "format": "openai-responses-v1"},
                {"type": "reasoning.encrypted", "data": "enc2", "index": 0, "id": "rs_2", "format": "openai-responses-v1"},
            ],
        }}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9,
                  "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 2}},
    }


def test_the_legacy_extension_gets_the_obscured_format_in_a_whole_response() -> None:
    """Contract 3.4: `openai-responses-v1` reaches the legacy extension as
    `openai-responses-v1-obscured`, in a non-streamed answer too."""
    response = {
        "id": "resp_3", "object": "response", "status": "completed",
        "output": [{"id": "rs_3", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Why."}],
                    "encrypted_content": "enc3"}],
    }
    document = orjson.loads(translator(legacy=True).translate_json(orjson.dumps(response)))
    details = document["choices"][0]["message"]["reasoning_details"]
    assert [detail["format"] for detail in details] == ["openai-responses-v1-obscured"] * 2

@pytest.mark.parametrize("value", [[], {"a": 1}, 3, "huge"])
def test_an_unknown_verbosity_or_effort_is_left_out(value: object) -> None:
    """Contract 3.4: textVerbosity and the reasoning effort come from the request's own values;
    any other value (even a list or an object, which used to raise) is not sent."""
    translated = request({"messages": [], "verbosity": value, "reasoning": {"effort": value}}, force=True)
    assert "text" not in translated
    assert translated["reasoning"] == {"summary": "auto"}
