"""The free-model response rewrite (contract 6.4; decision 16: upstream error bodies too).

The reference rewrites a whole `Response`; the sidecar sees the upstream body as ext_proc
chunks and has to answer each one at once with replacement bytes. `SseRewriter` therefore
returns, for every chunk, the rewritten form of the events that chunk completed; the
incomplete tail stays inside `extproc.sse.SseParser`, which is all the state it keeps.

Which rewrite applies is decided by the upstream content type, as in the reference: JSON
(`rewrite_json_body`) when it contains `application/json`, SSE (`SseRewriter`) for anything
else, error bodies included. `rewrite_body` makes that choice for a buffered body.

Usage accounting must read the original upstream bytes, never these (contract 6.4).
"""

from __future__ import annotations

from typing import Any

import orjson

from extproc import errors, js
from extproc.sse import DEFAULT_MAX_EVENT_BYTES, SseComment, SseItem, SseParser

__all__ = [
    "DONE",
    "KILO_PROCESSING",
    "SseRewriter",
    "is_json_content_type",
    "rewrite_body",
    "rewrite_json_body",
]

KILO_PROCESSING = b": KILO PROCESSING\n\n"
DONE = b"data: [DONE]\n\n"

def is_json_content_type(content_type: str | None) -> bool:
    """The reference's test for the JSON rewrite: `content-type` includes `application/json`
    (here case-insensitively; media types are)."""
    return content_type is not None and "application/json" in content_type.lower()


class SseRewriter:
    """Rewrites a free model's SSE stream chunk by chunk (contract 6.4).

    `feed` returns the rewritten bytes of every event and comment completed by the chunk
    (b"" while an event is still incomplete); `finish`, at upstream end, returns the
    rewrite of a pending event whose blank line never came, then `data: [DONE]`. The
    output does not depend on where the upstream body was split.

    A data event whose JSON cannot be parsed, or is not an object, "errors the stream" in
    the reference: the JS stream throws and the client sees its connection cut mid-body,
    with no `[DONE]`. The sidecar instead ends the stream cleanly, in the same place: the
    events before the bad one have been sent, then comes one error event
    (`INVALID_UPSTREAM_STREAM`, with the generation `id` when one was seen), then
    `data: [DONE]`, and everything after that from upstream is swallowed (`feed` and
    `finish` return b""). `failed` tells the caller, who should log it and may stop reading
    the upstream. An event or line the parser had to drop for exceeding `max_event_bytes`
    ends the stream the same way, since a piece of the answer is missing (the parser only
    reports drops per chunk, so events completed later in that same chunk still go first).
    """

    __slots__ = ("_closed", "_generation_id", "_model", "_parser", "failed")

    def __init__(self, public_model_id: str, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._model = public_model_id
        self._parser = SseParser(max_event_bytes)
        self._generation_id: str | None = None
        self._closed = False  # `data: [DONE]` has been returned
        self.failed = False

    def feed(self, chunk: bytes) -> bytes:
        if self._closed:
            return b""
        return self._render(self._parser.feed(chunk))

    def finish(self) -> bytes:
        if self._closed:
            return b""
        out = self._render(self._parser.finish())
        if self._closed:  # the pending event was invalid: already ended with [DONE]
            return out
        self._closed = True
        return out + DONE

    def _render(self, items: list[SseItem]) -> bytes:
        parts: list[bytes] = []
        for item in items:
            if isinstance(item, SseComment):
                parts.append(KILO_PROCESSING)
                continue
            if item.data == "[DONE]":
                continue
            rewritten = self._rewrite_event(item.data)
            if rewritten is None:
                parts.append(self._fail())
                return b"".join(parts)
            parts.append(b"data: " + rewritten + b"\n\n")
        if self._parser.dropped_oversized:
            parts.append(self._fail())
        return b"".join(parts)

    def _rewrite_event(self, data: str) -> bytes | None:
        try:
            chunk = js.loads(data)
            if not isinstance(chunk, dict):
                return None
            if self._generation_id is None and isinstance(chunk.get("id"), str):
                self._generation_id = chunk["id"]
            _rewrite_chunk(chunk, self._model)
            return js.dumps(chunk)
        except ValueError:
            return None

    def _fail(self) -> bytes:
        self.failed = True
        self._closed = True
        body = errors.INVALID_UPSTREAM_STREAM.body
        if self._generation_id:
            body = {"id": self._generation_id, **body}
        return b"data: " + orjson.dumps(body) + b"\n\n" + DONE


def rewrite_json_body(body: bytes, public_model_id: str) -> bytes:
    """Rewrite a non-streamed completion (or a JSON error body, decision 16) as a whole.

    A body that is not a JSON object is returned unchanged: the reference's early version
    answered a 500 for it, its later one passes it through, and passing it through keeps an
    upstream error readable.
    """
    try:
        completion = js.loads(body)
        if not isinstance(completion, dict):
            return body
        if js.truthy(completion.get("model")):
            completion["model"] = public_model_id
        message = _first_choice_field(completion, "message")
        if message is not None:
            _convert_reasoning(message)
        _rewrite_usage(completion)
        return js.dumps(completion)
    except ValueError:
        return body


def rewrite_body(body: bytes, content_type: str | None, public_model_id: str) -> bytes:
    """The rewrite of a whole (buffered) upstream body, chosen by its content type.

    A non-JSON, non-SSE error body goes through the SSE rewrite as in the reference, which
    leaves only `data: [DONE]` of it (lines without a known field are ignored).
    """
    if is_json_content_type(content_type):
        return rewrite_json_body(body, public_model_id)
    rewriter = SseRewriter(public_model_id)
    return rewriter.feed(body) + rewriter.finish()


def _rewrite_chunk(chunk: dict[str, Any], model: str) -> None:
    if js.truthy(chunk.get("model")):
        chunk["model"] = model
    delta = _first_choice_field(chunk, "delta")
    if delta is not None:
        # Some providers send `role: null`, which OpenCode rejects.
        if "role" in delta and delta["role"] is None:
            del delta["role"]
        _convert_reasoning(delta)
    if not js.truthy(chunk.get("choices")):
        # Usage-only chunks may omit `choices`; OpenCode requires it.
        chunk["choices"] = []
    _rewrite_usage(chunk)


def _first_choice_field(obj: dict[str, Any], name: str) -> dict[str, Any] | None:
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    value = choices[0].get(name)
    return value if isinstance(value, dict) else None


def _convert_reasoning(message: dict[str, Any]) -> None:
    """`reasoning_content` (DeepSeek style) to OpenRouter's `reasoning` + `reasoning_details`."""
    content = message.get("reasoning_content")
    if not js.truthy(content):
        return
    if not js.truthy(message.get("reasoning")):
        message["reasoning"] = content
    if not js.truthy(message.get("reasoning_details")):
        message["reasoning_details"] = [{"type": "reasoning.text", "text": content}]
    del message["reasoning_content"]


def _rewrite_usage(obj: dict[str, Any]) -> None:
    # Free models: the upstream cost is not the client's business.
    usage = obj.get("usage")
    if isinstance(usage, dict):
        usage.pop("cost", None)
        usage.pop("cost_details", None)
        usage.pop("is_byok", None)
