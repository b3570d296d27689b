"""BYOK (behaviour.md 3.3): the stored key format, which providers serve a model, the owner's
keys, and `llm-gateway byok add`, against a real Postgres."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from extproc.byok import (
    BYOK_PROVIDER_IDS,
    ByokDecryptionError,
    ByokDirectory,
    decrypt_api_key,
    encrypt_api_key,
    parse_encryption_key,
    to_byok_key,
)
from extproc.db import init_connection
from extproc.db.migrate import migrate
from extproc.settings import load_settings
from extproc.shaping.provider_rules import ByokKey
from tests.cli_runner import Result, cli_environment, run_many

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()
AWS = {"accessKeyId": "AKIAEXAMPLE", "secretAccessKey": "wJalrXUtnFEMI/K7MDENG", "region": "eu-west-1"}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


# ---------------------------------------------------------------------------------------
# The format.


def test_round_trip_and_layout() -> None:
    plaintext = "sk-ant-api03-xyz ✓ é"
    first, second = encrypt_api_key(plaintext, KEY), encrypt_api_key(plaintext, KEY)
    assert set(first) == {"iv", "data", "authTag"}
    assert len(unb64(first["iv"])) == 12
    assert len(unb64(first["authTag"])) == 16
    assert len(unb64(first["data"])) == len(plaintext.encode())
    assert first["iv"] != second["iv"] and first["data"] != second["data"]  # fresh IV each time
    assert decrypt_api_key(first, KEY) == decrypt_api_key(second, KEY) == plaintext
    # What we store opens with a plain AES-256-GCM (ciphertext || tag, no AAD), as the web app does.
    opened = AESGCM(KEY).decrypt(unb64(first["iv"]), unb64(first["data"]) + unb64(first["authTag"]), None)
    assert opened.decode() == plaintext


def test_payload_in_the_web_apps_layout_decrypts() -> None:
    key = os.urandom(32)
    iv = os.urandom(12)
    sealed = AESGCM(key).encrypt(iv, "sk-proj-independent".encode(), None)
    payload = {"iv": b64(iv), "data": b64(sealed[:-16]), "authTag": b64(sealed[-16:])}
    assert decrypt_api_key(payload, key) == "sk-proj-independent"
    # Written by Node's crypto (createCipheriv('aes-256-gcm'), as src/lib/byok/encryption.ts
    # does) with the key bytes 0..31.
    node = {"iv": "lJQRs0/kaiZo64uE", "data": "SNYgoc7Dhf+mmLlPYy12ZHHxEys=", "authTag": "zzxA5X5J0aWzTTcN8hpVQA=="}
    assert decrypt_api_key(node, parse_encryption_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")) == (
        "sk-node-vector-é✓"
    )


def _flip(text: str, index: int = 0) -> str:
    raw = bytearray(unb64(text))
    raw[index] ^= 0x01
    return b64(bytes(raw))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p: {**p, "data": _flip(p["data"])},
        lambda p: {**p, "data": _flip(p["data"], -1)},
        lambda p: {**p, "authTag": _flip(p["authTag"])},
        lambda p: {**p, "iv": _flip(p["iv"])},
        lambda p: {**p, "authTag": b64(unb64(p["authTag"])[:12])},  # truncated tag
        lambda p: {**p, "iv": b64(unb64(p["iv"]) + b"\0")},  # wrong IV length
        lambda p: {**p, "data": "not base64!"},
        lambda p: {"iv": p["iv"], "data": p["data"]},  # no tag
        lambda p: {**p, "iv": 12},
        lambda p: [p["iv"], p["data"], p["authTag"]],
    ],
    ids=["data", "data-last", "tag", "iv", "short-tag", "long-iv", "bad-base64", "no-tag", "iv-not-str", "list"],
)
def test_tampered_or_malformed_payload(tamper: Any) -> None:
    payload = encrypt_api_key("sk-secret-value", KEY)
    with pytest.raises(ByokDecryptionError) as caught:
        decrypt_api_key(tamper(payload), KEY)
    assert "sk-secret-value" not in str(caught.value)


def test_another_key_does_not_decrypt() -> None:
    with pytest.raises(ByokDecryptionError):
        decrypt_api_key(encrypt_api_key("sk-x", KEY), bytes(32))


@pytest.mark.parametrize("size", [1, 16, 24, 31, 33, 64])
def test_encryption_key_must_be_32_bytes(size: int) -> None:
    with pytest.raises(ValueError, match=f"exactly 32 bytes \\(AES-256\\), got {size} bytes"):
        parse_encryption_key(b64(os.urandom(size)))
    # AESGCM itself would take 16 and 24 bytes; the stored format is AES-256 only.
    with pytest.raises(ValueError, match="32 bytes"):
        encrypt_api_key("sk-x", os.urandom(size))
    with pytest.raises(ValueError, match="32 bytes"):
        decrypt_api_key(encrypt_api_key("sk-x", KEY), os.urandom(size))


def test_encryption_key_parsing() -> None:
    assert parse_encryption_key(f"  {KEY_B64}\n") == KEY
    for bad in ("", "   ", "not base64 at all!", KEY_B64[:-1]):
        with pytest.raises(ValueError, match="BYOK_ENCRYPTION_KEY"):
            parse_encryption_key(bad)


def test_bedrock_and_plain_keys() -> None:
    assert BYOK_PROVIDER_IDS == (
        "anthropic", "bedrock", "google", "openai", "minimax", "mistral", "xai", "zai", "codestral",
    )
    assert to_byok_key("bedrock", orjson.dumps(AWS).decode()) == ByokKey("bedrock", None, AWS)
    assert to_byok_key("zai", "zai-key") == ByokKey("zai", "zai-key", None)
    assert to_byok_key("codestral", "c-key") == ByokKey("codestral", "c-key", None)
    for bad in ("AKIA:secret", "[]", '"text"', orjson.dumps({**AWS, "region": None}).decode(),
                orjson.dumps({k: v for k, v in AWS.items() if k != "region"}).decode()):
        with pytest.raises(ByokDecryptionError, match="^Failed to parse AWS credentials$"):
            to_byok_key("bedrock", bad)
    with pytest.raises(ValueError):
        to_byok_key("vertex", "k")


# ---------------------------------------------------------------------------------------
# Postgres.


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=4, init=init_connection)
    async with pool.acquire() as connection:
        await migrate(connection)
    try:
        yield pool
    finally:
        await pool.close()


def directory(pool: asyncpg.Pool, **settings: Any) -> ByokDirectory:
    return ByokDirectory(pool, load_settings(directory_cache_seconds=0, **settings))


async def new_user(pool: asyncpg.Pool) -> str:
    user_id = str(uuid.uuid4())
    await pool.execute(
        "INSERT INTO kilocode_users (id, google_user_email) VALUES ($1, $2)", user_id, f"{user_id}@example.com"
    )
    return user_id


async def new_org(pool: asyncpg.Pool) -> str:
    return str(await pool.fetchval("INSERT INTO organizations (name) VALUES ('byok org') RETURNING id"))


async def store(
    pool: asyncpg.Pool,
    provider: str,
    plaintext: str,
    *,
    user: str | None = None,
    org: str | None = None,
    enabled: bool = True,
    age_minutes: int = 0,
) -> None:
    await pool.execute(
        "INSERT INTO byok_api_keys (kilo_user_id, organization_id, provider_id, encrypted_api_key, is_enabled,"
        " created_at) VALUES ($1, $2::uuid, $3, $4::jsonb, $5, $6)",
        user,
        org,
        provider,
        orjson.dumps(encrypt_api_key(plaintext, KEY)).decode(),
        enabled,
        datetime.now(UTC) - timedelta(minutes=age_minutes),
    )


async def test_providers_for_model(pool: asyncpg.Pool) -> None:
    empty = directory(pool)
    assert await empty.providers_for_model("anthropic/claude-sonnet-4.6", "anthropic/claude-sonnet-4.6") == []
    # Codestral never looks at the map.
    assert await empty.providers_for_model("mistralai/codestral-2508", "mistral/codestral") == ["codestral"]

    def endpoints(*tags: str) -> dict[str, Any]:
        return {"id": "x", "name": "x", "endpoints": [{"provider_name": t.title(), "tag": t, "context_length": 1}
                                                      for t in tags]}

    old = {"anthropic/claude-sonnet-4.6": endpoints("anthropic", "bedrock", "vertex", "anthropic", "google")}
    await pool.execute("INSERT INTO models_by_provider (vercel) VALUES ($1::jsonb)", orjson.dumps(old).decode())
    cached = directory(pool)
    sonnet = ("anthropic/claude-sonnet-4.6", "anthropic/claude-sonnet-4.6")
    # Only BYOK ids (vertex is not one), de-duplicated, in the map's order.
    assert await cached.providers_for_model(*sonnet) == ["anthropic", "bedrock", "google"]

    new = {
        "anthropic/claude-sonnet-4.6": endpoints("bedrock"),
        "zai/glm-5": endpoints("zai", "alibaba", "codestral"),
        "mistral/codestral": endpoints("mistral"),
        "broken/model": {"endpoints": "nope"},
    }
    await pool.execute("INSERT INTO models_by_provider (vercel) VALUES ($1::jsonb)", orjson.dumps(new).decode())
    fresh = directory(pool)
    assert await fresh.providers_for_model(*sonnet) == ["bedrock"]  # the newest row wins
    assert await fresh.providers_for_model("z-ai/glm-5", "zai/glm-5") == ["zai"]
    assert await fresh.providers_for_model("mistralai/codestral-2508", "mistral/codestral") == ["codestral"]
    assert await fresh.providers_for_model("broken/model", "broken/model") == []
    assert await fresh.providers_for_model("nobody/knows", "nobody/knows") == []
    # The map is cached: the first directory still answers from the row it read.
    assert await cached.providers_for_model(*sonnet) == ["anthropic", "bedrock", "google"]


async def test_keys_of_user_or_org_never_both(pool: asyncpg.Pool) -> None:
    user, other, org, empty_org = await new_user(pool), await new_user(pool), await new_org(pool), await new_org(pool)
    await store(pool, "anthropic", "user-anthropic", user=user, age_minutes=1)
    await store(pool, "openai", "user-openai", user=user, age_minutes=30)
    await store(pool, "mistral", "user-mistral-disabled", user=user, enabled=False, age_minutes=60)
    await store(pool, "bedrock", orjson.dumps(AWS).decode(), user=user, age_minutes=10)
    await store(pool, "google", "user-google", user=user)
    await store(pool, "anthropic", "other-anthropic", user=other)
    await store(pool, "anthropic", "org-anthropic", org=org)
    await store(pool, "zai", "org-zai", org=org, age_minutes=5)

    byok = directory(pool)
    wanted = ["anthropic", "openai", "mistral", "bedrock", "zai"]
    # Oldest first; disabled and unrequested (google) keys left out; nothing of the org.
    assert await byok.keys(wanted, user_id=user, organization_id=None, encryption_key=KEY) == [
        ByokKey("openai", "user-openai", None),
        ByokKey("bedrock", None, AWS),
        ByokKey("anthropic", "user-anthropic", None),
    ]
    # With an organisation: only its keys, none of the user's.
    assert await byok.keys(wanted, user_id=user, organization_id=org, encryption_key=KEY) == [
        ByokKey("zai", "org-zai", None),
        ByokKey("anthropic", "org-anthropic", None),
    ]
    # An organisation without keys does not fall back to the user's.
    assert await byok.keys(wanted, user_id=user, organization_id=empty_org, encryption_key=KEY) == []
    assert await byok.keys(wanted, user_id=user, organization_id="not-a-uuid", encryption_key=KEY) == []
    assert await byok.keys(["openai"], user_id=user, organization_id=None, encryption_key=KEY) == [
        ByokKey("openai", "user-openai", None)
    ]
    assert await byok.keys([], user_id=user, organization_id=None, encryption_key=KEY) == []
    assert await byok.keys(["anthropic"], user_id=other, organization_id=None, encryption_key=KEY) == [
        ByokKey("anthropic", "other-anthropic", None)
    ]

    # A row that does not decrypt fails the lookup that needs it, not the others.
    await pool.execute(
        "UPDATE byok_api_keys SET encrypted_api_key = jsonb_set(encrypted_api_key, '{authTag}', to_jsonb($2::text))"
        " WHERE kilo_user_id = $1 AND provider_id = 'openai'",
        user,
        b64(bytes(16)),
    )
    with pytest.raises(ByokDecryptionError):
        await byok.keys(wanted, user_id=user, organization_id=None, encryption_key=KEY)
    assert await byok.keys(["anthropic"], user_id=user, organization_id=None, encryption_key=KEY) == [
        ByokKey("anthropic", "user-anthropic", None)
    ]


async def test_keys_are_cached_for_the_directory_ttl(pool: asyncpg.Pool) -> None:
    user = await new_user(pool)
    await store(pool, "xai", "xai-1", user=user)
    cached = ByokDirectory(pool, load_settings(directory_cache_seconds=60))
    assert await cached.keys(["xai"], user_id=user, organization_id=None, encryption_key=KEY) == [
        ByokKey("xai", "xai-1", None)
    ]
    await pool.execute("UPDATE byok_api_keys SET is_enabled = false WHERE kilo_user_id = $1", user)
    assert len(await cached.keys(["xai"], user_id=user, organization_id=None, encryption_key=KEY)) == 1
    assert await directory(pool).keys(["xai"], user_id=user, organization_id=None, encryption_key=KEY) == []


# ---------------------------------------------------------------------------------------
# `llm-gateway byok add`.


def byok_add(*commands: tuple[dict[str, str], tuple[str, ...], str | None]) -> list[Result]:
    return run_many(*((env, ("byok", "add", *args), stdin) for env, args, stdin in commands))


async def test_cli_stores_keys_that_decrypt(pool: asyncpg.Pool, database_url: str, tmp_path: Path) -> None:
    env = cli_environment(tmp_path, DATABASE_URL=database_url, BYOK_ENCRYPTION_KEY=KEY_B64)
    user, org = await new_user(pool), await new_org(pool)
    aws = orjson.dumps(AWS).decode()
    user_key, org_key, bedrock = byok_add(
        (env, ("--user", user, "--provider", "anthropic", "--key", "sk-ant-first"), None),
        (env, ("--org", org.upper(), "--provider", " ZAI ", "--key", "zai-org-key"), None),
        (env, ("--user", user, "--provider", "bedrock", "--key", "-"), aws + "\n"),
    )
    for result, secret in ((user_key, "sk-ant-first"), (org_key, "zai-org-key"), (bedrock, "wJalrXUtnFEMI")):
        assert secret not in result.stdout + result.stderr
        assert set(result.json) == {"id", "provider", "owner"}
    assert user_key.json["provider"] == "anthropic" and user_key.json["owner"] == {"user": user}
    assert org_key.json["provider"] == "zai" and org_key.json["owner"] == {"org": org}

    byok = directory(pool)
    assert await byok.keys(["anthropic", "bedrock"], user_id=user, organization_id=None, encryption_key=KEY) in (
        [ByokKey("anthropic", "sk-ant-first", None), ByokKey("bedrock", None, AWS)],
        [ByokKey("bedrock", None, AWS), ByokKey("anthropic", "sk-ant-first", None)],
    )
    assert await byok.keys(["zai"], user_id=user, organization_id=org, encryption_key=KEY) == [
        ByokKey("zai", "zai-org-key", None)
    ]
    row = await pool.fetchrow("SELECT * FROM byok_api_keys WHERE id = $1::uuid", user_key.json["id"])
    assert row["kilo_user_id"] == user and row["organization_id"] is None and row["is_enabled"]
    assert set(row["encrypted_api_key"]) == {"iv", "data", "authTag"}

    # Adding again replaces the key in place and re-enables it.
    await pool.execute("UPDATE byok_api_keys SET is_enabled = false WHERE id = $1::uuid", user_key.json["id"])
    (again,) = byok_add((env, ("--user", user, "--provider", "anthropic", "--key", "sk-ant-second"), None))
    assert again.json["id"] == user_key.json["id"]
    assert await byok.keys(["anthropic"], user_id=user, organization_id=None, encryption_key=KEY) == [
        ByokKey("anthropic", "sk-ant-second", None)
    ]
    assert await pool.fetchval("SELECT count(*) FROM byok_api_keys WHERE kilo_user_id = $1", user) == 2


async def test_cli_bad_input_changes_nothing(pool: asyncpg.Pool, database_url: str, tmp_path: Path) -> None:
    user, org = await new_user(pool), await new_org(pool)
    env = cli_environment(tmp_path, DATABASE_URL=database_url, BYOK_ENCRYPTION_KEY=KEY_B64)
    no_key = cli_environment(tmp_path, DATABASE_URL=database_url)
    short_key = cli_environment(tmp_path, DATABASE_URL=database_url, BYOK_ENCRYPTION_KEY=b64(os.urandom(16)))
    no_database = cli_environment(tmp_path, BYOK_ENCRYPTION_KEY=KEY_B64)
    ok = ("--provider", "openai", "--key", "sk-secret-openai")
    cases: dict[str, tuple[dict[str, str], tuple[str, ...], str | None, str]] = {
        "unknown provider": (env, ("--user", user, "--provider", "vertex", "--key", "sk-secret-openai"), None,
                             "unknown BYOK provider"),
        "no encryption key": (no_key, ("--user", user, *ok), None, "BYOK_ENCRYPTION_KEY is not set"),
        "short encryption key": (short_key, ("--user", user, *ok), None, "exactly 32 bytes"),
        "both owners": (env, ("--user", user, "--org", org, *ok), None, "not allowed with"),
        "no owner": (env, ok, None, "one of the arguments --user --org is required"),
        "unknown user": (env, ("--user", "no-such-user", *ok), None, "unknown user id"),
        "unknown org": (env, ("--org", str(uuid.uuid4()), *ok), None, "unknown organization id"),
        "org not a uuid": (env, ("--org", "acme", *ok), None, "not a UUID"),
        "empty key": (env, ("--user", user, "--provider", "openai", "--key", "  "), None, "--key must not be empty"),
        "empty stdin": (env, ("--user", user, "--provider", "openai", "--key", "-"), "", "--key must not be empty"),
        "bad bedrock": (env, ("--user", user, "--provider", "bedrock", "--key", "AKIA:sk-secret-openai"), None,
                        "accessKeyId"),
        "no database": (no_database, ("--user", user, *ok), None, "no database"),
    }
    before = await pool.fetch("SELECT * FROM byok_api_keys ORDER BY id")
    results = byok_add(*((env, args, stdin) for env, args, stdin, _ in cases.values()))
    for (name, (*_, expected)), result in zip(cases.items(), results, strict=True):
        assert expected in result.error, (name, result.error)
        assert "sk-secret-openai" not in result.stderr, name
    assert await pool.fetch("SELECT * FROM byok_api_keys ORDER BY id") == before
