"""Chat completions <-> OpenAI Responses API (contract 3.4, custom LLMs of kind `openai`).

Request: a pure function from the chat body to the Responses body and headers. Response: an
incremental translator of the Responses event stream (`response.created`,
`response.output_item.*`, `response.output_text.delta`, `response.reasoning_summary_text.delta`,
`response.function_call_arguments.delta`, `response.completed`/`incomplete`/`failed`, `error`)
and of a whole Response object, into chat completions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from extproc.sse import SseParser
from extproc.translate.chat import (
    DONE,
    FORMAT_OPENAI_RESPONSES,
    AssistantMessage,
    ChunkWriter,
    ProviderRequest,
    TokenUsage,
    error_object,
    int_or_none,
    json_objects,
    one_of,
    request_messages,
    sse,
    text_of,
    tool_calls_of,
)

_VERBOSITIES = {"low": "low", "medium": "medium", "high": "high", "max": "high"}  # max becomes high
_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})
# Model ids the Responses API treats as reasoning models (as the AI SDK recognises them); other
# ids are reasoning models only when the row forces it.
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5", "codex")
_NON_REASONING_PREFIXES = ("gpt-5-chat",)


# --- request ------------------------------------------------------------------------------------


def is_reasoning_model(model: str, force_reasoning: bool, effort: str | None) -> bool:
    if force_reasoning and effort != "none":
        return True
    return model.startswith(_REASONING_PREFIXES) and not model.startswith(_NON_REASONING_PREFIXES)


def responses_request(
    body: dict[str, Any],
    *,
    model: str,
    api_key: str,
    force_reasoning: bool,
    legacy_extension: bool,
) -> ProviderRequest:
    messages = request_messages(body, legacy_extension)
    reasoning = body.get("reasoning")
    effort = one_of(reasoning.get("effort") if isinstance(reasoning, dict) else None, _EFFORTS)
    reasoning_model = is_reasoning_model(model, force_reasoning, effort)
    out: dict[str, Any] = {"model": model, "input": _input(messages, reasoning_model)}
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int):
        out["max_output_tokens"] = max_tokens
    # Reasoning models refuse sampling parameters.
    if not reasoning_model and isinstance(body.get("temperature"), (int, float)):
        out["temperature"] = body["temperature"]
    if reasoning_model:
        out["reasoning"] = {**({"effort": effort} if effort else {}), "summary": "auto"}
    verbosity = one_of(body.get("verbosity"), _VERBOSITIES)
    if verbosity is not None:
        out["text"] = {"verbosity": _VERBOSITIES[verbosity]}
    tools, tool_choice = _tools(body)
    if tools:
        out["tools"] = tools
        if tool_choice is not None:
            out["tool_choice"] = tool_choice
    out["parallel_tool_calls"] = body.get("parallel_tool_calls") is not False and not legacy_extension
    out["include"] = ["reasoning.encrypted_content"]
    out["store"] = False
    for key in ("prompt_cache_key", "safety_identifier", "user"):
        if isinstance(body.get(key), str):
            out[key] = body[key]
    if body.get("stream") is True:
        out["stream"] = True
    return ProviderRequest(path="/responses", body=out, headers={"authorization": f"Bearer {api_key}"})


def _input(messages: list[dict[str, Any]], reasoning_model: bool) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            items.append({"role": "developer" if reasoning_model else "system", "content": text_of(content)})
        elif role == "user":
            items.append({"role": "user", "content": _user_content(content)})
        elif role == "assistant":
            items.extend(_assistant_items(message))
        elif role == "tool":
            output = content if isinstance(content, str) else text_of(content)
            items.append({"type": "function_call_output", "call_id": message.get("tool_call_id"), "output": output})
    return items


def _user_content(content: object) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "input_text", "text": part["text"]})
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url")
            if isinstance(url, str):
                parts.append({"type": "input_image", "image_url": url})
    return parts


def _assistant_items(message: dict[str, Any]) -> list[dict[str, Any]]:
    items = _reasoning_items(message.get("reasoning_details"))
    text = text_of(message.get("content"))
    if text:
        items.append({"role": "assistant", "content": [{"type": "output_text", "text": text}]})
    items.extend(
        {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments or "{}"}
        for call_id, name, arguments in tool_calls_of(message)
    )
    return items


def _reasoning_items(details: object) -> list[dict[str, Any]]:
    """This provider's reasoning_details back to reasoning items: the summaries of one item id
    with its encrypted content (store is false, so the content travels with the request)."""
    items: dict[str, dict[str, Any]] = {}
    for detail in details if isinstance(details, list) else ():
        if not isinstance(detail, dict) or detail.get("format") != FORMAT_OPENAI_RESPONSES:
            continue
        item_id = detail.get("id")
        if not isinstance(item_id, str):
            continue
        item = items.setdefault(item_id, {"type": "reasoning", "id": item_id, "summary": []})
        if detail.get("type") == "reasoning.text" and detail.get("text"):
            item["summary"].append({"type": "summary_text", "text": detail["text"]})
        elif detail.get("type") == "reasoning.encrypted" and isinstance(detail.get("data"), str):
            item["encrypted_content"] = detail["data"]
    return list(items.values())


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    tools = []
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if isinstance(function, dict):
            converted: dict[str, Any] = {"type": "function", "name": function.get("name")}
            if function.get("description") is not None:
                converted["description"] = function["description"]
            converted["parameters"] = function.get("parameters") or {"type": "object"}
            if isinstance(function.get("strict"), bool):
                converted["strict"] = function["strict"]
            tools.append(converted)
    choice = body.get("tool_choice")
    if choice in ("none", "auto", "required"):
        return tools, choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return tools, {"type": "function", "name": (choice.get("function") or {}).get("name")}
    return tools, None


# --- response -----------------------------------------------------------------------------------


def _usage(usage: object) -> TokenUsage:
    out = TokenUsage()
    if isinstance(usage, dict):
        out.input_tokens = int_or_none(usage.get("input_tokens")) or 0
        out.output_tokens = int_or_none(usage.get("output_tokens")) or 0
        out.cache_read_tokens = int_or_none((usage.get("input_tokens_details") or {}).get("cached_tokens"))
        out.reasoning_tokens = int_or_none((usage.get("output_tokens_details") or {}).get("reasoning_tokens"))
    return out


def _finish_reason(response: dict[str, Any], has_tool_calls: bool) -> str:
    details = response.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    if reason == "max_output_tokens":
        return "length"
    if reason == "content_filter":
        return "content_filter"
    return "tool_calls" if has_tool_calls else "stop"


def _reasoning_detail(kind: str, item_id: str | None, index: int, **values: str) -> dict[str, Any]:
    detail: dict[str, Any] = {"type": kind, **values, "index": index}
    if item_id:
        detail["id"] = item_id
    detail["format"] = FORMAT_OPENAI_RESPONSES
    return detail


PhaseCallback = Callable[[list[str], str], object]


def _remember_phase(item: dict[str, Any], on_phase: PhaseCallback | None) -> None:
    """An assistant message's `phase` has no place in chat completions: it is handed to the
    phase memory (contract 3.4, `extproc/translate/openai_phase.py`)."""
    phase = item.get("phase")
    if on_phase is not None and item.get("type") == "message" and isinstance(phase, str):
        texts = [p.get("text") or "" for p in item.get("content") or () if p.get("type") == "output_text"]
        on_phase(texts, phase)


@dataclass(slots=True)
class ResponsesTranslator:
    writer: ChunkWriter
    on_phase: PhaseCallback | None = None
    _parser: SseParser = field(default_factory=SseParser)
    _reasoning_index: dict[str, int] = field(default_factory=dict)  # reasoning item id -> detail index
    _finished: bool = False

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._event(*event) for event in json_objects(self._parser.feed(chunk)))

    def finish(self) -> bytes:
        return b"".join(self._event(*event) for event in json_objects(self._parser.finish()))

    def _reasoning(self, item_id: str) -> int:
        return self._reasoning_index.setdefault(item_id, len(self._reasoning_index))

    def _event(self, data: dict[str, Any], text: str) -> bytes:
        if self._finished:
            return b""
        kind = data.get("type")
        writer = self.writer
        if kind == "response.created":
            response = data.get("response") or {}
            if isinstance(response.get("id"), str):
                writer.message_id = response["id"]
        elif kind == "response.output_item.added":
            item = data.get("item") or {}
            if item.get("type") == "function_call":
                return writer.tool_start(item.get("id") or "", item.get("call_id") or "", item.get("name") or "")
        elif kind == "response.output_text.delta":
            return writer.text(data.get("delta") or "")
        elif kind == "response.reasoning_summary_text.delta":
            item_id = data.get("item_id") or ""
            text = data.get("delta") or ""
            return writer.reasoning(text, _reasoning_detail("reasoning.text", item_id, self._reasoning(item_id), text=text))
        elif kind == "response.function_call_arguments.delta":
            return writer.tool_arguments(data.get("item_id") or "", data.get("delta") or "")
        elif kind == "response.output_item.done":
            item = data.get("item") or {}
            _remember_phase(item, self.on_phase)
            if item.get("type") == "reasoning" and isinstance(item.get("encrypted_content"), str):
                item_id = item.get("id") or ""
                detail = _reasoning_detail("reasoning.encrypted", item_id, self._reasoning(item_id), data=item["encrypted_content"])
                return writer.reasoning_detail(detail)
        elif kind in ("response.completed", "response.incomplete"):
            self._finished = True
            response = data.get("response") or {}
            reason = _finish_reason(response, bool(writer.tool_indices))
            return writer.chunk({}, reason, _usage(response.get("usage")).to_chat()) + DONE
        elif kind in ("response.failed", "error"):
            self._finished = True
            error = (data.get("response") or {}).get("error") if kind == "response.failed" else data
            error = error if isinstance(error, dict) else {}
            message = error.get("message")
            return sse(error_object(message if isinstance(message, str) else "Stream error", 500, text))
        return b""

    def translate_json(self, body: bytes) -> bytes:
        response = orjson.loads(body)
        out = AssistantMessage()
        for item in response.get("output") or ():
            kind = item.get("type")
            if kind == "message":
                _remember_phase(item, self.on_phase)
                out.text.extend(p.get("text") or "" for p in item.get("content") or () if p.get("type") == "output_text")
            elif kind == "reasoning":
                index = self._reasoning(item.get("id") or "")
                for summary in item.get("summary") or ():
                    out.reasoning.append(summary.get("text") or "")
                    out.reasoning_details.append(
                        _reasoning_detail("reasoning.text", item.get("id"), index, text=summary.get("text") or "")
                    )
                if isinstance(item.get("encrypted_content"), str):
                    out.reasoning_details.append(
                        _reasoning_detail("reasoning.encrypted", item.get("id"), index, data=item["encrypted_content"])
                    )
            elif kind == "function_call":
                out.tool_call(item.get("call_id"), item.get("name"), item.get("arguments") or "")
        reason = _finish_reason(response, bool(out.tool_calls))
        return out.completion(self.writer, response.get("id"), reason, _usage(response.get("usage")))
