"""The operator commands' SQL: each takes a connection and validated values; multi-row writes
are one transaction."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson

from extproc.admin.inputs import AdminError
from extproc.db import Connection


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



async def store_byok_key(
    conn: Connection, provider: str, encrypted: dict[str, str], *, user_id: str | None, org_id: str | None
) -> str:
    """Store (or replace and re-enable) the owner's encrypted key; the owner must exist."""
    from extproc import byok  # cryptography: only `byok add` pays for it

    async with conn.transaction():
        if user_id is not None:
            await _require_user(conn, user_id)
        elif org_id is not None:
            await _require_org(conn, org_id)
        return await byok.upsert_key(
            conn, provider_id=provider, encrypted=encrypted, user_id=user_id, organization_id=org_id
        )


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

