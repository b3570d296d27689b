"""Tool-calling helpers of behaviour.md 5.1 and the tool labels of the API metrics (8.1).

Bodies come straight from clients, so every helper accepts any JSON shape: entries that are not
what the helper looks for are left alone, and nothing here raises on malformed input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

INTERRUPTED_TOOL_RESULT = "Tool execution was interrupted before completion."

# The characters JavaScript's String.prototype.trim removes (WhiteSpace + LineTerminator); Python's
# str.strip() differs (it keeps U+FEFF and strips U+001C..U+001F, U+0085), and metric labels
# should match the reference gateway's.
_JS_WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)


def _is_role(message: Any, role: str) -> bool:
    return isinstance(message, dict) and message.get("role") == role


def _tool_calls(message: dict[str, Any]) -> list[Any]:
    tool_calls = message.get("tool_calls")
    return tool_calls if isinstance(tool_calls, list) else []


def _call_id(tool_call: Any) -> str | None:
    # Only string ids can be paired with results; anything else is passed through untouched.
    call_id = tool_call.get("id") if isinstance(tool_call, dict) else None
    return call_id if isinstance(call_id, str) else None


def _result_id(message: Any) -> str | None:
    tool_call_id = message.get("tool_call_id") if isinstance(message, dict) else None
    return tool_call_id if isinstance(tool_call_id, str) else None


def _group_by_assistant(messages: list[Any]) -> list[tuple[dict[str, Any] | None, list[Any]]]:
    """Group 0 holds what precedes the first assistant message; each assistant message then owns
    the non-assistant messages up to the next one."""
    groups: list[tuple[dict[str, Any] | None, list[Any]]] = [(None, [])]
    for message in messages:
        if _is_role(message, "assistant"):
            groups.append((message, []))
        else:
            groups[-1][1].append(message)
    return groups


def _drop_duplicate_calls(assistant: dict[str, Any]) -> None:
    tool_calls = assistant.get("tool_calls")
    if not isinstance(tool_calls, list):
        return
    seen: set[str] = set()
    kept: list[Any] = []
    for tool_call in tool_calls:
        call_id = _call_id(tool_call)
        if call_id is not None:
            if call_id in seen:
                continue
            seen.add(call_id)
        kept.append(tool_call)
    assistant["tool_calls"] = kept


def _repair_group(assistant: dict[str, Any] | None, others: list[Any]) -> list[Any]:
    """The group's messages after the assistant message: missing results first, then the
    original ones minus orphan and duplicate results."""
    calls = _tool_calls(assistant) if assistant is not None else []
    call_ids = [call_id for call_id in map(_call_id, calls) if call_id is not None]
    answered = {_result_id(m) for m in others if _is_role(m, "tool")}
    missing = [
        {"role": "tool", "tool_call_id": call_id, "content": INTERRUPTED_TOOL_RESULT}
        for call_id in call_ids
        if call_id not in answered
    ]
    # Each call id may be consumed by one result; later results with that id are duplicates.
    unconsumed = set(call_ids)
    kept: list[Any] = []
    for message in missing + others:
        if _is_role(message, "tool"):
            result_id = _result_id(message)
            if result_id not in unconsumed:
                continue
            unconsumed.discard(result_id)
        kept.append(message)
    return kept


def repair_tools(body: dict[str, Any]) -> None:
    """Make every tool call of an assistant message answered exactly once within its group
    (upstreams reject conversations that are not), mutating `body["messages"]`."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    repaired: list[Any] = []
    for assistant, others in _group_by_assistant(messages):
        if assistant is not None:
            _drop_duplicate_calls(assistant)
            repaired.append(assistant)
        repaired.extend(_repair_group(assistant, others))
    body["messages"] = repaired


def _hash_id(tool_call_id: str, max_length: int | None) -> str:
    return hashlib.sha256(tool_call_id.encode("utf-8")).hexdigest()[:max_length]


def normalize_tool_call_ids(
    body: dict[str, Any], should_normalize: Callable[[str], bool], max_length: int | None = None
) -> None:
    """Replace the ids some providers reject by a hex SHA-256 prefix. The same filter and hash
    apply to calls and results, so pairs that matched before still match."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for message in messages:
        if _is_role(message, "assistant"):
            for tool_call in _tool_calls(message):
                call_id = _call_id(tool_call)
                if call_id is not None and should_normalize(call_id):
                    tool_call["id"] = _hash_id(call_id, max_length)
        elif _is_role(message, "tool"):
            result_id = _result_id(message)
            if result_id is not None and should_normalize(result_id):
                message["tool_call_id"] = _hash_id(result_id, max_length)


def _function_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The `function` objects of the `type:"function"` tool definitions."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    return [
        tool["function"]
        for tool in tools
        if isinstance(tool, dict)
        and tool.get("type") == "function"
        and isinstance(tool.get("function"), dict)
    ]


def drop_tool_strict_properties(body: dict[str, Any]) -> None:
    """Delete `function.strict` from every function tool (for upstreams that reject the field)."""
    for function in _function_tools(body):
        function.pop("strict", None)


def has_attempt_completion_tool(body: dict[str, Any]) -> bool:
    return any(function.get("name") == "attempt_completion" for function in _function_tools(body))


def _label(item: Any) -> str:
    """`<type>:<name>` of a tool definition or tool call, for metrics."""
    kind = item.get("type") if isinstance(item, dict) else None
    if kind not in ("function", "custom"):
        return "unknown:unknown"
    spec = item.get(kind)
    name = spec.get("name") if isinstance(spec, dict) else None
    name = name.strip(_JS_WHITESPACE) if isinstance(name, str) else ""
    return f"{kind}:{name or 'unknown'}"


def tools_available(body: dict[str, Any]) -> list[str]:
    """One label per tool definition in `tools`."""
    tools = body.get("tools")
    return [_label(tool) for tool in tools] if isinstance(tools, list) else []


def tools_used(body: dict[str, Any]) -> list[str]:
    """One label per tool call in the assistant messages of the request."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    return [_label(call) for m in messages if _is_role(m, "assistant") for call in _tool_calls(m)]
