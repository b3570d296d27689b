"""Admission through real Envoy: Appendix A rows 5-14, authentication, balances, organisations.

Every refusal is checked for its exact status and body, and for never reaching the upstream.
Each test is its own client address (`x-forwarded-for`, one trusted hop), so per-IP limits of
one test never touch another.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import httpx
import jwt
import pytest

from extproc.admission import scopes
from tests.bodies import APPENDIX_A, FREE_LIMIT, SERVICE_UNAVAILABLE
from tests.conftest import Gateway, fresh_ip

PAID = "anthropic/claude-sonnet-4.6"
KILO_FREE = "minimax/minimax-m2.5:free"  # Kilo-hosted, enabled, served by OpenRouter
GENERIC_FREE = "some-lab/some-model:free"
MESSAGES = [{"role": "user", "content": "hi"}]

PAID_MODEL_AUTH_REQUIRED = APPENDIX_A["PAID_MODEL_AUTH_REQUIRED"].body
PROMOTION_LIMIT = APPENDIX_A["PROMOTION_MODEL_LIMIT_REACHED"].body
ALPHA_ENDED = APPENDIX_A["MODEL_ALPHA_ENDED"].body
MODEL_NOT_FOUND = APPENDIX_A["MODEL_NOT_FOUND"].body
NOT_ALLOWED = APPENDIX_A["MODEL_NOT_ALLOWED"].body
DATA_COLLECTION = APPENDIX_A["DATA_COLLECTION_REQUIRED"].body["message"]


def chat(
    gateway: Gateway,
    model: str,
    *,
    token: str | None = None,
    ip: str | None = None,
    headers: dict[str, str] | None = None,
    **body: Any,
) -> httpx.Response:
    all_headers = {"x-forwarded-for": ip or fresh_ip(), **(headers or {})}
    if token is not None:
        all_headers["authorization"] = f"Bearer {token}"
    return httpx.post(gateway.chat_url, json={"model": model, "messages": MESSAGES, **body}, headers=all_headers, timeout=30)


def refused(upstream: Gateway, response: httpx.Response, status: int, body: Any) -> None:
    assert response.status_code == status, response.text
    assert response.json() == body
    assert upstream.upstream_requests() == []


def _spend(database_url: str, user_id: str, microdollars: int) -> None:
    """What accounting will do: raise the user's usage (the ledger writer is a later issue)."""

    async def spend() -> None:
        connection = await asyncpg.connect(database_url)
        await connection.execute("UPDATE kilocode_users SET microdollars_used = $2 WHERE id = $1", user_id, microdollars)
        await connection.close()

    asyncio.run(spend())


# --- Appendix A rows 6-14 ---------------------------------------------------------------


def test_row6_kilo_free_model_limit_per_ip(gateway: Gateway, account: dict) -> None:
    ip = fresh_ip()
    statuses = [chat(gateway, KILO_FREE, token=account["token"], ip=ip).status_code for _ in range(200)]
    assert statuses == [200] * 200
    gateway.clear_upstream_requests()
    refused(gateway, chat(gateway, KILO_FREE, token=account["token"], ip=ip), 429, FREE_LIMIT)
    # Another address is not affected, nor are paid models from this one.
    assert chat(gateway, KILO_FREE, token=account["token"]).status_code == 200
    assert chat(gateway, PAID, token=account["token"], ip=ip).status_code == 200


def test_row7_anonymous_paid_model_needs_sign_in(upstream: Gateway) -> None:
    refused(upstream, chat(upstream, PAID), 401, PAID_MODEL_AUTH_REQUIRED)


def test_row8_anonymous_promotion_limit(upstream: Gateway) -> None:
    ip = fresh_ip()
    # The session stack's promotion limit is 5 anonymous Kilo-free requests per IP.
    assert [chat(upstream, KILO_FREE, ip=ip).status_code for _ in range(5)] == [200] * 5
    upstream.clear_upstream_requests()
    refused(upstream, chat(upstream, KILO_FREE, ip=ip), 401, PROMOTION_LIMIT)
    # Any free model counts against it for anonymous callers ...
    refused(upstream, chat(upstream, GENERIC_FREE, ip=ip), 401, PROMOTION_LIMIT)


def test_promotion_limit_counts_only_kilo_free_requests(upstream: Gateway, account: dict) -> None:
    ip = fresh_ip()
    for _ in range(8):
        assert chat(upstream, GENERIC_FREE, ip=ip).status_code == 200
    # ... but only Kilo-hosted free requests are counted, and signed-in users are not limited.
    assert chat(upstream, KILO_FREE, ip=ip).status_code == 200
    for _ in range(8):
        assert chat(upstream, KILO_FREE, token=account["token"], ip=ip).status_code == 200


def test_row9_max_tokens_over_the_cap(upstream: Gateway, account: dict) -> None:
    refused(upstream, chat(upstream, PAID, token=account["token"], max_tokens=100_000_000_000), 503, SERVICE_UNAVAILABLE)
    refused(
        upstream,
        chat(upstream, PAID, token=account["token"], max_completion_tokens=100_000_000_000),
        503,
        SERVICE_UNAVAILABLE,
    )
    assert chat(upstream, PAID, token=account["token"], max_tokens=99_999_999_999).status_code == 200


def test_row10_disabled_kilo_free_model(upstream: Gateway) -> None:
    refused(upstream, chat(upstream, "minimax/minimax-m2.1:free"), 404, ALPHA_ENDED)


def test_row11_rate_limited_to_death_model(upstream: Gateway) -> None:
    refused(upstream, chat(upstream, "qwen/qwen3-coder:free"), 404, MODEL_NOT_FOUND)


def test_row12_first_time_user_without_credits_gets_402(upstream: Gateway) -> None:
    user = upstream.new_user(credits_usd="0")
    refused(
        upstream,
        chat(upstream, PAID, token=user["token"]),
        402,
        {
            "error": {
                "title": "Paid Model - Credits Required",
                "message": "This is a paid model. To use paid models, you need to add credits. Get $20 free on your first topup!",
                "balance": 0,
                "buyCreditsUrl": "https://app.kilo.ai/profile",
            }
        },
    )
    # Free models stay open to them.
    assert chat(upstream, GENERIC_FREE, token=user["token"]).status_code == 200


def test_row12_returning_customer_gets_the_low_credit_text(upstream: Gateway) -> None:
    user = upstream.new_user(credits_usd="0")
    upstream.cli("credits", "add", "--user", user["id"], "--usd", "2")
    _spend(upstream.database_url, user["id"], 2_500_000)
    refused(
        upstream,
        chat(upstream, PAID, token=user["token"]),
        402,
        {
            "error": {
                "title": "Low Credit Warning!",
                "message": "Add credits to continue, or switch to a free model",
                "balance": -0.5,
                "buyCreditsUrl": "https://app.kilo.ai/profile",
            }
        },
    )


def test_free_credits_do_not_make_a_returning_customer(upstream: Gateway) -> None:
    user = upstream.new_user(credits_usd="0")
    upstream.cli("credits", "add", "--user", user["id"], "--usd", "0.01", "--free")
    # Free credits let a user in (with spend holds, as much as the input and a minimum reply
    # cost: decision beside contract 2.12) ...
    assert chat(upstream, PAID, token=user["token"]).status_code == 200
    # ... and a user whose only credits were free is still a first-time customer.
    poor = upstream.new_user(credits_usd="0")
    upstream.cli("credits", "add", "--user", poor["id"], "--usd", "5", "--free")
    _spend(upstream.database_url, poor["id"], 5_000_000)
    upstream.clear_upstream_requests()
    response = chat(upstream, PAID, token=poor["token"])
    assert response.status_code == 402
    assert response.json()["error"]["title"] == "Paid Model - Credits Required"


def _org(gateway: Gateway, user: dict, *, plan: str = "teams", credits: str = "100", settings: dict | None = None) -> str:
    org_id = gateway.cli("org", "create", "--name", f"org-{uuid.uuid4().hex[:6]}", "--plan", plan, "--credits-usd", credits)["id"]
    gateway.cli("org", "add-member", "--org", org_id, "--user", user["id"])
    if settings is not None:
        import orjson

        gateway.cli("org", "settings", "--org", org_id, "--json", orjson.dumps(settings).decode())
    return org_id


def test_row13_enterprise_model_allow_list(upstream: Gateway) -> None:
    user = upstream.new_user(credits_usd="0")
    org = _org(upstream, user, plan="enterprise", settings={"model_allow_list": ["anthropic/*", "openai/gpt-5.2"]})
    headers = {"x-kilocode-organizationid": org}
    assert chat(upstream, PAID, token=user["token"], headers=headers).status_code == 200
    assert chat(upstream, "openai/gpt-5.2", token=user["token"], headers=headers).status_code == 200
    upstream.clear_upstream_requests()
    refused(upstream, chat(upstream, "openai/gpt-4o", token=user["token"], headers=headers), 404, NOT_ALLOWED)


def test_row13_teams_plans_ignore_allow_lists(upstream: Gateway) -> None:
    user = upstream.new_user(credits_usd="0")
    org = _org(upstream, user, plan="teams", settings={"model_allow_list": ["anthropic/*"]})
    response = chat(upstream, "openai/gpt-4o", token=user["token"], headers={"x-kilocode-organizationid": org})
    assert response.status_code == 200


def test_row13_enterprise_provider_allow_list_shapes_the_provider(upstream: Gateway) -> None:
    user = upstream.new_user(credits_usd="0")
    org = _org(upstream, user, plan="enterprise", settings={"provider_allow_list": ["anthropic", "amazon-bedrock"], "data_collection": "allow"})
    response = chat(upstream, PAID, token=user["token"], headers={"x-kilocode-organizationid": org}, provider={"sort": "price"})
    assert response.status_code == 200
    [received] = upstream.upstream_requests()
    # The organisation's config replaced the client's; the preferred order is added (5.2 rule 4).
    assert received["body"]["provider"] == {
        "only": ["anthropic", "amazon-bedrock"],
        "data_collection": "allow",
        "order": ["amazon-bedrock", "anthropic"],
    }


def test_row14_data_collection_gate_applies_to_anonymous_callers_too(upstream: Gateway, account: dict) -> None:
    body = {"error": DATA_COLLECTION, "message": DATA_COLLECTION}
    refused(upstream, chat(upstream, KILO_FREE, provider={"data_collection": "deny"}), 400, body)
    refused(upstream, chat(upstream, KILO_FREE, token=account["token"], provider={"zdr": True}), 400, body)
    # Not a Kilo-hosted model: no gate.
    assert chat(upstream, GENERIC_FREE, provider={"data_collection": "deny"}).status_code == 200


def test_organisation_data_collection_deny_closes_kilo_free_models(upstream: Gateway) -> None:
    user = upstream.new_user(credits_usd="0")
    org = _org(upstream, user, settings={"data_collection": "deny"})
    response = chat(upstream, KILO_FREE, token=user["token"], headers={"x-kilocode-organizationid": org})
    refused(upstream, response, 400, {"error": DATA_COLLECTION, "message": DATA_COLLECTION})


# --- Balances through organisations -------------------------------------------------------


def test_organisation_balance_is_used_not_the_users(upstream: Gateway) -> None:
    user = upstream.new_user(credits_usd="0")
    org = _org(upstream, user, credits="50")
    assert chat(upstream, PAID, token=user["token"], headers={"x-kilocode-organizationid": org}).status_code == 200
    broke = _org(upstream, upstream.new_user(credits_usd="0"), credits="0")
    upstream.cli("org", "add-member", "--org", broke, "--user", user["id"])
    response = chat(upstream, PAID, token=user["token"], headers={"x-kilocode-organizationid": broke})
    assert response.status_code == 402


def test_organisation_daily_limit_caps_the_balance(upstream: Gateway) -> None:
    user = upstream.new_user(credits_usd="0")
    org = _org(upstream, user, credits="50")
    upstream.cli("org", "daily-limit", "--org", org, "--user", user["id"], "--usd", "0")
    response = chat(upstream, PAID, token=user["token"], headers={"x-kilocode-organizationid": org})
    assert response.status_code == 402
    assert response.json()["error"]["balance"] == 0


# --- Authentication: every failure is anonymous, never an error of its own -----------------


def _mint(secret: str, user_id: str, **overrides: Any) -> str:
    claims = {"kiloUserId": user_id, "version": 3, "apiTokenPepper": None, "exp": int(time.time()) + 3600, **overrides}
    return jwt.encode(claims, secret, algorithm="HS256")


def _secret(gateway: Gateway) -> str:
    return (gateway.data_dir / "nextauth_secret").read_text().strip()


def _assert_anonymous(gateway: Gateway, token: str, headers: dict[str, str] | None = None) -> None:
    gateway.clear_upstream_requests()
    refused(gateway, chat(gateway, PAID, token=token, headers=headers), 401, PAID_MODEL_AUTH_REQUIRED)
    served = chat(gateway, GENERIC_FREE, token=token, headers=headers)
    assert served.status_code == 200, served.text


def test_a_valid_token_is_accepted(gateway: Gateway) -> None:
    user = gateway.new_user()
    assert chat(gateway, PAID, token=_mint(_secret(gateway), user["id"])).status_code == 200


@pytest.mark.parametrize(
    "case",
    ["expired", "wrong_version", "wrong_secret", "alg_none", "other_algorithm", "unknown_user", "garbage", "no_user_id"],
)
def test_bad_tokens_make_the_request_anonymous(gateway: Gateway, case: str) -> None:
    user = gateway.new_user()
    secret = _secret(gateway)
    token = {
        "expired": lambda: _mint(secret, user["id"], exp=int(time.time()) - 10),
        "wrong_version": lambda: _mint(secret, user["id"], version=2),
        "wrong_secret": lambda: _mint("not-the-secret-but-just-as-long-as-one", user["id"]),
        "alg_none": lambda: jwt.encode({"kiloUserId": user["id"], "version": 3}, None, algorithm="none"),
        "other_algorithm": lambda: jwt.encode({"kiloUserId": user["id"], "version": 3}, secret, algorithm="HS512"),
        "unknown_user": lambda: _mint(secret, "no-such-user"),
        "garbage": lambda: "not.a.jwt",
        "no_user_id": lambda: _mint(secret, ""),
    }[case]()
    _assert_anonymous(gateway, token)


def test_revoked_token_is_anonymous(gateway: Gateway) -> None:
    user = gateway.new_user()
    fresh = gateway.cli("user", "revoke-tokens", "--user", user["id"])
    _assert_anonymous(gateway, user["token"])
    assert chat(gateway, PAID, token=fresh["token"]).status_code == 200


def test_blocked_user_is_anonymous(gateway: Gateway) -> None:
    user = gateway.new_user()
    gateway.cli("user", "block", "--user", user["id"], "--reason", "abuse")
    _assert_anonymous(gateway, user["token"])


def test_blacklisted_domain_is_anonymous(gateway: Gateway) -> None:
    for email in (f"a{uuid.uuid4().hex[:6]}@blocked.example", f"b{uuid.uuid4().hex[:6]}@mail.banned.test"):
        _assert_anonymous(gateway, gateway.new_user(email=email)["token"])


def test_non_member_organisation_is_anonymous(gateway: Gateway) -> None:
    user = gateway.new_user()
    other = gateway.new_user()
    org = _org(gateway, other)
    _assert_anonymous(gateway, user["token"], {"x-kilocode-organizationid": org})


def test_non_uuid_organisation_header_is_anonymous_not_an_error(gateway: Gateway) -> None:
    user = gateway.new_user()
    _assert_anonymous(gateway, user["token"], {"x-kilocode-organizationid": "not-a-uuid'; drop table x"})


# --- Limits key on the trusted client address ------------------------------------------------


def test_a_client_cannot_spoof_its_address_beyond_the_trusted_hop(upstream: Gateway) -> None:
    trusted = fresh_ip()
    for n in range(5):
        # The client prepends whatever it likes; the trusted proxy's entry is the last one.
        assert chat(upstream, KILO_FREE, ip=f"10.0.0.{n}, {trusted}").status_code == 200
    upstream.clear_upstream_requests()
    refused(upstream, chat(upstream, KILO_FREE, ip=f"10.9.9.9, {trusted}"), 401, PROMOTION_LIMIT)


# --- Cost of admission: round trips for a cached, signed-in user ---------------------------


class RedisCommands:
    """Commands Redis processed, read over one connection (each reading adds its own INFO)."""

    def __init__(self, gateway: Gateway) -> None:
        import redis

        self.client = redis.Redis.from_url(gateway.redis_url)
        self.client.ping()

    def admission(self) -> int:
        """Commands other than accounting's and our own INFO readings. Accounting's: the outbox
        stream (X*; MULTI/EXEC wrap its acknowledgements), and the write-ahead records of
        requests in flight (accounting/inflight.py: HSET/HDEL per request, batched after the
        reply; SET/SADD heartbeats and the writer's SMEMBERS/EXISTS, every second). Admission
        itself only ever runs the limiter's script."""
        stats = self.client.info("commandstats")
        accounting = {f"cmdstat_{c}" for c in ("info", "multi", "exec", "hset", "hdel", "set", "sadd", "smembers", "exists")}
        return sum(
            int(value["calls"])
            for name, value in stats.items()
            if not name.startswith("cmdstat_x") and name not in accounting
        )

    def scripts(self) -> int:
        """Script runs: one round trip each, whatever the script does inside."""
        stats = self.client.info("commandstats")
        return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("eval", "evalsha"))


def _postgres_user_lookups(gateway: Gateway) -> float:
    for line in gateway.metrics().splitlines():
        if line.startswith('llm_gateway_directory_lookups_total{kind="user",source="postgres"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_until_nothing_held(gateway: Gateway, user_id: str) -> None:
    import redis

    client, key = redis.Redis.from_url(gateway.redis_url), scopes.user_balance(user_id) + ":live"
    deadline = time.monotonic() + 30
    while client.hlen(key) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.hlen(key) == 0


def test_admitting_a_cached_signed_in_user_costs_no_postgres_and_one_redis_round_trip(gateway: Gateway) -> None:
    user = gateway.new_user()
    assert chat(gateway, PAID, token=user["token"]).status_code == 200  # fills the cache
    _wait_until_nothing_held(gateway, user["id"])
    redis_commands = RedisCommands(gateway)
    lookups, scripts = _postgres_user_lookups(gateway), redis_commands.scripts()
    for _ in range(10):
        assert chat(gateway, PAID, token=user["token"]).status_code == 200
    assert _postgres_user_lookups(gateway) == lookups
    # Beside accounting's outbox traffic, Redis ran each request's spend hold (issue 23: one
    # round trip, the replica's index HSET and the hold's script) and, once its row committed,
    # the ledger writer's end of that hold: one script each.
    _wait_until_nothing_held(gateway, user["id"])
    assert redis_commands.scripts() - scripts == 20


def test_a_kilo_free_model_request_costs_one_redis_round_trip(gateway: Gateway) -> None:
    user = gateway.new_user()
    assert chat(gateway, KILO_FREE, token=user["token"]).status_code == 200
    redis_commands = RedisCommands(gateway)
    scripts = redis_commands.scripts()
    for _ in range(10):
        assert chat(gateway, KILO_FREE, token=user["token"]).status_code == 200
    assert redis_commands.scripts() - scripts == 10
