"""Two ext_proc replicas behind one Envoy, sharing Postgres and Redis that the test owns, so
it can stop them: limits are exact across replicas, Redis down fails open, Postgres down
keeps cached users working and answers the rest with the contract's 503 in bounded time."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from extproc.embedded import start_postgres, start_redis
from extproc.processes import Child, free_port
from tests.conftest import Gateway, fresh_ip, start_stack, stop_stack

KILO_FREE = "minimax/minimax-m2.5:free"
PAID = "anthropic/claude-sonnet-4.6"
FREE_LIMIT = {
    "error": "Rate limit exceeded",
    "message": "Free model usage limit reached. Please try again later or upgrade to a paid model.",
}
SERVICE_UNAVAILABLE = {
    "error": "Service Unavailable",
    "message": "The service is temporarily unavailable. Please try again later.",
}


class Services:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.pg_port, self.redis_port = free_port(), free_port()
        self.postgres: Child | None = None
        self.redis: Child | None = None
        self.database_url = self.redis_url = ""

    def start_postgres(self) -> None:
        self.postgres, self.database_url = start_postgres(self.root / "pg", self.pg_port, durable=False)

    def start_redis(self) -> None:
        self.redis, self.redis_url = start_redis(self.root / "redis", self.redis_port, durable=False)

    def stop(self) -> None:
        for child in (self.redis, self.postgres):
            if child is not None:
                child.stop()


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    deps = Services(tmp_path_factory.mktemp("deps"))
    deps.start_postgres()
    deps.start_redis()
    try:
        yield deps
    finally:
        deps.stop()


@pytest.fixture(scope="module")
def replicas(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_stack(
        tmp_path_factory.mktemp("replicas"),
        DATABASE_URL=services.database_url,
        REDIS_URL=services.redis_url,
        NEXTAUTH_SECRET="failure-policy-secret-of-a-decent-length",
        LLM_GATEWAY_EXTPROC_WORKERS="2",
        LLM_GATEWAY_TRUSTED_PROXY_HOPS="1",
        LLM_GATEWAY_DIRECTORY_CACHE_SECONDS="1",
    )
    try:
        yield gateway
    finally:
        stop_stack(gateway)


def _metric_total(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + "{", name + " "))
    )


def test_free_model_limit_is_exact_across_two_replicas(replicas: Gateway) -> None:
    ip = fresh_ip()

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            body = {"model": KILO_FREE, "messages": [{"role": "user", "content": "hi"}]}
            return await asyncio.gather(
                *(client.post(replicas.chat_url, json=body, headers={"x-forwarded-for": ip}) for _ in range(260))
            )

    responses = asyncio.run(burst())
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 200, 429: 60}
    assert all(r.json() == FREE_LIMIT for r in responses if r.status_code == 429)
    # Both replicas decided some of them.
    metrics_port = replicas.ports["metrics"]
    for port in (metrics_port, metrics_port + 1):
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert _metric_total(text, "llm_gateway_requests_total") > 0, port


def test_redis_down_fails_open_and_counts_the_error(replicas: Gateway, services: Services) -> None:
    assert services.redis is not None
    services.redis.stop()
    try:
        started = time.monotonic()
        responses = [
            httpx.post(
                replicas.chat_url,
                json={"model": KILO_FREE, "messages": [{"role": "user", "content": "hi"}]},
                headers={"x-forwarded-for": fresh_ip()},
                timeout=30,
            )
            for _ in range(4)
        ]
        assert [r.status_code for r in responses] == [200] * 4
        assert time.monotonic() - started < 15
        errors = sum(
            _metric_total(httpx.get(f"http://127.0.0.1:{port}/metrics").text, "llm_gateway_rate_limit_errors_total")
            for port in (replicas.ports["metrics"], replicas.ports["metrics"] + 1)
        )
        assert errors >= 4
    finally:
        services.start_redis()
    # Back to normal: limits are enforced again.
    response = httpx.post(
        replicas.chat_url,
        json={"model": KILO_FREE, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-forwarded-for": fresh_ip()},
        timeout=30,
    )
    assert response.status_code == 200


def test_postgres_down_keeps_cached_users_and_refuses_unknown_ones_in_time(
    replicas: Gateway, services: Services
) -> None:
    known = replicas.new_user(credits_usd="10")
    unknown = replicas.new_user(credits_usd="10")

    def paid(token: str) -> httpx.Response:
        return httpx.post(
            replicas.chat_url,
            json={"model": PAID, "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {token}", "x-forwarded-for": fresh_ip()},
            timeout=30,
        )

    # Warm both replicas' caches for the known user (round robin spreads requests).
    for _ in range(4):
        assert paid(known["token"]).status_code == 200

    assert services.postgres is not None
    services.postgres.stop()
    try:
        time.sleep(1.5)  # past the 1 s freshness: the cache must now survive a failed refresh
        for _ in range(4):
            assert paid(known["token"]).status_code == 200
        started = time.monotonic()
        response = paid(unknown["token"])
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert response.json() == SERVICE_UNAVAILABLE
        # Within the ext_proc's message timeout (5 s): the client never hangs.
        assert elapsed < 5
    finally:
        services.start_postgres()
    assert paid(unknown["token"]).status_code == 200
