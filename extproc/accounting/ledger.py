"""Contract 7.5 and 8.2: the ledger write of usage records, each in ONE transaction.

The usage row, its metadata row and lookup ids, the user's `microdollars_used`, the
organisation's usage and the member's daily usage, and the employee request log commit
together or not at all. The usage id is the idempotency key: a record written twice (a retry
after a lost acknowledgement, a replayed outbox entry) inserts nothing the second time and
charges nobody again. `write` takes one record of any kind; `write_many` takes many users'
records without an organisation or a request log, in one statement (the same statement).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from extproc import storable
from extproc.accounting.cost import Charge
from extproc.accounting.record import UsageRecord
from extproc.db import Connection
from extproc.money import usd_to_microdollars

logger = logging.getLogger(__name__)

LOOKUPS = (
    "http_user_agent",
    "http_ip",
    "vercel_ip_country",
    "vercel_ip_city",
    "ja4_digest",
    "system_prompt_prefix",
    "finish_reason",
    "editor_name",
    "feature",
    "mode",
    "auto_model",
)
# The reference's lookups this gateway never learns (it is not behind Vercel's edge and sees no
# TLS fingerprint): their ids stay NULL, so the statement has no CTEs for them. Two CTEs per
# lookup cost Postgres work on every batch even when they find and insert nothing.
_UNKNOWN_LOOKUPS = frozenset({"vercel_ip_country", "vercel_ip_city", "ja4_digest"})
_FILLED_LOOKUPS = tuple(name for name in LOOKUPS if name not in _UNKNOWN_LOOKUPS)

# One statement for one record or many, passed as one JSON array of rows: the lookup ids, the
# usage rows, their metadata rows and the users' charges (summed per user), the last two only
# for the usage rows it inserted (a usage id already written inserts nothing and charges
# nobody). A user's record without an organisation or a request log needs nothing else: one
# round trip, atomic without an explicit transaction. A value already in its lookup table is
# read (f_), not upserted: an upsert writes a new row version every time, and nearly every
# request repeats known values. A new value is inserted with DO UPDATE (not DO NOTHING), so
# that a concurrent insert of the same value still returns its id. The columns of each table
# with their types (`id` and `created_at` are shared: the metadata row repeats them).
#
# JSON rather than one array parameter per column: asyncpg encodes arrays element by element
# with Python-level checks (an ABC isinstance per element, ~46 per record), which cost the
# writer more than the rest of the statement; one JSON text is serialised by orjson in C and
# parsed by Postgres in C. Every value keeps its exact type: integers are JSON integers
# (bigint, exact), timestamps RFC 3339 with microseconds, text JSON strings.
_USAGE = (
    ("id", "uuid"), ("kilo_user_id", "text"), ("organization_id", "uuid"), ("provider", "text"),
    ("cost", "bigint"), ("input_tokens", "bigint"), ("output_tokens", "bigint"), ("cache_write_tokens", "bigint"),
    ("cache_hit_tokens", "bigint"), ("created_at", "timestamptz"), ("model", "text"), ("requested_model", "text"),
    ("cache_discount", "bigint"), ("has_error", "boolean"), ("inference_provider", "text"), ("project_id", "text"),
)
_METADATA = (
    ("message_id", "text"), ("user_prompt_prefix", "text"), ("system_prompt_length", "integer"),
    ("max_tokens", "bigint"), ("has_middle_out_transform", "boolean"), ("status_code", "smallint"),
    ("upstream_id", "text"), ("latency", "real"), ("moderation_latency", "real"), ("generation_time", "real"),
    ("is_byok", "boolean"), ("is_user_byok", "boolean"), ("streamed", "boolean"), ("cancelled", "boolean"),
    ("has_tools", "boolean"), ("machine_id", "text"), ("session_id", "text"), ("market_cost", "bigint"),
)
_COLUMNS = _USAGE + _METADATA
_USAGE_COLUMNS = [name for name, _ in _USAGE]
_METADATA_COLUMNS = ["id", "created_at", *(name for name, _ in _METADATA)]
# The fields of each row of the statement's JSON: the columns, then the lookup values, then the
# user's charge.
_FIELDS = [*_COLUMNS, *((f"lk_{n}", "text") for n in _FILLED_LOOKUPS), ("user_charge", "bigint")]
_LOOKUP_CTES = ",\n".join(
    f"""f_{name} AS (SELECT {name}_id, {name} FROM {name} WHERE {name} IN (SELECT lk_{name} FROM input)),
l_{name} AS (
  INSERT INTO {name} ({name}) SELECT DISTINCT lk_{name} FROM input
  WHERE lk_{name} IS NOT NULL AND lk_{name} NOT IN (SELECT {name} FROM f_{name})
  ON CONFLICT ({name}) DO UPDATE SET {name} = EXCLUDED.{name} RETURNING {name}_id, {name}
)"""
    for name in _FILLED_LOOKUPS
)
_WRITE_USAGE = f"""
WITH input AS (
  SELECT * FROM json_to_recordset($1::json) AS t({", ".join(f"{name} {kind}" for name, kind in _FIELDS)})
),
{_LOOKUP_CTES},
usage AS (
  INSERT INTO microdollar_usage ({", ".join(_USAGE_COLUMNS)})
  SELECT {", ".join(_USAGE_COLUMNS)} FROM input
  ON CONFLICT (id) DO NOTHING
  RETURNING id
),
metadata AS (
  INSERT INTO microdollar_usage_metadata ({", ".join(_METADATA_COLUMNS)}, {", ".join(f"{n}_id" for n in _FILLED_LOOKUPS)})
  SELECT {", ".join(f"i.{c}" for c in _METADATA_COLUMNS)},
    {", ".join(f"COALESCE((SELECT {n}_id FROM f_{n} WHERE {n} = i.lk_{n}), (SELECT {n}_id FROM l_{n} WHERE {n} = i.lk_{n}))" for n in _FILLED_LOOKUPS)}
  FROM input i JOIN usage u ON u.id = i.id
  RETURNING id
),
charges AS (
  SELECT i.kilo_user_id, sum(i.user_charge)::bigint AS total FROM input i JOIN usage u ON u.id = i.id
  WHERE i.user_charge > 0 GROUP BY i.kilo_user_id
),
charged AS (
  UPDATE kilocode_users k SET microdollars_used = k.microdollars_used + c.total, updated_at = now()
  FROM charges c WHERE k.id = c.kilo_user_id
  RETURNING k.id, k.microdollars_used, k.kilo_pass_threshold
)
SELECT id::text AS usage_id, NULL::text AS user_id, NULL::bigint AS used, NULL::bigint AS threshold FROM metadata
UNION ALL
SELECT NULL, id, microdollars_used, kilo_pass_threshold FROM charged
"""
_CHARGE_ORGANIZATION = """
UPDATE organizations
SET microdollars_used = microdollars_used + $2, microdollars_balance = microdollars_balance - $2,
    updated_at = now()
WHERE id = $1
RETURNING total_microdollars_acquired - microdollars_used AS balance, settings->>'minimum_balance' AS minimum_balance,
          microdollars_used AS used
"""
# Within a dollar of the threshold, KiloPass bonus credits are due (contract 7.5).
_KILO_PASS_MARGIN = 1_000_000
_CHARGE_MEMBER_DAY = """
INSERT INTO organization_user_usage (organization_id, kilo_user_id, usage_date, limit_type, microdollar_usage)
VALUES ($1, $2, CURRENT_DATE, 'daily', $3)
ON CONFLICT (organization_id, kilo_user_id, limit_type, usage_date)
DO UPDATE SET microdollar_usage = organization_user_usage.microdollar_usage + EXCLUDED.microdollar_usage,
              updated_at = now()
RETURNING usage_date::text AS day, microdollar_usage AS used
"""
# A restore replaces what an earlier write of the record left (the metadata row first: it
# references nothing, but nothing may see the usage row without it).
_FORGET_USAGE = """
WITH metadata AS (DELETE FROM microdollar_usage_metadata WHERE id = $1)
DELETE FROM microdollar_usage WHERE id = $1
"""
_LOG_REQUEST = """
INSERT INTO api_request_log (kilo_user_id, organization_id, provider, model, status_code, request, response)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""


def _kilo_pass_hook(user_id: str, used: int, threshold: int | None) -> None:
    """KiloPass bonus issuance is out of scope here (a separate subsystem); this is where it
    fires: a structured event for the service that issues the bonus."""
    if threshold is not None and used >= threshold - _KILO_PASS_MARGIN:
        logger.info("kilo_pass_threshold_reached", extra={"user_id": user_id, "microdollars_used": used, "threshold": threshold})


def _low_balance_hook(organization_id: str, balance: int, cost: int, minimum: object) -> None:
    """Decision 18: the low-balance e-mail is out of scope; emit a structured event when this
    charge took the balance below `settings.minimum_balance` (USD)."""
    threshold = usd_to_microdollars(minimum)
    if minimum is not None and balance < threshold <= balance + cost:
        logger.warning(
            "organization_balance_below_minimum",
            extra={"organization_id": organization_id, "balance_microdollars": balance, "minimum_microdollars": threshold},
        )


@dataclass(frozen=True, slots=True)
class Written:
    inserted: bool  # False: this usage id was already in the ledger; nothing was charged
    cost_microdollars: int
    # The running totals the charge left (for the spend holds, extproc/admission/settle.py):
    # a balance read that saw this charge saw at least these. None: not charged there.
    user_used: int | None = None
    organization_used: int | None = None
    member_day: tuple[str, int] | None = None  # (usage_date, the member's usage that day)


def stored_model(record: UsageRecord) -> str:
    """Contract 7.4 and decision 11: stealth models are stored under their public id."""
    if record.stealth_model:
        return record.requested_model
    return record.model or record.requested_model


# Money and token columns: charged and stored exactly as priced, never altered to fit.
_EXACT = frozenset(
    {"cost", "input_tokens", "output_tokens", "cache_write_tokens", "cache_hit_tokens", "cache_discount", "market_cost"}
)
# What is made storable: the text (lookup values included; `_document`) and the descriptive
# numbers (`_row`).
_TEXT_FIELDS = tuple(name for name, kind in _FIELDS if kind == "text")
_DESCRIPTIVE_NUMBERS = tuple(
    (name, kind) for name, kind in _COLUMNS if kind in ("smallint", "integer", "bigint", "real") and name not in _EXACT
)
_LOOKUP_FIELDS = {name: f"lk_{name}" for name in _FILLED_LOOKUPS}
# The text that only describes a request: what a record can be written without when Postgres
# refuses it (`emptied`), so that the charge is still made. `request_log` is the employee log row.
EMPTIABLE = frozenset(
    [name for name, kind in _COLUMNS if kind == "text" and name not in ("kilo_user_id", "provider")]
    + [*LOOKUPS, "request_log"]
)
_MISSING_MESSAGE_ID = "<missing>"  # message_id is NOT NULL (contract 7.5)


def _row(
    record: UsageRecord, charge: Charge, cost: int, cache_discount: int | None, emptied: frozenset[str]
) -> dict[str, Any]:
    """The record's columns and lookup values (`lk_<lookup>`) by name: descriptive numbers made
    storable (`extproc/storable.py`), those in `emptied` left out. Its text is made storable
    with the whole batch's (`_document`)."""
    prompt = record.prompt
    org = record.organization_id
    # Contract 7.4: organisation requests never store prompt text.
    user_prefix = None if org or prompt is None else prompt.user_prompt_prefix
    system_prefix = None if org or prompt is None else (prompt.system_prompt_prefix or None)
    usage = charge.usage
    row: dict[str, Any] = {
        "id": record.usage_id,
        "kilo_user_id": record.kilo_user_id,
        "organization_id": org,
        "provider": record.provider,
        "cost": cost,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "cache_hit_tokens": usage.cache_hit_tokens,
        "created_at": datetime.fromtimestamp(record.created_at, UTC),
        "model": stored_model(record),
        "requested_model": record.requested_model,
        "cache_discount": cache_discount,
        "has_error": record.has_error,
        "inference_provider": charge.inference_provider,
        "project_id": record.project_id,
        "message_id": record.message_id or _MISSING_MESSAGE_ID,
        "user_prompt_prefix": user_prefix,
        "system_prompt_length": prompt.system_prompt_length if prompt else None,
        "max_tokens": record.max_tokens,
        "has_middle_out_transform": record.has_middle_out_transform,
        "status_code": record.status_code,
        "upstream_id": charge.upstream_id,
        "latency": charge.latency,
        "moderation_latency": charge.moderation_latency,
        "generation_time": charge.generation_time,
        "is_byok": usage.is_byok,
        "is_user_byok": record.user_byok,
        "streamed": charge.streamed if charge.streamed is not None else record.streamed,
        "cancelled": charge.cancelled if charge.cancelled is not None else record.aborted,
        "has_tools": record.has_tools,
        "machine_id": record.machine_id,
        "session_id": record.session_id,
        "market_cost": usage.cost_microdollars,  # before zeroing (contract 7.4)
        "lk_http_user_agent": record.user_agent,
        "lk_http_ip": record.forwarded_for,
        "lk_system_prompt_prefix": system_prefix,
        "lk_finish_reason": charge.finish_reason,
        "lk_editor_name": record.editor_name,
        "lk_feature": record.feature,
        "lk_mode": record.mode,
        "lk_auto_model": record.auto_model,
    }
    for name, kind in _DESCRIPTIVE_NUMBERS:
        row[name] = storable.number(kind, row[name])
    for name in emptied:
        if name in _LOOKUP_FIELDS:
            row[_LOOKUP_FIELDS[name]] = None
        elif name in row:
            row[name] = _MISSING_MESSAGE_ID if name == "message_id" else None
    return row


async def write(
    connection: Connection,
    record: UsageRecord,
    charge: Charge,
    cost: int,
    cache_discount: int | None,
    *,
    emptied: frozenset[str] = frozenset(),
    restore: bool = False,
) -> Written:
    """One record of any kind; an organisation's or an employee's takes a transaction for its
    follow-ups. `emptied`: descriptive columns (of `EMPTIABLE`) to store empty, because
    Postgres refused their values (the writer's dead-letter path).

    `restore`: the record was written before with `emptied` columns, and is written whole now
    (a dead letter's replay once the cause is fixed). Its rows are replaced in one transaction;
    nobody is charged again, and the request log is added only if it was left out.
    """
    org = record.organization_id
    if restore:
        async with connection.transaction():
            await connection.execute(_FORGET_USAGE, record.usage_id)
            [written] = await _write_usage(connection, [(record, charge, cost, cache_discount)], charge_users=False)
            if "request_log" in emptied:
                await _log_request(connection, record)
        return written
    async with connection.transaction() if not batchable(record) else contextlib.nullcontext():
        [written] = await _write_usage(connection, [(record, charge, cost, cache_discount)], emptied=emptied)
        if not written.inserted:
            return written
        if org is not None:
            # Contract 7.5: organisation usage even at cost 0.
            account = await connection.fetchrow(_CHARGE_ORGANIZATION, org, cost)
            if account is not None:
                _low_balance_hook(org, account["balance"], cost, account["minimum_balance"])
            day = await connection.fetchrow(_CHARGE_MEMBER_DAY, org, record.kilo_user_id, cost)
            written = dataclasses.replace(
                written,
                organization_used=account["used"] if account is not None else None,
                member_day=(day["day"], day["used"]) if day is not None else None,
            )
        if "request_log" not in emptied:
            await _log_request(connection, record)
    return written


async def _log_request(connection: Connection, record: UsageRecord) -> None:
    """Contract 8.2: an employee's final request and the upstream's response, made storable."""
    if record.request_log is None:
        return
    log = record.request_log
    response = log.get("response")
    await connection.execute(
        _LOG_REQUEST,
        record.kilo_user_id,
        record.organization_id,
        record.provider,
        storable.text(record.requested_model),
        record.status_code,
        orjson.dumps(storable.json_value(log.get("request"))).decode(),
        storable.text(response) if isinstance(response, str) else None,
    )


Item = tuple[UsageRecord, Charge, int, int | None]  # record, charge, cost charged, cache discount


def batchable(record: UsageRecord) -> bool:
    """Records `write_many` takes: a user's, without an organisation or a request log."""
    return record.organization_id is None and record.request_log is None


async def write_many(connection: Connection, items: list[Item]) -> list[Written]:
    """`write` for many batchable records in one statement (one commit). A usage id that
    appears twice in `items` is written once; the later copies are duplicates."""
    assert all(batchable(record) for record, _, _, _ in items)
    return await _write_usage(connection, items)


def _document(rows: list[dict[str, Any]]) -> str:
    """The statement's JSON, every text value made storable. What `storable.text` replaces
    (NUL, lone surrogates) cannot hide in JSON: orjson writes NUL as the escape `\\u0000` and
    refuses a lone surrogate. So a document without that escape, serialised without error,
    holds only storable text and goes as it is: one search of the whole batch in C instead of
    a call per text value. Otherwise (or on a false alarm: an escaped backslash before
    "u0000") each text value passes through `storable.text`."""
    try:
        document = orjson.dumps(rows)
        if b"\\u0000" not in document:
            return document.decode()
    except orjson.JSONEncodeError:
        pass
    for row in rows:
        for name in _TEXT_FIELDS:
            value = row[name]
            if isinstance(value, str):
                row[name] = storable.text(value)
    try:
        return orjson.dumps(rows).decode()
    except orjson.JSONEncodeError as exc:  # a value JSON cannot carry: refused, like asyncpg's own
        raise asyncpg.exceptions.DataError(f"usage row not encodable: {exc}") from exc


async def _write_usage(
    connection: Connection,
    items: list[Item],
    *,
    emptied: frozenset[str] = frozenset(),
    charge_users: bool = True,
) -> list[Written]:
    """The usage statement for `items`; a user's charge only where there is no organisation."""
    first: dict[str, int] = {}
    for index, (record, _, _, _) in enumerate(items):
        first.setdefault(record.usage_id, index)
    unique = [items[index] for index in sorted(first.values())]
    document: list[dict[str, Any]] = []
    for record, charge, cost, discount in unique:
        fields = _row(record, charge, cost, discount, emptied)
        fields["user_charge"] = cost if charge_users and record.organization_id is None else 0
        document.append(fields)
    rows = await connection.fetch(_WRITE_USAGE, _document(document))
    inserted = {row["usage_id"] for row in rows if row["usage_id"] is not None}
    charged = {row["user_id"]: row for row in rows if row["user_id"] is not None}
    for user_id in {
        record.kilo_user_id
        for record, _, cost, _ in unique
        if cost > 0 and record.organization_id is None and record.usage_id in inserted
    }:
        row = charged.get(user_id)
        if row is None:
            logger.error("impossible: missing user", extra={"user_id": user_id})
        else:
            _kilo_pass_hook(user_id, row["used"], row["threshold"])
    return [
        Written(inserted=True, cost_microdollars=cost, user_used=_used(charged, record, cost))
        if index == first[record.usage_id] and record.usage_id in inserted
        else Written(inserted=False, cost_microdollars=0)
        for index, (record, _, cost, _) in enumerate(items)
    ]


def _used(charged: dict[str, Any], record: UsageRecord, cost: int) -> int | None:
    """The user's `microdollars_used` after the statement that charged this record, if it did."""
    if cost <= 0 or record.organization_id is not None:
        return None
    row = charged.get(record.kilo_user_id)
    return None if row is None else int(row["used"])
