"""Mock OpenAI Responses API (`POST …/responses`) for custom LLMs of kind `openai`.

Speaks the real wire format (checked with the official `openai` SDK's
`responses.create(stream=True)` in the tests): `response.created`, `response.in_progress`,
output items for reasoning (summary deltas, encrypted content), the message (`output_text`
deltas) and function calls (argument deltas), then `response.completed` with usage; `error`
events mid-stream; `{"error":{…}}` bodies. Directives: extproc/local/mock_script.py and
docs/mock-upstream.md.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from extproc.local.mock_script import MockScript, MockServer, split

REASONING_ID = "rs_mock_0001"
MESSAGE_ID = "msg_mock_0001"
ENCRYPTED = "mock-encrypted-reasoning"
CREATED_AT = 1_767_225_600


def call_id(index: int) -> str:
    return f"call_mock_{index}"


def function_item_id(index: int) -> str:
    return f"fc_mock_{index}"


class ResponsesProtocol:
    path_suffix = "/responses"

    def check(self, headers: dict[str, str]) -> str | None:
        if not headers.get("authorization", "").startswith("Bearer "):
            return "a Bearer authorization header is required"
        return None

    def _response(
        self, response_id: str, script: MockScript, model: str, status: str, output: list[dict[str, Any]]
    ) -> dict[str, Any]:
        response: dict[str, Any] = {
            "id": response_id, "object": "response", "created_at": CREATED_AT, "status": status, "model": model,
            "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "error": None, "incomplete_details": None,
        }
        if status == "completed":
            response["usage"] = {
                "input_tokens": script.input_tokens + script.cache_read_tokens,
                "input_tokens_details": {"cached_tokens": script.cache_read_tokens},
                "output_tokens": script.output_tokens,
                "output_tokens_details": {"reasoning_tokens": script.reasoning_tokens},
                "total_tokens": script.input_tokens + script.cache_read_tokens + script.output_tokens,
            }
        return response

    def _items(self, script: MockScript) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if script.thinking is not None:
            items.append({"id": REASONING_ID, "type": "reasoning", "encrypted_content": ENCRYPTED,
                          "summary": [{"type": "summary_text", "text": script.thinking}]})
        if script.text:
            items.append({"id": MESSAGE_ID, "type": "message", "role": "assistant", "status": "completed",
                          "content": [{"type": "output_text", "text": script.text, "annotations": []}]})
        for number, call in enumerate(script.tool_calls):
            items.append({"id": function_item_id(number), "type": "function_call", "call_id": call_id(number),
                          "name": call.name, "arguments": orjson.dumps(call.arguments).decode(), "status": "completed"})
        return items

    def events(self, script: MockScript, model: str) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        response_id = f"resp_mock_{uuid.uuid4().hex}"

        def emit(name: str, **data: Any) -> None:
            out.append((name, {"type": name, "sequence_number": len(out), **data}))

        emit("response.created", response=self._response(response_id, script, model, "in_progress", []))
        emit("response.in_progress", response=self._response(response_id, script, model, "in_progress", []))
        items = self._items(script)
        for position, item in enumerate(items):
            kind = item["type"]
            if kind == "reasoning":
                emit("response.output_item.added", output_index=position, item={**item, "summary": [], "encrypted_content": None})
                part = {"type": "summary_text", "text": ""}
                emit("response.reasoning_summary_part.added", item_id=item["id"], output_index=position, summary_index=0, part=part)
                for delta in split(script.thinking or "", script.chunks):
                    emit("response.reasoning_summary_text.delta", item_id=item["id"], output_index=position,
                         summary_index=0, delta=delta)
                emit("response.reasoning_summary_text.done", item_id=item["id"], output_index=position,
                     summary_index=0, text=script.thinking)
                emit("response.reasoning_summary_part.done", item_id=item["id"], output_index=position,
                     summary_index=0, part=item["summary"][0])
            elif kind == "message":
                emit("response.output_item.added", output_index=position,
                     item={**item, "status": "in_progress", "content": []})
                emit("response.content_part.added", item_id=item["id"], output_index=position, content_index=0,
                     part={"type": "output_text", "text": "", "annotations": []})
                for delta in split(script.text, script.chunks):
                    emit("response.output_text.delta", item_id=item["id"], output_index=position, content_index=0,
                         delta=delta, logprobs=[])
                emit("response.output_text.done", item_id=item["id"], output_index=position, content_index=0,
                     text=script.text, logprobs=[])
                emit("response.content_part.done", item_id=item["id"], output_index=position, content_index=0,
                     part=item["content"][0])
            else:
                emit("response.output_item.added", output_index=position,
                     item={**item, "arguments": "", "status": "in_progress"})
                for delta in split(item["arguments"], script.chunks):
                    emit("response.function_call_arguments.delta", item_id=item["id"], output_index=position, delta=delta)
                emit("response.function_call_arguments.done", item_id=item["id"], output_index=position,
                     arguments=item["arguments"])
            emit("response.output_item.done", output_index=position, item=item)
        emit("response.completed", response=self._response(response_id, script, model, "completed", items))
        return out

    def stream_error(self, script: MockScript) -> tuple[str, dict[str, Any]]:
        return "error", {"type": "error", "code": "server_error", "message": script.error_message, "param": None,
                         "sequence_number": 0}

    def document(self, script: MockScript, model: str) -> dict[str, Any]:
        return self._response(f"resp_mock_{uuid.uuid4().hex}", script, model, "completed", self._items(script))

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                          "param": None, "code": None}}


def mock_openai_responses() -> MockServer:
    return MockServer(ResponsesProtocol())
