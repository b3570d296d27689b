"""The generation lookup's HTTP/1.1 client (extproc/accounting/http1.py) against a scripted raw
server: each framing a server may use, keep-alive reuse, a kept-alive connection the server
closed meanwhile, and requests timing out or cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.accounting.http1 import Client, HttpError, _quote

BODY = b'{"data":{"id":"gen-1","total_cost":0.000123}}'


@dataclass
class Server:
    """Answers each request with the next scripted raw response; records requests and
    connections. `close_after`: close each connection after that many responses."""

    responses: list[bytes]
    close_after: int = 1000
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for _ in range(self.close_after):
                self.requests.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(self.responses[min(len(self.requests) - 1, len(self.responses) - 1)])
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[object]:
    servers: list[asyncio.Server] = []

    async def start(server: Server) -> Server:
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        servers.append(listener)
        server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/api/v1/generation"
        return server

    yield start
    for listener in servers:
        listener.close()


def _sized(status: str, body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


async def test_a_sized_body_is_read_and_the_connection_reused(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(Server([_sized("200 OK", BODY)]))
    client = Client()
    for _ in range(3):
        response = await client.get(server.url, {"id": "gen 1/x"}, {"Authorization": "Bearer k"})
        assert (response.status, response.body) == (200, BODY)
    await client.close()
    assert server.connections == 1
    first = server.requests[0].decode()
    assert first.startswith("GET /api/v1/generation?id=gen+1%2Fx HTTP/1.1\r\n")
    assert "\r\nHost: 127.0.0.1:" in first and "\r\nAuthorization: Bearer k\r\n" in first


async def test_a_chunked_body_with_extensions_and_trailers_is_joined(serve) -> None:  # type: ignore[no-untyped-def]
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"a;ext=1\r\n" + BODY[:10] + b"\r\n"
        + f"{len(BODY) - 10:x}\r\n".encode() + BODY[10:] + b"\r\n"
        + b"0\r\nx-trailer: 1\r\n\r\n"
    )
    server = await serve(Server([chunked]))
    client = Client()
    assert (await client.get(server.url, {}, {})).body == BODY
    assert (await client.get(server.url, {}, {})).body == BODY
    await client.close()
    assert server.connections == 1


async def test_a_body_ended_by_the_connection_closing_is_read_whole(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(Server([b"HTTP/1.1 404 Not Found\r\nconnection: close\r\n\r\n" + BODY * 3000], close_after=1))
    client = Client()
    for _ in range(2):
        response = await client.get(server.url, {}, {})
        assert (response.status, response.body) == (404, BODY * 3000)
    await client.close()
    assert server.connections == 2  # never reused after `connection: close`


async def test_a_kept_alive_connection_closed_by_the_server_is_replaced(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(Server([_sized("200 OK", BODY)], close_after=1))
    client = Client()
    for _ in range(3):
        assert (await client.get(server.url, {}, {})).status == 200
    await client.close()
    assert server.connections == 3


async def test_garbage_is_an_http_error(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(Server([b"SSH-2.0-OpenSSH\r\n\r\n"]))
    client = Client()
    with pytest.raises(HttpError):
        await client.get(server.url, {}, {})
    await client.close()


async def test_a_burst_beyond_the_pool_waits_for_connections_instead_of_opening_more(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(Server([_sized("200 OK", BODY)]))
    client = Client(connections_per_origin=4)
    for _ in range(3):  # bursts, as the writer's lookups come: each larger than the pool
        responses = await asyncio.gather(*(client.get(server.url, {"id": str(i)}, {}) for i in range(20)))
        assert [r.status for r in responses] == [200] * 20
    await client.close()
    assert len(server.requests) == 60
    assert server.connections == 4


async def test_a_waiting_request_opens_the_connection_a_closed_one_leaves_room_for(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(Server([_sized("200 OK", BODY, "connection: close\r\n")], close_after=1))
    client = Client(connections_per_origin=2, timeout=5)
    responses = await asyncio.gather(*(client.get(server.url, {}, {}) for _ in range(6)))
    assert [r.status for r in responses] == [200] * 6
    await client.close()
    assert server.connections == 6


@dataclass
class SilentServer:
    """Reads requests and never answers; `received` is set at the first."""

    received: asyncio.Event = field(default_factory=asyncio.Event)
    requests: int = 0
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        self.received.set()
        await reader.read()  # until the client gives up and closes
        writer.close()


async def test_a_server_that_never_answers_times_out_and_frees_its_connection(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(SilentServer())
    client = Client(timeout=0.3, connections_per_origin=1)
    loop = asyncio.get_running_loop()
    for _ in range(2):  # the second request gets the pool's one connection: the first let it go
        started = loop.time()
        with pytest.raises(TimeoutError):
            await client.get(server.url, {}, {})
        # Between the timeout and one check (a tenth of it) later.
        assert 0.3 <= loop.time() - started < 0.3 * 1.1 + 0.1
    await client.close()
    assert server.requests == 2


async def test_a_lookup_cancelled_from_outside_is_cancelled_not_timed_out(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(SilentServer())
    client = Client(timeout=30)
    lookup = asyncio.get_running_loop().create_task(client.get(server.url, {}, {}))
    await server.received.wait()
    lookup.cancel()  # as the writer's shutdown abandons a lookup
    with pytest.raises(asyncio.CancelledError):
        await lookup
    assert lookup.cancelled()
    await client.close()


# Any text, and text made mostly of what needs no quoting, with what does now and then.
@given(st.one_of(st.text(), st.text(alphabet="aZ09_.~-" * 4 + " /+é%&=\x00")))
def test_query_values_are_quoted_as_urlencode_quotes_them(value: str) -> None:
    assert _quote(value) == quote_plus(value)
