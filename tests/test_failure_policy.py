"""Two ext_proc replicas behind one Envoy, sharing Postgres and Redis that the test owns, so
it can stop them: limits are exact across replicas, Redis down fails open, Postgres down
keeps cached users working and answers the rest with the contract's 503 in bounded time."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections import Counter
from collections.abc import Iterator

import asyncpg
import httpx
import orjson
import pytest
import redis

from tests.bodies import FREE_LIMIT, SERVICE_UNAVAILABLE
from tests.conftest import Gateway, fresh_ip, running_stack
from tests.services import Services

KILO_FREE = "minimax/minimax-m2.5:free"
PAID = "anthropic/claude-sonnet-4.6"


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
    with running_stack(
        tmp_path_factory.mktemp("replicas"),
        DATABASE_URL=services.database_url,
        REDIS_URL=services.redis_url,
        NEXTAUTH_SECRET="failure-policy-secret-of-a-decent-length",
        LLM_GATEWAY_EXTPROC_WORKERS="2",
        LLM_GATEWAY_TRUSTED_PROXY_HOPS="1",
        LLM_GATEWAY_DIRECTORY_CACHE_SECONDS="1",
    ) as gateway:
        yield gateway


def _metric_total(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + "{", name + " "))
    )


def _wait_for_metric(gateway: Gateway, name: str, above: float, timeout: float = 60) -> None:
    """Until the stack's counter `name` exceeds `above`; the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout
    while _metric_total(gateway.metrics(), name) <= above:
        assert time.monotonic() < deadline, f"{name} stayed at {above}"
        time.sleep(0.1)


def test_free_model_limit_is_exact_across_two_replicas(replicas: Gateway) -> None:
    ip = fresh_ip()

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            body = {"model": KILO_FREE, "messages": [{"role": "user", "content": "hi"}]}
            return await asyncio.gather(
                *(client.post(replicas.chat_url, json=body, headers={"x-forwarded-for": ip}) for _ in range(260))
            )

    failed_open_before = _metric_total(replicas.metrics(), "llm_gateway_rate_limit_errors_total")
    responses = asyncio.run(burst())
    statuses = Counter(r.status_code for r in responses)
    # Exact, except for checks Redis did not answer within the limiter's deadline (1 s): those
    # fail open by policy (extproc/limits.py), so a loaded machine may admit a few more.
    failed_open = int(_metric_total(replicas.metrics(), "llm_gateway_rate_limit_errors_total") - failed_open_before)
    assert statuses == {200: 200 + failed_open, 429: 60 - failed_open}
    assert all(r.json() == FREE_LIMIT for r in responses if r.status_code == 429)
    # Both replicas decided some of them: Envoy opened ext_proc streams to each.
    clusters = httpx.get(f"{replicas.admin_url}/clusters").text
    streams = [
        int(line.rsplit("::", 1)[1]) for line in clusters.splitlines() if line.startswith("extproc::") and "::rq_total::" in line
    ]
    assert len(streams) == 2 and min(streams) > 0, streams
    # One scrape covers both workers (the stack serves their sum).
    assert _metric_total(replicas.metrics(), "llm_gateway_requests_total") >= 260


def test_redis_down_fails_open_and_counts_the_error(replicas: Gateway, services: Services) -> None:
    assert services.redis is not None
    services.redis.stop()
    try:
        # Each 200 is itself the proof of time: an ext_proc still waiting on Redis past the
        # message timeout would have been answered by Envoy's 504 instead.
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
        assert _metric_total(replicas.metrics(), "llm_gateway_rate_limit_errors_total") >= 4
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
        # Past the 1 s freshness a refresh fails and the stale entry answers: wait for that
        # to be counted (every answer meanwhile must be a 200), then ask some more.
        stale_before = _stale_lookups(replicas)
        deadline = time.monotonic() + 30
        while _stale_lookups(replicas) == stale_before:
            assert time.monotonic() < deadline, "no stale answer counted"
            assert paid(known["token"]).status_code == 200
        for _ in range(4):
            assert paid(known["token"]).status_code == 200
        response = paid(unknown["token"])
        # The contract's 503 is the ext_proc's own answer, so it came within the message
        # timeout: past it, Envoy answers 504 (Gateway timeout) and the ext_proc's is dropped.
        assert response.status_code == 503
        assert response.json() == SERVICE_UNAVAILABLE
    finally:
        services.start_postgres()
    assert paid(unknown["token"]).status_code == 200


def _stale_lookups(gateway: Gateway) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in gateway.metrics().splitlines()
        if line.startswith("llm_gateway_directory_lookups_total{") and 'source="stale"' in line
    )


# --- Accounting under failure -----------------------------------------------------------------


def _stream_gaps(gateway: Gateway, token: str, streams: int = 8) -> tuple[list[float], list[str]]:
    """Run `streams` concurrent streams of 10 chunks 100 ms apart; return the gaps between their
    events as the client saw them, through `[DONE]` to the end of the stream (a stream that
    waited on bookkeeping at its end would show it there), and the message ids."""
    body = {"model": PAID, "stream": True, "messages": [{"role": "user", "content": "tick"}],
            "mock": {"chunks": 10, "chunk_delay_ms": 100}}

    async def one(client: httpx.AsyncClient) -> tuple[list[float], str]:
        arrivals, contents, message_id, last = [], 0, "", ""
        headers = {"authorization": f"Bearer {token}", "x-forwarded-for": fresh_ip()}
        async with client.stream("POST", gateway.chat_url, json=body, headers=headers) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.monotonic())
                    last = line
                if line.startswith("data: {"):
                    message_id = message_id or orjson.loads(line[6:])["id"]
                    contents += '"content":"w' in line
        arrivals.append(time.monotonic())  # the end of the stream: the client has all of it
        assert contents == 10 and last == "data: [DONE]"
        return [b - a for a, b in zip(arrivals, arrivals[1:])], message_id

    async def burst() -> list[tuple[list[float], str]]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(one(client) for _ in range(streams)))

    results = asyncio.run(burst())
    return [gap for gaps, _ in results for gap in gaps], [message_id for _, message_id in results]


def _assert_same_timing(baseline: list[float], faulted: list[float]) -> None:
    """Chunk timing under a fault is the timing without it, measured in the same run on the
    same machine: the typical gap within half as much again as the baseline's, and no gap
    longer than the baseline's worst by a second (half the 2 s that one ledger insert takes
    in the slow-ledger test; a stream waiting on bookkeeping would show all of it)."""
    assert statistics.median(faulted) <= 1.5 * statistics.median(baseline), (statistics.median(faulted), baseline)
    assert max(faulted) <= max(baseline) + 1.0, (max(faulted), max(baseline))


def _rows_by_message(services: Services, message_ids: list[str], timeout: float = 120) -> Counter[str]:
    async def count() -> Counter[str]:
        connection = await asyncpg.connect(services.database_url)
        try:
            rows = await connection.fetch(
                "SELECT message_id FROM microdollar_usage_metadata WHERE message_id = ANY($1::text[])", message_ids
            )
        finally:
            await connection.close()
        return Counter(row["message_id"] for row in rows)

    deadline = time.monotonic() + timeout
    while True:
        try:
            found = asyncio.run(count())
        except (OSError, asyncpg.PostgresError):
            found = Counter()
        if len(found) >= len(message_ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _pending_in_outbox(services: Services) -> int:
    """Outbox entries the ledger writer has read and not acknowledged (the stream's group)."""
    client = redis.Redis.from_url(services.redis_url)
    try:
        return int(client.xpending("gw:usage", "ledger")["pending"])
    except redis.ResponseError:  # the group does not exist yet
        return 0
    finally:
        client.close()


def test_postgres_outage_delays_rows_but_not_chunks_and_loses_none(replicas: Gateway, services: Services) -> None:
    user = replicas.new_user(credits_usd="10")
    baseline_gaps, baseline_ids = _stream_gaps(replicas, user["token"])  # also warms both caches

    failures_before = _metric_total(replicas.metrics(), "llm_gateway_ledger_write_failures_total")
    assert services.postgres is not None
    services.postgres.stop()
    try:
        outage_gaps, outage_ids = _stream_gaps(replicas, user["token"])
        _assert_same_timing(baseline_gaps, outage_gaps)
        # Postgres stays down until the writer has tried to write and failed (a counter, not
        # a span of time): the rows below then prove it kept the records and retried.
        _wait_for_metric(replicas, "llm_gateway_ledger_write_failures_total", above=failures_before)
    finally:
        services.start_postgres()

    found = _rows_by_message(services, baseline_ids + outage_ids)
    assert set(found) == set(baseline_ids + outage_ids)
    assert set(found.values()) == {1}  # no duplicates


def test_a_slow_ledger_does_not_delay_any_chunk(replicas: Gateway, services: Services) -> None:
    user = replicas.new_user(credits_usd="10")
    baseline_gaps, _ = _stream_gaps(replicas, user["token"])

    async def ddl(sql: str) -> None:
        connection = await asyncpg.connect(services.database_url)
        await connection.execute(sql)
        await connection.close()

    # Every ledger insert now takes 2 s.
    asyncio.run(ddl(
        "CREATE OR REPLACE FUNCTION slow_ledger() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(2); RETURN NEW; END $$"
        " LANGUAGE plpgsql; CREATE TRIGGER slow_ledger BEFORE INSERT ON microdollar_usage"
        " FOR EACH ROW EXECUTE FUNCTION slow_ledger()"
    ))
    try:
        slow_gaps, slow_ids = _stream_gaps(replicas, user["token"])
        slow_gaps += _stream_gaps(replicas, user["token"])[0]
        _assert_same_timing(baseline_gaps, slow_gaps)
    finally:
        asyncio.run(ddl("DROP TRIGGER slow_ledger ON microdollar_usage"))
    assert set(_rows_by_message(services, slow_ids).values()) == {1}


def test_killed_workers_and_writer_resume_pending_rows_without_duplicates(replicas: Gateway, services: Services) -> None:
    user = replicas.new_user(credits_usd="10")
    # The mock's generation endpoint answers 404 for 15 s, and the writer keeps asking (its
    # budget is 20 s): every record stays in flight that long. A margin, not a synchronisation:
    # the twelve requests, sent at once, and the kill below take a small part of it.
    body = {"model": PAID, "messages": [{"role": "user", "content": "pending"}], "mock": {"generation_delay_ms": 15000}}
    headers = {"authorization": f"Bearer {user['token']}"}
    pending_before = _pending_in_outbox(services)

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(
                client.post(replicas.chat_url, json=body, headers={**headers, "x-forwarded-for": fresh_ip()})
                for _ in range(12)
            ))

    responses = asyncio.run(send())
    assert [r.status_code for r in responses] == [200] * 12
    message_ids = [r.json()["id"] for r in responses]
    # The records are in the outbox, read by the writer (pending in its group), not yet written.
    deadline = time.monotonic() + 30
    while _pending_in_outbox(services) < pending_before + len(message_ids):
        assert time.monotonic() < deadline, "the writer did not read the records"
        time.sleep(0.05)
    assert _rows_by_message(services, message_ids, timeout=0) == Counter()

    state = orjson.loads((replicas.data_dir / "stack.json").read_bytes())
    for name in ("ext_proc", "ext_proc-1", "ledger-writer"):
        os.kill(state["children"][name], signal.SIGKILL)

    found = _rows_by_message(services, message_ids, timeout=120)
    assert set(found) == set(message_ids)
    assert set(found.values()) == {1}
    # The supervisor restarted the workers and the writer, and the gateway serves again.
    restarted = orjson.loads((replicas.data_dir / "stack.json").read_bytes())["children"]
    assert restarted["ext_proc"] != state["children"]["ext_proc"]
    assert restarted["ledger-writer"] != state["children"]["ledger-writer"]
    assert httpx.post(replicas.chat_url, json={**body, "mock": {}}, headers=headers, timeout=30).status_code == 200
