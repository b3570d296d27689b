"""Mock Anthropic Messages API (`POST …/messages`) for custom LLMs of kind `anthropic`.

Speaks the real wire format (checked with the official `anthropic` SDK in the tests): named SSE
events `message_start`, `content_block_start`/`_delta`/`_stop` for thinking (with a signature),
text and tool_use (`input_json_delta`), `message_delta` with the stop reason and output tokens,
`message_stop`; `error` events mid-stream; `{"type":"error","error":{…}}` bodies. Directives:
extproc/local/mock_script.py and docs/mock-upstream.md.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from extproc.local.mock_script import MockScript, MockServer, split

SIGNATURE = "mock-signature"
# Anthropic's error type for a status, as its API names them.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def message_id() -> str:
    return f"msg_mock_{uuid.uuid4().hex}"


def tool_id(index: int) -> str:
    return f"toolu_mock_{index}"


class AnthropicProtocol:
    path_suffix = "/messages"

    def check(self, headers: dict[str, str]) -> str | None:
        # The API takes the key as x-api-key; recent SDKs send it as a Bearer token.
        if not headers.get("x-api-key") and not headers.get("authorization", "").startswith("Bearer "):
            return "x-api-key header is required"
        if not headers.get("anthropic-version"):
            return "anthropic-version header is required"
        return None

    def _usage(self, script: MockScript, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": script.input_tokens,
            "cache_creation_input_tokens": script.cache_write_tokens,
            "cache_read_input_tokens": script.cache_read_tokens,
            "output_tokens": output_tokens,
        }

    def _stop_reason(self, script: MockScript) -> str:
        return "tool_use" if script.tool_calls else "end_turn"

    def events(self, script: MockScript, model: str) -> list[tuple[str, dict[str, Any]]]:
        message: dict[str, Any] = {
            "id": message_id(), "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": self._usage(script, 1),
        }
        out: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": message})]
        out.append(("ping", {"type": "ping"}))
        index = 0

        def block(start: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
            nonlocal index
            out.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}))
            for delta in deltas:
                out.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
            out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
            index += 1

        if script.thinking is not None:
            deltas = [{"type": "thinking_delta", "thinking": part} for part in split(script.thinking, script.chunks)]
            block({"type": "thinking", "thinking": "", "signature": ""}, [*deltas, {"type": "signature_delta", "signature": SIGNATURE}])
        if script.text:
            block({"type": "text", "text": ""}, [{"type": "text_delta", "text": part} for part in split(script.text, script.chunks)])
        for number, call in enumerate(script.tool_calls):
            arguments = orjson.dumps(call.arguments).decode()
            deltas = [{"type": "input_json_delta", "partial_json": part} for part in split(arguments, script.chunks)]
            block({"type": "tool_use", "id": tool_id(number), "name": call.name, "input": {}}, deltas)
        out.append(("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop_reason(script), "stop_sequence": None},
            "usage": {"output_tokens": script.output_tokens},
        }))
        out.append(("message_stop", {"type": "message_stop"}))
        return out

    def stream_error(self, script: MockScript) -> tuple[str, dict[str, Any]]:
        return "error", {"type": "error", "error": {"type": "overloaded_error", "message": script.error_message}}

    def document(self, script: MockScript, model: str) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if script.thinking is not None:
            content.append({"type": "thinking", "thinking": script.thinking, "signature": SIGNATURE})
        if script.text:
            content.append({"type": "text", "text": script.text})
        for number, call in enumerate(script.tool_calls):
            content.append({"type": "tool_use", "id": tool_id(number), "name": call.name, "input": call.arguments})
        return {
            "id": message_id(), "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": self._stop_reason(script), "stop_sequence": None,
            "usage": self._usage(script, script.output_tokens),
        }

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        error_type = _ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": error_type, "message": message}}


def mock_anthropic() -> MockServer:
    return MockServer(AnthropicProtocol())
