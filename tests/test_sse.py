from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.sse import SseComment, SseEvent, SseItem, SseParser


def parse(*chunks: bytes, max_event_bytes: int | None = None) -> list[SseItem]:
    parser = SseParser() if max_event_bytes is None else SseParser(max_event_bytes)
    items: list[SseItem] = []
    for chunk in chunks:
        items.extend(parser.feed(chunk))
    items.extend(parser.finish())
    return items


C = SseComment
E = SseEvent


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(b"data: a\n\n", [E("a")], id="lf"),
        pytest.param(b"data: a\r\n\r\n", [E("a")], id="crlf"),
        pytest.param(b"data: a\r\r", [E("a")], id="cr-only"),
        pytest.param(b"data: a\r\ndata: b\rdata: c\n\n", [E("a\nb\nc")], id="mixed-endings"),
        pytest.param(b"data: a\ndata: b\n\n", [E("a\nb")], id="multi-line-data"),
        pytest.param(b"data: a\ndata:\ndata: b\n\n", [E("a\n\nb")], id="empty-data-line"),
        pytest.param(b"data:a\n\n", [E("a")], id="data-without-space"),
        pytest.param(b"data:  a \n\n", [E(" a ")], id="only-one-space-removed"),
        pytest.param(b"data: a:b: c\n\n", [E("a:b: c")], id="colon-in-value"),
        pytest.param(b"data\n\n", [E("")], id="field-without-colon"),
        pytest.param(b"data\ndata\n\n", [E("\n")], id="two-bare-data-fields"),
        pytest.param(b": hi\n", [C(" hi")], id="comment"),
        pytest.param(b":\n", [C("")], id="empty-comment"),
        pytest.param(
            b": OPENROUTER PROCESSING\r\n\r\n", [C(" OPENROUTER PROCESSING")], id="keep-alive"
        ),
        pytest.param(
            b"data: a\n: mid\ndata: b\n\n", [C(" mid"), E("a\nb")], id="comment-inside-event"
        ),
        pytest.param(
            b"event: add\nid: 7\ndata: x\n\n", [E("x", event="add", id="7")], id="event-and-id"
        ),
        pytest.param(
            b"event: add\nid: 7\ndata: x\n\ndata: y\n\n",
            [E("x", event="add", id="7"), E("y", id="7")],
            id="id-persists-event-resets",
        ),
        pytest.param(b"id: a\0b\ndata: x\n\n", [E("x")], id="id-with-nul-ignored"),
        pytest.param(b"event: ping\n\nid: 1\n\n\n\n", [], id="events-without-data"),
        pytest.param(b"retry: 10\nfoo: bar\nDATA: no\ndata: x\n\n", [E("x")], id="other-fields"),
        pytest.param(b"\xef\xbb\xbfdata: a\n\n", [E("a")], id="leading-bom"),
        pytest.param(
            b"data: \xff\xfeok\xe2\x82\n\n", [E("\ufffd\ufffdok\ufffd")], id="invalid-utf8"
        ),
        pytest.param(b": \xc3\n", [C(" \ufffd")], id="invalid-utf8-comment"),
        pytest.param(b"data: a\n", [E("a")], id="finish-without-blank-line"),
        pytest.param(b"data: a", [E("a")], id="finish-without-newline"),
        pytest.param(b"data: a\r", [E("a")], id="finish-after-cr"),
        pytest.param(b": c", [C(" c")], id="finish-flushes-comment"),
        pytest.param(b"", [], id="empty"),
    ],
)
def test_rules(stream: bytes, expected: list[SseItem]) -> None:
    assert parse(stream) == expected


def test_feed_returns_items_as_soon_as_complete() -> None:
    parser = SseParser()
    assert parser.feed(b": ping\ndata: a\n") == [C(" ping")]
    assert parser.feed(b"\ndata: b") == [E("a")]
    assert parser.feed(b"\n") == []
    assert parser.finish() == [E("b")]
    assert parser.finish() == []


def test_cr_at_chunk_end_does_not_make_a_blank_line() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []  # the second half of "\r\n", not a blank line
    assert parser.feed(b"data: b\r") == []
    assert parser.feed(b"\ndata: c\r\n\r") == [E("a\nb\nc")]
    assert parser.feed(b"\n") == []
    assert parser.finish() == []


def test_cr_then_cr_is_a_blank_line() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\r") == [E("a")]


def test_empty_chunks_keep_state() -> None:
    assert parse(b"data: a\r", b"", b"\n", b"", b"\r\n") == [E("a")]


# --- oversize cap -----------------------------------------------------------------------


def test_oversized_data_line_in_one_chunk_is_dropped() -> None:
    parser = SseParser(max_event_bytes=16)
    items = parser.feed(b"data: " + b"x" * 100 + b"\n\ndata: ok\n\n")
    assert items == [E("ok")]
    assert parser.dropped_oversized == 1


def test_oversized_line_across_many_chunks_is_dropped_with_bounded_memory() -> None:
    parser = SseParser(max_event_bytes=16)
    assert parser.feed(b"data: a\ndata: ") == []
    for _ in range(1000):
        assert parser.feed(b"y" * 7) == []
        assert parser._tail_size <= 16  # the line is not buffered past the cap
    assert parser.feed(b"\ndata: more\n\ndata: ok\n\n") == [E("ok")]
    assert parser.dropped_oversized == 1


def test_event_over_cap_from_many_small_lines_is_dropped() -> None:
    parser = SseParser(max_event_bytes=16)
    assert parser.feed(b"data: 12345\n" * 5 + b": still here\n\n") == [C(" still here")]
    assert parser.feed(b"data: ok\n\n") == [E("ok")]
    assert parser.dropped_oversized == 1


def test_oversized_comment_does_not_drop_the_event_around_it() -> None:
    parser = SseParser(max_event_bytes=16)
    items = parser.feed(b"data: a\n:")
    for _ in range(10):
        items += parser.feed(b"z" * 10)
    items += parser.feed(b"\ndata: b\n\n")
    assert items == [E("a\nb")]
    assert parser.dropped_oversized == 1


def test_oversized_event_is_dropped_at_finish() -> None:
    assert parse(b"data: " + b"x" * 100, max_event_bytes=16) == []


def test_event_at_exactly_the_cap_is_kept() -> None:
    # The cap counts data bytes plus one per line, so 15 data bytes + 1 == 16.
    assert parse(b"data: " + b"x" * 15 + b"\n\n", max_event_bytes=16) == [E("x" * 15)]


# --- the realistic stream, split everywhere ---------------------------------------------


def _chunk(delta: dict[str, object], finish_reason: str | None = None) -> bytes:
    body = {
        "id": "gen-1700000000-abc",
        "provider": "OpenAI",
        "model": "openai/gpt-4o-mini",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "choices": [
            {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        ],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 5,
    "total_tokens": 17,
    "cost": 0.0000145,
    "is_byok": False,
    "prompt_tokens_details": {"cached_tokens": 3},
}
OPENROUTER_STREAM = b"".join(
    [
        b": OPENROUTER PROCESSING\n\n",
        b": OPENROUTER PROCESSING\n\n",
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"role": "assistant", "content": "h\u00e9llo "}),
        _chunk({"role": "assistant", "content": "\U0001f30d \u4e16\u754c"}),
        _chunk({"role": "assistant", "content": "!"}),
        _chunk({"role": "assistant", "content": ""}, finish_reason="stop"),
        b"data: "
        + orjson.dumps(
            {
                "id": "gen-1700000000-abc",
                "model": "openai/gpt-4o-mini",
                "choices": [],
                "usage": USAGE,
            }
        )
        + b"\n\n",
        b"data: [DONE]\n\n",
    ]
)


def test_realistic_stream_whole() -> None:
    items = parse(OPENROUTER_STREAM)
    assert items[:2] == [C(" OPENROUTER PROCESSING")] * 2
    assert all(isinstance(item, SseEvent) for item in items[2:])
    assert len(items) == 9
    contents = [
        orjson.loads(item.data)["choices"][0]["delta"]["content"]
        for item in items[2:7]
        if isinstance(item, SseEvent)
    ]
    assert "".join(contents) == "h\u00e9llo \U0001f30d \u4e16\u754c!"
    assert items[-1] == E("[DONE]")


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(OPENROUTER_STREAM, id="lf"),
        pytest.param(OPENROUTER_STREAM.replace(b"\n", b"\r\n"), id="crlf"),
        pytest.param(OPENROUTER_STREAM.replace(b"\n", b"\r"), id="cr"),
    ],
)
def test_realistic_stream_split_at_every_offset(stream: bytes) -> None:
    expected = parse(OPENROUTER_STREAM)
    for offset in range(len(stream) + 1):
        assert parse(stream[:offset], stream[offset:]) == expected, offset
    assert parse(*(stream[i : i + 1] for i in range(len(stream)))) == expected


# --- property: any split of any event list round-trips ----------------------------------

_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\0"),
    max_size=12,
)
_COMMENT = st.builds(SseComment, _TEXT)
_EVENT = st.tuples(
    st.lists(_TEXT, max_size=3),  # data lines; none means the event is not dispatched
    st.none() | _TEXT,  # event
    st.none() | _TEXT,  # id
)


def _serialize(
    items: list[SseComment | tuple[list[str], str | None, str | None]], newline: bytes
) -> tuple[bytes, list[SseItem]]:
    lines: list[bytes] = []
    expected: list[SseItem] = []
    last_id: str | None = None
    for item in items:
        if isinstance(item, SseComment):
            lines.append(b":" + item.text.encode())
            expected.append(item)
            continue
        data, event, event_id = item
        if event is not None:
            lines.append(b"event: " + event.encode())
        if event_id is not None:
            lines.append(b"id: " + event_id.encode())
            last_id = event_id
        lines.extend(b"data: " + value.encode() for value in data)
        lines.append(b"")
        if data:
            expected.append(SseEvent("\n".join(data), event, last_id))
    return b"".join(line + newline for line in lines), expected


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(_COMMENT | _EVENT, max_size=8),
    newline=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    data=st.data(),
)
def test_random_streams_survive_random_splits(
    items: list[SseComment | tuple[list[str], str | None, str | None]],
    newline: bytes,
    data: st.DataObject,
) -> None:
    stream, expected = _serialize(items, newline)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
    assert parse(*chunks) == expected
