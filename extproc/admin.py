"""Operator commands of `llm-gateway`: users, tokens, credits, organisations and BYOK keys.

Every command prints one JSON object on stdout and exits 0, or prints ``{"error": ...}`` on
stderr and exits 2 on bad input (1 when the database itself fails) without changing anything.
Inputs are validated before connecting; each command uses one connection, applies the
migrations first (so an empty database works) and does its writes in one transaction.

Money is integer microdollars. USD arguments are plain decimals converted exactly: more than
six decimals is an error, never a rounding.

The database is ``DATABASE_URL`` if set, else the running local stack's
``<data_dir>/stack.json``; the signing secret for tokens is ``NEXTAUTH_SECRET`` if set, else
the file ``<data_dir>/nextauth_secret`` that the local stack writes. BYOK keys are encrypted
with ``BYOK_ENCRYPTION_KEY`` (base64 of 32 bytes), which the command never prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncpg
import orjson
import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.exceptions import RedisError

from extproc.accounting.outbox import Outbox
from extproc.db import POSTGRES_ERRORS, Connection, init_connection
from extproc.db.migrate import migrate
from extproc.money import MICRODOLLARS_PER_USD, parse_usd
from extproc.settings import Settings, load_settings

__all__ = [
    "AdminError",
    "ROLES",
    "PLANS",
    "add_credits",
    "add_member",
    "add_subcommands",
    "create_org",
    "create_user",
    "normalize_email",
    "open_database",
    "parse_byok_provider",
    "parse_org_id",
    "parse_settings_json",
    "resolve_database_url",
    "resolve_nextauth_secret",
    "rotate_pepper",
    "set_blocked",
    "set_daily_limit",
    "set_org_settings",
    "usd_to_exact_microdollars",
    "user_pepper",
]

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1

ROLES = ("owner", "member", "billing_manager")
PLANS = ("teams", "enterprise")
# The top-level words of the operator commands (cli.py makes their usage errors JSON too).
COMMAND_GROUPS = ("user", "token", "credits", "org", "byok", "usage", "outbox")

NO_DATABASE = "no database: set DATABASE_URL or start the stack with `make run`"
NO_REDIS = "no Redis: set REDIS_URL or start the stack with `make run`"
NO_SECRET = (
    "no token signing secret: set NEXTAUTH_SECRET or start the stack with `make run` "
    "(it writes <data_dir>/nextauth_secret)"
)
_PLAIN_DECIMAL = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)
_EMAIL = re.compile(r"[^@\s]+@[^@\s.][^@\s]*\.[^@\s.][^@\s]*")


class AdminError(Exception):
    """Bad input (unknown id, invalid value): exit 2, nothing changed."""


# ---------------------------------------------------------------------------------------
# Input validation (pure; runs before any connection is made).


def usd_to_exact_microdollars(text: str, *, what: str = "USD amount", allow_zero: bool = True) -> int:
    """Exact microdollars of a USD string: "0.000001" -> 1, "10" -> 10_000_000.

    Negative, non-numeric (including exponents and NaN) or more than 6 decimals is an error.
    """
    value = text.strip() if isinstance(text, str) else ""
    negative = value.startswith("-")
    digits = value[1:] if negative else value.removeprefix("+")
    if not _PLAIN_DECIMAL.fullmatch(digits):
        raise AdminError(f"{what} must be a plain decimal number of US dollars such as 10 or 0.5, got {text!r}")
    amount = parse_usd(digits)
    if amount is None:
        raise AdminError(f"{what} is too large for a microdollar amount, got {text!r}")
    if negative and amount != 0:
        raise AdminError(f"{what} must not be negative, got {text!r}")
    micro = amount * MICRODOLLARS_PER_USD  # exact: at most 19 significant digits
    if micro != micro.to_integral_value():
        raise AdminError(f"{what} has more than 6 decimals (1 microdollar = 0.000001 USD), got {text!r}")
    if micro == 0 and not allow_zero:
        raise AdminError(f"{what} must be greater than zero, got {text!r}")
    return int(micro)


def normalize_email(text: str) -> str:
    email = text.strip().lower()
    if not _EMAIL.fullmatch(email):
        raise AdminError(f"invalid email address: {text!r}")
    return email


def parse_org_id(text: str) -> str:
    try:
        return str(uuid.UUID(text.strip()))
    except (ValueError, AttributeError):
        raise AdminError(f"invalid organization id (not a UUID): {text!r}") from None


def parse_user_id(text: str) -> str:
    user_id = text.strip()
    if not user_id:
        raise AdminError("the user id must not be empty")
    return user_id


def parse_settings_json(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise AdminError(f"invalid JSON for the organization settings: {error}") from None
    if not isinstance(value, dict):
        raise AdminError(f"the organization settings must be a JSON object, got {type(value).__name__}")
    return value


def parse_nonempty(text: str, what: str) -> str:
    value = text.strip()
    if not value:
        raise AdminError(f"{what} must not be empty")
    return value


def parse_byok_provider(text: str, known: tuple[str, ...]) -> str:
    provider = text.strip().lower()
    if provider not in known:
        raise AdminError(f"unknown BYOK provider {text!r}: expected one of {', '.join(known)}")
    return provider


# ---------------------------------------------------------------------------------------
# Where the database and the signing secret are.


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


# ---------------------------------------------------------------------------------------
# Operations: each takes a connection and validated values; multi-row writes are one transaction.


async def _require_user(conn: Connection, user_id: str, *, lock: bool = False) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT id, google_user_email, api_token_pepper, blocked_reason, microdollars_used,"
        " total_microdollars_acquired FROM kilocode_users WHERE id = $1" + (" FOR UPDATE" if lock else ""),
        user_id,
    )
    if row is None:
        raise AdminError(f"unknown user id: {user_id!r}")
    return row


def _returned(row: asyncpg.Record | None) -> asyncpg.Record:
    """The row a statement always returns (INSERT or aggregate, or an UPDATE of a locked row)."""
    if row is None:
        raise RuntimeError("the statement returned no row")
    return row


async def _require_org(conn: Connection, org_id: str) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT id, name, plan FROM organizations WHERE id = $1::uuid", org_id)
    if row is None:
        raise AdminError(f"unknown organization id: {org_id!r}")
    return row


async def create_user(
    conn: Connection,
    email: str,
    *,
    credits_microdollars: int = 0,
    is_free: bool = False,
    description: str = "llm-gateway user create",
) -> dict[str, Any]:
    """A new user (uuid4 id, no pepper) with its initial credits; returns id, email, credits."""
    user_id = str(uuid.uuid4())
    async with conn.transaction():
        taken = await conn.fetchval(
            "SELECT id FROM kilocode_users WHERE lower(google_user_email) = $1", email
        )
        if taken is not None:
            raise AdminError(f"a user with email {email!r} already exists: {taken}")
        try:
            await conn.execute(
                "INSERT INTO kilocode_users (id, google_user_email, stripe_customer_id,"
                " total_microdollars_acquired) VALUES ($1, $2, '', $3)",
                user_id,
                email,
                credits_microdollars,
            )
        except asyncpg.UniqueViolationError:
            raise AdminError(f"a user with email {email!r} already exists") from None
        if credits_microdollars > 0:
            await conn.execute(
                "INSERT INTO credit_transactions (kilo_user_id, amount_microdollars,"
                " original_baseline_microdollars_used, is_free, description)"
                " VALUES ($1, $2, 0, $3, $4)",
                user_id,
                credits_microdollars,
                is_free,
                description,
            )
    return {"id": user_id, "email": email, "credits_microdollars": credits_microdollars}


async def user_pepper(conn: Connection, user_id: str) -> str | None:
    pepper: str | None = (await _require_user(conn, user_id))["api_token_pepper"]
    return pepper


async def add_credits(
    conn: Connection,
    user_id: str,
    amount_microdollars: int,
    *,
    is_free: bool = False,
    description: str = "llm-gateway credits add",
) -> dict[str, Any]:
    async with conn.transaction():
        user = await _require_user(conn, user_id, lock=True)
        transaction_id = await conn.fetchval(
            "INSERT INTO credit_transactions (kilo_user_id, amount_microdollars,"
            " original_baseline_microdollars_used, is_free, description)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id",
            user_id,
            amount_microdollars,
            user["microdollars_used"],
            is_free,
            description,
        )
        row = _returned(await conn.fetchrow(
            "UPDATE kilocode_users SET total_microdollars_acquired = total_microdollars_acquired + $2,"
            " updated_at = now() WHERE id = $1"
            " RETURNING total_microdollars_acquired, microdollars_used",
            user_id,
            amount_microdollars,
        ))
    return {
        "user_id": user_id,
        "transaction_id": str(transaction_id),
        "amount_microdollars": amount_microdollars,
        "total_microdollars_acquired": row["total_microdollars_acquired"],
        "balance_microdollars": row["total_microdollars_acquired"] - row["microdollars_used"],
    }


async def set_blocked(conn: Connection, user_id: str, reason: str | None) -> dict[str, Any]:
    """Block (non-empty reason) or unblock (None) a user."""
    async with conn.transaction():
        await _require_user(conn, user_id, lock=True)
        await conn.execute(
            "UPDATE kilocode_users SET blocked_reason = $2, updated_at = now() WHERE id = $1",
            user_id,
            reason,
        )
    return {"user_id": user_id, "blocked_reason": reason}


async def rotate_pepper(conn: Connection, user_id: str) -> str:
    """A new random `api_token_pepper`: every token minted before it stops authenticating."""
    pepper = str(uuid.uuid4())
    async with conn.transaction():
        await _require_user(conn, user_id, lock=True)
        await conn.execute(
            "UPDATE kilocode_users SET api_token_pepper = $2, updated_at = now() WHERE id = $1",
            user_id,
            pepper,
        )
    return pepper


async def create_org(
    conn: Connection, name: str, *, plan: str = "teams", credits_microdollars: int = 0
) -> dict[str, Any]:
    org_id = str(uuid.uuid4())
    row = _returned(await conn.fetchrow(
        "INSERT INTO organizations (id, name, plan, total_microdollars_acquired, microdollars_balance)"
        " VALUES ($1::uuid, $2, $3, $4, $4) RETURNING name, plan, total_microdollars_acquired",
        org_id,
        name,
        plan,
        credits_microdollars,
    ))
    return {
        "id": org_id,
        "name": row["name"],
        "plan": row["plan"],
        "total_microdollars_acquired": row["total_microdollars_acquired"],
    }


async def add_member(conn: Connection, org_id: str, user_id: str, role: str = "member") -> dict[str, Any]:
    async with conn.transaction():
        await _require_org(conn, org_id)
        await _require_user(conn, user_id)
        await conn.execute(
            "INSERT INTO organization_memberships (organization_id, kilo_user_id, role)"
            " VALUES ($1::uuid, $2, $3)"
            " ON CONFLICT (organization_id, kilo_user_id)"
            " DO UPDATE SET role = EXCLUDED.role, updated_at = now()",
            org_id,
            user_id,
            role,
        )
    return {"organization_id": org_id, "user_id": user_id, "role": role}


async def set_org_settings(conn: Connection, org_id: str, settings: dict[str, Any]) -> dict[str, Any]:
    async with conn.transaction():
        await _require_org(conn, org_id)
        stored = await conn.fetchval(
            "UPDATE organizations SET settings = $2::jsonb, updated_at = now()"
            " WHERE id = $1::uuid RETURNING settings::text",
            org_id,
            orjson.dumps(settings).decode(),
        )
    return {"organization_id": org_id, "settings": orjson.loads(stored)}


async def set_daily_limit(
    conn: Connection, org_id: str, user_id: str, limit_microdollars: int
) -> dict[str, Any]:
    async with conn.transaction():
        await _require_org(conn, org_id)
        await _require_user(conn, user_id)
        await conn.execute(
            "INSERT INTO organization_user_limits (organization_id, kilo_user_id, limit_type, microdollar_limit)"
            " VALUES ($1::uuid, $2, 'daily', $3)"
            " ON CONFLICT (organization_id, kilo_user_id, limit_type)"
            " DO UPDATE SET microdollar_limit = EXCLUDED.microdollar_limit, updated_at = now()",
            org_id,
            user_id,
            limit_microdollars,
        )
    return {"organization_id": org_id, "user_id": user_id, "microdollar_limit": limit_microdollars}


# ---------------------------------------------------------------------------------------
# The commands: validate, resolve, connect, do, report.


def _mint(user_id: str, secret: str, *, pepper: str | None) -> str:
    from extproc.auth.tokens import (
        mint_token as mint,  # pyjwt: only the commands that mint pay for it
    )

    return mint(user_id, secret, pepper=pepper)

Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, dict[str, Any]]]


async def _user_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    email = normalize_email(args.email)
    credits = usd_to_exact_microdollars(args.credits_usd, what="--credits-usd")
    secret = resolve_nextauth_secret(settings)
    async with open_database(settings) as conn:
        user = await create_user(conn, email, credits_microdollars=credits, is_free=args.free)
    return {**user, "token": _mint(user["id"], secret, pepper=None)}


async def _user_block(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    user_id = parse_user_id(args.user)
    reason = parse_nonempty(args.reason, "--reason")
    async with open_database(settings) as conn:
        return await set_blocked(conn, user_id, reason)


async def _user_unblock(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    user_id = parse_user_id(args.user)
    async with open_database(settings) as conn:
        return await set_blocked(conn, user_id, None)


async def _user_revoke_tokens(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    user_id = parse_user_id(args.user)
    secret = resolve_nextauth_secret(settings)
    async with open_database(settings) as conn:
        pepper = await rotate_pepper(conn, user_id)
    return {"user_id": user_id, "token": _mint(user_id, secret, pepper=pepper)}


async def _token_mint(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    user_id = parse_user_id(args.user)
    secret = resolve_nextauth_secret(settings)
    async with open_database(settings) as conn:
        pepper = await user_pepper(conn, user_id)
    return {"user_id": user_id, "token": _mint(user_id, secret, pepper=pepper)}


async def _credits_add(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    user_id = parse_user_id(args.user)
    amount = usd_to_exact_microdollars(args.usd, what="--usd", allow_zero=False)
    description = parse_nonempty(args.description, "--description")
    async with open_database(settings) as conn:
        return await add_credits(conn, user_id, amount, is_free=args.free, description=description)


async def _org_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    name = parse_nonempty(args.name, "--name")
    credits = usd_to_exact_microdollars(args.credits_usd, what="--credits-usd")
    async with open_database(settings) as conn:
        return await create_org(conn, name, plan=args.plan, credits_microdollars=credits)


async def _org_add_member(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    org_id = parse_org_id(args.org)
    user_id = parse_user_id(args.user)
    async with open_database(settings) as conn:
        return await add_member(conn, org_id, user_id, args.role)


async def _org_settings(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    org_id = parse_org_id(args.org)
    value = parse_settings_json(args.json)
    async with open_database(settings) as conn:
        return await set_org_settings(conn, org_id, value)


async def _org_daily_limit(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    org_id = parse_org_id(args.org)
    user_id = parse_user_id(args.user)
    limit = usd_to_exact_microdollars(args.usd, what="--usd")
    async with open_database(settings) as conn:
        return await set_daily_limit(conn, org_id, user_id, limit)


async def _byok_add(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from extproc import byok  # cryptography: only this command pays for it

    user_id = parse_user_id(args.user) if args.user is not None else None
    org_id = parse_org_id(args.org) if args.org is not None else None
    provider = parse_byok_provider(args.provider, byok.BYOK_PROVIDER_IDS)
    key = parse_nonempty(sys.stdin.read() if args.key == "-" else args.key, "--key")
    if provider == "bedrock":
        try:
            byok.parse_aws_credentials(key)
        except byok.ByokDecryptionError:
            raise AdminError(
                "--key of a bedrock key must be the JSON object"
                ' {"accessKeyId": ..., "secretAccessKey": ..., "region": ...} (strings)'
            ) from None
    try:
        encryption_key = byok.encryption_key_from_env()
    except ValueError as error:
        raise AdminError(str(error)) from None
    encrypted = byok.encrypt_api_key(key, encryption_key)
    async with open_database(settings) as conn:
        async with conn.transaction():
            if user_id is not None:
                await _require_user(conn, user_id)
            elif org_id is not None:
                await _require_org(conn, org_id)
            row_id = await byok.upsert_key(
                conn, provider_id=provider, encrypted=encrypted, user_id=user_id, organization_id=org_id
            )
    owner = {"user": user_id} if user_id is not None else {"org": org_id}
    return {"id": row_id, "provider": provider, "owner": owner}


_USAGE_ROWS = """
SELECT u.id, u.created_at, u.provider, u.model, u.requested_model, u.inference_provider, u.cost,
       u.input_tokens, u.output_tokens, u.cache_hit_tokens, u.cache_write_tokens, u.has_error,
       u.organization_id, m.message_id, m.streamed, m.cancelled, m.status_code, m.market_cost
FROM microdollar_usage u LEFT JOIN microdollar_usage_metadata m ON m.id = u.id
WHERE u.kilo_user_id = $1 ORDER BY u.created_at DESC LIMIT $2
"""
_USAGE_TOTALS = """
SELECT count(*) AS requests, COALESCE(sum(cost), 0) AS cost_microdollars,
       COALESCE(sum(input_tokens), 0) AS input_tokens, COALESCE(sum(output_tokens), 0) AS output_tokens,
       COALESCE(sum(cache_hit_tokens), 0) AS cache_hit_tokens
FROM microdollar_usage WHERE kilo_user_id = $1
"""


async def usage_report(conn: Connection, user_id: str, limit: int) -> dict[str, Any]:
    """The ledger as a user's bill shows it: totals over every row, and the newest rows."""
    user = await _require_user(conn, user_id)
    totals = dict(_returned(await conn.fetchrow(_USAGE_TOTALS, user_id)))
    rows: list[dict[str, Any]] = [
        {key: (str(value) if key in ("id", "organization_id") and value is not None else value) for key, value in row.items()}
        for row in await conn.fetch(_USAGE_ROWS, user_id, limit)
    ]
    for row in rows:
        row["created_at"] = row["created_at"].isoformat()
    return {
        "user_id": user_id,
        "microdollars_used": user["microdollars_used"],
        "balance_microdollars": user["total_microdollars_acquired"] - user["microdollars_used"],
        "totals": {key: int(value) for key, value in totals.items()},
        "rows": rows,
    }


async def _usage(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    user_id = parse_user_id(args.user)
    if args.limit < 1:
        raise AdminError("--limit must be at least 1")
    async with open_database(settings) as conn:
        return await usage_report(conn, user_id, args.limit)


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


async def _outbox_dead_letters(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async with open_outbox(settings) as outbox:
        letters = [letter.summary() for letter in await outbox.dead_letters()]
    return {"count": len(letters), "dead_letters": letters}


async def _outbox_replay(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from extproc.accounting.dead_letters import replay_all

    async with open_outbox(settings) as outbox, open_database(settings) as conn:
        try:
            return await replay_all(outbox, conn, args.entry or None)
        except LookupError as error:
            raise AdminError(str(error)) from None


def _print_error(message: str) -> None:
    sys.stderr.buffer.write(orjson.dumps({"error": message}) + b"\n")
    sys.stderr.flush()


def usage_error(message: str) -> NoReturn:
    """An argparse usage error of an operator command, reported like any other bad input."""
    _print_error(message)
    raise SystemExit(EXIT_BAD_INPUT)


def run(command: Command, args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except (ValueError, OSError) as error:  # pydantic's ValidationError is a ValueError
        _print_error(f"invalid configuration: {error}")
        return EXIT_BAD_INPUT
    try:
        result = asyncio.run(command(args, settings))
    except AdminError as error:
        _print_error(str(error))
        return EXIT_BAD_INPUT
    except asyncpg.DataError as error:  # a value Postgres refuses (out of range, bad text)
        _print_error(f"invalid value: {error}")
        return EXIT_BAD_INPUT
    except DatabaseUnavailable as error:
        _print_error(str(error))
        return EXIT_FAILURE
    except POSTGRES_ERRORS as error:
        _print_error(f"database error: {type(error).__name__}: {error}")
        return EXIT_FAILURE
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    sys.stdout.flush()
    return 0


def _handler(command: Command) -> Callable[[argparse.Namespace], int]:
    return lambda args: run(command, args)


# cli.py's parser class: `add_subparsers` makes parsers of the caller's class. The `json_errors`
# flag set below is that class's attribute, which mypy cannot see through this bound.
_Parser = TypeVar("_Parser", bound=argparse.ArgumentParser)


def add_subcommands(commands: argparse._SubParsersAction[_Parser]) -> None:
    """Register `user`, `token`, `credits`, `org` and `byok` on the `llm-gateway` parser."""

    def group(name: str, help_text: str) -> argparse._SubParsersAction[_Parser]:
        parser = commands.add_parser(name, help=help_text)
        parser.json_errors = True  # type: ignore[attr-defined]
        return parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(
        sub: argparse._SubParsersAction[_Parser], name: str, help_text: str, command: Command
    ) -> _Parser:
        parser = sub.add_parser(name, help=help_text, description=help_text)
        parser.json_errors = True  # type: ignore[attr-defined]
        parser.set_defaults(handler=_handler(command))
        return parser

    users = group("user", "create, block, unblock users and revoke their tokens")
    p = action(users, "create", "create a user and print an API token for it", _user_create)
    p.add_argument("--email", required=True)
    p.add_argument("--credits-usd", default="0", metavar="USD", help="initial credits (default 0)")
    p.add_argument("--free", action="store_true", help="record the initial credits as free (promotional)")
    p = action(users, "block", "block a user (requests become unauthenticated)", _user_block)
    p.add_argument("--user", required=True, metavar="ID")
    p.add_argument("--reason", required=True)
    p = action(users, "unblock", "clear a user's blocked_reason", _user_unblock)
    p.add_argument("--user", required=True, metavar="ID")
    p = action(
        users, "revoke-tokens", "invalidate every token of a user and print a fresh one", _user_revoke_tokens
    )
    p.add_argument("--user", required=True, metavar="ID")

    tokens = group("token", "API tokens")
    p = action(tokens, "mint", "mint an API token for a user (valid 5 years)", _token_mint)
    p.add_argument("--user", required=True, metavar="ID")

    credits = group("credits", "user credits")
    p = action(credits, "add", "add credits to a user (a credit transaction)", _credits_add)
    p.add_argument("--user", required=True, metavar="ID")
    p.add_argument("--usd", required=True, metavar="USD")
    p.add_argument("--free", action="store_true", help="free (promotional) credits")
    p.add_argument("--description", default="llm-gateway credits add")

    orgs = group("org", "organisations")
    p = action(orgs, "create", "create an organisation", _org_create)
    p.add_argument("--name", required=True)
    p.add_argument("--plan", choices=PLANS, default="teams")
    p.add_argument("--credits-usd", default="0", metavar="USD")
    p = action(orgs, "add-member", "add a user to an organisation, or change their role", _org_add_member)
    p.add_argument("--org", required=True, metavar="ID")
    p.add_argument("--user", required=True, metavar="ID")
    p.add_argument("--role", choices=ROLES, default="member")
    p = action(orgs, "settings", "replace an organisation's settings with a JSON object", _org_settings)
    p.add_argument("--org", required=True, metavar="ID")
    p.add_argument("--json", required=True, metavar="OBJECT")
    p = action(orgs, "daily-limit", "set a member's daily spending limit", _org_daily_limit)
    p.add_argument("--org", required=True, metavar="ID")
    p.add_argument("--user", required=True, metavar="ID")
    p.add_argument("--usd", required=True, metavar="USD")

    p = commands.add_parser("usage", help="a user's ledger rows (newest first) and totals")
    p.json_errors = True  # type: ignore[attr-defined]
    p.set_defaults(handler=_handler(_usage))
    p.add_argument("--user", required=True, metavar="ID")
    p.add_argument("--limit", type=int, default=100, help="rows to show (default 100); totals cover all")

    outbox = group("outbox", "the accounting outbox's dead letters: records the ledger refused")
    action(outbox, "dead-letters", "list the dead letters (no prompt text)", _outbox_dead_letters)
    p = action(
        outbox,
        "replay",
        "write the dead letters into the ledger once the cause is fixed (each written one leaves the stream)",
        _outbox_replay,
    )
    p.add_argument("--entry", action="append", metavar="ID", help="only this entry (repeatable; default: all)")

    byok_keys = group("byok", "customers' own provider keys (BYOK)")
    p = action(
        byok_keys,
        "add",
        "store (or replace and re-enable) a user's or an organisation's key for a provider,"
        " encrypted with BYOK_ENCRYPTION_KEY",
        _byok_add,
    )
    owner = p.add_mutually_exclusive_group(required=True)
    owner.add_argument("--user", metavar="ID")
    owner.add_argument("--org", metavar="ID")
    p.add_argument(
        "--provider",
        required=True,
        metavar="ID",
        help="anthropic, bedrock, google, openai, minimax, mistral, xai, zai or codestral",
    )
    p.add_argument(
        "--key",
        required=True,
        metavar="KEY",
        help='the API key ("-" reads it from stdin); for bedrock the JSON {accessKeyId, secretAccessKey, region}',
    )
