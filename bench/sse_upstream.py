"""A lean streaming chat-completions upstream for benchmarks.

`python -m bench.sse_upstream --port P [--host 127.0.0.1] [--chunks 20] [--interval-ms 50]`

Answers every request (any method, any path) with an OpenRouter-shaped SSE stream: a role
event, then `chunks` content events one every `interval_ms` (the first at once, with the role
event), then a finish event carrying usage, then `data: [DONE]`; each event is its own HTTP
chunk. The query parameters `chunks` and `interval_ms` override the defaults per request.
Prints one line once it listens, nothing per request.

The HTTP/1.1 server is hand-written on asyncio.Protocol, because the benchmark must not be
limited by a general-purpose HTTP library's per-request cost: an event costs one write of
bytes built when the response starts, and a tick is one timer, so the upstream's own CPU
stays small next to the gateway's it is there to measure.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import time
from collections import deque
from collections.abc import Callable
from functools import lru_cache
from typing import cast
from urllib.parse import parse_qsl

import orjson

try:
    import uvloop

    LOOP_FACTORY: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
except ImportError:
    LOOP_FACTORY = None

_HEADERS = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream\r\n"
    b"transfer-encoding: chunked\r\n"
    b"cache-control: no-cache\r\n\r\n"
)
_BAD_REQUEST_BODY = b"chunks and interval_ms must be non-negative numbers\n"
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (
    len(_BAD_REQUEST_BODY),
    _BAD_REQUEST_BODY,
)
# An event is `data: ` + the per-response head (`{"id":...,"provider":"OpenAI"`) + one of these tails.
_HEAD = (
    b'data: {"id":"gen-bench-%d","object":"chat.completion.chunk","created":%d,'
    b'"model":"openai/gpt-4o-mini","provider":"OpenAI"'
)
_ROLE_TAIL = b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
_CONTENT_TAIL = b',"choices":[{"index":0,"delta":{"content":"word "},"finish_reason":null}]}\n\n'
# Request heads larger than this are not HTTP a benchmark client sends; drop the connection.
_MAX_HEAD = 64 * 1024


def _chunk(data: bytes) -> bytes:
    """`data` framed as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


_END = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


@lru_cache(maxsize=64)
def _finish_tail(chunks: int) -> bytes:
    usage = {
        "prompt_tokens": 12,
        "completion_tokens": chunks,
        "total_tokens": 12 + chunks,
        "cost": 0.000123,
        "is_byok": False,
        "prompt_tokens_details": {"cached_tokens": 0},
        "cost_details": {"upstream_inference_cost": None},
    }
    return b',"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":' + orjson.dumps(usage) + b"}\n\n"


def _parse_head(head: bytes) -> tuple[bytes, bool, int, bool]:
    """(request target, keep-alive, content-length, chunked body) of a request head; ValueError if malformed."""
    lines = head.split(b"\r\n")
    _method, target, version = lines[0].split(b" ")
    keep_alive = version == b"HTTP/1.1"
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
            if length < 0:
                raise ValueError("negative content-length")
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            value = value.lower()
            if b"close" in value:
                keep_alive = False
            elif b"keep-alive" in value:
                keep_alive = True
    # With both, the chunked framing is the one that counts (RFC 9112, 6.3).
    return target, keep_alive, 0 if chunked else length, chunked


class Server:
    """What the connections share: defaults, the response counter and the open connections."""

    def __init__(self, loop: asyncio.AbstractEventLoop, chunks: int, interval: float) -> None:
        self.loop = loop
        self.chunks = chunks
        self.interval = interval
        self.ids = itertools.count(1)
        self.connections: set[Connection] = set()

    def options(self, target: bytes) -> tuple[int, float]:
        """(chunks, interval in seconds) for a request target; ValueError if the query is invalid."""
        chunks, interval = self.chunks, self.interval
        _, _, query = target.partition(b"?")
        for name, value in parse_qsl(query.decode("latin-1")):
            if name == "chunks":
                chunks = int(value)
            elif name == "interval_ms":
                interval = float(value) / 1000
        if chunks < 0 or not interval >= 0:  # `not >=` also rejects nan
            raise ValueError("negative option")
        return chunks, interval


class Connection(asyncio.Protocol):
    """Reads requests and answers them one at a time, in order, with an SSE stream."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        # The request being read: its target and keep-alive once its head is parsed, then its body.
        self.target: bytes | None = None
        self.request_keep_alive = True
        self.chunked = False
        self.in_trailer = False
        self.body_left = 0  # body bytes still to skip (for a chunked body: of the current chunk and its CRLF)
        self.queue: deque[tuple[bytes, bool]] = deque()  # complete requests not yet answered
        # The response being sent.
        self.responding = False
        self.keep_alive = True
        self.chunks = 0
        self.head = b""
        self.content = b""
        self.left = 0
        self.interval = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # The client hung up, possibly mid-stream: nothing more to send, so stop the ticks.
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        try:
            while not self.transport.is_closing() and (request := self._read_request()) is not None:
                self.queue.append(request)
        except ValueError:
            self.transport.close()
            return
        self._next()

    def _read_request(self) -> tuple[bytes, bool] | None:
        """Consume the buffered bytes of the current request; (target, keep-alive) once it is complete."""
        buf = self.buf
        if self.target is None:
            j = buf.find(b"\r\n\r\n")
            if j < 0:
                if len(buf) > _MAX_HEAD:
                    raise ValueError("request head too large")
                return None
            self.target, self.request_keep_alive, self.body_left, self.chunked = _parse_head(bytes(buf[:j]))
            self.in_trailer = False
            del buf[: j + 4]
        while True:
            if self.body_left:
                n = min(self.body_left, len(buf))
                del buf[:n]
                self.body_left -= n
                if self.body_left:
                    return None
            if not self.chunked:
                return self._complete()
            j = buf.find(b"\r\n")
            if j < 0:
                return None
            line = bytes(buf[:j])
            del buf[: j + 2]
            if self.in_trailer:
                if not line:
                    return self._complete()
            else:
                size = int(line.split(b";", 1)[0], 16)
                self.in_trailer = size == 0
                self.body_left = size + 2 if size else 0  # the data and the CRLF after it

    def _complete(self) -> tuple[bytes, bool]:
        assert self.target is not None
        request = (self.target, self.request_keep_alive)
        self.target = None
        return request

    def _next(self) -> None:
        """Answer queued requests in order until one is streaming (or none is left)."""
        assert self.transport is not None
        while self.queue and not self.responding and not self.transport.is_closing():
            self._start(*self.queue.popleft())

    def _start(self, target: bytes, keep_alive: bool) -> None:
        assert self.transport is not None
        self.keep_alive = keep_alive
        try:
            self.chunks, interval = self.server.options(target)
        except ValueError:
            self.transport.write(_BAD_REQUEST)
            self._end()
            return
        self.head = _HEAD % (next(self.server.ids), int(time.time()))
        # Built once per response: every content event of a response is the same bytes.
        self.content = _chunk(self.head + _CONTENT_TAIL)
        # The role event and the first content event go out at once, so that the time to first token
        # is the path's own latency, not a timer's; the other content events follow one per interval.
        start = _HEADERS + _chunk(self.head + _ROLE_TAIL) + (self.content if self.chunks else b"")
        if self.chunks <= 1:
            self._finish(start)
            return
        self.transport.write(start)
        self.responding = True
        self.left = self.chunks - 1
        self.interval = interval
        self.timer = self.server.loop.call_later(interval, self._tick)

    def _tick(self) -> None:
        assert self.transport is not None
        self.left -= 1
        if self.left:
            self.transport.write(self.content)
            self.timer = self.server.loop.call_later(self.interval, self._tick)
            return
        self.timer = None
        self.responding = False
        self._finish(self.content)
        self._next()

    def _finish(self, before: bytes) -> None:
        # What is still unsent (the last content event, or the whole start of the response), the finish
        # event, [DONE] and the terminating chunk: one write.
        assert self.transport is not None
        self.transport.write(before + _chunk(self.head + _finish_tail(self.chunks)) + _END)
        self._end()

    def _end(self) -> None:
        assert self.transport is not None
        if not self.keep_alive:
            self.transport.close()


async def serve(host: str, port: int, chunks: int, interval_ms: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = Server(loop, chunks, interval_ms / 1000)
    # A deep backlog: a benchmark opens its connections all at once, and a dropped SYN costs a 1 s retry.
    listener = await loop.create_server(lambda: Connection(server), host, port, backlog=4096)
    bound = listener.sockets[0].getsockname()[1]
    print(f"listening on http://{host}:{bound}", flush=True)
    await stop.wait()
    listener.close()
    for connection in list(server.connections):
        assert connection.transport is not None
        connection.transport.abort()
    await listener.wait_closed()


def non_negative(convert: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = convert(text)
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
        return value

    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sse_upstream", description="Lean SSE upstream.")
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--chunks", type=non_negative(int), default=20, help="content events per response")
    parser.add_argument("--interval-ms", type=non_negative(float), default=50.0, help="milliseconds between events")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=LOOP_FACTORY) as runner:
        runner.run(serve(args.host, args.port, int(args.chunks), args.interval_ms))


if __name__ == "__main__":
    main()
