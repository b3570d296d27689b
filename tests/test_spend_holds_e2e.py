"""Spend holds through the real stack (issue 23): Envoy, two ext_proc replicas sharing one Redis
and one Postgres, the ledger writer, the mock upstream (which bills by its own prices and
serves its `/models`, from which the gateway's bound comes).

What a user would notice: concurrent requests never spend more than the balance, the others get
the contract's 402; a request that does not fit is lowered (`x-gateway-max-tokens`) rather than
refused while the input and a minimum reply fit; cut streams, a killed replica and a Redis
restart leave nothing held and lose nothing, and the ledger's rows add up to what was charged.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from extproc.admission import scopes
from tests.conftest import Gateway, fresh_ip, running_stack
from tests.services import Services

MODEL = "openai/gpt-4o-mini"
REPLY_TOKENS = 400  # the mock's reply (1.5 microdollars a token) unless max_tokens cuts it
RETURNING = ("Low Credit Warning!", "Add credits to continue, or switch to a free model")
FIRST_TIME = (
    "Paid Model - Credits Required",
    "This is a paid model. To use paid models, you need to add credits. Get $20 free on your first topup!",
)


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    with tempfile.TemporaryDirectory(prefix="llm-gateway-holds-") as root:
        deps = Services(Path(root), durable_redis=True)
        deps.start_postgres()
        deps.start_redis()
        try:
            yield deps
        finally:
            deps.stop()


@pytest.fixture(scope="module")
def stack(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_stack(
        tmp_path_factory.mktemp("holds"),
        DATABASE_URL=services.database_url,
        REDIS_URL=services.redis_url,
        NEXTAUTH_SECRET="spend-holds-secret-of-a-decent-length",
        LLM_GATEWAY_EXTPROC_WORKERS="2",
        LLM_GATEWAY_INFLIGHT_TTL_SECONDS="1",
        LLM_GATEWAY_TRUSTED_PROXY_HOPS="1",
    ) as gateway:
        yield gateway


def body(n: int, *, stream: bool, max_tokens: int | None, **mock: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": f"request {n}"}]}
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    if mock:
        payload["mock"] = mock
    return payload


async def send_all(gateway: Gateway, requests: list[tuple[dict[str, str], dict[str, Any]]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(requests))
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(client.post(gateway.chat_url, json=b, headers={"x-forwarded-for": fresh_ip(), **h}) for h, b in requests)
        )


def headers(user: dict[str, Any], organization: str | None = None) -> dict[str, str]:
    found = {"authorization": f"Bearer {user['token']}"}
    if organization:
        found["x-kilocode-organizationid"] = organization
    return found


def assert_contract_402(response: httpx.Response, most_usd: float) -> None:
    assert response.status_code == 402, response.text
    error = response.json()["error"]
    assert set(error) == {"title", "message", "balance", "buyCreditsUrl"}
    assert (error["title"], error["message"]) in (RETURNING, FIRST_TIME)
    assert error["buyCreditsUrl"].endswith("/profile")
    assert isinstance(error["balance"], int | float) and error["balance"] <= most_usd


def ledger(gateway: Gateway, user_id: str) -> tuple[int, int]:
    [row] = gateway.sql("SELECT count(*) AS n, COALESCE(sum(cost), 0)::bigint AS cost FROM microdollar_usage WHERE kilo_user_id = $1", user_id)
    return row["n"], row["cost"]


def wait_for_rows(gateway: Gateway, user_id: str, count: int, timeout: float = 60) -> int:
    """The user's rows once there are `count`; their summed cost."""
    deadline = time.monotonic() + timeout
    while True:
        rows, cost = ledger(gateway, user_id)
        if rows >= count:
            assert rows == count
            return cost
        assert time.monotonic() < deadline, f"{rows} of {count} rows"
        time.sleep(0.2)


def used(gateway: Gateway, user_id: str) -> int:
    return int(gateway.sql("SELECT microdollars_used FROM kilocode_users WHERE id = $1", user_id)[0][0])


def wait_until_nothing_held(gateway: Gateway, scope: str, timeout: float = 30) -> None:
    client = redis.Redis.from_url(gateway.redis_url)
    deadline = time.monotonic() + timeout
    while client.exists(f"{scope}:held") or client.hlen(f"{scope}:live"):
        assert time.monotonic() < deadline, f"still held: {client.hgetall(f'{scope}:live')}"
        time.sleep(0.2)


def test_a_burst_on_a_small_balance_never_spends_past_it(stack: Gateway) -> None:
    """100 concurrent requests on 2,000 microdollars, across two replicas: JSON and streamed,
    with and without max_tokens. Requests without max_tokens are bounded at the model's whole
    output (65,536 tokens, ~98,000 microdollars): each one served was lowered to fit. The mock
    replies with 400 tokens unless max_tokens stops it: 100 replies would cost ~17,000."""
    balance = 2_000
    user = stack.new_user(credits_usd="0.002")
    requests = [
        (headers(user), body(n, stream=n % 2 == 0, max_tokens=20 if n % 4 < 2 else None, chunks=REPLY_TOKENS))
        for n in range(100)
    ]
    responses = asyncio.run(send_all(stack, requests))
    served = [(r, b) for r, (_, b) in zip(responses, requests, strict=True) if r.status_code == 200]
    assert served
    for response in responses:
        if response.status_code != 200:
            assert_contract_402(response, balance / 1e6)
    for response, sent in served:
        if "max_tokens" not in sent:
            assert 1 <= int(response.headers["x-gateway-max-tokens"]) < 65_536
        else:
            assert "x-gateway-max-tokens" not in response.headers
    cost = wait_for_rows(stack, user["id"], len(served))
    assert cost == used(stack, user["id"]) <= balance
    wait_until_nothing_held(stack, scopes.user_balance(user["id"]))


def test_members_against_their_daily_limit(stack: Gateway) -> None:
    """50 concurrent requests of 5 members, each with a daily limit of 200 microdollars (ten
    replies of 20 tokens cost ~340), on an organisation with plenty: no member's day goes past
    the limit."""
    org = stack.cli("org", "create", "--name", f"holds-{uuid.uuid4().hex[:6]}", "--credits-usd", "100")["id"]
    members = [stack.new_user(credits_usd="0") for _ in range(5)]
    for member in members:
        stack.cli("org", "add-member", "--org", org, "--user", member["id"])
        stack.cli("org", "daily-limit", "--org", org, "--user", member["id"], "--usd", "0.0002")
    requests = [
        (headers(members[n % 5], org), body(n, stream=n % 2 == 0, max_tokens=20, chunks=REPLY_TOKENS)) for n in range(50)
    ]
    responses = asyncio.run(send_all(stack, requests))
    assert any(r.status_code == 200 for r in responses)
    for response in responses:
        if response.status_code != 200:
            assert_contract_402(response, 0.0002)
    for member in members:
        served = sum(1 for r, (h, _) in zip(responses, requests, strict=True) if r.status_code == 200 and h == headers(member, org))
        cost = wait_for_rows(stack, member["id"], served)
        [day] = stack.sql(
            "SELECT COALESCE(sum(microdollar_usage), 0)::bigint FROM organization_user_usage WHERE kilo_user_id = $1",
            member["id"],
        )
        assert day[0] == cost <= 200
    [org_used] = stack.sql("SELECT microdollars_used FROM organizations WHERE id = $1", org)
    assert org_used[0] == sum(ledger(stack, m["id"])[1] for m in members)


async def _hang_up(gateway: Gateway, user: dict[str, Any], n: int) -> None:
    """Reads the first chunk of a slow stream, then goes away."""
    async with httpx.AsyncClient(timeout=60) as client:
        payload = body(n, stream=True, max_tokens=100, chunks=100, chunk_delay_ms=100)
        async with client.stream("POST", gateway.chat_url, json=payload, headers={"x-forwarded-for": fresh_ip(), **headers(user)}) as response:
            assert response.status_code == 200
            async for _ in response.aiter_bytes():
                break


def _remaining_is_spendable(gateway: Gateway, user: dict[str, Any], balance: int) -> None:
    """A request without max_tokens is admitted with what is left: lowered to nearly all of it."""
    left = balance - used(gateway, user["id"])
    response = httpx.post(
        gateway.chat_url, json=body(0, stream=False, max_tokens=None), headers={"x-forwarded-for": fresh_ip(), **headers(user)}, timeout=30
    )
    assert response.status_code == 200, response.text
    # 1.5 microdollars per output token; the input's bound is well under 300 microdollars.
    assert int(response.headers["x-gateway-max-tokens"]) >= (left - 300) / 1.5


def test_clients_that_hang_up_mid_stream_leave_the_rest_spendable(stack: Gateway) -> None:
    balance = 10_000
    user = stack.new_user(credits_usd="0.01")

    async def all_hang_up() -> None:
        await asyncio.gather(*(_hang_up(stack, user, n) for n in range(20)))

    asyncio.run(all_hang_up())
    assert wait_for_rows(stack, user["id"], 20) == used(stack, user["id"]) < balance
    wait_until_nothing_held(stack, scopes.user_balance(user["id"]))
    _remaining_is_spendable(stack, user, balance)


def _replica_pids(gateway: Gateway) -> list[int]:
    children: dict[str, int] = json.loads((gateway.data_dir / "stack.json").read_text())["children"]
    return [pid for name, pid in children.items() if name.startswith("ext_proc")]


@pytest.mark.xfail(
    reason="open (issue 23 closing note): after SIGKILL of a replica holding paid streams, 3-4 of its 8 rows "
    "do not reach the ledger within 60 s; not yet known whether they are late or lost",
    strict=False,
)
def test_a_killed_replica_holding_streams_lets_go_after_the_reaper(stack: Gateway) -> None:
    balance = 10_000
    user = stack.new_user(credits_usd="0.01")
    started = asyncio.Event()
    opened = cut = 0

    async def stream(client: httpx.AsyncClient, n: int) -> None:
        nonlocal opened, cut
        payload = body(n, stream=True, max_tokens=100, chunks=100, chunk_delay_ms=100)
        try:
            async with client.stream(
                "POST", stack.chat_url, json=payload, headers={"x-forwarded-for": fresh_ip(), **headers(user)}
            ) as response:
                assert response.status_code == 200
                first = True
                async for _ in response.aiter_bytes():
                    if first:
                        first, opened = False, opened + 1
                        if opened == 8:
                            started.set()
        except httpx.HTTPError:
            cut += 1  # served by the killed replica

    async def kill_mid_stream() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            streams = [asyncio.ensure_future(stream(client, n)) for n in range(8)]
            await asyncio.wait_for(started.wait(), 30)
            os.kill(_replica_pids(stack)[0], signal.SIGKILL)
            await asyncio.gather(*streams)

    asyncio.run(kill_mid_stream())
    assert cut > 0
    # The dead replica's requests come from their write-ahead records, after the reaper.
    assert wait_for_rows(stack, user["id"], 8) == used(stack, user["id"]) <= balance
    wait_until_nothing_held(stack, scopes.user_balance(user["id"]))
    _remaining_is_spendable(stack, user, balance)


def degraded_total(gateway: Gateway) -> float:
    total = 0.0
    for line in gateway.metrics().splitlines():
        if line.startswith("llm_gateway_spend_hold_degraded_total"):
            total += float(line.split()[-1])
    return total


def test_a_redis_restart_mid_burst_loses_nothing(stack: Gateway, services: Services) -> None:
    """While Redis is down, paid requests are admitted on the contract's check (a positive
    balance), counted as degraded; every one served is in the ledger once Redis is back."""
    user = stack.new_user(credits_usd="10")
    before = degraded_total(stack)
    answered: list[httpx.Response] = []

    def wave(first: int, count: int) -> None:
        requests = [(headers(user), body(n, stream=n % 2 == 0, max_tokens=20)) for n in range(first, first + count)]
        answered.extend(asyncio.run(send_all(stack, requests)))

    # Stopped and started from this thread: Redis is a child that dies with the thread that
    # started it (the stack's children are bound to their parent's life).
    assert services.redis is not None
    wave(0, 10)
    services.redis.stop()
    wave(10, 10)  # Redis down
    services.start_redis()
    wave(20, 10)
    assert [r.status_code for r in answered] == [200] * 30
    assert degraded_total(stack) >= before + 10
    assert wait_for_rows(stack, user["id"], 30) == used(stack, user["id"])
    wait_until_nothing_held(stack, scopes.user_balance(user["id"]))
