"""One Redis connection that sends pipelines of pre-packed commands and reads the replies with
hiredis: the outbox's XADDs, on the ext_proc's hot path.

Hand-written because redis-py spends most of a command's cost in its own machinery (command
stack, packing, one parser call per reply, connection checks): measured with
`python -m bench.micro`, a redis-py pipeline costs ~280-300 us of CPU for one XADD and ~60 us
per XADD in batches of 10; this ~95-105 us and ~12-16 us. The connection's parameters
(address, TLS, user, password, database) are the redis-py client's own, so both reach the same
Redis.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def pack(*args: bytes) -> bytes:
    """A command in RESP: an array of bulk strings (hiredis' C packer, ~1 us against ~2.7 for
    the same in Python)."""
    # hiredis' stub declares a tuple of one element; the function takes any number.
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return packed


class RespConnection:
    """One exchange at a time (callers queue: replies must come back to the one who asked);
    reconnects on the next call after a failure."""

    def __init__(self, client: Redis) -> None:
        pool = client.connection_pool
        self._kwargs: dict[str, Any] = pool.connection_kwargs
        # rediss://: the TLS context redis-py builds from the URL (CA, certificate checks).
        self._tls: ssl.SSLContext | None = None
        if issubclass(pool.connection_class, SSLConnection):
            self._tls = pool.connection_class(**self._kwargs).ssl_context.get()
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._turn = asyncio.Lock()

    async def execute(self, packed: list[bytes], wait: float = 0.0) -> list[Any]:
        """Sends the commands in one write and returns their replies, within the client's
        `socket_timeout` plus `wait` (a blocking command's own). Raises redis-py's errors:
        ResponseError for the first command Redis refused (the others still ran; in a
        transaction, EXEC's answer holds its commands' errors), ConnectionError when the
        connection failed, TimeoutError when it took too long (what ran is unknown; the
        connection is dropped)."""
        async with self._turn:
            try:
                async with asyncio.timeout((self._kwargs.get("socket_timeout") or 10) + wait):
                    replies = await self._round_trip(packed)
            except TimeoutError as exc:  # an OSError too: first
                self.close()
                raise RedisTimeoutError("Redis did not answer in time") from exc
            except (OSError, EOFError, hiredis.ProtocolError) as exc:
                self.close()
                raise RedisConnectionError(f"{type(exc).__name__}: {exc}") from exc
            except BaseException:  # cancelled mid-exchange: replies may still be due
                self.close()
                raise
        for reply in replies:
            for error in reply if isinstance(reply, list) else [reply]:
                if isinstance(error, hiredis.ReplyError):
                    raise ResponseError(str(error))
        return replies

    async def _round_trip(self, packed: list[bytes]) -> list[Any]:
        if self._stream is None:
            self._stream = await self._connect()
        reader, writer = self._stream
        writer.write(b"".join(packed))
        parser = hiredis.Reader()
        replies: list[Any] = []
        while len(replies) < len(packed):
            reply = parser.gets()
            if reply is False:
                data = await reader.read(65536)
                if not data:
                    raise EOFError("Redis closed the connection")
                parser.feed(data)
            else:
                replies.append(reply)
        return replies

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        kwargs = self._kwargs
        async with asyncio.timeout(kwargs.get("socket_connect_timeout") or 10):
            if kwargs.get("path"):
                stream = await asyncio.open_unix_connection(kwargs["path"])
            else:
                host = kwargs.get("host", "localhost")
                stream = await asyncio.open_connection(
                    host, kwargs.get("port", 6379), ssl=self._tls, server_hostname=host if self._tls else None
                )
        self._stream = stream
        hello: list[bytes] = []
        if kwargs.get("password"):
            credentials = [kwargs["username"]] if kwargs.get("username") else []
            hello.append(pack(b"AUTH", *(str(c).encode() for c in [*credentials, kwargs["password"]])))
        if kwargs.get("db"):
            hello.append(pack(b"SELECT", str(kwargs["db"]).encode()))
        if hello:
            for reply in await self._round_trip(hello):
                if isinstance(reply, hiredis.ReplyError):
                    self.close()
                    raise RedisConnectionError(f"Redis refused the connection's set-up: {reply}")
        return stream

    def close(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
            self._stream = None
