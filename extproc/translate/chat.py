"""The chat-completions side shared by every translator: chunks, usage, errors, framing.

The shapes follow what the reference re-encodes for custom LLMs (contract 3.4): `model` is the
custom LLM's public id, reasoning is `reasoning` plus `reasoning_details`, the usage rides on
the finish chunk, a stream ends with one `data: [DONE]`, and errors are
`{"error":{"message","code","type":"error"}}`.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from extproc.sse import SseEvent, SseItem

DONE = b"data: [DONE]\n\n"
# A failure without an HTTP status of its own (the reference's default).
DEFAULT_ERROR_STATUS = 500

# reasoning_details formats (OpenRouter's names), and the one the legacy extension is shown.
FORMAT_ANTHROPIC = "anthropic-claude-v1"
FORMAT_OPENAI_RESPONSES = "openai-responses-v1"
FORMAT_OPENAI_RESPONSES_OBSCURED = "openai-responses-v1-obscured"


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """What goes upstream instead of the chat request."""

    path: str  # appended to the custom LLM's base path
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass(slots=True)
class TokenUsage:
    """Tokens as the provider reported them; input includes the cached and cache-written ones."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None

    def to_chat(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }
        if self.cache_read_tokens is not None or self.cache_write_tokens is not None:
            details: dict[str, int] = {"cached_tokens": self.cache_read_tokens or 0}
            if self.cache_write_tokens is not None:
                details["cache_write_tokens"] = self.cache_write_tokens
            usage["prompt_tokens_details"] = details
        if self.reasoning_tokens is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage


class ResponseTranslator(Protocol):
    """Provider response bytes in, chat-completions bytes out."""

    def feed(self, chunk: bytes) -> bytes:
        """A streamed chunk, split anywhere: the chat SSE events it completed."""
        ...

    def finish(self) -> bytes:
        """End of the upstream stream: whatever is still owed to the client, `[DONE]` included."""
        ...

    def translate_json(self, body: bytes) -> bytes:
        """A whole non-streamed provider response: one chat.completion document."""
        ...


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def json_objects(items: Iterable[SseItem]) -> Iterator[tuple[dict[str, Any], str]]:
    """The data events of a provider's stream that are JSON objects: each parsed, with its text
    (an error event is passed on as the provider wrote it). Comments and anything that is not
    an object are skipped: a keep-alive or garbage never breaks the translation."""
    for item in items:
        if not isinstance(item, SseEvent):
            continue
        try:
            data = orjson.loads(item.data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(data, dict):
            yield data, item.data


def one_of(value: object, allowed: Container[str]) -> str | None:
    """A client's option when it is one of `allowed`, else None: a value of another type
    (a list, an object) is ignored like an unknown string, never looked up."""
    return value if isinstance(value, str) and value in allowed else None


def int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def error_object(message: str, code: int, raw: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "code": code, "type": "error"}
    if raw is not None:
        error["metadata"] = {"raw": raw}
    return {"error": error}


def provider_error_message(body: bytes) -> str:
    """The provider's own error text (both APIs nest it as `error.message`), else the body."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    error = obj.get("error") if isinstance(obj, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str) and message:
        return message
    return body.decode("utf-8", "replace")[:1000] or "Generation failed"


def error_json(status: int, body: bytes) -> bytes:
    """Non-streamed upstream error (contract 3.4): the client gets it with the upstream status."""
    return orjson.dumps(error_object(provider_error_message(body), status or DEFAULT_ERROR_STATUS))


def error_stream(status: int, body: bytes) -> bytes:
    """Streamed upstream error (contract 3.4): one SSE chunk with an `error` object, on HTTP 200."""
    raw = body.decode("utf-8", "replace")
    return sse(error_object(provider_error_message(body), status or DEFAULT_ERROR_STATUS, raw))


@dataclass(slots=True)
class ChunkWriter:
    """Builds the chat chunks of one response: the id once known, the public model id, the
    tool-call indices, and the legacy extension's reasoning format."""

    model: str
    legacy_extension: bool = False
    message_id: str | None = None
    tool_indices: dict[str, int] = field(default_factory=dict)

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
        if self.legacy_extension:
            obscure(delta.get("reasoning_details"))
        choice: dict[str, Any] = {"index": 0, "delta": delta}
        if finish_reason is not None:
            choice["finish_reason"] = finish_reason
        obj: dict[str, Any] = {}
        if self.message_id is not None:
            obj["id"] = self.message_id
        obj.update({"object": "chat.completion.chunk", "model": self.model, "choices": [choice]})
        if usage is not None:
            obj["usage"] = usage
        return sse(obj)

    def text(self, text: str) -> bytes:
        return self.chunk({"content": text})

    def reasoning(self, text: str, detail: dict[str, Any]) -> bytes:
        return self.chunk({"reasoning": text, "reasoning_details": [detail]})

    def reasoning_detail(self, detail: dict[str, Any]) -> bytes:
        return self.chunk({"reasoning_details": [detail]})

    def tool_start(self, key: str, call_id: str, name: str) -> bytes:
        index = self.tool_indices[key] = len(self.tool_indices)
        call = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        return self.chunk({"tool_calls": [call]})

    def tool_arguments(self, key: str, arguments: str) -> bytes:
        index = self.tool_indices.get(key, 0)
        return self.chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})


@dataclass(slots=True)
class AssistantMessage:
    """The assistant message of a whole (non-streamed) provider response, gathered part by part
    by a translator, and the chat.completion document it becomes."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    reasoning_details: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def tool_call(self, call_id: object, name: object, arguments: str) -> None:
        self.tool_calls.append(
            {"index": len(self.tool_calls), "id": call_id, "type": "function",
             "function": {"name": name, "arguments": arguments}}
        )

    def completion(self, writer: ChunkWriter, message_id: object, finish_reason: str, usage: TokenUsage) -> bytes:
        """The chat.completion document; `message_id` is the provider's, used when a string."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.text) or None}
        if self.reasoning:
            message["reasoning"] = "".join(self.reasoning)
        if self.reasoning_details:
            message["reasoning_details"] = self.reasoning_details
            if writer.legacy_extension:
                obscure(self.reasoning_details)
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        obj: dict[str, Any] = {}
        if isinstance(message_id, str):
            obj["id"] = message_id
        obj.update(
            {
                "object": "chat.completion",
                "model": writer.model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                "usage": usage.to_chat(),
            }
        )
        return orjson.dumps(obj)


def obscure(details: object) -> None:
    """Contract 3.4: the legacy extension is shown `openai-responses-v1` as its obscured name."""
    if isinstance(details, list):
        for detail in details:
            if isinstance(detail, dict) and detail.get("format") == FORMAT_OPENAI_RESPONSES:
                detail["format"] = FORMAT_OPENAI_RESPONSES_OBSCURED


def request_messages(body: dict[str, Any], legacy_extension: bool) -> list[dict[str, Any]]:
    """The chat request's messages (the objects among them); contract 3.4: the obscured
    reasoning format the legacy extension sends back is mapped back."""
    messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
    if legacy_extension:
        _unobscure(messages)
    return messages


def _unobscure(messages: list[dict[str, Any]]) -> None:
    for message in messages:
        details = message.get("reasoning_details") if message.get("role") == "assistant" else None
        if isinstance(details, list):
            for detail in details:
                if isinstance(detail, dict) and detail.get("format") == FORMAT_OPENAI_RESPONSES_OBSCURED:
                    detail["format"] = FORMAT_OPENAI_RESPONSES


def text_of(content: object) -> str:
    """A message's text: the string, or its text parts concatenated."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def tool_calls_of(message: dict[str, Any]) -> Iterator[tuple[Any, Any, Any]]:
    """(id, function name, arguments) of each tool call of a chat assistant message."""
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            function = call.get("function") or {}
            yield call.get("id"), function.get("name"), function.get("arguments")


def parse_arguments(arguments: object) -> Any:
    """Tool-call arguments as a JSON value (providers take objects, chat sends strings)."""
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}


def data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:<type>;base64,<data>` URL."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not sep or encoding != "base64" or not media_type:
        return None
    return media_type, data
