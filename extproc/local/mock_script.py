"""What a mock custom-LLM upstream answers: one script per request, shared by the Anthropic
Messages and the OpenAI Responses mocks.

The gateway translates the chat request, so a client cannot add a `mock` key to the provider's
body. Directives travel in the conversation instead: a line `mock: {...json...}` in the last
user message (see docs/mock-upstream.md). Replies and usage are deterministic.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import orjson
from aiohttp import web

from extproc.local.mock_base import (
    Recorded,
    RequestLog,
    json_post,
    json_response,
    last_user_text,
    mock_app,
    write_recorded,
)

DIRECTIVE_PREFIX = "mock:"
DEFAULT_TEXT = "Hello from the mock."


class ScriptError(ValueError):
    """A directive the mock does not understand; answered with 400."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MockScript:
    text: str = DEFAULT_TEXT
    chunks: int = 3  # text deltas the reply is split into (as evenly as possible)
    thinking: str | None = None  # reasoning, streamed before the text
    tool_calls: tuple[ToolCall, ...] = ()
    gap_ms: float = 0  # pause before each streamed event
    error_after: int | None = None  # streamed events before a mid-stream error event
    status: int = 200  # an HTTP error answered instead of a response
    error_message: str = "Mock upstream error"
    input_tokens: int = 11  # not cached, not cache-written
    output_tokens: int = 7
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


_TYPES: dict[str, type | tuple[type, ...]] = {
    "text": str,
    "chunks": int,
    "thinking": str,
    "gap_ms": (int, float),
    "error_after": int,
    "status": int,
    "error_message": str,
    "input_tokens": int,
    "output_tokens": int,
    "cache_read_tokens": int,
    "cache_write_tokens": int,
    "reasoning_tokens": int,
}


def script_for(messages: object) -> MockScript:
    for line in last_user_text(messages, "\n").splitlines():
        if line.strip().startswith(DIRECTIVE_PREFIX):
            return parse_script(line.strip()[len(DIRECTIVE_PREFIX):])
    return MockScript()


def parse_script(text: str) -> MockScript:
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ScriptError(f"mock directive is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ScriptError("mock directive must be a JSON object")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "tool_calls":
            if not isinstance(value, list) or not all(
                isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("arguments"), dict)
                for c in value
            ):
                raise ScriptError("tool_calls must be a list of {name, arguments}")
            values["tool_calls"] = tuple(ToolCall(c["name"], c["arguments"]) for c in value)
        elif key in _TYPES:
            if isinstance(value, bool) or not isinstance(value, _TYPES[key]):
                raise ScriptError(f"mock directive {key!r} has the wrong type")
            values[key] = value
        else:
            raise ScriptError(f"unknown mock directive {key!r}; known: {sorted(f.name for f in fields(MockScript))}")
    script = MockScript(**values)
    if script.chunks < 1:
        raise ScriptError("chunks must be at least 1")
    return script


def split(text: str, parts: int) -> list[str]:
    """`text` in `parts` pieces as even as possible (none empty unless the text is short)."""
    parts = max(1, min(parts, len(text) or 1))
    size, extra = divmod(len(text), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(text[start:end])
        start = end
    return out


class MockProtocol(Protocol):
    """One provider API as the mock speaks it."""

    path_suffix: str  # e.g. "/messages"; any base path before it is accepted

    def check(self, headers: dict[str, str]) -> str | None:
        """Why the request's headers are refused (401), or None."""
        ...

    def events(self, script: MockScript, model: str) -> list[tuple[str, dict[str, Any]]]:
        """The stream: (event name, data) pairs, in order."""
        ...

    def stream_error(self, script: MockScript) -> tuple[str, dict[str, Any]]:
        ...

    def document(self, script: MockScript, model: str) -> dict[str, Any]:
        """The non-streamed response."""
        ...

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        ...


def event_bytes(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@dataclass(slots=True)
class MockServer:
    """An aiohttp app for one protocol (mock_base's, so it records what it received)."""

    protocol: MockProtocol
    log: RequestLog = field(default_factory=RequestLog)

    @property
    def requests(self) -> deque[Recorded]:
        return self.log.entries

    def app(self) -> web.Application:
        app = mock_app(self.log)
        app.router.add_post("/{path:.*}", json_post(self._handle, self._invalid_json))
        return app

    def _error(self, status: int, message: str) -> web.Response:
        return json_response(self.protocol.error_body(status, message), status)

    def _invalid_json(self, message: str) -> web.Response:
        return self._error(400, "body is not JSON")

    async def _handle(self, request: web.Request, body: Any, record: Recorded) -> web.StreamResponse:
        protocol = self.protocol
        if not request.path.endswith(protocol.path_suffix):
            return self._error(404, f"no route {request.path}")
        refusal = protocol.check(record["headers"])
        if refusal is not None:
            return self._error(401, refusal)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return self._error(400, "model is required")
        try:
            script = script_for(body.get("messages", body.get("input")))
        except ScriptError as exc:
            return self._error(400, str(exc))
        if script.status >= 400:
            return self._error(script.status, script.error_message)
        if body.get("stream") is not True:
            return json_response(protocol.document(script, body["model"]))
        response = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        for sent, (name, data) in enumerate(protocol.events(script, body["model"])):
            if script.error_after is not None and sent == script.error_after:
                await write_recorded(response, record, event_bytes(*protocol.stream_error(script)))
                break
            if script.gap_ms:
                await asyncio.sleep(script.gap_ms / 1000)
            await write_recorded(response, record, event_bytes(name, data))
        await response.write_eof()
        return response
