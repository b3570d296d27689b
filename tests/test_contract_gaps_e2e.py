"""Contract rules that no other test asserted (issue 14 part 1), through real Envoy.

Expected values are the contract's text (behaviour.md), never the gateway's own constants.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.bodies import APPENDIX_A
from tests.conftest import Gateway, fresh_ip
from tests.contract_models import RATE_LIMITED_TO_DEATH

PAID = "openai/gpt-4o-mini"
KILO_FREE = "minimax/minimax-m2.5:free"
MODEL_NOT_FOUND = APPENDIX_A["MODEL_NOT_FOUND"].body
INVALID_JSON = APPENDIX_A["INVALID_JSON"].body
PAID_AUTH = APPENDIX_A["PAID_MODEL_AUTH_REQUIRED"].body
UNAVAILABLE = APPENDIX_A["SERVICE_UNAVAILABLE"].body
ALPHA_ENDED = APPENDIX_A["MODEL_ALPHA_ENDED"].body
NOT_ALLOWED = APPENDIX_A["MODEL_NOT_ALLOWED"].body



ROW_SQL = """
SELECT u.*, m.message_id, m.status_code, m.user_prompt_prefix, m.system_prompt_prefix_id, m.is_user_byok,
       m.is_byok, m.market_cost, a.auto_model
FROM microdollar_usage u JOIN microdollar_usage_metadata m ON m.id = u.id
LEFT JOIN auto_model a ON a.auto_model_id = m.auto_model_id
WHERE m.session_id = $1
"""


def row_of(gateway: Gateway, task: str, timeout: float = 60) -> asyncpg.Record:
    """The one ledger row of the request sent with this task id, once written."""
    deadline = time.monotonic() + timeout
    while not (rows := gateway.sql(ROW_SQL, task)):
        assert time.monotonic() < deadline, f"no ledger row for {task}"
        time.sleep(0.2)
    [row] = rows
    return row


def post(gateway: Gateway, body: dict[str, Any] | bytes, *, token: str | None = None, ip: str | None = None,
         task: str | None = None, **headers: str) -> httpx.Response:
    sent = {"x-forwarded-for": ip or fresh_ip(), **{k.replace("_", "-"): v for k, v in headers.items()}}
    if token:
        sent["authorization"] = f"Bearer {token}"
    if task:
        sent["x-kilocode-taskid"] = task
    if isinstance(body, bytes):
        return httpx.post(gateway.chat_url, content=body, headers=sent, timeout=60)
    return httpx.post(gateway.chat_url, json=body, headers=sent, timeout=60)


def ask(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}


# --- 2.8: the free_model_usage row --------------------------------------------------------------


def _free_usage(gateway: Gateway, ip: str) -> list[asyncpg.Record]:
    return gateway.sql("SELECT ip_address, model, kilo_user_id FROM free_model_usage WHERE ip_address = $1", ip)


def test_free_model_usage_row_exists_before_the_upstream_is_called(upstream: Gateway) -> None:
    """Contract 2.8: an awaited insert before the upstream call. The upstream holds its answer;
    as soon as it has the request, the row must already be there."""
    user = upstream.new_user(credits_usd="1")
    ip = fresh_ip()

    async def run() -> tuple[list[asyncpg.Record], httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            pending = asyncio.ensure_future(client.post(
                upstream.chat_url,
                json=ask(KILO_FREE, mock={"headers_delay_ms": 3000}),
                headers={"x-forwarded-for": ip, "authorization": f"Bearer {user['token']}"},
            ))
            while not (await client.get(f"{upstream.mock_url}/__mock/requests")).json():
                assert not pending.done(), (await pending).text
                await asyncio.sleep(0.02)
            connection = await asyncpg.connect(upstream.database_url)
            try:
                rows = await connection.fetch("SELECT ip_address, model, kilo_user_id FROM free_model_usage WHERE ip_address = $1", ip)
            finally:
                await connection.close()
            return rows, await pending

    rows, response = asyncio.run(run())
    assert response.status_code == 200
    assert [tuple(r) for r in rows] == [(ip, KILO_FREE, user["id"])]


def test_free_model_usage_is_logged_for_anonymous_callers_even_when_the_upstream_fails(gateway: Gateway) -> None:
    ip = fresh_ip()
    response = post(gateway, ask("MiniMax/MiniMax-M2.5:free", mock={"status": 500}), ip=ip)
    assert response.status_code == 500
    # The resolved, lowercased id; NULL user for an anonymous caller.
    assert [tuple(r) for r in _free_usage(gateway, ip)] == [(ip, KILO_FREE, None)]


def test_generic_free_models_are_not_logged_in_free_model_usage(gateway: Gateway) -> None:
    ip = fresh_ip()
    assert post(gateway, ask("some-vendor/some-model:free"), ip=ip).status_code == 200
    assert _free_usage(gateway, ip) == []


# --- 6.2 / 7.1: upstream errors are accounted ------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_error_is_accounted_with_has_error(gateway: Gateway, auth: dict[str, str], stream: bool) -> None:
    task = f"err-{uuid.uuid4().hex}"
    # The error body names a model, so only the status can make it an error (7.2).
    error = {"model": PAID, "error": {"message": "upstream broke", "code": 500}}
    response = post(gateway, ask(PAID, stream=stream, mock={"status": 500, "error_body": error}), token=auth["authorization"][7:], task=task)
    assert response.status_code == 500
    assert response.json() == error  # passed through (Appendix A #19)
    row = row_of(gateway, task)
    assert row["has_error"] is True
    assert row["status_code"] == 500
    assert row["cost"] == 0 and row["market_cost"] == 0  # nothing billed, nothing charged


def test_a_successful_request_is_not_an_error(gateway: Gateway, auth: dict[str, str]) -> None:
    task = f"ok-{uuid.uuid4().hex}"
    assert post(gateway, ask(PAID), token=auth["authorization"][7:], task=task).status_code == 200
    row = row_of(gateway, task)
    assert row["has_error"] is False and row["status_code"] == 200 and row["cost"] > 0


# --- 7.4: privacy and the stealth model's stored id -------------------------------------------------


def test_organisation_requests_store_no_prompt_text(gateway: Gateway) -> None:
    member = gateway.new_user(credits_usd="0")
    org = gateway.cli("org", "create", "--name", f"priv-{uuid.uuid4().hex[:6]}", "--credits-usd", "10")["id"]
    gateway.cli("org", "add-member", "--org", org, "--user", member["id"])
    solo = gateway.new_user(credits_usd="10")
    body = {"model": PAID, "messages": [{"role": "system", "content": "secret system prompt"},
                                        {"role": "user", "content": "secret user prompt"}]}
    org_task, solo_task = f"org-{uuid.uuid4().hex}", f"solo-{uuid.uuid4().hex}"
    assert post(gateway, body, token=member["token"], task=org_task, x_kilocode_organizationid=org).status_code == 200
    assert post(gateway, body, token=solo["token"], task=solo_task).status_code == 200
    org_row, solo_row = row_of(gateway, org_task), row_of(gateway, solo_task)
    assert str(org_row["organization_id"]) == org
    assert org_row["user_prompt_prefix"] is None and org_row["system_prompt_prefix_id"] is None
    # The same request outside an organisation keeps its prefixes (so the test can see a leak).
    assert solo_row["user_prompt_prefix"] == "secret user prompt" and solo_row["system_prompt_prefix_id"] is not None


def test_a_stealth_models_row_stores_the_requested_public_id(gateway: Gateway, auth: dict[str, str]) -> None:
    """Decision 11: giga-potato is served under an internal id, stored as `giga-potato`."""
    task = f"stealth-{uuid.uuid4().hex}"
    response = post(gateway, ask("Giga-Potato"), token=auth["authorization"][7:], task=task)
    assert response.status_code == 200
    row = row_of(gateway, task)
    assert row["model"] == "giga-potato"
    assert row["cost"] == 0  # a Kilo free model


# --- 2.3: kilo/auto end to end ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "model", "verbosity"),
    [
        ("plan", "anthropic/claude-opus-4.6", "high"),
        ("General", "anthropic/claude-opus-4.6", "medium"),
        ("explore", "anthropic/claude-sonnet-4.6", "medium"),
        ("no-such-mode", "anthropic/claude-sonnet-4.6", "low"),
    ],
)
def test_kilo_auto_resolves_by_mode(upstream: Gateway, auth: dict[str, str], mode: str, model: str, verbosity: str) -> None:
    task = f"auto-{uuid.uuid4().hex}"
    response = post(upstream, ask("kilo/auto", verbosity="max", reasoning={"effort": "none"}),
                    token=auth["authorization"][7:], task=task, x_kilocode_mode=mode)
    assert response.status_code == 200, response.text
    [received] = upstream.upstream_requests()
    assert received["body"]["model"] == model
    assert received["body"]["reasoning"] == {"enabled": True}
    assert received["body"]["verbosity"] == verbosity
    row = row_of(upstream, task)
    assert row["auto_model"] == "kilo/auto"
    assert row["requested_model"] == model


# --- 4.3: every rate-limited-to-death model -----------------------------------------------------------


@pytest.mark.parametrize("model", RATE_LIMITED_TO_DEATH)
def test_every_rate_limited_to_death_model_is_not_found(upstream: Gateway, model: str) -> None:
    response = post(upstream, ask(model.upper()))
    assert (response.status_code, response.json()) == (404, MODEL_NOT_FOUND)
    assert upstream.upstream_requests() == []


# --- Appendix A: the order of refusals where two apply at once -------------------------------------


@pytest.fixture(scope="module")
def broke(gateway: Gateway) -> dict[str, Any]:
    return gateway.new_user(credits_usd="0")


@pytest.fixture(scope="module")
def enterprise(gateway: Gateway) -> tuple[dict[str, Any], str]:
    """A member of an enterprise organisation with no credits whose allow list has only anthropic."""
    member = gateway.new_user(credits_usd="0")
    org = gateway.cli("org", "create", "--name", f"ent-{uuid.uuid4().hex[:6]}", "--plan", "enterprise")["id"]
    gateway.cli("org", "add-member", "--org", org, "--user", member["id"])
    gateway.cli("org", "settings", "--org", org, "--json", '{"model_allow_list": ["anthropic/*"]}')
    return member, org


def test_refusal_order_where_two_refusals_apply(
    upstream: Gateway, auth: dict[str, str], broke: dict[str, Any], enterprise: tuple[dict[str, Any], str]
) -> None:
    paid_token = auth["authorization"][7:]
    member, org = enterprise
    cases: list[tuple[str, bytes | dict[str, Any], dict[str, str], int, dict[str, Any]]] = [
        # invalid JSON (#3) before the missing token of a paid model (#7)
        ("json before auth", b'{"model": "openai/gpt-4o-mini",', {}, 400, INVALID_JSON),
        # blank model (#4) before auth (#7)
        ("model before auth", {"model": "  ", "messages": []}, {}, 404, MODEL_NOT_FOUND),
        # anonymous paid model (#7) before the max_tokens cap (#9)
        ("auth before max_tokens", ask(PAID, max_tokens=100_000_000_000), {}, 401, PAID_AUTH),
        # a non-UUID organisation header makes the caller anonymous (decision 3): #7, never a 500
        ("bad org header is anonymous", ask(PAID), {"token": paid_token, "x_kilocode_organizationid": "not-a-uuid"}, 401, PAID_AUTH),
        # the max_tokens cap (#9) before a disabled free model (#10)
        ("max_tokens before dead model", ask("z-ai/glm-5:free", max_tokens=100_000_000_000), {}, 503, UNAVAILABLE),
        # a disabled free model (#10) before the data-collection gate (#14)
        ("dead model before data gate", ask("z-ai/glm-5:free", provider={"data_collection": "deny"}), {}, 404, ALPHA_ENDED),
        # a rate-limited-to-death model (#11) before the balance (#12)
        ("dead-by-rate before balance", ask("qwen/qwen3-coder:free"), {"token": broke["token"]}, 404, MODEL_NOT_FOUND),
        # the max_tokens cap (#9) before the balance (#12)
        ("max_tokens before balance", ask(PAID, max_completion_tokens=100_000_000_000), {"token": broke["token"]}, 503, UNAVAILABLE),
        # the balance (#12) before the enterprise allow list (#13)
        ("balance before allow list", ask(PAID), {"token": member["token"], "x_kilocode_organizationid": org}, 402, {}),
        # at the cap exactly: not refused (the cap is "greater than")
        ("max_tokens at the cap", ask(PAID, max_tokens=99_999_999_999), {"token": paid_token}, 200, {}),
    ]
    for name, body, headers, status, expected in cases:
        upstream.clear_upstream_requests()
        response = post(upstream, body, **headers)
        assert response.status_code == status, (name, response.text)
        if status == 402:
            error = response.json()["error"]
            assert error["title"] in {"Paid Model - Credits Required", "Low Credit Warning!"}, name
            assert error["buyCreditsUrl"] == "https://app.kilo.ai/profile" and error["balance"] == 0, name
        elif status != 200:
            assert response.json() == expected, name
            assert upstream.upstream_requests() == [], name
