"""Usage accounting through real Envoy into the real ledger (behaviour.md section 7).

Every request ends in exactly one `microdollar_usage` row whose tokens and cost are what the
upstream reported, and balances move by exactly the sum, whatever the concurrency.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import httpx
import orjson

from extproc.local.mock_upstream import MockOptions, expected_usage
from extproc.money import usd_to_microdollars
from tests.conftest import Gateway, fresh_ip

MODEL = "openai/gpt-4o-mini"  # OpenRouter, and no rule of 5.2 touches its messages
T = TypeVar("T")


def db(gateway: Gateway, query: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async def run() -> T:
        connection = await asyncpg.connect(gateway.database_url)
        try:
            return await query(connection)
        finally:
            await connection.close()

    return asyncio.run(run())


def wait_for_rows(gateway: Gateway, message_ids: list[str], timeout: float = 90) -> list[asyncpg.Record]:
    sql = """
    SELECT u.*, m.message_id, m.streamed, m.cancelled, m.market_cost, m.status_code, m.session_id
    FROM microdollar_usage u JOIN microdollar_usage_metadata m ON m.id = u.id
    WHERE m.message_id = ANY($1::text[])
    """
    deadline = time.monotonic() + timeout
    while True:
        rows = db(gateway, lambda c: c.fetch(sql, message_ids))
        if len(rows) >= len(message_ids) or time.monotonic() > deadline:
            return rows
        time.sleep(0.25)


def _message_id(response: httpx.Response, stream: bool) -> str:
    if not stream:
        return response.json()["id"]
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            return orjson.loads(line[6:])["id"]
    raise AssertionError("no data event")


def _cost(body: dict[str, Any]) -> int:
    return usd_to_microdollars(expected_usage(body, MockOptions())["cost"])


def test_concurrent_streamed_and_plain_requests_are_each_charged_exactly_once(gateway: Gateway) -> None:
    users = [gateway.new_user(credits_usd="100") for _ in range(4)]
    member = gateway.new_user(credits_usd="0")
    org = gateway.cli("org", "create", "--name", f"acct-{uuid.uuid4().hex[:6]}", "--credits-usd", "100")["id"]
    gateway.cli("org", "add-member", "--org", org, "--user", member["id"])
    callers = [(u, None) for u in users] + [(member, org)]
    requests = []
    for n in range(200):
        user, organization = callers[n % len(callers)]
        body = {
            "model": MODEL,
            "stream": n % 2 == 0,
            "messages": [{"role": "user", "content": f"request {n} " + "x" * (n * 7)}],
        }
        requests.append((user, organization, body))

    used_before = db(gateway, lambda c: c.fetch("SELECT id, microdollars_used FROM kilocode_users WHERE id = ANY($1::text[])", [u["id"] for u, _ in callers]))
    assert all(row["microdollars_used"] == 0 for row in used_before)

    async def send_all() -> list[httpx.Response]:
        limit = asyncio.Semaphore(32)
        async with httpx.AsyncClient(timeout=60) as client:

            async def send(user: dict, organization: str | None, body: dict) -> httpx.Response:
                headers = {"authorization": f"Bearer {user['token']}", "x-forwarded-for": fresh_ip()}
                if organization:
                    headers["x-kilocode-organizationid"] = organization
                async with limit:
                    return await client.post(gateway.chat_url, json=body, headers=headers)

            return await asyncio.gather(*(send(*r) for r in requests))

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * 200
    message_ids = [_message_id(r, body["stream"]) for r, (_, _, body) in zip(responses, requests, strict=True)]
    rows = wait_for_rows(gateway, message_ids)

    by_message = {row["message_id"]: row for row in rows}
    assert len(rows) == 200 and len(by_message) == 200  # exactly one row per request
    expected_by_user: dict[str, int] = {}
    for message_id, (user, organization, body) in zip(message_ids, requests, strict=True):
        row = by_message[message_id]
        usage = expected_usage(body, MockOptions())
        assert row["kilo_user_id"] == user["id"]
        assert (row["input_tokens"], row["output_tokens"], row["cache_hit_tokens"]) == (
            usage["prompt_tokens"],
            usage["completion_tokens"],
            usage["prompt_tokens_details"]["cached_tokens"],
        )
        assert row["cost"] == row["market_cost"] == _cost(body)
        assert row["streamed"] is body["stream"]
        assert row["provider"] == "openrouter" and row["model"] == MODEL and not row["has_error"]
        assert (str(row["organization_id"]) if row["organization_id"] else None) == organization
        expected_by_user[user["id"]] = expected_by_user.get(user["id"], 0) + row["cost"]

    used = dict(db(gateway, lambda c: c.fetch("SELECT id, microdollars_used FROM kilocode_users WHERE id = ANY($1::text[])", list(expected_by_user))))
    for user in users:
        assert used[user["id"]] == expected_by_user[user["id"]] > 0
    # The organisation pays for its member, not the member's own balance.
    assert used[member["id"]] == 0
    org_used = db(gateway, lambda c: c.fetchval("SELECT microdollars_used FROM organizations WHERE id = $1", uuid.UUID(org)))
    day_used = db(
        gateway,
        lambda c: c.fetchval(
            "SELECT microdollar_usage FROM organization_user_usage WHERE organization_id = $1 AND kilo_user_id = $2",
            uuid.UUID(org),
            member["id"],
        ),
    )
    assert org_used == day_used == expected_by_user[member["id"]] > 0


def test_a_stream_the_client_cuts_is_charged_what_the_upstream_billed(gateway: Gateway) -> None:
    user = gateway.new_user(credits_usd="10")
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "long one"}],
            "mock": {"chunks": 30, "chunk_delay_ms": 150}}
    message_id = None
    content_chunks = 0
    with httpx.stream(
        "POST", gateway.chat_url, json=body, headers={"authorization": f"Bearer {user['token']}"}, timeout=30
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                event = orjson.loads(line[6:])
                message_id = event["id"]
                if event["choices"] and event["choices"][0]["delta"].get("content"):
                    content_chunks += 1
                    if content_chunks == 3:
                        break  # the client goes away
    assert message_id is not None
    [row] = wait_for_rows(gateway, [message_id])
    generation = httpx.get(f"{gateway.mock_url}/openrouter/api/v1/generation", params={"id": message_id}).json()["data"]
    assert generation["cancelled"] is True
    assert row["cancelled"] is True
    assert row["cost"] == usd_to_microdollars(generation["total_cost"]) > 0
    assert row["output_tokens"] == generation["native_tokens_completion"]
    assert 3 <= row["output_tokens"] < 30
    used = db(gateway, lambda c: c.fetchval("SELECT microdollars_used FROM kilocode_users WHERE id = $1", user["id"]))
    assert used == row["cost"]


def test_free_model_and_anonymous_rows_cost_nothing_but_keep_the_market_cost(gateway: Gateway) -> None:
    ip = fresh_ip()
    response = httpx.post(
        gateway.chat_url,
        json={"model": "minimax/minimax-m2.5:free", "messages": [{"role": "user", "content": "free please"}]},
        headers={"x-forwarded-for": ip},
        timeout=30,
    )
    assert response.status_code == 200
    [row] = wait_for_rows(gateway, [response.json()["id"]])
    assert row["kilo_user_id"] == f"anon:{ip}"
    assert row["cost"] == 0 and row["market_cost"] > 0
    assert row["requested_model"] == "minimax/minimax-m2.5:free"


def test_an_upstream_402_on_the_gateways_key_is_not_charged(gateway: Gateway) -> None:
    user = gateway.new_user(credits_usd="10")
    session = f"task-{uuid.uuid4().hex}"
    response = httpx.post(
        gateway.chat_url,
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "mock": {"status": 402}},
        headers={"authorization": f"Bearer {user['token']}", "x-kilocode-taskid": session},
        timeout=30,
    )
    assert response.status_code == 503
    # A later request of the same user, accounted normally: once its row is written, the
    # writer has read past where a record of the 402 would be (the outbox is a stream, read in order).
    marker = httpx.post(
        gateway.chat_url,
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": f"Bearer {user['token']}"},
        timeout=30,
    )
    wait_for_rows(gateway, [marker.json()["id"]])
    rows = db(gateway, lambda c: c.fetch("SELECT * FROM microdollar_usage WHERE kilo_user_id = $1", user["id"]))
    assert len(rows) == 1


def test_usage_command_shows_rows_and_totals(gateway: Gateway) -> None:
    user = gateway.new_user(credits_usd="10")
    ids = []
    for n in range(3):
        response = httpx.post(
            gateway.chat_url,
            json={"model": MODEL, "messages": [{"role": "user", "content": f"bill me {n}"}]},
            headers={"authorization": f"Bearer {user['token']}"},
            timeout=30,
        )
        ids.append(response.json()["id"])
    rows = wait_for_rows(gateway, ids)
    report = gateway.cli("usage", "--user", user["id"])
    assert report["totals"]["requests"] == 3
    assert report["totals"]["cost_microdollars"] == sum(r["cost"] for r in rows) == report["microdollars_used"]
    assert report["balance_microdollars"] == 10_000_000 - report["microdollars_used"]
    assert sorted(r["message_id"] for r in report["rows"]) == sorted(ids)


def _logged(gateway: Gateway, event: str, **fields: object) -> bool:
    for line in (gateway.data_dir / "stack.log").read_text().splitlines():
        if f'"message":"{event}"' in line:
            entry = orjson.loads(line)
            if all(entry.get(key) == value for key, value in fields.items()):
                return True
    return False


def test_crossing_the_organisations_minimum_balance_emits_an_event(gateway: Gateway) -> None:
    member = gateway.new_user(credits_usd="0")
    org = gateway.cli("org", "create", "--name", f"low-{uuid.uuid4().hex[:6]}", "--credits-usd", "1.000005")["id"]
    gateway.cli("org", "add-member", "--org", org, "--user", member["id"])
    gateway.cli("org", "settings", "--org", org, "--json", '{"minimum_balance": 1}')
    response = httpx.post(
        gateway.chat_url,
        json={"model": MODEL, "messages": [{"role": "user", "content": "spend a little"}]},
        headers={"authorization": f"Bearer {member['token']}", "x-kilocode-organizationid": org},
        timeout=30,
    )
    [row] = wait_for_rows(gateway, [response.json()["id"]])
    assert row["cost"] > 5  # 1.000005 USD - cost < 1 USD: the balance crossed the minimum
    deadline = time.monotonic() + 10
    while not _logged(gateway, "organization_balance_below_minimum", organization_id=org):
        assert time.monotonic() < deadline, "no low-balance event"
        time.sleep(0.2)


def test_reaching_the_kilo_pass_threshold_emits_an_event(gateway: Gateway) -> None:
    user = gateway.new_user(credits_usd="10")
    db(gateway, lambda c: c.execute("UPDATE kilocode_users SET kilo_pass_threshold = 1000000 WHERE id = $1", user["id"]))
    response = httpx.post(
        gateway.chat_url,
        json={"model": MODEL, "messages": [{"role": "user", "content": "any spend"}]},
        headers={"authorization": f"Bearer {user['token']}"},
        timeout=30,
    )
    wait_for_rows(gateway, [response.json()["id"]])
    deadline = time.monotonic() + 10
    while not _logged(gateway, "kilo_pass_threshold_reached", user_id=user["id"]):
        assert time.monotonic() < deadline, "no KiloPass event"
        time.sleep(0.2)


def test_employee_requests_are_logged_with_their_response(gateway: Gateway) -> None:
    employee = gateway.new_user(credits_usd="10", email=f"dev-{uuid.uuid4().hex[:6]}@kilo.ai")
    outsider = gateway.new_user(credits_usd="10")
    sent = {}
    for user in (employee, outsider):
        response = httpx.post(
            gateway.chat_url,
            json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "log me"}]},
            headers={"authorization": f"Bearer {user['token']}"},
            timeout=30,
        )
        sent[user["id"]] = response
    wait_for_rows(gateway, [_message_id(r, True) for r in sent.values()])
    logs = db(
        gateway,
        lambda c: c.fetch(
            "SELECT * FROM api_request_log WHERE kilo_user_id = ANY($1::text[])", [employee["id"], outsider["id"]]
        ),
    )
    [log] = logs  # only the employee's request (contract 8.2)
    assert log["kilo_user_id"] == employee["id"]
    assert log["status_code"] == 200 and log["provider"] == "openrouter" and log["model"] == MODEL
    request = orjson.loads(log["request"])
    assert request["stream_options"] == {"include_usage": True}  # the final request as sent upstream
    assert log["response"] == sent[employee["id"]].text  # the upstream's bytes (a paid model: unchanged)


def test_the_ledger_keeps_max_tokens_as_the_client_sent_it(upstream: Gateway) -> None:
    """Contract 7.6: the usage context is taken before shaping (qwen's clamp is rule 8 of 5.2)."""
    user = upstream.new_user(credits_usd="10")
    response = httpx.post(
        upstream.chat_url,
        json={"model": "qwen/qwen3-coder", "max_tokens": 50_000, "messages": [{"role": "user", "content": "q"}]},
        headers={"authorization": f"Bearer {user['token']}"},
        timeout=30,
    )
    [received] = upstream.upstream_requests()
    assert received["body"]["max_tokens"] == 32_768
    [row] = wait_for_rows(upstream, [response.json()["id"]])
    metadata = db(upstream, lambda c: c.fetchval("SELECT max_tokens FROM microdollar_usage_metadata WHERE id = $1", row["id"]))
    assert metadata == 50_000


def test_request_facts_land_in_the_lookup_tables_once_per_value(gateway: Gateway) -> None:
    user = gateway.new_user(credits_usd="10")
    editor = f"Editor-{uuid.uuid4().hex[:8]}"  # a value no lookup table has yet
    headers = {
        "authorization": f"Bearer {user['token']}",
        "user-agent": f"bench-agent/{uuid.uuid4().hex[:6]}",
        "x-kilocode-editorname": editor,
        "x-kilocode-mode": "code",
        "x-kilocode-feature": "cli",
    }
    body = {"model": MODEL, "messages": [{"role": "user", "content": "facts"}]}

    async def send() -> list[str]:
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(*(client.post(gateway.chat_url, json=body, headers=headers) for _ in range(6)))
        assert {r.status_code for r in responses} == {200}
        return [r.json()["id"] for r in responses]

    message_ids = asyncio.run(send())
    assert len(wait_for_rows(gateway, message_ids)) == 6
    sql = """
    SELECT ua.http_user_agent, e.editor_name, mo.mode, f.feature, fr.finish_reason
    FROM microdollar_usage_metadata m
    JOIN http_user_agent ua ON ua.http_user_agent_id = m.http_user_agent_id
    JOIN editor_name e ON e.editor_name_id = m.editor_name_id
    JOIN mode mo ON mo.mode_id = m.mode_id
    JOIN feature f ON f.feature_id = m.feature_id
    JOIN finish_reason fr ON fr.finish_reason_id = m.finish_reason_id
    WHERE m.message_id = ANY($1::text[])
    """
    rows = db(gateway, lambda c: c.fetch(sql, message_ids))
    assert {tuple(r) for r in rows} == {(headers["user-agent"], editor, "code", "cli", "stop")}
    assert len(rows) == 6
    # Six concurrent requests with a new value: one lookup row, shared by all six.
    assert db(gateway, lambda c: c.fetchval("SELECT count(*) FROM editor_name WHERE editor_name = $1", editor)) == 1
