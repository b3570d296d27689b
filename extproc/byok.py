"""Bring-your-own-key (behaviour.md 3.3): which BYOK providers serve a model, the customer's
stored keys for them, and the AES-256-GCM format those keys are stored in.

The storage format is the one the web app writes into ``byok_api_keys.encrypted_api_key``,
so rows it wrote decrypt here and rows written here decrypt there: a JSON object
``{"iv", "data", "authTag"}``, each standard base64; AES-256-GCM with the 32 bytes of
base64-decoded ``BYOK_ENCRYPTION_KEY`` used directly as the key (no KDF), a random 12-byte
IV, a 16-byte tag kept apart from the ciphertext, no associated data, UTF-8 plaintext.

The plaintext is the provider's API key, except for ``bedrock`` where it is the JSON
``{"accessKeyId", "secretAccessKey", "region"}``. Nothing here logs or puts a key, plain or
encrypted, into an exception message.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from extproc.db import Connection
from extproc.db.cache import TtlCache, fetch
from extproc.settings import Settings
from extproc.shaping.provider_rules import AWS_CREDENTIALS_ERROR, ByokKey, valid_aws_credentials

__all__ = [
    "BYOK_PROVIDER_IDS",
    "CODESTRAL_MODEL_PREFIX",
    "ENCRYPTION_KEY_ENV",
    "MODEL_PROVIDERS_CACHE_SECONDS",
    "VERCEL_BYOK_PROVIDER_IDS",
    "ByokDecryptionError",
    "ByokDirectory",
    "ByokKey",
    "decrypt_api_key",
    "encrypt_api_key",
    "encryption_key_from_env",
    "parse_aws_credentials",
    "parse_encryption_key",
    "to_byok_key",
    "upsert_key",
]

logger = logging.getLogger(__name__)

# Contract 3.3: the providers whose keys Vercel's AI Gateway accepts, then the autocomplete one.
VERCEL_BYOK_PROVIDER_IDS: tuple[str, ...] = (
    "anthropic",
    "bedrock",
    "google",  # Google AI Studio
    "openai",
    "minimax",
    "mistral",
    "xai",
    "zai",
)
BYOK_PROVIDER_IDS: tuple[str, ...] = (*VERCEL_BYOK_PROVIDER_IDS, "codestral")
CODESTRAL_MODEL_PREFIX = "mistralai/codestral"
# How long the newest `models_by_provider` Vercel map is trusted (R revalidates every 300 s).
MODEL_PROVIDERS_CACHE_SECONDS = 300.0
ENCRYPTION_KEY_ENV = "BYOK_ENCRYPTION_KEY"

_KEY_BYTES = 32  # AES-256
_IV_BYTES = 12
_TAG_BYTES = 16


class ByokDecryptionError(Exception):
    """A stored key that cannot be read: tampered, malformed, or encrypted with another key."""


# ---------------------------------------------------------------------------------------
# The encryption format.


def parse_encryption_key(b64: str) -> bytes:
    """The AES-256 key from its base64 text (``BYOK_ENCRYPTION_KEY``): exactly 32 bytes."""
    text = b64.strip() if isinstance(b64, str) else ""
    if not text:
        raise ValueError(f"{ENCRYPTION_KEY_ENV} is empty: it must be the base64 encoding of 32 random bytes")
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"{ENCRYPTION_KEY_ENV} is not valid base64: it must be the base64 encoding of 32 random bytes"
        ) from None
    if len(key) != _KEY_BYTES:
        raise ValueError(
            f"{ENCRYPTION_KEY_ENV} must decode to exactly {_KEY_BYTES} bytes (AES-256), got {len(key)} bytes"
        )
    return key


def encryption_key_from_env(environ: Mapping[str, str] | None = None) -> bytes:
    """``BYOK_ENCRYPTION_KEY`` from the environment, decoded; ValueError when unset or invalid."""
    value = (os.environ if environ is None else environ).get(ENCRYPTION_KEY_ENV)
    if not value:
        raise ValueError(f"{ENCRYPTION_KEY_ENV} is not set: it must be the base64 encoding of 32 random bytes")
    return parse_encryption_key(value)


def _aead(key: bytes) -> AESGCM:
    # AESGCM also takes 16- and 24-byte keys; the stored format is AES-256 only.
    if not isinstance(key, (bytes, bytearray)) or len(key) != _KEY_BYTES:
        raise ValueError(f"the BYOK encryption key must be exactly {_KEY_BYTES} bytes (AES-256)")
    return AESGCM(bytes(key))


def encrypt_api_key(plaintext: str, key: bytes) -> dict[str, str]:
    """``{"iv", "data", "authTag"}`` (base64) of `plaintext` under `key`, with a fresh random IV."""
    iv = os.urandom(_IV_BYTES)
    sealed = _aead(key).encrypt(iv, plaintext.encode("utf-8"), None)  # ciphertext || tag
    return {
        "iv": base64.b64encode(iv).decode("ascii"),
        "data": base64.b64encode(sealed[:-_TAG_BYTES]).decode("ascii"),
        "authTag": base64.b64encode(sealed[-_TAG_BYTES:]).decode("ascii"),
    }


def _field(payload: Mapping[str, Any], name: str, size: int | None = None) -> bytes:
    value = payload.get(name)
    if not isinstance(value, str):
        raise ByokDecryptionError(f"encrypted key has no {name!r} string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ByokDecryptionError(f"encrypted key field {name!r} is not valid base64") from None
    if size is not None and len(raw) != size:
        raise ByokDecryptionError(f"encrypted key field {name!r} must be {size} bytes, got {len(raw)}")
    return raw


def decrypt_api_key(payload: Mapping[str, Any], key: bytes) -> str:
    """The plaintext of a stored ``{"iv", "data", "authTag"}``; ByokDecryptionError when the
    payload is malformed, was tampered with, or was encrypted under another key."""
    aead = _aead(key)  # a wrong-sized key is a configuration error (ValueError), not bad data
    if not isinstance(payload, Mapping):
        raise ByokDecryptionError("encrypted key is not a JSON object")
    iv = _field(payload, "iv", _IV_BYTES)
    data = _field(payload, "data")
    tag = _field(payload, "authTag", _TAG_BYTES)
    try:
        plain = aead.decrypt(iv, data + tag, None)
    except InvalidTag:
        raise ByokDecryptionError("encrypted key failed authentication (tampered, or another encryption key)") from None
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        raise ByokDecryptionError("decrypted key is not UTF-8") from None


def parse_aws_credentials(plaintext: str) -> dict[str, Any]:
    """A bedrock key: a JSON object with string accessKeyId, secretAccessKey and region.

    Other members are kept, as R passes the parsed object on to Vercel as it is."""
    try:
        parsed = orjson.loads(plaintext)
    except orjson.JSONDecodeError:
        raise ByokDecryptionError(AWS_CREDENTIALS_ERROR) from None
    if not valid_aws_credentials(parsed):
        raise ByokDecryptionError(AWS_CREDENTIALS_ERROR)
    return parsed


def to_byok_key(provider_id: str, plaintext: str) -> ByokKey:
    """The decrypted value of one row as the request shaping needs it."""
    if provider_id not in BYOK_PROVIDER_IDS:
        raise ValueError(f"unknown BYOK provider id: {provider_id!r}")
    if provider_id == "bedrock":
        return ByokKey(provider_id=provider_id, api_key=None, bedrock=parse_aws_credentials(plaintext))
    return ByokKey(provider_id=provider_id, api_key=plaintext, bedrock=None)


# ---------------------------------------------------------------------------------------
# Reading: which providers serve a model, and the owner's keys.

_NEWEST_VERCEL_SQL = "SELECT vercel FROM models_by_provider ORDER BY id DESC LIMIT 1"
# One owner's enabled keys, every provider: at most one row per provider (unique), so a
# handful of rows; the provider filter is applied per request on the cached rows.
_USER_KEYS_SQL = """
SELECT provider_id, encrypted_api_key FROM byok_api_keys
WHERE kilo_user_id = $1 AND is_enabled ORDER BY created_at, id
"""
_ORG_KEYS_SQL = """
SELECT provider_id, encrypted_api_key FROM byok_api_keys
WHERE organization_id = $1 AND is_enabled ORDER BY created_at, id
"""


def _byok_tags(entry: Any) -> tuple[str, ...]:
    """The BYOK-capable Vercel provider tags of one model entry, first occurrence order."""
    endpoints = entry.get("endpoints") if isinstance(entry, dict) else None
    if not isinstance(endpoints, list):
        return ()
    tags: dict[str, None] = {}
    for endpoint in endpoints:
        tag = endpoint.get("tag") if isinstance(endpoint, dict) else None
        # R filters with the Vercel schema: `codestral` is never served through this map.
        if tag in VERCEL_BYOK_PROVIDER_IDS:
            tags[tag] = None
    return tuple(tags)


def _providers_by_model(vercel: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(vercel, dict):
        logger.error("no Vercel model metadata in models_by_provider; no model has BYOK providers")
        return {}
    providers = {}
    for model_id, entry in vercel.items():
        tags = _byok_tags(entry)
        if tags:
            providers[model_id] = tags
    return providers


@dataclass(frozen=True, slots=True)
class _StoredKey:
    provider_id: str
    encrypted: Any  # the jsonb payload, still encrypted


class ByokDirectory:
    """BYOK lookups in Postgres, with the Directory's timeout and outage conventions: a query
    gives up after `directory_query_timeout_seconds`; while Postgres is down cached answers are
    served up to `directory_stale_seconds` past their freshness, and a lookup with nothing to
    fall back on raises `DirectoryUnavailable`.

    The owner's keys are cached like users and memberships (`directory_cache_seconds`, 5 s by
    default) because the lookup runs on every authenticated request for a model that has BYOK
    providers (most popular ones do), and R's uncached query per request is a round trip this
    gateway's latency budget has no room for. The price is the same as for a revoked token: a
    key added, replaced or disabled takes up to that long to be used or dropped. Only the
    encrypted payloads are cached; each request decrypts the few it needs (microseconds), so
    plaintext keys do not outlive the request that uses them.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        models_cache_seconds: float = MODEL_PROVIDERS_CACHE_SECONDS,
    ) -> None:
        self.pool = pool
        self.timeout = settings.directory_query_timeout_seconds
        stale = settings.directory_stale_seconds
        # One entry: the newest Vercel map, reduced to model id -> BYOK provider ids.
        self._models: TtlCache[str, dict[str, tuple[str, ...]]] = TtlCache(
            "byok_models", models_cache_seconds, stale, max_entries=1
        )
        self._keys: TtlCache[tuple[str, str], tuple[_StoredKey, ...]] = TtlCache(
            "byok_keys", settings.directory_cache_seconds, stale
        )

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await fetch(self.pool, self.timeout, sql, *args)

    async def providers_for_model(self, model_lower: str, vercel_model_id: str) -> list[str]:
        """Contract 3.3: the BYOK provider ids that can serve the model, in the map's order.

        `model_lower` is the requested model id, lowercased; `vercel_model_id` is its Vercel
        id (contract 3.6, mapped by the caller)."""
        if model_lower.startswith(CODESTRAL_MODEL_PREFIX):
            return ["codestral"]

        async def load() -> dict[str, tuple[str, ...]]:
            rows = await self._fetch(_NEWEST_VERCEL_SQL)
            return _providers_by_model(rows[0]["vercel"] if rows else None)

        return list((await self._models.get("vercel", load)).get(vercel_model_id, ()))

    async def keys(
        self,
        provider_ids: Sequence[str],
        *,
        user_id: str,
        organization_id: str | None,
        encryption_key: bytes,
    ) -> list[ByokKey]:
        """Contract 3.3: the enabled keys for these providers, oldest first, decrypted; the
        organisation's when `organization_id` is set, else the user's (never both).

        Raises ByokDecryptionError when a matching row cannot be decrypted (R fails the request
        too), DirectoryUnavailable when Postgres cannot answer and nothing is cached."""
        wanted = frozenset(provider_ids) & frozenset(BYOK_PROVIDER_IDS)
        if not wanted:
            return []
        arg: uuid.UUID | str
        if organization_id is not None:
            try:
                org = uuid.UUID(organization_id)
            except ValueError:
                return []  # not a UUID: no organisation has it
            owner: tuple[str, str] = ("org", str(org))
            sql, arg = _ORG_KEYS_SQL, org
        else:
            owner = ("user", user_id)
            sql, arg = _USER_KEYS_SQL, user_id

        async def load() -> tuple[_StoredKey, ...]:
            rows = await self._fetch(sql, arg)
            return tuple(_StoredKey(row["provider_id"], row["encrypted_api_key"]) for row in rows)

        keys = []
        for row in await self._keys.get(owner, load):
            if row.provider_id not in wanted:
                continue
            try:
                keys.append(to_byok_key(row.provider_id, decrypt_api_key(row.encrypted, encryption_key)))
            except ByokDecryptionError as error:
                logger.error(
                    "a stored BYOK key cannot be decrypted",
                    extra={
                        "owner": owner[0],
                        "owner_id": owner[1],
                        "provider_id": row.provider_id,
                        "error": str(error),
                    },
                )
                raise
        return keys


# ---------------------------------------------------------------------------------------
# Writing (the operator command `llm-gateway byok add`).


async def upsert_key(
    conn: Connection,
    *,
    provider_id: str,
    encrypted: Mapping[str, str],
    user_id: str | None = None,
    organization_id: str | None = None,
) -> str:
    """Store (or replace, and re-enable) the owner's key for a provider; returns the row id.

    Exactly one of `user_id` / `organization_id`. A replaced key keeps its row, id and
    `created_at` (the order keys are offered in)."""
    if (user_id is None) == (organization_id is None):
        raise ValueError("exactly one of user_id and organization_id")
    column = "kilo_user_id" if user_id is not None else "organization_id"
    owner = user_id if user_id is not None else organization_id
    cast = "" if user_id is not None else "::uuid"
    row_id = await conn.fetchval(
        f"INSERT INTO byok_api_keys ({column}, provider_id, encrypted_api_key, is_enabled, created_by)"
        f" VALUES ($1{cast}, $2, $3::jsonb, true, $4)"
        f" ON CONFLICT ({column}, provider_id) DO UPDATE SET encrypted_api_key = EXCLUDED.encrypted_api_key,"
        " is_enabled = true, updated_at = now()"
        " RETURNING id",
        owner,
        provider_id,
        orjson.dumps(dict(encrypted)).decode(),
        user_id,
    )
    return str(row_id)
