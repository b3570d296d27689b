"""The operator CLI (`llm-gateway user|token|credits|org ...`) against a real Postgres.

Every command runs as a subprocess, exactly as an operator runs it; the tests check both the
JSON it prints and the rows it leaves in the database.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import jwt
import orjson
import pytest

from extproc import cli as cli_module
from extproc.admin import inputs
from extproc.auth.tokens import pepper_matches, verify_token
from tests.cli_runner import Result, cli_environment, run_many

SECRET = "test-secret"
FIVE_YEARS = 5 * 365 * 24 * 3600

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


def run_all(env: dict[str, str], *commands: tuple[str, ...]) -> list[Result]:
    return run_many(*((env, args, None) for args in commands))


def run_cli(env: dict[str, str], *args: str) -> Result:
    return run_all(env, args)[0]


@pytest.fixture(scope="module")
def cli_env(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return cli_environment(tmp_path_factory.mktemp("admin-data"), DATABASE_URL=database_url, NEXTAUTH_SECRET=SECRET)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    result = run_cli(env, *args)
    assert SECRET not in result.stdout
    return result.json


def new_email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


def decode(token: str, secret: str = SECRET) -> dict[str, Any]:
    return jwt.decode(token, secret, algorithms=["HS256"])


SEED: dict[str, tuple[str, ...]] = {
    "alice": ("user", "create", "--email", "  Alice.Example@Example.COM ", "--credits-usd", "12.345678"),
    "payer": ("user", "create", "--email", new_email(), "--credits-usd", "10"),
    "holder": ("user", "create", "--email", new_email()),
    "blockee": ("user", "create", "--email", new_email()),
    "member": ("user", "create", "--email", new_email()),
    "victim": ("user", "create", "--email", new_email(), "--credits-usd", "1"),
    "acme": ("org", "create", "--name", "Acme Corp", "--plan", "enterprise", "--credits-usd", "250.5"),
    "default_org": ("org", "create", "--name", "Default Org"),
}


@pytest.fixture(scope="module")
def seed(cli_env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The users and organisations the tests start from, created side by side (which also has
    several processes migrate the empty database at once)."""
    results = run_all(cli_env, *SEED.values())
    return {name: result.json for name, result in zip(SEED, results, strict=True)}


async def snapshot(db: asyncpg.Connection) -> dict[str, Any]:
    """Everything the commands write, to prove a failing command changed nothing."""
    tables = (
        "kilocode_users",
        "credit_transactions",
        "organizations",
        "organization_memberships",
        "organization_user_limits",
    )
    return {table: await db.fetch(f"SELECT * FROM {table} ORDER BY 1") for table in tables}


async def test_user_create_with_credits(seed: dict[str, Any], db: asyncpg.Connection) -> None:
    result = seed["alice"]
    assert set(result) == {"id", "email", "token", "credits_microdollars"}
    assert str(uuid.UUID(result["id"])) == result["id"]
    assert result["email"] == "alice.example@example.com"
    assert result["credits_microdollars"] == 12_345_678

    user = await db.fetchrow("SELECT * FROM kilocode_users WHERE id = $1", result["id"])
    assert user["google_user_email"] == "alice.example@example.com"
    assert user["stripe_customer_id"] == ""
    assert user["total_microdollars_acquired"] == 12_345_678
    assert user["microdollars_used"] == 0
    assert user["api_token_pepper"] is None
    assert user["blocked_reason"] is None
    transactions = await db.fetch("SELECT * FROM credit_transactions WHERE kilo_user_id = $1", result["id"])
    assert len(transactions) == 1
    assert transactions[0]["amount_microdollars"] == 12_345_678
    assert transactions[0]["is_free"] is False
    assert transactions[0]["description"] == "llm-gateway user create"

    claims = decode(result["token"])
    assert claims["kiloUserId"] == result["id"]
    assert claims["version"] == 3
    assert claims["apiTokenPepper"] is None
    assert abs(claims["exp"] - (time.time() + FIVE_YEARS)) < 120
    assert verify_token(result["token"], SECRET) is not None


async def test_credits_add_sums_exactly(cli_env: dict[str, str], seed: dict[str, Any], db: asyncpg.Connection) -> None:
    user = seed["payer"]
    await db.execute("UPDATE kilocode_users SET microdollars_used = 2500000 WHERE id = $1", user["id"])

    first = cli(cli_env, "credits", "add", "--user", user["id"], "--usd", "0.000001")
    assert set(first) == {
        "user_id", "transaction_id", "amount_microdollars", "total_microdollars_acquired", "balance_microdollars",
    }
    assert first["user_id"] == user["id"]
    assert first["amount_microdollars"] == 1
    assert first["total_microdollars_acquired"] == 10_000_001
    assert first["balance_microdollars"] == 7_500_001

    second = cli(cli_env, "credits", "add", "--user", user["id"], "--usd", "0.1", "--free")
    assert second["amount_microdollars"] == 100_000
    assert second["total_microdollars_acquired"] == 10_100_001
    assert second["balance_microdollars"] == 7_600_001

    row = await db.fetchrow("SELECT * FROM kilocode_users WHERE id = $1", user["id"])
    assert row["total_microdollars_acquired"] == 10_100_001
    rows = {
        str(r["id"]): r
        for r in await db.fetch("SELECT * FROM credit_transactions WHERE kilo_user_id = $1", user["id"])
    }
    assert len(rows) == 3
    assert sum(r["amount_microdollars"] for r in rows.values()) == 10_100_001
    assert rows[first["transaction_id"]]["amount_microdollars"] == 1
    assert rows[first["transaction_id"]]["is_free"] is False
    assert rows[second["transaction_id"]]["amount_microdollars"] == 100_000
    assert rows[second["transaction_id"]]["is_free"] is True


async def test_token_mint_and_revoke(cli_env: dict[str, str], seed: dict[str, Any], db: asyncpg.Connection) -> None:
    user = seed["holder"]
    minted = cli(cli_env, "token", "mint", "--user", user["id"])
    assert minted["user_id"] == user["id"]
    assert decode(minted["token"])["kiloUserId"] == user["id"]
    assert decode(minted["token"])["apiTokenPepper"] is None

    revoked = cli(cli_env, "user", "revoke-tokens", "--user", user["id"])
    assert set(revoked) == {"user_id", "token"}
    pepper = await db.fetchval("SELECT api_token_pepper FROM kilocode_users WHERE id = $1", user["id"])
    assert pepper
    fresh = verify_token(revoked["token"], SECRET)
    assert fresh is not None and fresh.kilo_user_id == user["id"] and fresh.api_token_pepper == pepper
    assert pepper_matches(pepper, fresh.api_token_pepper)
    for old in (user["token"], minted["token"]):
        claims = verify_token(old, SECRET)
        assert claims is not None and not pepper_matches(pepper, claims.api_token_pepper)

    # Minting again uses the current pepper.
    again = verify_token(cli(cli_env, "token", "mint", "--user", user["id"])["token"], SECRET)
    assert again is not None and again.api_token_pepper == pepper


async def test_block_and_unblock(cli_env: dict[str, str], seed: dict[str, Any], db: asyncpg.Connection) -> None:
    user = seed["blockee"]  # created without credits: no transaction
    assert user["credits_microdollars"] == 0
    assert await db.fetchval("SELECT total_microdollars_acquired FROM kilocode_users WHERE id = $1", user["id"]) == 0
    assert await db.fetchval("SELECT count(*) FROM credit_transactions WHERE kilo_user_id = $1", user["id"]) == 0

    blocked = cli(cli_env, "user", "block", "--user", user["id"], "--reason", "abuse report #12")
    assert blocked == {"user_id": user["id"], "blocked_reason": "abuse report #12"}
    assert await db.fetchval("SELECT blocked_reason FROM kilocode_users WHERE id = $1", user["id"]) == "abuse report #12"
    unblocked = cli(cli_env, "user", "unblock", "--user", user["id"])
    assert unblocked == {"user_id": user["id"], "blocked_reason": None}
    assert await db.fetchval("SELECT blocked_reason FROM kilocode_users WHERE id = $1", user["id"]) is None


async def test_org_commands(cli_env: dict[str, str], seed: dict[str, Any], db: asyncpg.Connection) -> None:
    org, default, user = seed["acme"], seed["default_org"], seed["member"]
    assert set(org) == {"id", "name", "plan", "total_microdollars_acquired"}
    assert org["name"] == "Acme Corp" and org["plan"] == "enterprise"
    assert org["total_microdollars_acquired"] == 250_500_000
    row = await db.fetchrow("SELECT * FROM organizations WHERE id = $1::uuid", org["id"])
    assert row["name"] == "Acme Corp" and row["plan"] == "enterprise"
    assert row["total_microdollars_acquired"] == 250_500_000
    assert row["microdollars_balance"] == 250_500_000
    assert row["microdollars_used"] == 0

    assert default["plan"] == "teams" and default["total_microdollars_acquired"] == 0

    # Each command runs twice: the second upserts (membership, limit) or replaces (settings).
    settings = {"model_allow_list": ["anthropic/*", "openai/gpt-5"], "data_collection": "deny"}
    member, first_settings, first_limit = (
        result.json
        for result in run_all(
            cli_env,
            ("org", "add-member", "--org", org["id"], "--user", user["id"]),
            ("org", "settings", "--org", org["id"], "--json", orjson.dumps(settings).decode()),
            ("org", "daily-limit", "--org", org["id"], "--user", user["id"], "--usd", "5"),
        )
    )
    assert member == {"organization_id": org["id"], "user_id": user["id"], "role": "member"}
    assert first_settings == {"organization_id": org["id"], "settings": settings}
    assert first_limit == {"organization_id": org["id"], "user_id": user["id"], "microdollar_limit": 5_000_000}
    stored = await db.fetchval("SELECT settings::text FROM organizations WHERE id = $1::uuid", org["id"])
    assert orjson.loads(stored) == settings
    role = await db.fetchval(
        "SELECT role FROM organization_memberships WHERE organization_id = $1::uuid AND kilo_user_id = $2",
        org["id"],
        user["id"],
    )
    assert role == "member"

    owner, second_settings, second_limit = (
        result.json
        for result in run_all(
            cli_env,
            ("org", "add-member", "--org", org["id"].upper(), "--user", user["id"], "--role", "owner"),
            ("org", "settings", "--org", org["id"], "--json", '{"provider_allow_list": ["mistral"]}'),
            ("org", "daily-limit", "--org", org["id"], "--user", user["id"], "--usd", "1.25"),
        )
    )
    assert owner == {"organization_id": org["id"], "user_id": user["id"], "role": "owner"}
    assert second_settings["settings"] == {"provider_allow_list": ["mistral"]}
    assert second_limit["microdollar_limit"] == 1_250_000

    memberships = await db.fetch(
        "SELECT role FROM organization_memberships WHERE organization_id = $1::uuid AND kilo_user_id = $2",
        org["id"],
        user["id"],
    )
    assert [m["role"] for m in memberships] == ["owner"]
    stored = await db.fetchval("SELECT settings::text FROM organizations WHERE id = $1::uuid", org["id"])
    assert orjson.loads(stored) == {"provider_allow_list": ["mistral"]}  # replaced, not merged
    limits = await db.fetch(
        "SELECT limit_type, microdollar_limit FROM organization_user_limits"
        " WHERE organization_id = $1::uuid AND kilo_user_id = $2",
        org["id"],
        user["id"],
    )
    assert [(r["limit_type"], r["microdollar_limit"]) for r in limits] == [("daily", 1_250_000)]


@pytest.mark.parametrize(
    ("text", "microdollars"),
    [("0.000001", 1), ("10", 10_000_000), ("0", 0), ("12.345678", 12_345_678), (" 1.50 ", 1_500_000),
     (".5", 500_000), ("7.", 7_000_000), ("-0", 0), ("9223372036854", 9_223_372_036_854_000_000)],
)
def test_usd_is_converted_exactly(text: str, microdollars: int) -> None:
    assert inputs.usd_to_exact_microdollars(text) == microdollars


@pytest.mark.parametrize(
    ("text", "message"),
    [("-1", "negative"), ("-0.000001", "negative"), ("ten", "decimal"), ("", "decimal"), ("1e3", "decimal"),
     ("NaN", "decimal"), ("Infinity", "decimal"), ("1_000", "decimal"), ("0x10", "decimal"), ("1.2.3", "decimal"),
     ("0.0000001", "6 decimals"), ("1.0000001", "6 decimals"), ("99999999999999999999", "too large")],
)
def test_bad_usd_is_refused(text: str, message: str) -> None:
    with pytest.raises(inputs.AdminError, match=message):
        inputs.usd_to_exact_microdollars(text)
    with pytest.raises(inputs.AdminError, match="greater than zero"):
        inputs.usd_to_exact_microdollars("0.000000", allow_zero=False)


def test_input_validation() -> None:
    assert inputs.normalize_email("  Bob@Example.ORG ") == "bob@example.org"
    for email in ("bob", "bob@", "@example.com", "bob@example", "bob smith@example.com", "a@b@example.com"):
        with pytest.raises(inputs.AdminError, match="email"):
            inputs.normalize_email(email)
    org_id = str(uuid.uuid4())
    assert inputs.parse_org_id(org_id.upper()) == org_id
    for bad in ("", "1234", "not-a-uuid", org_id + "0"):
        with pytest.raises(inputs.AdminError, match="UUID"):
            inputs.parse_org_id(bad)
    assert inputs.parse_settings_json('{"a": [1]}') == {"a": [1]}
    for bad, message in (("{", "JSON"), ('{"a": NaN}', "JSON"), ("[1]", "object"), ("null", "object")):
        with pytest.raises(inputs.AdminError, match=message):
            inputs.parse_settings_json(bad)


def test_existing_commands_still_parse() -> None:
    args = cli_module.build_parser().parse_args(["mock-upstream", "--port", "1234"])
    assert args.handler is not None and args.port == 1234
    for command in ("run", "serve", "envoy-config"):
        assert cli_module.build_parser().parse_args([command]).command == command


async def test_bad_input_changes_nothing(cli_env: dict[str, str], seed: dict[str, Any], db: asyncpg.Connection) -> None:
    user, org = seed["victim"], seed["default_org"]
    unknown_org = str(uuid.uuid4())
    before = await snapshot(db)

    cases: list[tuple[tuple[str, ...], str]] = [
        (("user", "create", "--email", "not-an-email", "--credits-usd", "1"), "email"),
        # The same address, differently written, is the same user.
        (("user", "create", "--email", user["email"].upper(), "--credits-usd", "1"), "already exists"),
        (("credits", "add", "--user", "no-such-user", "--usd", "1"), "unknown user"),
        (("credits", "add", "--user", user["id"], "--usd", "-5"), "negative"),
        (("credits", "add", "--user", user["id"], "--usd", "abc"), "decimal"),
        (("credits", "add", "--user", user["id"], "--usd", "1.0000001"), "6 decimals"),
        (("user", "revoke-tokens", "--user", "no-such-user"), "unknown user"),
        (("org", "add-member", "--org", "not-a-uuid", "--user", user["id"]), "UUID"),
        (("org", "add-member", "--org", unknown_org, "--user", user["id"], "--role", "admin"), "invalid choice"),
        (("org", "settings", "--org", unknown_org, "--json", "{}"), "unknown organization"),
        (("org", "settings", "--org", org["id"], "--json", "{not json"), "JSON"),
        (("org", "daily-limit", "--org", org["id"], "--user", "no-such-user", "--usd", "1"), "unknown user"),
    ]
    results = run_all(cli_env, *(args for args, _ in cases))
    for (args, expected), result in zip(cases, results, strict=True):
        assert expected.lower() in result.error.lower(), (args, result)

    assert await snapshot(db) == before


async def test_database_from_stack_json_and_secret_from_file(
    database_url: str, tmp_path: Path, db: asyncpg.Connection
) -> None:
    env = cli_environment(tmp_path)
    email = new_email()

    # Neither DATABASE_URL nor a running stack.
    error = run_cli(env, "org", "create", "--name", "nowhere").error
    assert error == "no database: set DATABASE_URL or start the stack with `make run`"

    # A database but no signing secret: the user is not created.
    (tmp_path / "stack.json").write_text(orjson.dumps({"pid": 1, "database_url": database_url}).decode())
    assert "NEXTAUTH_SECRET" in run_cli(env, "user", "create", "--email", email).error
    assert await db.fetchval("SELECT count(*) FROM kilocode_users WHERE google_user_email = $1", email) == 0

    (tmp_path / "nextauth_secret").write_text("file-secret\n")
    user = cli(env, "user", "create", "--email", email, "--credits-usd", "3")
    assert decode(user["token"], "file-secret")["kiloUserId"] == user["id"]
    with pytest.raises(jwt.InvalidSignatureError):
        decode(user["token"], SECRET)
    assert await db.fetchval("SELECT total_microdollars_acquired FROM kilocode_users WHERE id = $1", user["id"]) == 3_000_000

    # NEXTAUTH_SECRET wins over the file.
    minted = cli({**env, "NEXTAUTH_SECRET": SECRET}, "token", "mint", "--user", user["id"])
    assert decode(minted["token"])["kiloUserId"] == user["id"]

