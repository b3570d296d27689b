"""The free-model and promotion IP limits (contract 2.4, 2.7, 2.8; decision 20), against a real
redis-server: exact under concurrency across replicas, sliding, fail-open."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis.crc import key_slot

from extproc.limits import Admission, FreeModelLimiter
from extproc.local.processes import free_port

IP = "203.0.113.7"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    await redis.flushdb()
    try:
        yield redis
    finally:
        await redis.aclose()


def errors_total() -> float:
    return REGISTRY.get_sample_value("llm_gateway_rate_limit_errors_total") or 0.0


def decisions_total(decision: str) -> float:
    return REGISTRY.get_sample_value("llm_gateway_rate_limit_decisions_total", {"decision": decision}) or 0.0


async def admit_many(
    limiter: FreeModelLimiter, n: int, *, prefix: str, ip: str = IP, kilo_free: bool = True, anonymous: bool = False
) -> list[Admission]:
    return [
        await limiter.admit(ip, kilo_free=kilo_free, anonymous=anonymous, request_id=f"{prefix}-{i}")
        for i in range(n)
    ]


async def test_exact_across_replicas_under_concurrency(redis_url: str, client: aioredis.Redis) -> None:
    # Each replica's client queues for a connection when its pool is busy (redis-py's default
    # pool raises MaxConnectionsError past 100 concurrent commands, which would fail open).
    replicas = [
        aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                redis_url, max_connections=50, timeout=10, socket_timeout=10
            )
        )
        for _ in range(2)
    ]
    try:
        limiters = [FreeModelLimiter(r, timeout_seconds=10) for r in replicas]  # production limit 200
        errors_before = errors_total()
        results = await asyncio.gather(
            *(
                limiters[i % 2].admit(IP, kilo_free=True, anonymous=i % 3 == 0, request_id=f"req-{i}")
                for i in range(260)
            )
        )
    finally:
        for r in replicas:
            await r.aclose()
    assert errors_total() == errors_before
    assert results.count(Admission.ADMITTED) == 200
    assert results.count(Admission.FREE_MODEL_LIMIT) == 60
    limiter = FreeModelLimiter(client)
    assert await client.zcard(limiter.free_key(IP)) == 200
    admitted = {f"req-{i}" for i, result in enumerate(results) if result is Admission.ADMITTED}
    members = {m.decode() for m in await client.zrange(limiter.free_key(IP), 0, -1)}
    assert members == admitted
    # Only the anonymous admitted ones are in the promotion window.
    promo = {m.decode() for m in await client.zrange(limiter.promotion_key(IP), 0, -1)}
    assert promo == {f"req-{i}" for i in range(260) if i % 3 == 0} & admitted


async def test_limit_per_ip_and_decision_metrics(client: aioredis.Redis) -> None:
    limiter = FreeModelLimiter(client, free_limit=5)
    admitted_before = decisions_total("admitted")
    refused_before = decisions_total("free_model_limit")
    assert await admit_many(limiter, 6, prefix="a") == [Admission.ADMITTED] * 5 + [Admission.FREE_MODEL_LIMIT]
    # A refused request is not counted; another IP has its own window.
    assert await client.zcard(limiter.free_key(IP)) == 5
    assert await admit_many(limiter, 5, prefix="b", ip="2001:db8::1") == [Admission.ADMITTED] * 5
    assert decisions_total("admitted") - admitted_before == 10
    assert decisions_total("free_model_limit") - refused_before == 1


async def test_window_slides(client: aioredis.Redis) -> None:
    """Requests placed in the window by their Redis timestamps (the limiter's clock), far from
    its edges, so the outcome does not depend on how fast this machine runs."""
    limiter = FreeModelLimiter(client, free_limit=5, free_window_seconds=60)
    seconds, micros = await client.time()
    now_ms = seconds * 1000 + micros // 1000
    await client.zadd(limiter.free_key(IP), {f"old-{n}": now_ms - 120_000 for n in range(3)})
    await client.zadd(limiter.free_key(IP), {f"recent-{n}": now_ms - 10_000 for n in range(2)})
    # The three old ones left the window, the two recent ones did not: a sliding window, not
    # a bucket that keeps (or drops) everything at once.
    assert await admit_many(limiter, 4, prefix="again") == [Admission.ADMITTED] * 3 + [Admission.FREE_MODEL_LIMIT]


async def test_promotion_limit_only_for_anonymous(client: aioredis.Redis) -> None:
    limiter = FreeModelLimiter(client, free_limit=100, promotion_limit=3)
    anon = await admit_many(limiter, 4, prefix="anon", anonymous=True)
    assert anon == [Admission.ADMITTED] * 3 + [Admission.PROMOTION_LIMIT]
    # Anonymous caller of a generic (non-Kilo) free model: checked against the promotion window.
    assert (
        await limiter.admit(IP, kilo_free=False, anonymous=True, request_id="generic")
        is Admission.PROMOTION_LIMIT
    )
    # Authenticated callers of a Kilo free model are not subject to it, and are counted only
    # in the free window.
    assert await admit_many(limiter, 3, prefix="user", anonymous=False) == [Admission.ADMITTED] * 3
    assert await client.zcard(limiter.free_key(IP)) == 6
    assert await client.zcard(limiter.promotion_key(IP)) == 3


async def test_authenticated_kilo_free_recorded_only_in_free_window(client: aioredis.Redis) -> None:
    limiter = FreeModelLimiter(client, free_limit=5)
    assert await limiter.admit(IP, kilo_free=True, anonymous=False, request_id="u1") is Admission.ADMITTED
    assert await client.zcard(limiter.free_key(IP)) == 1
    assert not await client.exists(limiter.promotion_key(IP))


async def test_anonymous_generic_free_model_checked_not_recorded(client: aioredis.Redis) -> None:
    limiter = FreeModelLimiter(client, free_limit=1, promotion_limit=1)
    for i in range(3):
        assert await limiter.admit(IP, kilo_free=False, anonymous=True, request_id=f"g{i}") is Admission.ADMITTED
    # Not subject to the free-model limit either, and nothing recorded.
    assert not await client.exists(limiter.free_key(IP), limiter.promotion_key(IP))
    # Once anonymous Kilo-free requests fill the promotion window, it is refused too.
    assert await limiter.admit(IP, kilo_free=True, anonymous=True, request_id="k") is Admission.ADMITTED
    assert await limiter.admit(IP, kilo_free=False, anonymous=True, request_id="g9") is Admission.PROMOTION_LIMIT


async def test_same_request_id_counts_once(client: aioredis.Redis) -> None:
    limiter = FreeModelLimiter(client, free_limit=2)
    for request_id in ("dup", "dup", "dup", "other"):
        assert await limiter.admit(IP, kilo_free=True, anonymous=True, request_id=request_id) is Admission.ADMITTED
    assert await client.zcard(limiter.free_key(IP)) == 2
    assert await client.zcard(limiter.promotion_key(IP)) == 2
    assert await limiter.admit(IP, kilo_free=True, anonymous=True, request_id="third") is Admission.FREE_MODEL_LIMIT


async def test_retry_keeps_first_timestamp(client: aioredis.Redis) -> None:
    limiter = FreeModelLimiter(client, free_limit=5)
    await limiter.admit(IP, kilo_free=True, anonymous=False, request_id="r")
    first = await client.zscore(limiter.free_key(IP), "r")
    # Until the limiter's clock (Redis TIME, in ms) has moved on, a retry could not tell.
    while (lambda t: t[0] * 1000 + t[1] // 1000)(await client.time()) <= first:
        await asyncio.sleep(0.001)
    await limiter.admit(IP, kilo_free=True, anonymous=False, request_id="r")
    assert await client.zscore(limiter.free_key(IP), "r") == first


async def test_empty_request_id_is_still_counted(client: aioredis.Redis) -> None:
    limiter = FreeModelLimiter(client, free_limit=5)
    for _ in range(3):
        await limiter.admit(IP, kilo_free=True, anonymous=False, request_id="")
    assert await client.zcard(limiter.free_key(IP)) == 3


async def test_free_limit_checked_before_promotion_limit(client: aioredis.Redis) -> None:
    limiter = FreeModelLimiter(client, free_limit=2, promotion_limit=2)
    assert await admit_many(limiter, 2, prefix="a", anonymous=True) == [Admission.ADMITTED] * 2
    # Both windows are full: a Kilo free request gets the 429 (free-model) refusal.
    assert await limiter.admit(IP, kilo_free=True, anonymous=True, request_id="x") is Admission.FREE_MODEL_LIMIT
    assert await limiter.admit(IP, kilo_free=False, anonymous=True, request_id="y") is Admission.PROMOTION_LIMIT
    assert await client.zcard(limiter.free_key(IP)) == 2
    assert await client.zcard(limiter.promotion_key(IP)) == 2


async def test_keys_expire_and_share_a_cluster_slot(client: aioredis.Redis) -> None:
    limiter = FreeModelLimiter(client, free_window_seconds=60, promotion_window_seconds=120)
    await limiter.admit(IP, kilo_free=True, anonymous=True, request_id="e")
    free_key, promo_key = limiter.free_key(IP), limiter.promotion_key(IP)
    assert free_key == f"gw:rl:free:{{{IP}}}"
    assert promo_key == f"gw:rl:promo:{{{IP}}}"
    assert 0 < await client.pttl(free_key) <= 60_000
    assert 0 < await client.pttl(promo_key) <= 120_000
    assert key_slot(free_key.encode()) == key_slot(promo_key.encode())


async def test_script_reloaded_after_noscript(client: aioredis.Redis) -> None:
    limiter = FreeModelLimiter(client, free_limit=5)
    assert await limiter.admit(IP, kilo_free=True, anonymous=False, request_id="1") is Admission.ADMITTED
    await client.script_flush()  # as after a restart or failover
    assert await limiter.admit(IP, kilo_free=True, anonymous=False, request_id="2") is Admission.ADMITTED
    assert await client.zcard(limiter.free_key(IP)) == 2


async def test_fails_open_when_redis_is_down(caplog: pytest.LogCaptureFixture) -> None:
    down = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        limiter = FreeModelLimiter(down, free_limit=0, promotion_limit=0)
        before = errors_total()
        with caplog.at_level(logging.ERROR, logger="extproc.limits"):
            result = await limiter.admit(IP, kilo_free=True, anonymous=True, request_id="down")
        assert result is Admission.ADMITTED
        assert errors_total() == before + 1
        [record] = [r for r in caplog.records if r.name == "extproc.limits"]
        assert record.levelno == logging.ERROR
        # The log says what failed and how, not only the class.
        assert record.error.startswith(("ConnectionError: ", "TimeoutError")), record.error
        assert record.operation == "redis EVALSHA free-model limiter"
    finally:
        await down.aclose()


async def test_fails_open_when_redis_is_slow() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            pass
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # No socket timeout: the client alone would wait for the silent server forever, so only the
    # limiter's own deadline can end the call.
    slow = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=None, socket_connect_timeout=5)
    try:
        limiter = FreeModelLimiter(slow, free_limit=0, timeout_seconds=0.3)
        before = errors_total()
        # A guard against a hang only, a hundred times the deadline: the test's point is that
        # the call ends at all, not how fast this machine gets there.
        result = await asyncio.wait_for(
            limiter.admit(IP, kilo_free=True, anonymous=False, request_id="slow"), timeout=30
        )
        assert result is Admission.ADMITTED
        assert errors_total() == before + 1
    finally:
        await slow.aclose()
        server.close()
        await server.wait_closed()


def test_rejects_bad_configuration() -> None:
    redis = aioredis.Redis()
    with pytest.raises(ValueError):
        FreeModelLimiter(redis, key_prefix="gw:{rl}:")
    with pytest.raises(ValueError):
        FreeModelLimiter(redis, free_window_seconds=0)
    with pytest.raises(ValueError):
        FreeModelLimiter(redis, promotion_limit=-1)
