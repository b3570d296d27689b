"""A lean HTTP/1.1 GET client with keep-alive, for the generation lookup (one per usage record).

Hand-written on asyncio streams because the client libraries cost several times the lookup's
own work: measured with `python -m bench.micro`, aiohttp ~300-400 us of CPU per GET, this
~100-180 us (by hand, the same way: httpx ~3 ms, a client on h11 ~200 us). It does only what
the lookup needs: GET, a JSON body sized by Content-Length, chunked or the connection's end, TLS
with the configured CA bundle, a bounded pool of kept-alive connections per origin. No redirects, proxies or compression (the lookup
asks for none, as it did with aiohttp: no proxy from the environment, no Accept-Encoding).
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus, urlsplit

# Bounds on what a server may send, so a broken one cannot hold unbounded memory (the head is
# bounded by the stream's 64 KiB limit).
_MAX_BODY = 16 * 1024 * 1024
# Connections per origin. The writer's lookups come in bursts (records read together wait their
# 200 ms together); beyond this many at once they queue for a connection instead of opening
# new ones: a connection opened and closed per burst cost more CPU than the GETs themselves
# (socket, handshake and teardown on both ends), measured under `make bench`. At 100 ms per
# lookup this still carries ~1,000 lookups a second per origin.
CONNECTIONS_PER_ORIGIN = 128


class HttpError(Exception):
    """The server's answer is not HTTP/1.1 this client can read (the connection is dropped)."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes


_Origin = tuple[str, str, int]  # scheme, host, port
_Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass(slots=True)
class _Pool:
    """An origin's connections: at most `limit` open (idle or in use, or being opened)."""

    limit: int
    idle: list[_Stream] = field(default_factory=list)
    open: int = 0
    # Requests waiting for a connection: handed an idle one, or None (leave to open one).
    waiters: deque[asyncio.Future[_Stream | None]] = field(default_factory=deque)

    async def acquire(self) -> _Stream | None:
        """An idle connection, or None: the caller may open one (and counts as its owner)."""
        if self.idle:
            return self.idle.pop()
        if self.open < self.limit:
            self.open += 1
            return None
        waiter: asyncio.Future[_Stream | None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed one just as we were cancelled
                self.release(waiter.result())
            raise

    def release(self, stream: _Stream | None) -> None:
        """A connection back (None: it was closed), to the next waiter or the idle list."""
        if stream is None:
            self.open -= 1
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                if stream is None:
                    self.open += 1
                waiter.set_result(stream)
                return
        if stream is not None:
            self.idle.append(stream)


@dataclass(slots=True)
class _Deadlines:
    """Cancels the requests that run past their deadline, checking every `tick` seconds: one
    timer for all of them, not an `asyncio.timeout` each (its context object, and a timer
    scheduled and cancelled per request: a GET cost a median ~95 us of CPU with it and ~68
    without, measured against bench.micro's responder). A request ends between its timeout
    and one tick later."""

    tick: float
    running: dict[asyncio.Task[Any], float] = field(default_factory=dict)
    expired: set[asyncio.Task[Any]] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None

    def enter(self, task: asyncio.Task[Any], deadline: float) -> None:
        self.running[task] = deadline
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.tick, self._check)

    def leave(self, task: asyncio.Task[Any]) -> None:
        del self.running[task]
        self.expired.discard(task)

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, deadline in self.running.items():
            if deadline <= now and task not in self.expired:
                self.expired.add(task)
                task.cancel()
        self.timer = loop.call_later(self.tick, self._check) if self.running else None


@dataclass(slots=True)
class Client:
    ca_bundle: str | None = None
    timeout: float = 10.0
    connections_per_origin: int = CONNECTIONS_PER_ORIGIN
    _pools: dict[_Origin, _Pool] = field(default_factory=dict)
    _tls: ssl.SSLContext | None = None
    _deadlines: _Deadlines = field(init=False)

    def __post_init__(self) -> None:
        self._deadlines = _Deadlines(self.timeout / 10)

    async def get(self, url: str, params: dict[str, str], headers: dict[str, str]) -> Response:
        """Raises OSError, TimeoutError, EOFError (asyncio.IncompleteReadError) or HttpError."""
        origin, path, host = _split(url)
        # What urlencode makes of str pairs, without its per-call type checks.
        target = f"{path}?{'&'.join(f'{_quote(k)}={_quote(v)}' for k, v in params.items())}" if params else path
        lines = [f"GET {target} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(self.connections_per_origin)
        deadlines = self._deadlines
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        deadlines.enter(task, asyncio.get_running_loop().time() + self.timeout)
        try:
            return await self._get(pool, origin, request)
        except asyncio.CancelledError:
            # A timeout when only `_deadlines` cancelled it, not also someone else (shutdown): as
            # `asyncio.timeout` decides.
            if task in deadlines.expired and task.uncancel() <= cancelling:
                raise TimeoutError(f"no response within {self.timeout} s") from None
            raise
        finally:
            deadlines.leave(task)

    async def _get(self, pool: _Pool, origin: _Origin, request: bytes) -> Response:
        while True:
            stream = await pool.acquire()
            reused = stream is not None
            try:
                if stream is None:
                    stream = await self._connect(origin)
                response, reusable = await _exchange(stream, request)
            except (OSError, EOFError):
                pool.release(None)
                if reused:
                    # A kept-alive connection the server may have closed meanwhile: the
                    # request goes to the next one, or a new one (a GET is safe to repeat).
                    continue
                raise
            except BaseException:
                pool.release(None)
                raise
            if reusable:
                pool.release(stream)
            else:
                stream[1].close()
                pool.release(None)
            return response

    async def _connect(self, origin: _Origin) -> _Stream:
        scheme, host, port = origin
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context(cafile=self.ca_bundle)
            return await asyncio.open_connection(host, port, ssl=self._tls, server_hostname=host)
        return await asyncio.open_connection(host, port)

    async def close(self) -> None:
        for pool in self._pools.values():
            for _, writer in pool.idle:
                writer.close()
        self._pools.clear()


# What quote_plus leaves as it is (RFC 3986's unreserved characters).
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def _quote(value: str) -> str:
    """quote_plus, without its generic per-character work when there is nothing to quote (a
    generation id is unreserved characters)."""
    return value if _UNRESERVED.fullmatch(value) else quote_plus(value)


@functools.lru_cache(maxsize=64)
def _split(url: str) -> tuple[_Origin, str, str]:
    """The origin, path and Host header of a URL; cached, as every lookup asks the same one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpError(f"unsupported URL scheme or host: {parts.scheme}")
    origin = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    return origin, parts.path or "/", parts.netloc.rpartition("@")[2]


async def _exchange(stream: _Stream, request: bytes) -> tuple[Response, bool]:
    """The response, and whether the connection may carry another request; a connection that
    failed is closed here."""
    reader, writer = stream
    try:
        writer.write(request)
        status, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
        body, reusable = await _read_body(reader, headers)
    except asyncio.LimitOverrunError:
        writer.close()
        raise HttpError("response line longer than 64 KiB") from None
    except BaseException:
        writer.close()
        raise
    return Response(status, body), reusable


_FRAMING = frozenset({b"connection", b"content-length", b"transfer-encoding"})


def _parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    status_line, *lines = head[:-4].split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    if not version.startswith(b"HTTP/1.") or not rest[:3].isdigit():
        raise HttpError(f"not an HTTP/1.x status line: {status_line[:40]!r}")
    headers: dict[bytes, bytes] = {}  # only those that frame the body: the rest is never read
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep:
            raise HttpError("malformed header line")
        name = name.strip().lower()
        if name in _FRAMING:
            headers[name] = value.strip()
    if version == b"HTTP/1.0" and headers.get(b"connection", b"").lower() != b"keep-alive":
        headers[b"connection"] = b"close"
    return int(rest[:3]), headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[bytes, bytes]) -> tuple[bytes, bool]:
    """The body, and whether the connection may carry another request."""
    keep = headers.get(b"connection", b"").lower() != b"close"
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        return await _read_chunked(reader), keep
    length = headers.get(b"content-length")
    if length is not None:
        if not length.isdigit() or int(length) > _MAX_BODY:
            raise HttpError("bad content-length")
        return await reader.readexactly(int(length)), keep
    chunks: list[bytes] = []  # delimited by the connection's end
    total = 0
    while chunk := await reader.read(65536):
        total += len(chunk)
        if total > _MAX_BODY:
            raise HttpError("response body too large")
        chunks.append(chunk)
    return b"".join(chunks), False


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError("bad chunk size") from None
        total += size
        if total > _MAX_BODY:
            raise HttpError("response body too large")
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
                pass
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise HttpError("chunk not terminated by CRLF")
