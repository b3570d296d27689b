"""The outbox's lean Redis connection (extproc/accounting/resp.py) against the embedded Redis:
what it writes is what redis-py reads back, Redis' refusals and a dropped connection surface as
redis-py's errors, and the client's URL (password, database) is honoured."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from extproc.accounting.resp import RespConnection, pack


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_url)
    await redis.flushall()
    yield redis
    await redis.aclose()


def _xadd(key: bytes, value: bytes) -> bytes:
    return pack(b"XADD", key, b"*", b"record", value)


async def test_a_batch_of_xadds_lands_as_written(client: aioredis.Redis) -> None:
    resp = RespConnection(client)
    values = [b'{"a":1}', b"\x00\xff binary \r\n$3\r\n", b""]
    ids = await resp.execute([_xadd(b"s", value) for value in values])
    entries = await client.xrange("s")
    assert [entry_id for entry_id, _ in entries] == ids
    assert [fields for _, fields in entries] == [{b"record": value} for value in values]
    resp.close()


async def test_a_refused_command_raises_and_the_others_still_ran(client: aioredis.Redis) -> None:
    await client.set("not-a-stream", "x")
    resp = RespConnection(client)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await resp.execute([_xadd(b"s", b"1"), _xadd(b"not-a-stream", b"2"), _xadd(b"s", b"3")])
    assert [fields[b"record"] for _, fields in await client.xrange("s")] == [b"1", b"3"]
    # The connection stays in step: the next batch gets its own replies.
    assert len(await resp.execute([_xadd(b"s", b"4")])) == 1
    resp.close()


async def test_a_connection_redis_dropped_fails_once_then_reconnects(client: aioredis.Redis) -> None:
    resp = RespConnection(client)
    await resp.execute([_xadd(b"s", b"1")])
    await client.client_kill_filter(_type="normal", skipme=True)
    with pytest.raises(RedisConnectionError):
        await resp.execute([_xadd(b"s", b"2")])
    await resp.execute([_xadd(b"s", b"3")])
    assert [fields[b"record"] for _, fields in await client.xrange("s")] == [b"1", b"3"]
    resp.close()


async def test_the_urls_password_and_database_are_used(client: aioredis.Redis, redis_url: str) -> None:
    await client.config_set("requirepass", "s3cret")
    try:
        host = redis_url.split("://", 1)[1].split("/", 1)[0]
        with_password = aioredis.Redis.from_url(f"redis://:s3cret@{host}/3")
        resp = RespConnection(with_password)
        await resp.execute([_xadd(b"s", b"in db 3")])
        assert await with_password.xlen("s") == 1
        resp.close()
        wrong = RespConnection(aioredis.Redis.from_url(f"redis://:wrong@{host}/3"))
        with pytest.raises(RedisConnectionError):
            await wrong.execute([_xadd(b"s", b"x")])
        await with_password.config_set("requirepass", "")
        await with_password.aclose()
    finally:
        await client.connection_pool.disconnect()
    assert await client.xlen("s") == 0  # database 0 untouched


async def test_a_reply_later_than_the_clients_socket_timeout_drops_the_connection(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=0.2)
    resp = RespConnection(client)
    with pytest.raises(RedisTimeoutError):
        await resp.execute([pack(b"BLPOP", b"never", b"5")])
    # A blocking command's own wait is allowed on top: BLPOP's 0.1 s ends in time, with nil.
    assert await resp.execute([pack(b"BLPOP", b"never", b"0.1")], wait=0.1) == [None]
    await client.aclose()


async def test_concurrent_callers_each_get_their_own_replies(client: aioredis.Redis) -> None:
    resp = RespConnection(client)
    await resp.execute([pack(b"PING")])  # connected: both calls go to the same connection
    blocked, pinged = await asyncio.gather(
        resp.execute([pack(b"BLPOP", b"never", b"0.2")], wait=0.2), resp.execute([pack(b"PING")])
    )
    assert (blocked, pinged) == ([None], [b"PONG"])
    resp.close()
