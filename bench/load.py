"""Closed-loop HTTP/1.1 load generator: `python -m bench.load --url URL --concurrency N [options]`.

Each of N workers owns one keep-alive connection and sends requests one after another on it,
reconnecting when the server closes it or a request fails. With --stream the responses are
read as SSE and the time to the first content chunk and the gaps between content chunks are
recorded as well. Prints one JSON object on stdout (see `report`).

The HTTP/1.1 client is hand-written on asyncio.Protocol, because the benchmark must not be
limited by a general-purpose HTTP library's per-request cost: it shares the CPU with the
system under test, so every request costs a future, a timer and a few list appends, and the
body is scanned in place.

The figures are the responses that end inside the measured window (after the warm-up, before
the duration ends), whenever they started; requests started after the warm-up count towards
--requests. When the run ends no request starts, and those in flight are left to finish (they
are not in the figures): a request cut by the load generator would still be one the system
served, and `completed` (every 200 of the run, warm-up included) must match what the gateway
accounted. Events are assumed to end with "\\n\\n", as OpenRouter, the mock upstreams and the
gateway send them.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from time import perf_counter
from typing import cast
from urllib.parse import urlsplit

import orjson

try:
    import uvloop

    LOOP_FACTORY: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
except ImportError:
    LOOP_FACTORY = None

# Response parser states.
_HEAD, _LENGTH, _UNTIL_CLOSE, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER = range(7)
_DELTA = b'"delta":'
_CONTENT = b'"content":'
_SPACE, _QUOTE = ord(" "), ord('"')
_RETRY_DELAY = 0.01


class Connection(asyncio.Protocol):
    """One keep-alive connection; `exchange` sends a request and resolves when its response is read.

    The waiter's result is None for a complete 200 response, otherwise the error kind.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, stream: bool) -> None:
        self.loop = loop
        self.stream = stream
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.waiter: asyncio.Future[str | None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.buf = b""
        self.state = _HEAD
        self.left = 0  # bytes still expected in the body (Content-Length) or the current chunk
        self.keep_alive = True
        self.result: str | None = None
        self.started = 0.0
        self.finished = 0.0
        # Streaming: the undelimited tail of the SSE body, time to first content chunk (-1 = none yet),
        # time of the last content chunk, the gaps between content chunks and their count.
        self.sse = b""
        self.ttft = -1.0
        self.last = 0.0
        self.gaps: list[float] = []
        self.chunks = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None:
            # A response without length or chunking ends when the server closes.
            self._finish(self.result if self.state == _UNTIL_CLOSE else "connection")

    def exchange(self, request: bytes, timeout: float) -> asyncio.Future[str | None]:
        assert self.transport is not None
        self.waiter = waiter = self.loop.create_future()
        self.buf = self.sse = b""
        self.state = _HEAD
        self.ttft = -1.0
        self.gaps.clear()
        self.chunks = 0
        self.timer = self.loop.call_later(timeout, self._timeout)
        self.started = perf_counter()
        self.transport.write(request)
        return waiter

    def close(self) -> None:
        # Whatever was awaited is abandoned (timed out, or the worker was cancelled at the end of the run).
        self.waiter = None
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            self.transport.abort()

    def _timeout(self) -> None:
        self.timer = None
        self._finish("timeout")
        self.close()

    def _finish(self, result: str | None) -> None:
        self.finished = perf_counter()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        assert self.waiter is not None
        # Cancelled when the run ended while the response was in flight: nobody wants the result.
        if not self.waiter.cancelled():
            self.waiter.set_result(result)
        self.waiter = None
        if not self.keep_alive:
            self.closed = True
            assert self.transport is not None
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            return  # nothing was asked for; a well-behaved server sends nothing here
        buf = self.buf + data if self.buf else data
        i, n = 0, len(buf)
        now = perf_counter() if self.stream else 0.0
        while self.waiter is not None:
            state = self.state
            if state == _HEAD:
                j = buf.find(b"\r\n\r\n", i)
                if j < 0:
                    break
                self._head(buf[i:j])
                i = j + 4
            elif state == _CHUNK_SIZE:
                j = buf.find(b"\r\n", i)
                if j < 0:
                    break
                size = int(buf[i:j].split(b";", 1)[0], 16)
                i = j + 2
                self.left = size
                self.state = _CHUNK_DATA if size else _TRAILER
            elif state == _CHUNK_END:
                if n - i < 2:
                    break
                i += 2
                self.state = _CHUNK_SIZE
            elif state == _TRAILER:
                j = buf.find(b"\r\n", i)
                if j < 0:
                    break
                if j == i:
                    self._finish(self.result)
                i = j + 2
            else:  # body bytes: _LENGTH, _CHUNK_DATA or _UNTIL_CLOSE
                take = n - i if state == _UNTIL_CLOSE else min(self.left, n - i)
                if take == 0:
                    break
                if self.stream:
                    self._events(buf, i, i + take, now)
                i += take
                if state != _UNTIL_CLOSE:
                    self.left -= take
                    if self.left == 0:
                        if state == _LENGTH:
                            self._finish(self.result)
                        else:
                            self.state = _CHUNK_END
        self.buf = buf[i:] if i < n and self.waiter is not None else b""

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status = int(lines[0][9:12])
        if status < 200:
            return  # interim response (100 Continue): the real one follows
        self.result = None if status == 200 else str(status)
        self.keep_alive = lines[0].startswith(b"HTTP/1.1")
        length = -1
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                value = value.lower()
                if b"close" in value:
                    self.keep_alive = False
                elif b"keep-alive" in value:
                    self.keep_alive = True
        if chunked:
            self.state = _CHUNK_SIZE
        elif status in (204, 304) or length == 0:
            self._finish(self.result)
        elif length > 0:
            self.state, self.left = _LENGTH, length
        else:
            self.state, self.keep_alive = _UNTIL_CLOSE, False

    def _events(self, data: bytes, start: int, end: int, now: float) -> None:
        """Scan complete SSE events in data[start:end] for content chunks; keep the incomplete tail."""
        if self.sse:
            data = self.sse + data[start:end]
            start, end = 0, len(data)
        while (k := data.find(b"\n\n", start, end)) >= 0:
            d = data.find(_DELTA, start, k)
            c = data.find(_CONTENT, d, k) if d >= 0 else -1
            if c >= 0:
                p = c + len(_CONTENT)
                while p < k and data[p] == _SPACE:
                    p += 1
                # A non-empty string: an opening quote not followed by the closing one.
                if p + 1 < k and data[p] == _QUOTE and data[p + 1] != _QUOTE:
                    if self.ttft < 0:
                        self.ttft = now - self.started
                    else:
                        self.gaps.append(now - self.last)
                    self.last = now
                    self.chunks += 1
            start = k + 2
        self.sse = data[start:end]


class Run:
    """Shared counters and samples; responses that end while `measuring` is set are recorded."""

    def __init__(self, limit: int | None, stream: bool) -> None:
        self.measuring = False
        self.stopping = False
        self.completed = 0  # every 200 response, warm-up and the end of the run included
        self.left = limit
        self.stream = stream
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.latencies: list[float] = []
        self.ttfts: list[float] = []
        self.gaps: list[float] = []
        self.chunks = 0

    def take(self) -> bool:
        """Whether a worker may start another request."""
        if self.stopping:
            return False
        if not self.measuring or self.left is None:
            return True
        if self.left == 0:
            return False
        self.left -= 1
        return True

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def record(self, conn: Connection) -> None:
        self.ok += 1
        self.latencies.append(conn.finished - conn.started)
        if self.stream:
            if conn.ttft >= 0:
                self.ttfts.append(conn.ttft)
            self.gaps.extend(conn.gaps)
            self.chunks += conn.chunks


async def connect(host: str, port: int, stream: bool, timeout: float) -> Connection:
    loop = asyncio.get_running_loop()
    conn = Connection(loop, stream)
    await asyncio.wait_for(loop.create_connection(lambda: conn, host, port), timeout)
    return conn


async def worker(run: Run, host: str, port: int, request: bytes, timeout: float) -> None:
    conn: Connection | None = None
    try:
        while run.take():
            if conn is None or conn.closed:
                try:
                    conn = await connect(host, port, run.stream, timeout)
                except (OSError, asyncio.TimeoutError) as exc:
                    conn = None
                    run.error("timeout" if isinstance(exc, asyncio.TimeoutError) else "connection")
                    # Against a refused port, do not spin the CPU the system under test needs.
                    await asyncio.sleep(_RETRY_DELAY)
                    continue
            result = await conn.exchange(request, timeout)
            if result is not None:
                run.error(result)  # warm-up included: every failure is reported
                continue
            run.completed += 1
            # Every response that ends inside the measured window counts, whenever it started:
            # a slow system's long requests, started in the warm-up, are its throughput too.
            if run.measuring:
                run.record(conn)
    finally:
        if conn is not None:
            conn.close()


def summary(samples: list[float]) -> dict[str, float | None]:
    """Nearest-rank percentiles, max and mean in milliseconds."""
    if not samples:
        return {key: None for key in ("p50", "p90", "p99", "max", "mean")}
    samples.sort()
    n = len(samples)
    # ceil(p * n / 100) in integers, so that float rounding cannot move the rank.
    result: dict[str, float | None] = {f"p{p}": round(samples[-(-p * n // 100) - 1] * 1000, 3) for p in (50, 90, 99)}
    result["max"] = round(samples[-1] * 1000, 3)
    result["mean"] = round(sum(samples) / n * 1000, 3)
    return result


def build_request(url: str, body: bytes | None, headers: list[str]) -> tuple[str, int, bytes]:
    """(host, port, the request's bytes), built once for the whole run."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"--url must be http://host[:port]/path, got {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    extra: list[tuple[str, str]] = []
    for header in headers:
        name, colon, value = header.partition(":")
        if not colon or not name.strip():
            raise SystemExit(f"--header must be 'name: value', got {header!r}")
        extra.append((name.strip(), value.strip()))
    defaults = [("host", parts.netloc)]
    if body is not None:
        defaults += [("content-type", "application/json"), ("content-length", str(len(body)))]
    # A --header replaces the default of the same name.
    given = {name.lower() for name, _ in extra}
    pairs = [pair for pair in defaults if pair[0] not in given] + extra
    lines = [f"{'GET' if body is None else 'POST'} {target} HTTP/1.1"] + [f"{name}: {value}" for name, value in pairs]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return parts.hostname, parts.port or 80, head + (body or b"")


def raise_file_limit() -> None:
    # Each connection is a file descriptor; the default soft limit (often 1024) caps --concurrency.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run_load(args: argparse.Namespace) -> dict[str, object]:
    body = Path(args.body_file).read_bytes() if args.body_file else None
    host, port, request = build_request(args.url, body, args.header)
    run = Run(args.requests, args.stream)
    # --requests alone ends when the requests are done; --duration alone (or neither) after the duration.
    duration = args.duration if args.duration is not None or args.requests is not None else 10.0
    loop = asyncio.get_running_loop()
    run.measuring = args.warmup == 0
    start = perf_counter()
    tasks = [loop.create_task(worker(run, host, port, request, args.timeout)) for _ in range(args.concurrency)]
    if not run.measuring:
        await asyncio.sleep(args.warmup)
        run.measuring = True
        start = perf_counter()
    done, pending = await asyncio.wait(tasks, timeout=duration)
    elapsed = perf_counter() - start
    run.measuring, run.stopping = False, True
    if pending:
        finished, pending = await asyncio.wait(pending, timeout=args.timeout)
        done |= finished
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()  # a worker that crashed is a bug in this program: let it show
    return report(run, args.concurrency, elapsed)


def report(run: Run, concurrency: int, elapsed: float) -> dict[str, object]:
    result: dict[str, object] = {
        "concurrency": concurrency,
        "requests": run.ok,
        "completed": run.completed,
        "errors": run.errors,
        "elapsed_seconds": round(elapsed, 3),
        "rps": round(run.ok / elapsed, 3) if elapsed > 0 else None,
        "latency_ms": summary(run.latencies),
    }
    if run.stream:
        result.update(ttft_ms=summary(run.ttfts), chunk_gap_ms=summary(run.gaps), chunks=run.chunks)
    return result


def positive(convert: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = convert(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description="Closed-loop HTTP/1.1 load generator.")
    parser.add_argument("--url", required=True, help="http://host:port/path?query (plain HTTP only)")
    parser.add_argument("--concurrency", type=positive(int), default=1, help="connections, one request at a time each")
    parser.add_argument("--duration", type=positive(float), help="measured seconds (default 10 without --requests)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not recorded before measuring (default 1)")
    parser.add_argument(
        "--requests", type=positive(int), help="stop after this many requests started after the warm-up"
    )
    parser.add_argument("--body-file", help="request body: sent as a POST of application/json (default: GET)")
    parser.add_argument("--header", action="append", default=[], help="'name: value', repeatable")
    parser.add_argument("--stream", action="store_true", help="responses are SSE: record TTFT and chunk gaps")
    parser.add_argument("--timeout", type=positive(float), default=60.0, help="seconds per request (default 60)")
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raise_file_limit()
    with asyncio.Runner(loop_factory=LOOP_FACTORY) as runner:
        result = runner.run(run_load(args))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


if __name__ == "__main__":
    main()
