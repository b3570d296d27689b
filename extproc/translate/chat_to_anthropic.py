"""Chat completions <-> Anthropic Messages API (contract 3.4, custom LLMs of kind `anthropic`).

Request: a pure function from the chat body to the Messages body and headers. Response: an
incremental translator of the Messages event stream (`message_start`, `content_block_*`,
`message_delta`, `message_stop`, `error`) and of a whole Message, into chat completions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from extproc.sse import SseParser
from extproc.translate.chat import (
    DONE,
    FORMAT_ANTHROPIC,
    AssistantMessage,
    ChunkWriter,
    ProviderRequest,
    TokenUsage,
    data_url,
    error_object,
    int_or_none,
    json_objects,
    one_of,
    parse_arguments,
    request_messages,
    sse,
    text_of,
    tool_calls_of,
)

ANTHROPIC_VERSION = "2023-06-01"
# The reference always asks for the 1M-token context window (contract 3.4).
ANTHROPIC_BETA = "context-1m-2025-08-07"
_EPHEMERAL = {"type": "ephemeral"}
_EFFORTS = frozenset({"low", "medium", "high", "xhigh", "max"})

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Mid-stream `error` events carry only a type; the status the same error has as a response.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


# --- request ------------------------------------------------------------------------------------


def anthropic_request(
    body: dict[str, Any],
    *,
    model: str,
    api_key: str,
    default_max_tokens: int,
    legacy_extension: bool,
) -> ProviderRequest:
    messages = request_messages(body, legacy_extension)
    system, turns = _messages(messages)
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    out: dict[str, Any] = {
        "model": model,
        # Anthropic requires max_tokens; without one from the client, the row's limit.
        "max_tokens": max_tokens if isinstance(max_tokens, int) else default_max_tokens,
        # Adaptive thinking is always on, so temperature is not sent (Anthropic refuses a
        # temperature other than 1 with thinking, and the reference drops it likewise).
        "thinking": {"type": "adaptive"},
    }
    if system:
        out["system"] = system
    out["messages"] = turns
    effort = one_of(body.get("verbosity"), _EFFORTS)
    if effort is not None:
        out["output_config"] = {"effort": effort}
    tools, tool_choice = _tools(body, legacy_extension)
    if tools:
        out["tools"] = tools
        if tool_choice is not None:
            out["tool_choice"] = tool_choice
    if body.get("stream") is True:
        out["stream"] = True
    headers = {
        "x-api-key": api_key,
        "anthropic-version": ANTHROPIC_VERSION,
        "anthropic-beta": ANTHROPIC_BETA,
    }
    return ProviderRequest(path="/messages", body=out, headers=headers)


def _messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        # Anthropic alternates user and assistant: consecutive user-side messages (a user turn
        # and tool results) become one turn.
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for message in messages:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.append({"type": "text", "text": text_of(content), "cache_control": _EPHEMERAL})
        elif role == "user":
            add("user", _user_blocks(content, message.get("cache_control")))
        elif role == "assistant":
            add("assistant", _assistant_blocks(message))
        elif role == "tool":
            add("user", [_tool_result(message)])
    return system, turns


def _user_blocks(content: object, cache_control: object) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]]
    if isinstance(content, str):
        blocks = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        blocks = [b for b in (_user_part(p) for p in content if isinstance(p, dict)) if b is not None]
    else:
        blocks = []
    if isinstance(cache_control, dict) and blocks:
        blocks[-1]["cache_control"] = cache_control
    return blocks


def _user_part(part: dict[str, Any]) -> dict[str, Any] | None:
    kind = part.get("type")
    block: dict[str, Any] | None = None
    if kind == "text" and isinstance(part.get("text"), str):
        block = {"type": "text", "text": part["text"]}
    elif kind == "image_url":
        url = (part.get("image_url") or {}).get("url")
        if isinstance(url, str):
            block = {"type": "image", "source": _image_source(url)}
    if block is not None and isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _image_source(url: str) -> dict[str, Any]:
    inline = data_url(url)
    if inline is not None:
        return {"type": "base64", "media_type": inline[0], "data": inline[1]}
    return {"type": "url", "url": url}


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    details = message.get("reasoning_details")
    if isinstance(details, list) and details:
        blocks.extend(_thinking_blocks(details))
    # Without a signature Anthropic refuses a thinking block, so plain `reasoning` is not sent.
    text = text_of(message.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    blocks.extend(
        {"type": "tool_use", "id": call_id, "name": name, "input": parse_arguments(arguments)}
        for call_id, name, arguments in tool_calls_of(message)
    )
    return blocks


def _thinking_blocks(details: list[Any]) -> list[dict[str, Any]]:
    """reasoning_details back to thinking blocks: text parts of one index joined, with their
    signature; encrypted ones are Anthropic's redacted thinking."""
    blocks: list[dict[str, Any]] = []
    by_index: dict[object, dict[str, Any]] = {}
    for detail in details:
        if not isinstance(detail, dict):
            continue
        if detail.get("type") == "reasoning.encrypted" and isinstance(detail.get("data"), str):
            blocks.append({"type": "redacted_thinking", "data": detail["data"]})
        elif detail.get("type") == "reasoning.text":
            block = by_index.get(detail.get("index"))
            if block is None:
                block = by_index[detail.get("index")] = {"type": "thinking", "thinking": "", "signature": ""}
                blocks.append(block)
            block["thinking"] += detail.get("text") or ""
            if detail.get("signature"):
                block["signature"] = detail["signature"]
    return [b for b in blocks if b["type"] != "thinking" or b["signature"]]


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
    if isinstance(content, list):
        result["content"] = [b for b in (_user_part(p) for p in content if isinstance(p, dict)) if b is not None]
    else:
        result["content"] = content if isinstance(content, str) else ""
    return result


def _tools(body: dict[str, Any], legacy_extension: bool) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    choice = body.get("tool_choice")
    if choice == "none":
        return [], None  # Anthropic's way to forbid tools is not to offer them
    tools = []
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if isinstance(function, dict):
            converted: dict[str, Any] = {"name": function.get("name")}
            if function.get("description") is not None:
                converted["description"] = function["description"]
            converted["input_schema"] = function.get("parameters") or {"type": "object"}
            tools.append(converted)
    if not tools:
        return [], None
    tool_choice: dict[str, Any] | None
    if choice == "required":
        tool_choice = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        tool_choice = {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    elif choice == "auto":
        tool_choice = {"type": "auto"}
    else:
        tool_choice = None
    if body.get("parallel_tool_calls") is False or legacy_extension:
        tool_choice = {**(tool_choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    return tools, tool_choice


# --- response -----------------------------------------------------------------------------------


def _usage(usage: object, into: TokenUsage) -> None:
    if not isinstance(usage, dict):
        return
    # Anthropic counts cached and cache-written input apart; chat's prompt_tokens includes them.
    fresh = int_or_none(usage.get("input_tokens"))
    read = int_or_none(usage.get("cache_read_input_tokens"))
    write = int_or_none(usage.get("cache_creation_input_tokens"))
    if fresh is not None:
        into.input_tokens = fresh + (read or 0) + (write or 0)
        into.cache_read_tokens = read
        into.cache_write_tokens = write
    output = int_or_none(usage.get("output_tokens"))
    if output is not None:
        into.output_tokens = output  # cumulative in message_delta


def _detail(kind: str, index: int, **values: str) -> dict[str, Any]:
    """A reasoning_details entry of Anthropic's format."""
    return {"type": kind, **values, "index": index, "format": FORMAT_ANTHROPIC}


@dataclass(slots=True)
class AnthropicTranslator:
    writer: ChunkWriter
    _parser: SseParser = field(default_factory=SseParser)
    _usage: TokenUsage = field(default_factory=TokenUsage)
    _reasoning_index: dict[int, int] = field(default_factory=dict)  # block index -> detail index
    _stop_reason: str | None = None
    _started: bool = False
    _finished: bool = False  # the finish chunk went out, or the stream failed

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._event(*event) for event in json_objects(self._parser.feed(chunk)))

    def finish(self) -> bytes:
        out = b"".join(self._event(*event) for event in json_objects(self._parser.finish()))
        # A stream cut before message_stop still reports what it used.
        if self._started and not self._finished:
            out += self._finish_chunk()
        return out

    def _event(self, data: dict[str, Any], text: str) -> bytes:
        if self._finished:
            return b""
        kind = data.get("type")
        if kind == "message_start":
            message = data.get("message") or {}
            self._started = True
            if isinstance(message.get("id"), str):
                self.writer.message_id = message["id"]
            _usage(message.get("usage"), self._usage)
        elif kind == "content_block_start":
            return self._block_start(data)
        elif kind == "content_block_delta":
            return self._block_delta(data)
        elif kind == "message_delta":
            delta = data.get("delta") or {}
            if isinstance(delta.get("stop_reason"), str):
                self._stop_reason = delta["stop_reason"]
            _usage(data.get("usage"), self._usage)
        elif kind == "message_stop":
            return self._finish_chunk()
        elif kind == "error":
            self._finished = True
            error = data.get("error") or {}
            message = error.get("message")
            status = ERROR_STATUS.get(error.get("type") or "", 500)
            return sse(error_object(message if isinstance(message, str) else "Stream error", status, text))
        return b""

    def _block_start(self, data: dict[str, Any]) -> bytes:
        index = data.get("index", 0)
        block = data.get("content_block") or {}
        kind = block.get("type")
        if kind == "tool_use":
            return self.writer.tool_start(str(index), block.get("id") or "", block.get("name") or "")
        if kind in ("thinking", "redacted_thinking"):
            self._reasoning_index[index] = len(self._reasoning_index)
        if kind == "redacted_thinking":
            detail = _detail("reasoning.encrypted", self._reasoning_index[index], data=block.get("data") or "")
            return self.writer.reasoning_detail(detail)
        return b""

    def _block_delta(self, data: dict[str, Any]) -> bytes:
        index = data.get("index", 0)
        delta = data.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            return self.writer.text(delta.get("text") or "")
        if kind == "thinking_delta":
            text = delta.get("thinking") or ""
            return self.writer.reasoning(text, _detail("reasoning.text", self._reasoning_index.get(index, 0), text=text))
        if kind == "signature_delta":
            signature = delta.get("signature") or ""
            detail = _detail("reasoning.text", self._reasoning_index.get(index, 0), text="", signature=signature)
            return self.writer.reasoning_detail(detail)
        if kind == "input_json_delta":
            return self.writer.tool_arguments(str(index), delta.get("partial_json") or "")
        return b""

    def _finish_chunk(self) -> bytes:
        self._finished = True
        reason = FINISH_REASONS.get(self._stop_reason or "", "stop")
        return self.writer.chunk({}, reason, self._usage.to_chat()) + DONE

    def translate_json(self, body: bytes) -> bytes:
        message = orjson.loads(body)
        out = AssistantMessage()
        details = out.reasoning_details
        for block in message.get("content") or ():
            kind = block.get("type")
            if kind == "text":
                out.text.append(block.get("text") or "")
            elif kind == "thinking":
                out.reasoning.append(block.get("thinking") or "")
                signed = {"signature": block["signature"]} if block.get("signature") else {}
                details.append(_detail("reasoning.text", len(details), text=block.get("thinking") or "", **signed))
            elif kind == "redacted_thinking":
                details.append(_detail("reasoning.encrypted", len(details), data=block.get("data") or ""))
            elif kind == "tool_use":
                out.tool_call(block.get("id"), block.get("name"), orjson.dumps(block.get("input", {})).decode())
        usage = TokenUsage()
        _usage(message.get("usage"), usage)
        reason = FINISH_REASONS.get(message.get("stop_reason") or "", "stop")
        return out.completion(self.writer, message.get("id"), reason, usage)
