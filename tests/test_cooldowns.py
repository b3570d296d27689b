"""Provider cooldowns (issue 25): the Retry-After rule, the candidate order, and the shared
state in a real Redis (two instances stand for two replicas)."""

from __future__ import annotations

import email.utils

import pytest
import redis.asyncio
from prometheus_client import REGISTRY

from extproc.cooldowns import Cooldowns, cooldown_for_429, retry_after_seconds
from extproc.pipeline.routing import order_candidates
from extproc.settings import Settings

MODEL = "z-ai/glm-5"


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = 1_800_000_000.0
    assert retry_after_seconds("30", now) == 30
    assert retry_after_seconds(email.utils.formatdate(now + 120, usegmt=True), now) == pytest.approx(120)
    assert retry_after_seconds(email.utils.formatdate(now - 5, usegmt=True), now) is None  # past
    assert retry_after_seconds("0", now) is None
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def test_a_429_cools_for_its_retry_after_capped_and_not_without_one() -> None:
    assert cooldown_for_429("30", 0.0, cap_seconds=300) == 30
    assert cooldown_for_429("86400", 0.0, cap_seconds=300) == 300
    assert cooldown_for_429(None, 0.0, cap_seconds=300) is None


def test_cooled_candidates_go_last_in_the_contracts_order_otherwise() -> None:
    assert order_candidates(("openrouter", "vercel"), frozenset()) == ("openrouter", "vercel")
    assert order_candidates(("openrouter", "vercel"), frozenset({"openrouter"})) == ("vercel", "openrouter")
    assert order_candidates(("vercel", "openrouter"), frozenset({"vercel", "openrouter"})) == ("vercel", "openrouter")


def _started(provider: str, reason: str) -> float:
    value = REGISTRY.get_sample_value("llm_gateway_provider_cooldowns_total", {"provider": provider, "reason": reason})
    return value or 0.0


async def test_a_429_with_retry_after_cools_the_provider_for_every_replica(redis_url: str) -> None:
    settings = Settings(cooldown_max_seconds=300)
    client = redis.asyncio.Redis.from_url(redis_url)
    one = Cooldowns(client, settings, prefix="t1:")
    before = _started("openrouter", "retry_after")
    assert await one.cooled(("openrouter", "vercel"), MODEL) == frozenset()
    task = one.observe("openrouter", MODEL, 429, "2")
    assert task is not None
    await task
    assert await one.cooled(("openrouter", "vercel"), MODEL) == {"openrouter"}
    assert _started("openrouter", "retry_after") == before + 1
    # The key expires by itself, after the Retry-After.
    ttl = await client.pttl(f"t1:cool:openrouter:{MODEL}")
    assert 0 < ttl <= 2000
    # Another model, another provider: untouched.
    assert await one.cooled(("openrouter", "vercel"), "x-ai/grok-code-fast-1") == frozenset()
    # Another replica that has not read the model in the last second sees it too.
    assert await Cooldowns(client, settings, prefix="t1:").cooled(("openrouter", "vercel"), MODEL) == {"openrouter"}
    await client.aclose()


async def test_a_burst_of_5xx_cools_the_provider_a_429_without_retry_after_does_not(redis_url: str) -> None:
    settings = Settings(cooldown_5xx_burst=3, cooldown_5xx_window_seconds=10, cooldown_seconds=30)
    client = redis.asyncio.Redis.from_url(redis_url)
    cooldowns = Cooldowns(client, settings, prefix="t2:")
    for status in (429, 400, 200):
        task = cooldowns.observe("vercel", MODEL, status, None)
        if task is not None:
            await task
    assert await client.get(f"t2:cool:vercel:{MODEL}") is None
    for _ in range(2):
        task = cooldowns.observe("vercel", MODEL, 503, None)
        assert task is not None
        await task
    assert await client.get(f"t2:cool:vercel:{MODEL}") is None  # two are not a burst
    task = cooldowns.observe("vercel", MODEL, 502, None)
    assert task is not None
    await task
    assert await client.get(f"t2:cool:vercel:{MODEL}") == b"5xx_burst"
    assert 29_000 < await client.pttl(f"t2:cool:vercel:{MODEL}") <= 30_000
    assert await cooldowns.cooled(("openrouter", "vercel"), MODEL) == {"vercel"}
    await client.aclose()


async def test_redis_down_means_no_cooldowns_and_no_error_for_the_request() -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.1)
    cooldowns = Cooldowns(client, Settings())
    assert await cooldowns.cooled(("openrouter", "vercel"), MODEL) == frozenset()
    task = cooldowns.observe("openrouter", MODEL, 503, None)
    assert task is not None
    await task  # logged and counted, never raised
    await client.aclose()
