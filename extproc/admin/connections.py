"""Where the operator commands' database, Redis and token signing secret are, and opening them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.exceptions import RedisError

from extproc.accounting.outbox import Outbox
from extproc.admin.inputs import AdminError
from extproc.db import POSTGRES_ERRORS, Connection, init_connection
from extproc.db.migrate import migrate
from extproc.pricing.catalogue import PRICED_PROVIDERS
from extproc.settings import DEFAULT_PROVIDERS, Provider, Settings

NO_DATABASE = "no database: set DATABASE_URL or start the stack with `make run`"
NO_REDIS = "no Redis: set REDIS_URL or start the stack with `make run`"
NO_SECRET = (
    "no token signing secret: set NEXTAUTH_SECRET or start the stack with `make run` "
    "(it writes <data_dir>/nextauth_secret)"
)


def _data_dir(settings: Settings) -> Path:
    return Path(settings.data_dir).expanduser().resolve()


def _resolve_url(configured: SecretStr | None, name: str, settings: Settings, missing: str) -> tuple[str, str]:
    """A dependency's URL and where it came from (for messages; the URL itself may hold a
    password): the setting, else the running local stack's `stack.json`."""
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value(), name.upper()
    state_file = _data_dir(settings) / "stack.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = None
    url = state.get(name) if isinstance(state, dict) else None
    if isinstance(url, str) and url:
        return url, str(state_file)
    raise AdminError(missing)


def resolve_database_url(settings: Settings) -> tuple[str, str]:
    return _resolve_url(settings.database_url, "database_url", settings, NO_DATABASE)


def resolve_redis_url(settings: Settings) -> tuple[str, str]:
    return _resolve_url(settings.redis_url, "redis_url", settings, NO_REDIS)


def resolve_nextauth_secret(settings: Settings) -> str:
    if settings.nextauth_secret is not None and settings.nextauth_secret.get_secret_value():
        return settings.nextauth_secret.get_secret_value()
    secret_file = _data_dir(settings) / "nextauth_secret"
    try:
        secret = secret_file.read_text().strip()
    except OSError:
        secret = ""
    if not secret:
        raise AdminError(NO_SECRET)
    return secret


class DatabaseUnavailable(Exception):
    """The database could not be reached or failed: exit 1."""


class UpstreamUnavailable(DatabaseUnavailable):
    """No provider answered (`catalogue refresh`): exit 1."""


def resolve_priced_providers(settings: Settings) -> tuple[Provider, ...]:
    """The providers whose `/models` the price catalogue reads, where the ext_proc finds them:
    the settings, or, when they name no provider key (so the local stack points every provider
    at its mock upstream, extproc/local/stack.py), the running stack's mock."""
    providers = [settings.providers[key] for key in PRICED_PROVIDERS if key in settings.routable_providers]
    if any(p.api_key is not None for p in providers):
        return tuple(providers)
    try:
        state = json.loads((_data_dir(settings) / "stack.json").read_text())
    except (OSError, ValueError):
        return tuple(providers)
    mock = state.get("mock_upstream_url") if isinstance(state, dict) else None
    if not isinstance(mock, str) or not mock:
        return tuple(providers)
    return tuple(
        p.model_copy(update={"api_url": f"{mock.rstrip('/')}/{p.id}{urlsplit(DEFAULT_PROVIDERS[p.id]['api_url']).path}"})
        for p in providers
    )


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Connection]:
    """One migrated connection to the resolved database."""
    url, source = resolve_database_url(settings)
    try:
        connection = await asyncpg.connect(url, timeout=10)
    except POSTGRES_ERRORS as error:
        raise DatabaseUnavailable(
            f"cannot connect to the database (from {source}): {type(error).__name__}: {error}"
        ) from None
    try:
        await init_connection(connection)
        await migrate(connection)
        yield connection
    finally:
        await connection.close()



@asynccontextmanager
async def open_outbox(settings: Settings) -> AsyncIterator[Outbox]:
    """The accounting outbox in the resolved Redis (its dead letters, for the `outbox` commands)."""
    url, source = resolve_redis_url(settings)
    client = aioredis.from_url(url, socket_connect_timeout=10, socket_timeout=30)
    try:
        await client.ping()
    except (RedisError, OSError) as error:
        await client.aclose()
        raise DatabaseUnavailable(f"cannot connect to Redis (from {source}): {type(error).__name__}: {error}") from None
    try:
        yield Outbox(client, settings.ledger_consumer)
    finally:
        await client.aclose()

