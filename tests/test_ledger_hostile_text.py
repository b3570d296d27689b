"""Hostile text reaches the ledger and is charged (issue: a NUL in a prompt got a paid request
served free, its record retried forever).

Against a real Postgres and Redis, without Envoy: every text value of a usage record, whatever
Unicode it holds (NUL and control characters included), is written once and charged once; a
record Postgres refuses for its data moves to the dead letters after one attempt, the rest of
its batch is written, and `llm-gateway outbox replay` writes it once the cause is fixed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from extproc.accounting import ledger
from extproc.accounting.cost import Charge
from extproc.accounting.outbox import DEAD_LETTERS, Outbox
from extproc.accounting.record import PromptInfo, UsageRecord
from extproc.accounting.writer import LedgerWriter
from extproc.db.migrate import migrate
from extproc.settings import load_settings
from tests.test_side_services import record as side_record

COST = 1234  # what the upstream billed, in microdollars

# Every text the record carries from the request or the response, by field.
TEXT_FIELDS = (
    "requested_model", "auto_model", "message_id", "model", "inference_provider", "finish_reason",
    "project_id", "editor_name", "machine_id", "session_id", "mode", "feature", "user_agent", "forwarded_for",
)  # fmt: skip


def record(user_id: str, **overrides: Any) -> UsageRecord:
    """The side-service tests' record (provider mistral: no generation lookup), for `user_id`."""
    defaults: dict[str, Any] = {"cost_microdollars": COST, "prompt": PromptInfo("You are helpful.", 16, "hello")}
    return side_record(kilo_user_id=user_id, **(defaults | overrides))


def stored(text: str) -> str:
    """The contract of the sanitising step: NUL is stored as U+FFFD, everything else as sent."""
    return text.replace("\x00", "\ufffd")


async def new_user(connection: asyncpg.Connection, email: str | None = None) -> str:
    user_id = f"hostile-{uuid.uuid4().hex[:12]}"
    await connection.execute(
        "INSERT INTO kilocode_users (id, google_user_email, total_microdollars_acquired) VALUES ($1, $2, 100000000)",
        user_id,
        email or f"{user_id}@example.com",
    )
    return user_id


ROW = """
SELECT u.cost, u.model, u.requested_model, u.inference_provider, u.project_id, m.message_id,
       m.user_prompt_prefix, m.machine_id, m.session_id, m.system_prompt_length, ua.http_user_agent,
       ip.http_ip, spp.system_prompt_prefix, fr.finish_reason, en.editor_name, f.feature, mo.mode, am.auto_model
FROM microdollar_usage u JOIN microdollar_usage_metadata m ON m.id = u.id
LEFT JOIN http_user_agent ua ON ua.http_user_agent_id = m.http_user_agent_id
LEFT JOIN http_ip ip ON ip.http_ip_id = m.http_ip_id
LEFT JOIN system_prompt_prefix spp ON spp.system_prompt_prefix_id = m.system_prompt_prefix_id
LEFT JOIN finish_reason fr ON fr.finish_reason_id = m.finish_reason_id
LEFT JOIN editor_name en ON en.editor_name_id = m.editor_name_id
LEFT JOIN feature f ON f.feature_id = m.feature_id
LEFT JOIN mode mo ON mo.mode_id = m.mode_id
LEFT JOIN auto_model am ON am.auto_model_id = m.auto_model_id
WHERE u.id = $1
"""
# Record field -> the column (or lookup) it is stored in.
STORED_AS = {
    "requested_model": "requested_model", "auto_model": "auto_model", "message_id": "message_id", "model": "model",
    "inference_provider": "inference_provider", "finish_reason": "finish_reason", "project_id": "project_id",
    "editor_name": "editor_name", "machine_id": "machine_id", "session_id": "session_id", "mode": "mode",
    "feature": "feature", "user_agent": "http_user_agent", "forwarded_for": "http_ip",
}  # fmt: skip


# Any Unicode text without surrogates, with NUL and other control characters drawn often.
hostile_text = st.text(
    st.one_of(st.sampled_from("\x00\x01\x1f\x7f\u2028\ufeff\ufffd"), st.characters(exclude_categories=("Cs",))),
    min_size=1,
    max_size=40,
)


@pytest.fixture(scope="module")
def migrated(database_url: str) -> str:
    async def run() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            await migrate(connection)
        finally:
            await connection.close()

    asyncio.run(run())
    return database_url


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.fixed_dictionaries({name: hostile_text for name in TEXT_FIELDS}), system=hostile_text, user=hostile_text)
def test_any_text_is_written_once_and_charged_once(migrated: str, texts: dict[str, str], system: str, user: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(migrated)
        try:
            user_id = await new_user(connection)
            # Stealth off: `model` is stored as the upstream named it.
            hostile = record(user_id, **texts, prompt=PromptInfo(system, len(system), user))
            charge = Charge(usage=hostile.stream_usage(), cache_discount_microdollars=None,
                            inference_provider=hostile.inference_provider, finish_reason=hostile.finish_reason)
            first = await ledger.write(connection, hostile, charge, COST, None)
            again = await ledger.write(connection, hostile, charge, COST, None)
            assert (first.inserted, again.inserted) == (True, False)
            row = await connection.fetchrow(ROW, hostile.usage_id)
            for field, column in STORED_AS.items():
                assert row[column] == stored(texts[field]), field
            assert (row["system_prompt_prefix"], row["user_prompt_prefix"]) == (stored(system), stored(user))
            assert row["system_prompt_length"] == len(system)
            assert row["cost"] == COST
            assert await connection.fetchval("SELECT microdollars_used FROM kilocode_users WHERE id = $1", user_id) == COST
        finally:
            await connection.close()

    asyncio.run(run())


def test_an_employees_request_log_keeps_hostile_text(migrated: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(migrated)
        try:
            user_id = await new_user(connection, email=f"{uuid.uuid4().hex[:8]}@kilo.ai")
            body = {"model": "m", "messages": [{"role": "user", "content": "a\x00b"}], "k\x00ey": ["\x00"]}
            logged = record(user_id, request_log={"request": body, "response": "data: x\x00y\n\n"})
            charge = Charge(usage=logged.stream_usage(), cache_discount_microdollars=None, inference_provider=None)
            assert (await ledger.write(connection, logged, charge, COST, None)).inserted
            row = await connection.fetchrow(
                "SELECT request, response FROM api_request_log WHERE kilo_user_id = $1", user_id
            )
            assert orjson.loads(row["request"]) == {
                "model": "m",
                "messages": [{"role": "user", "content": "a\ufffdb"}],
                "k\ufffdey": ["\ufffd"],
            }
            assert row["response"] == "data: x\ufffdy\n\n"
        finally:
            await connection.close()

    asyncio.run(run())


# --- Records Postgres refuses: dead letters, not retries ------------------------------------------

MARKER = "refuse-me-" + uuid.uuid4().hex[:8]
REFUSED_COST = 777_777  # a cost the second trigger refuses

# Stand-ins for a bug that lets a value Postgres refuses through: data exceptions (class 22)
# raised for one marker value of a text column, and of a money column.
REFUSE_TEXT = f"""
CREATE FUNCTION refuse_marker() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.user_prompt_prefix = '{MARKER}' THEN
    RAISE EXCEPTION 'marker refused' USING ERRCODE = '22023', COLUMN = 'user_prompt_prefix';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_marker BEFORE INSERT ON microdollar_usage_metadata FOR EACH ROW EXECUTE FUNCTION refuse_marker();
"""
REFUSE_COST = f"""
CREATE FUNCTION refuse_cost() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.cost = {REFUSED_COST} THEN RAISE EXCEPTION 'cost refused' USING ERRCODE = '22003'; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_cost BEFORE INSERT ON microdollar_usage FOR EACH ROW EXECUTE FUNCTION refuse_cost();
"""


@pytest.fixture
async def writer(migrated: str, redis_url: str) -> AsyncIterator[LedgerWriter]:
    pool = await asyncpg.create_pool(migrated, min_size=1, max_size=4)
    client = aioredis.from_url(redis_url)
    await client.delete(DEAD_LETTERS)
    try:
        yield LedgerWriter(load_settings(), pool, Outbox(client, "test:ledger"))
    finally:
        await client.aclose()
        await pool.close()


def dead_letter_count(charged: str) -> float:
    return REGISTRY.get_sample_value("llm_gateway_ledger_dead_letters_total", {"charged": charged}) or 0.0


def ledger_rows(result: str) -> float:
    return REGISTRY.get_sample_value("llm_gateway_ledger_rows_total", {"result": result}) or 0.0


def charged_total(provider: str) -> float:
    return REGISTRY.get_sample_value("llm_gateway_charged_microdollars_total", {"provider": provider}) or 0.0


def write_failures() -> float:
    return REGISTRY.get_sample_value("llm_gateway_ledger_write_failures_total") or 0.0


def cli(database_url: str, redis_url: str, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "extproc.cli", "outbox", *args],
        env={**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


async def used(pool: asyncpg.Pool, user_id: str) -> int:
    return await pool.fetchval("SELECT microdollars_used FROM kilocode_users WHERE id = $1", user_id)


async def test_a_refused_text_is_dead_lettered_after_one_attempt_charged_and_replayed(
    writer: LedgerWriter, migrated: str, redis_url: str
) -> None:
    pool = writer.db
    await pool.execute(REFUSE_TEXT)
    try:
        users = [await new_user(conn) for conn in [pool] * 3]
        good = [record(users[0]), record(users[1])]
        bad = record(users[2], prompt=PromptInfo("system", 6, MARKER))
        failures, charged_before = write_failures(), dead_letter_count("true")
        rows_before, microdollars_before = ledger_rows("inserted"), charged_total(bad.provider)
        # Priced together, so they share one batch statement, which the marker makes fail.
        results = await asyncio.gather(*(writer.write(r) for r in [*good, bad]))
        assert results == [True, True, True]  # every outbox entry can go: nothing is retried
        assert write_failures() == failures
        assert dead_letter_count("true") == charged_before + 1
        # Each written once (alone, after the batch failed), each charge counted once.
        assert ledger_rows("inserted") == rows_before + 3
        assert charged_total(bad.provider) == microdollars_before + 3 * COST
        for r, user_id in zip([*good, bad], users, strict=True):
            assert await used(pool, user_id) == COST  # the bad one is charged too
        row = await pool.fetchrow(ROW, bad.usage_id)
        assert row["user_prompt_prefix"] is None and row["system_prompt_prefix"] == "system"
        assert (await pool.fetchrow(ROW, good[0].usage_id))["user_prompt_prefix"] == "hello"

        listed = cli(migrated, redis_url, "dead-letters")
        assert listed["count"] == 1
        [letter] = listed["dead_letters"]
        assert letter["usage_id"] == bad.usage_id and letter["charged"] is True
        assert letter["columns"] == ["user_prompt_prefix"] and "22023" in letter["error"]
        assert MARKER not in orjson.dumps(listed).decode()  # no prompt text in the listing

        # Not fixed yet: the replay fails and the letter stays.
        replay = cli(migrated, redis_url, "replay")
        assert replay["replayed"] == [] and len(replay["failed"]) == 1
    finally:
        await pool.execute("DROP TRIGGER refuse_marker ON microdollar_usage_metadata; DROP FUNCTION refuse_marker()")

    replay = cli(migrated, redis_url, "replay")
    assert [r["usage_id"] for r in replay["replayed"]] == [bad.usage_id] and replay["failed"] == []
    row = await pool.fetchrow(ROW, bad.usage_id)
    assert row["user_prompt_prefix"] == MARKER and row["cost"] == COST
    assert await used(pool, users[2]) == COST  # not charged again
    assert await pool.fetchval("SELECT count(*) FROM microdollar_usage WHERE id = $1", bad.usage_id) == 1
    assert cli(migrated, redis_url, "dead-letters")["count"] == 0


async def test_a_batchs_rows_and_charges_are_counted_once_each(writer: LedgerWriter) -> None:
    users = [await new_user(writer.db) for _ in range(2)]
    first, second = record(users[0]), record(users[1])
    inserted, duplicates, microdollars = ledger_rows("inserted"), ledger_rows("duplicate"), charged_total(first.provider)
    # Priced together: one batch statement, in which the repeated record is a duplicate.
    assert await asyncio.gather(*(writer.write(r) for r in [first, second, first])) == [True, True, True]
    assert (ledger_rows("inserted"), ledger_rows("duplicate")) == (inserted + 2, duplicates + 1)
    assert charged_total(first.provider) == microdollars + 2 * COST
    assert [await used(writer.db, user_id) for user_id in users] == [COST, COST]


async def test_a_refused_charge_waits_uncharged_in_the_dead_letters_until_replayed(
    writer: LedgerWriter, migrated: str, redis_url: str
) -> None:
    pool = writer.db
    await pool.execute(REFUSE_COST)
    try:
        user_id = await new_user(pool)
        refused = record(user_id, cost_microdollars=REFUSED_COST)
        uncharged_before = dead_letter_count("false")
        assert await writer.write(refused)
        assert dead_letter_count("false") == uncharged_before + 1
        assert await pool.fetchval("SELECT count(*) FROM microdollar_usage WHERE id = $1", refused.usage_id) == 0
        [letter] = cli(migrated, redis_url, "dead-letters")["dead_letters"]
        assert (letter["usage_id"], letter["charged"], letter["cost_microdollars"]) == (
            refused.usage_id,
            False,
            REFUSED_COST,
        )
    finally:
        await pool.execute("DROP TRIGGER refuse_cost ON microdollar_usage; DROP FUNCTION refuse_cost()")

    assert [r["usage_id"] for r in cli(migrated, redis_url, "replay")["replayed"]] == [refused.usage_id]
    assert await used(pool, user_id) == REFUSED_COST
    assert cli(migrated, redis_url, "replay")["replayed"] == []  # nothing left, nothing charged twice
    assert await used(pool, user_id) == REFUSED_COST


async def test_an_unreadable_outbox_entry_is_dead_lettered_not_read_forever(writer: LedgerWriter) -> None:
    outbox = writer.outbox
    redis = outbox.redis
    await redis.delete("gw:usage")
    good = record(await new_user(writer.db))
    await redis.xadd("gw:usage", {"record": b"{not json"})
    await outbox.send([Outbox.entry(good)])
    entries = await outbox.read(10, 100, pending=False)
    assert [record.usage_id for _, record in entries] == [good.usage_id]
    [letter] = await outbox.dead_letters()
    assert letter.record == b"{not json" and letter.priced is None
    assert await redis.xlen("gw:usage") == 1  # the unreadable entry left the outbox


def test_sanitising_keeps_storable_text_unchanged() -> None:
    from extproc import storable

    for text in ("", "plain", "caf\u00e9 \U0001f600", "\ufffd", "tab\tnew\nline"):
        assert storable.text(text) == text
    assert storable.text("a\x00b\x00") == "a\ufffdb\ufffd"
    assert storable.text("\ud800x\x00") == "\ufffdx\ufffd"  # a lone surrogate cannot be encoded
    assert storable.number("bigint", 2**64 - 1) is None and storable.number("bigint", -(2**63)) == -(2**63)
    assert storable.number("smallint", 40_000) is None and storable.number("real", 1e300) is None
    assert storable.number("real", 1.5) == 1.5
