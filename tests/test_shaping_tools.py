"""Tool-calling helpers (behaviour.md 5.1) and the metrics tool labels (8.1)."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.shaping.tools import (
    INTERRUPTED_TOOL_RESULT,
    drop_tool_strict_properties,
    has_attempt_completion_tool,
    normalize_tool_call_ids,
    repair_tools,
    tools_available,
    tools_used,
)

INTERRUPTED = "Tool execution was interrupted before completion."


def call(call_id: str, name: str = "read_file") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


def assistant(*ids: str) -> dict[str, Any]:
    return {"role": "assistant", "content": "", "tool_calls": [call(i) for i in ids]}


def result(call_id: str, content: str = "ok") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def interrupted(call_id: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": INTERRUPTED}


def user(text: str = "hi") -> dict[str, Any]:
    return {"role": "user", "content": text}


def repaired(messages: Any) -> Any:
    body = {"messages": messages}
    repair_tools(body)
    return body["messages"]


# --- repair: the contract's examples ----------------------------------------------------------


def test_interrupted_text_is_the_contract_text() -> None:
    assert INTERRUPTED_TOOL_RESULT == INTERRUPTED


def test_well_formed_conversation_is_unchanged() -> None:
    messages = [
        {"role": "system", "content": "s"},
        user(),
        assistant("a", "b"),
        result("a"),
        result("b"),
        user("next"),
        {"role": "assistant", "content": "done"},
    ]
    assert repaired(copy.deepcopy(messages)) == messages


def test_missing_results_inserted_after_the_assistant_in_call_order() -> None:
    messages = [user(), assistant("a", "b", "c"), user("interjection"), result("b")]
    assert repaired(messages) == [
        user(),
        assistant("a", "b", "c"),
        interrupted("a"),
        interrupted("c"),
        user("interjection"),
        result("b"),
    ]


def test_missing_result_for_the_last_assistant_message() -> None:
    assert repaired([user(), assistant("a")]) == [user(), assistant("a"), interrupted("a")]


def test_result_in_a_later_group_does_not_count() -> None:
    messages = [assistant("a"), user(), assistant(), result("a")]
    assert repaired(messages) == [assistant("a"), interrupted("a"), user(), assistant()]


def test_orphan_results_removed_including_before_the_first_assistant() -> None:
    messages = [
        {"role": "system", "content": "s"},
        result("early"),
        user(),
        assistant("a"),
        result("a"),
        result("stranger"),
    ]
    assert repaired(messages) == [{"role": "system", "content": "s"}, user(), assistant("a"), result("a")]


def test_tool_messages_without_any_assistant_are_removed() -> None:
    assert repaired([user(), result("x"), user("again")]) == [user(), user("again")]


def test_duplicate_results_removed_first_kept() -> None:
    messages = [assistant("a"), result("a", "first"), user(), result("a", "second")]
    assert repaired(messages) == [assistant("a"), result("a", "first"), user()]


def test_duplicate_call_ids_in_one_message_dropped_first_kept() -> None:
    first = call("a", "read_file")
    messages = [
        {"role": "assistant", "tool_calls": [first, call("b"), call("a", "write_file")]},
        result("a"),
        result("b"),
    ]
    out = repaired(messages)
    assert out[0]["tool_calls"] == [first, call("b")]
    assert out[1:] == [result("a"), result("b")]


def test_same_call_id_in_two_assistant_messages_answered_per_group() -> None:
    messages = [assistant("a"), result("a"), assistant("a")]
    assert repaired(messages) == [assistant("a"), result("a"), assistant("a"), interrupted("a")]


def test_results_without_string_id_are_orphans() -> None:
    no_id = {"role": "tool", "content": "x"}
    messages = [assistant("a"), result("a"), no_id, {"role": "tool", "tool_call_id": 7}]
    assert repaired(messages) == [assistant("a"), result("a")]


def test_malformed_shapes_are_tolerated() -> None:
    # tool_calls null / a dict, calls without ids, non-dict messages and calls: no results are
    # invented for calls that cannot be paired, and unknown entries stay where they were.
    odd_call = {"type": "function", "function": {"name": "x"}}
    messages = [
        "not a message",
        None,
        {"role": "assistant", "tool_calls": None},
        {"role": "assistant", "tool_calls": {"id": "a"}},
        {"role": "assistant", "tool_calls": [odd_call, 3, None, call("a")], "content": [{"type": "text"}]},
        {"role": "user", "content": [{"type": "text", "text": "x"}]},
        {"no": "role"},
    ]
    out = repaired(copy.deepcopy(messages))
    assert out == messages[:5] + [interrupted("a")] + messages[5:]


def test_repair_is_a_no_op_unless_messages_is_a_list() -> None:
    for messages in (None, "x", {"role": "user"}, 3):
        body: dict[str, Any] = {"messages": messages, "model": "m"}
        repair_tools(body)
        assert body == {"messages": messages, "model": "m"}
    body = {"model": "m"}
    repair_tools(body)
    assert body == {"model": "m"}


def test_repair_keeps_the_message_objects() -> None:
    # Later steps hold references to messages (e.g. cache breakpoints); repair must not copy them.
    system = {"role": "system", "content": "s"}
    a = assistant("a")
    out = repaired([system, a])
    assert out[0] is system and out[1] is a


# --- repair: properties over random conversations --------------------------------------------

IDS = st.sampled_from(["a", "b", "c", "d", "call_1", "toolu_01"])


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    kinds = draw(
        st.lists(st.sampled_from(["system", "user", "assistant", "tool", "tool"]), max_size=14)
    )
    messages: list[dict[str, Any]] = []
    for serial, kind in enumerate(kinds):
        # `serial` makes every message distinguishable, so order checks are exact.
        if kind == "assistant":
            ids = draw(st.lists(IDS, max_size=4))
            # Distinct names tell which of two calls with one id survived.
            calls = [call(i, f"tool{n}") for n, i in enumerate(ids)]
            messages.append({"role": "assistant", "serial": serial, "tool_calls": calls})
        elif kind == "tool":
            messages.append({"role": "tool", "serial": serial, "tool_call_id": draw(IDS), "content": "r"})
        else:
            messages.append({"role": kind, "serial": serial, "content": "c"})
    return messages


def groups(messages: list[dict[str, Any]]) -> list[tuple[dict[str, Any] | None, list[dict[str, Any]]]]:
    out: list[tuple[dict[str, Any] | None, list[dict[str, Any]]]] = [(None, [])]
    for message in messages:
        if message["role"] == "assistant":
            out.append((message, []))
        else:
            out[-1][1].append(message)
    return out


@settings(max_examples=200, deadline=None)
@given(conversations())
def test_repair_properties(messages: list[dict[str, Any]]) -> None:
    original = copy.deepcopy(messages)
    out = repaired(messages)

    for asst, others in groups(out):
        call_ids = [c["id"] for c in asst["tool_calls"]] if asst else []
        assert len(call_ids) == len(set(call_ids))
        result_ids = [m["tool_call_id"] for m in others if m["role"] == "tool"]
        # Exactly one result per call, and no result without a call in its group.
        assert sorted(result_ids) == sorted(call_ids)

    # Non-tool messages keep their relative order; none is added or lost.
    def non_tool(ms: list[dict[str, Any]]) -> list[int]:
        return [m["serial"] for m in ms if m["role"] != "tool"]

    assert non_tool(out) == non_tool(original)

    # Calls are the original ones with later duplicates dropped.
    for before, after in zip(
        (m for m in original if m["role"] == "assistant"), (m for m in out if m["role"] == "assistant")
    ):
        first_by_id: dict[str, dict[str, Any]] = {}
        for c in before["tool_calls"]:
            first_by_id.setdefault(c["id"], c)
        assert after["tool_calls"] == list(first_by_id.values())

    # Kept client results keep their relative order.
    kept = [m["serial"] for m in out if m["role"] == "tool" and "serial" in m]
    assert kept == sorted(kept)


@settings(max_examples=200, deadline=None)
@given(conversations())
def test_repair_is_idempotent(messages: list[dict[str, Any]]) -> None:
    once = repaired(messages)
    snapshot = copy.deepcopy(once)
    assert repaired(once) == snapshot


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=10,
)
ROLE_KEYS = st.sampled_from(
    ["role", "tool_calls", "tool_call_id", "id", "type", "function", "custom", "name"]
)
# Message-like dicts whose fields hold anything, mixed with arbitrary values.
LOOSE = st.recursive(
    st.none() | st.integers() | st.sampled_from(["assistant", "tool", "user", "function", "custom", "a", ""]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ROLE_KEYS, inner, max_size=5),
    max_leaves=15,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["messages", "tools", "model"]), LOOSE | JSON, max_size=3))
def test_helpers_never_raise_on_any_body(body: dict[str, Any]) -> None:
    repair_tools(body)
    once = copy.deepcopy(body)
    repair_tools(body)
    assert body == once
    normalize_tool_call_ids(body, lambda _: True, 9)
    drop_tool_strict_properties(body)
    assert isinstance(has_attempt_completion_tool(body), bool)
    assert all(isinstance(label, str) for label in tools_available(body) + tools_used(body))


# --- normalize ids ----------------------------------------------------------------------------


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_normalize_hashes_matching_ids_on_calls_and_results() -> None:
    body = {"messages": [assistant("toolu.01", "short"), result("toolu.01"), result("short")]}
    normalize_tool_call_ids(body, lambda i: "." in i)
    calls = body["messages"][0]["tool_calls"]
    assert calls[0]["id"] == sha("toolu.01") and len(calls[0]["id"]) == 64
    assert body["messages"][1]["tool_call_id"] == sha("toolu.01")
    # The filter applies to calls too: an id it rejects stays as it is on both sides.
    assert calls[1]["id"] == "short"
    assert body["messages"][2]["tool_call_id"] == "short"


def test_normalize_truncates() -> None:
    body = {"messages": [assistant("call_abcdefghij"), result("call_abcdefghij")]}
    normalize_tool_call_ids(body, lambda i: len(i) != 9, 9)
    assert body["messages"][0]["tool_calls"][0]["id"] == sha("call_abcdefghij")[:9]
    assert body["messages"][1]["tool_call_id"] == sha("call_abcdefghij")[:9]


def test_normalize_tolerates_malformed_messages() -> None:
    messages = [
        None,
        {"role": "assistant", "tool_calls": None},
        {"role": "tool"},
        {"role": "assistant", "tool_calls": [{}, 1]},
    ]
    body = {"messages": copy.deepcopy(messages)}
    normalize_tool_call_ids(body, lambda _: True)
    assert body["messages"] == messages
    body2: dict[str, Any] = {"messages": "x"}
    normalize_tool_call_ids(body2, lambda _: True)
    assert body2 == {"messages": "x"}


@settings(max_examples=200, deadline=None)
@given(conversations(), st.integers(min_value=1, max_value=64) | st.none(), st.sampled_from(["a", "c", "_"]))
def test_normalize_keeps_pairs_matched(
    messages: list[dict[str, Any]], max_length: int | None, marker: str
) -> None:
    body = {"messages": messages}
    repair_tools(body)
    before = copy.deepcopy(body["messages"])
    normalize_tool_call_ids(body, lambda i: marker in i, max_length)
    for asst, others in groups(body["messages"]):
        call_ids = [c["id"] for c in asst["tool_calls"]] if asst else []
        assert sorted(m["tool_call_id"] for m in others if m["role"] == "tool") == sorted(call_ids)

    def ids(messages: list[dict[str, Any]]) -> list[str]:
        out: list[str] = []
        for m in messages:
            out += [c["id"] for c in m["tool_calls"]] if m["role"] == "assistant" else []
            out += [m["tool_call_id"]] if m["role"] == "tool" else []
        return out

    expected = [sha(i)[:max_length] if marker in i else i for i in ids(before)]
    assert ids(body["messages"]) == expected


# --- strict, attempt_completion ---------------------------------------------------------------


def test_drop_strict_only_from_function_tools() -> None:
    body = {
        "tools": [
            {"type": "function", "function": {"name": "a", "strict": True, "parameters": {}}},
            {"type": "function", "function": {"name": "b"}},
            {"type": "custom", "custom": {"name": "c", "strict": True}},
            {"type": "function", "function": None},
            {"type": "function"},
            "junk",
        ]
    }
    drop_tool_strict_properties(body)
    assert body["tools"][0] == {"type": "function", "function": {"name": "a", "parameters": {}}}
    assert body["tools"][2] == {"type": "custom", "custom": {"name": "c", "strict": True}}
    for tools in (None, {"a": 1}, "x"):
        odd = {"tools": tools}
        drop_tool_strict_properties(odd)
        assert odd == {"tools": tools}


def test_attempt_completion_detection() -> None:
    def tool(kind: str, name: Any) -> dict[str, Any]:
        return {"type": kind, kind: {"name": name}}

    both = [tool("function", "read_file"), tool("function", "attempt_completion")]
    assert has_attempt_completion_tool({"tools": both})
    assert not has_attempt_completion_tool({"tools": [tool("function", "read_file")]})
    assert not has_attempt_completion_tool({"tools": [tool("custom", "attempt_completion")]})
    assert not has_attempt_completion_tool({"tools": [{"function": {"name": "attempt_completion"}}]})
    assert not has_attempt_completion_tool({"tools": [tool("function", "Attempt_Completion")]})
    assert not has_attempt_completion_tool({})
    assert not has_attempt_completion_tool({"tools": None})
    assert not has_attempt_completion_tool({"tools": [None, 1, {"type": "function", "function": "x"}]})


# --- metrics labels ---------------------------------------------------------------------------


def test_tools_available_labels() -> None:
    body = {
        "tools": [
            {"type": "function", "function": {"name": "read_file"}},
            {"type": "function", "function": {"name": "  write_file\n"}},
            {"type": "function", "function": {"name": "  "}},
            {"type": "function", "function": {}},
            {"type": "function"},
            {"type": "custom", "custom": {"name": "grep"}},
            {"type": "custom", "custom": {"name": 5}},
            {"type": "web_search"},
            {"function": {"name": "x"}},
            None,
            "read_file",
        ]
    }
    assert tools_available(body) == [
        "function:read_file",
        "function:write_file",
        "function:unknown",
        "function:unknown",
        "function:unknown",
        "custom:grep",
        "custom:unknown",
        "unknown:unknown",
        "unknown:unknown",
        "unknown:unknown",
        "unknown:unknown",
    ]
    assert tools_available({}) == []
    assert tools_available({"tools": {"type": "function"}}) == []


def test_tools_available_trims_like_javascript() -> None:
    # U+FEFF is trimmed by JavaScript's trim (the reference), U+001F is not.
    body = {"tools": [{"type": "function", "function": {"name": "\ufeffx\u3000"}},
                      {"type": "function", "function": {"name": "\x1fy"}}]}
    assert tools_available(body) == ["function:x", "function:\x1fy"]


def test_tools_used_one_per_call_in_assistant_messages() -> None:
    body = {
        "messages": [
            {"role": "user", "tool_calls": [call("u", "ignored")]},
            {"role": "assistant", "tool_calls": [call("a", "read_file"), call("b", "read_file")]},
            result("a"),
            result("b"),
            {"role": "assistant", "content": "no tools"},
            {"role": "assistant", "tool_calls": None},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c", "type": "custom", "custom": {"name": "grep"}},
                    {"id": "d", "type": "custom"},
                    {"id": "e", "type": "function", "function": {"name": ""}},
                    {"id": "f"},
                    None,
                ],
            },
        ]
    }
    assert tools_used(body) == [
        "function:read_file",
        "function:read_file",
        "custom:grep",
        "custom:unknown",
        "function:unknown",
        "unknown:unknown",
        "unknown:unknown",
    ]
    assert tools_used({}) == []
    assert tools_used({"messages": "x"}) == []
