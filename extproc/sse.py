"""Incremental Server-Sent Events parser for upstream response bodies.

Envoy hands the ext_proc the body in arbitrary byte chunks, so a line, a `\\r\\n` pair or a
UTF-8 character can be split anywhere. The parser keeps only the incomplete tail line and
the pending event, and reports comments and events in stream order (the free-model
rewriter re-emits both, contract 6.4). Field handling follows the WHATWG event-stream rules.
Written by hand because none of the project's dependencies parses SSE from raw byte chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "SseComment", "SseEvent", "SseItem", "SseParser"]

DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024

_LF = 0x0A
_CR = 0x0D
_COLON = 0x3A
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class SseComment:
    text: str  # without the leading ':' (a following space is kept)


@dataclass(frozen=True, slots=True)
class SseEvent:
    data: str
    event: str | None = None
    id: str | None = None


SseItem = SseComment | SseEvent


class SseParser:
    """Feed byte chunks, get back the comments and events each chunk completed.

    Deliberate departures from WHATWG: `finish()` dispatches an event whose closing blank line
    never arrived (a truncated upstream may still have sent its usage chunk), and events or
    lines larger than `max_event_bytes` are dropped and counted instead of buffered.
    As in WHATWG, `id` is the last event id seen so far, so it carries over to later events.
    """

    __slots__ = (
        "_after_cr",
        "_at_start",
        "_data",
        "_data_size",
        "_dropping_event",
        "_event",
        "_id",
        "_max",
        "_skipping_line",
        "_tail",
        "_tail_size",
        "dropped_oversized",
    )

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        # Incomplete last line, kept as parts so a line arriving in many small chunks is
        # joined once instead of re-concatenated per chunk.
        self._tail: list[bytes] = []
        self._tail_size = 0
        # The previous chunk ended in '\r': a '\n' opening this chunk belongs to that line end.
        self._after_cr = False
        self._at_start = True
        self._skipping_line = False
        self._dropping_event = False
        self._data: list[str] = []
        self._data_size = 0
        self._event: str | None = None
        self._id: str | None = None
        self.dropped_oversized = 0

    def feed(self, chunk: bytes) -> list[SseItem]:
        if not chunk:
            return []
        if self._after_cr:
            self._after_cr = False
            if chunk[0] == _LF:
                chunk = chunk[1:]
                if not chunk:
                    return []
        if _CR in chunk:  # int membership is a plain memchr
            # A trailing '\r' already ends its line; only the next chunk can tell whether
            # a '\n' follows that must not count as a second (blank) line.
            self._after_cr = chunk[-1] == _CR
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        rest = lines.pop()
        out: list[SseItem] = []
        if lines:
            if self._skipping_line:
                # The end of an oversized line whose start was already discarded.
                self._skipping_line = False
                self._at_start = False
                del lines[0]
            elif self._tail:
                self._tail.append(lines[0])
                lines[0] = b"".join(self._tail)
                self._tail.clear()
                self._tail_size = 0
            for line in lines:
                self._line(line, out)
        if rest:
            self._extend_tail(rest)
        return out

    def finish(self) -> list[SseItem]:
        out: list[SseItem] = []
        if self._tail:
            line = b"".join(self._tail)
            self._tail.clear()
            self._tail_size = 0
            self._line(line, out)
        self._skipping_line = False
        self._after_cr = False
        self._dispatch(out)
        return out

    def _extend_tail(self, part: bytes) -> None:
        if self._skipping_line:
            return
        self._tail_size += len(part)
        if self._tail_size <= self._max:
            self._tail.append(part)
            return
        # An oversized comment is dropped on its own; an oversized field line takes its
        # event down with it, since that event can no longer be delivered intact.
        head = self._tail[0] if self._tail else part
        self._tail.clear()
        self._tail_size = 0
        self._skipping_line = True
        if head[0] == _COLON:
            self.dropped_oversized += 1
        else:
            self._drop_event()

    def _drop_event(self) -> None:
        if not self._dropping_event:
            self._dropping_event = True
            self.dropped_oversized += 1
        self._data.clear()
        self._data_size = 0

    def _line(self, line: bytes, out: list[SseItem]) -> None:
        if self._at_start:
            self._at_start = False
            if line.startswith(_BOM):
                line = line[3:]
        if not line:
            self._dispatch(out)
            return
        if line[0] == _COLON:
            out.append(SseComment(line[1:].decode("utf-8", "replace")))
            return
        colon = line.find(b":")
        if colon < 0:
            name = line
            value = b""
        else:
            name = line[:colon]
            value = line[colon + 2 :] if line.startswith(b" ", colon + 1) else line[colon + 1 :]
        if name == b"data":
            if self._dropping_event:
                return
            self._data_size += len(value) + 1
            if self._data_size > self._max:
                self._drop_event()
                return
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:  # WHATWG ignores ids containing NUL
                self._id = value.decode("utf-8", "replace")
        # Other fields (`retry`, unknown names) only matter to a reconnecting browser.

    def _dispatch(self, out: list[SseItem]) -> None:
        data = self._data
        if data and not self._dropping_event:
            text = data[0] if len(data) == 1 else "\n".join(data)
            out.append(SseEvent(text, self._event, self._id))
        data.clear()
        self._data_size = 0
        self._event = None
        self._dropping_event = False
