"""Hostile input at scale through real Envoy, and secrets in every output (issue 14, parts 2, 4).

One stack serves every case. Hypothesis draws the cases up front (deterministically in the
default suite; `make fuzz` draws more with a random seed), they are sent concurrently, and
each is checked against the invariant:
- the answer is one of the contract's responses (Appendix A, a 402 of 2.12, Envoy's 413 for
  a body over the limit), or the upstream's own answer passed through;
- no 500 from our code, no 504 (a hang past the ext_proc's message timeout), no worker gone;
- no ledger row for a refused request; exactly one row, charged what the upstream billed,
  for every request an upstream served (rows are found by the task id each case sends,
  stored as `session_id`).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import itertools
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.bodies import APPENDIX_A
from tests.conftest import SESSION_STACK, Gateway, running_stack
from tests.hostile import CASES, Case, authorization, corpus
from tests.ledger_support import bills, outbox_depth

CASE_COUNT = int(os.environ.get("FUZZ_CASES", "10000"))
# The default suite draws the same cases every run (seed 0); `make fuzz` sets a random one.
SEED = int(os.environ.get("FUZZ_SEED", "0"))
CONCURRENCY = 24
CLIENT_TIMEOUT = 60  # far beyond the ext_proc's 5 s message timeout: a timeout here is a hang

# Contract Appendix A (tests/bodies.py): the refusals a client may see, by status.
REFUSALS: dict[int, list[dict[str, Any]]] = {}
for _name in (
    "INVALID_JSON", "NO_CLIENT_IP", "DATA_COLLECTION_REQUIRED", "PAID_MODEL_AUTH_REQUIRED", "PROMOTION_MODEL_LIMIT_REACHED",
    "MODEL_NOT_FOUND", "MODEL_ALPHA_ENDED", "MODEL_NOT_ALLOWED", "FREE_MODEL_RATE_LIMITED", "SERVICE_UNAVAILABLE",
):
    REFUSALS.setdefault(APPENDIX_A[_name].status, []).append(APPENDIX_A[_name].body)
# Contract 6.3: upstream errors made readable, with the upstream's status.
STEALTH_ERROR = {"error": "Stealth model unable to process request", "message": "Stealth model unable to process request"}
BYOK_ERRORS = [
    {"error": text, "message": text}
    for text in (
        "[BYOK] Your API key is invalid or has been revoked. Please check your API key configuration.",
        "[BYOK] Your API account has insufficient funds. Please check your billing details with your API provider.",
        "[BYOK] Your API key does not have permission to access this resource. Please check your API key permissions.",
        "[BYOK] Your API key has hit its rate limit. Please try again later or check your rate limit settings with your API provider.",
    )
]
CONTEXT_LENGTH = re.compile(r"The maximum context length is \d+ tokens\. However, about \d+ tokens were requested\.")


def _context_length_error(document: object) -> bool:
    return (
        isinstance(document, dict)
        and set(document) == {"error", "message"}
        and document["error"] == document["message"]
        and isinstance(document["error"], str)
        and CONTEXT_LENGTH.fullmatch(document["error"]) is not None
    )


PAYMENT_TITLES = {"Paid Model - Credits Required", "Low Credit Warning!"}
# Contract 4.2/4.3: enabled Kilo free models; any id ending ":free", "openrouter/free" and
# OpenRouter stealth models are free too (cost zeroed, 7.4).
KILO_FREE = {"corethink:free", "giga-potato", "giga-potato-thinking", "moonshotai/kimi-k2.5:free", "minimax/minimax-m2.5:free"}


def is_free(model: str) -> bool:
    model = model.strip().lower()
    return (
        model in KILO_FREE
        or model.endswith(":free")
        or model == "openrouter/free"
        or (model.startswith("openrouter/") and model.endswith(("-alpha", "-beta")))
    )


# Cases are drawn in groups: hypothesis's cost per example is mostly its own bookkeeping, so
# one example of GROUP cases draws them about twice as fast as GROUP examples.
GROUP = 20


def draw_cases(count: int, batch_seed: int) -> list[Case]:
    """`count` cases from hypothesis, reproducible from the seed, generated up front so they
    can be sent concurrently."""
    drawn: list[Case] = []

    @seed(batch_seed)
    @settings(
        max_examples=-(-count // GROUP),
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(CASES, min_size=GROUP, max_size=GROUP))
    def collect(cases: list[Case]) -> None:
        drawn.extend(cases)

    collect()
    return drawn[:count]


@dataclass
class Outcome:
    case: Case
    task_id: str
    status: int | None = None
    body: bytes = b""
    content_type: str = ""
    error: str | None = None
    message_id: str | None = None
    served: bool = False
    header_bytes: int = 0


@dataclass
class Callers:
    tokens: dict[str, str]
    secret: bytes
    paid_id: str
    org_id: str


def _sse_message_id(body: bytes) -> str | None:
    for line in body.splitlines():
        if line.startswith(b"data: {"):
            event = orjson.loads(line[6:])
            if isinstance(event.get("id"), str):
                return event["id"]
    return None


def classify(outcome: Outcome) -> str | None:
    """None when the answer is one the contract allows (and marks it served or refused), else
    what is wrong with it."""
    status, body = outcome.status, outcome.body
    if outcome.header_bytes > ENVOY_HEADER_LIMIT and (outcome.error is not None or status == 431):
        return None  # Envoy's own limit on request headers: refused before any filter runs
    if outcome.error is not None:
        return outcome.error
    if status == 200:
        outcome.served = True
        if outcome.content_type.startswith("text/event-stream"):
            outcome.message_id = _sse_message_id(body)
        else:
            document = orjson.loads(body)
            outcome.message_id = document.get("id")
        return None if outcome.message_id else "200 without a message id"
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"{status} with a body that is not JSON: {body[:200]!r}"
    if document in REFUSALS.get(status or 0, []):
        return None
    if document in (STEALTH_ERROR, *BYOK_ERRORS) or _context_length_error(document):
        outcome.served = True  # an upstream error made readable (6.3): the upstream served it
        return None
    if status == 402 and isinstance(document.get("error"), dict) and document["error"].get("title") in PAYMENT_TITLES:
        return None
    if status == 413 and outcome.case.label == "8 MiB plus one byte":
        return None
    # The mock upstream's own refusal (it takes only a JSON object with a string model and a
    # list of messages, and valid "mock" options), passed through (Appendix A #19).
    error = document.get("error") if isinstance(document, dict) else None
    if status == 400 and isinstance(error, dict) and error.get("code") == 400 and isinstance(error.get("message"), str):
        outcome.served = True
        return None
    return f"{status} {body[:300]!r}"


# Envoy's default `max_request_headers_kb` (60 KiB): beyond it Envoy's HTTP/1 codec refuses
# the request (431 or a reset connection) before the ext_proc sees it.
ENVOY_HEADER_LIMIT = 60 * 1024


def describe(case: Case) -> str:
    """A case, short enough for a failure message (some bodies are megabytes)."""
    headers = [(name, value if len(value) < 80 else f"<{len(value)} chars>") for name, value in case.headers]
    body = case.body if len(case.body) < 300 else case.body[:300] + f"... <{len(case.body)} bytes>".encode()
    return f"{case.label or 'case'} body={body!r} headers={headers} caller={case.caller.kind}"


def _stack_secret(gateway: Gateway) -> bytes:
    return (gateway.data_dir / "nextauth_secret").read_text().strip().encode()


async def _send_all(gateway: Gateway, cases: list[Case], callers: Callers) -> list[Outcome]:
    limit = asyncio.Semaphore(CONCURRENCY)
    addresses = (str(ipaddress.ip_address("10.64.0.0") + n) for n in itertools.count(1))
    run = uuid.uuid4().hex[:8]
    outcomes = [Outcome(case, f"fuzz-{run}-{n}") for n, case in enumerate(cases)]

    async def send(client: httpx.AsyncClient, outcome: Outcome) -> None:
        case = outcome.case
        headers = [("content-type", "application/json"), ("x-forwarded-for", next(addresses)), ("x-kilocode-taskid", outcome.task_id)]
        value = authorization(case.caller, callers.tokens, callers.secret, callers.paid_id)
        if value is not None:
            headers.append(("authorization", value))
        if case.caller.kind == "org":
            headers.append(("x-kilocode-organizationid", callers.org_id))
        headers += case.headers
        outcome.header_bytes = sum(len(name) + len(value) for name, value in headers)
        async with limit:
            try:
                response = await client.post(gateway.chat_url, content=case.body, headers=headers)
            except httpx.TimeoutException as exc:
                outcome.error = f"no answer within {CLIENT_TIMEOUT} s: {exc!r}"
                return
            except httpx.HTTPError as exc:
                outcome.error = f"transport error: {exc!r}"
                return
        outcome.status, outcome.body = response.status_code, response.content
        outcome.content_type = response.headers.get("content-type", "")

    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT, limits=httpx.Limits(max_connections=CONCURRENCY)) as client:
        await asyncio.gather(*(send(client, outcome) for outcome in outcomes))
    return outcomes


ROWS_SQL = """
SELECT m.session_id, u.cost, m.market_cost, u.kilo_user_id, u.organization_id, u.requested_model,
       m.message_id, u.has_error, m.streamed
FROM microdollar_usage u JOIN microdollar_usage_metadata m ON m.id = u.id
WHERE m.session_id = ANY($1::text[])
"""


async def _ledger(gateway: Gateway, task_ids: list[str]) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(gateway.database_url)
    try:
        return await connection.fetch(ROWS_SQL, task_ids)
    finally:
        await connection.close()


def _writer_errors(gateway: Gateway) -> list[str]:
    lines = (gateway.data_dir / "stack.log").read_text(errors="replace").splitlines()
    return [line[:1500] for line in lines if '"component":"ledger_writer"' in line and '"level":"info"' not in line]


def _settled_rows(gateway: Gateway, task_ids: list[str], served: int, timeout: float = 300) -> list[asyncpg.Record]:
    """The ledger once every served request has its row and the outbox is empty (so a late
    duplicate would already be there); waits on the rows and the outbox gauge, not on time."""
    deadline = time.monotonic() + timeout
    while True:
        rows = asyncio.run(_ledger(gateway, task_ids))
        if (len(rows) >= served and outbox_depth(gateway) == 0) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


@pytest.fixture(scope="module")
def stack() -> Iterator[Gateway]:
    # Not under pytest's numbered temporary directories: another pytest run on the machine
    # may delete those while this long module still uses its Postgres there.
    with tempfile.TemporaryDirectory(prefix="llm-gateway-hostile-") as data_dir, \
            running_stack(Path(data_dir), **SESSION_STACK) as gateway:
        # Anthropic serves claude-sonnet-4.6 for BYOK (contract 3.3), before any request (the
        # map is cached from the first one).
        byok_map = {"anthropic/claude-sonnet-4.6": {"id": "anthropic/claude-sonnet-4.6", "name": "Claude Sonnet 4.6",
                                                    "endpoints": [{"provider_name": "Anthropic", "tag": "anthropic"}]}}
        gateway.sql("INSERT INTO models_by_provider (vercel) VALUES ($1::jsonb)", orjson.dumps(byok_map).decode())
        yield gateway


@pytest.fixture(scope="module")
def callers(stack: Gateway) -> Callers:
    paid = stack.new_user(credits_usd="100000")
    broke = stack.new_user(credits_usd="0")
    org = stack.cli("org", "create", "--name", f"fuzz-{uuid.uuid4().hex[:6]}", "--credits-usd", "100000")["id"]
    stack.cli("org", "add-member", "--org", org, "--user", paid["id"])
    tokens = {"paid": paid["token"], "broke": broke["token"], "org": paid["token"]}
    return Callers(tokens=tokens, secret=_stack_secret(stack), paid_id=paid["id"], org_id=org)


# The mock upstream keeps its last 10,000 generations: each batch is checked (bills included)
# before the next is sent.
BATCH = 4_000


def test_hostile_requests_get_contract_answers_and_exact_accounting(stack: Gateway, callers: Callers) -> None:
    truthy_served = check_batch(stack, callers, corpus())
    sent = 0
    for batch in range(-(-CASE_COUNT // BATCH)):
        # Drawn batch by batch (a batch of bodies is tens of megabytes), each from its own seed.
        cases = draw_cases(min(BATCH, CASE_COUNT - sent), SEED * 1_000_003 + batch)
        truthy_served += check_batch(stack, callers, cases)
        sent += len(cases)
    assert sent >= CASE_COUNT, f"hypothesis drew only {sent} cases (seed {SEED})"
    assert truthy_served, "no case exercised an upstream that streams for a truthy flag"


def check_batch(stack: Gateway, callers: Callers, cases: list[Case]) -> int:
    """Sends the cases and checks the invariant for each; returns how many were answered as
    SSE to a truthy, non-true `stream` flag."""
    outcomes = asyncio.run(_send_all(stack, cases, callers))
    violations = [f"{describe(o.case)} -> {problem}" for o in outcomes if (problem := classify(o)) is not None]
    assert not violations, f"{len(violations)} answers outside the contract, e.g.\n" + "\n".join(violations[:8])
    for pid in stack.children.values():
        os.kill(pid, 0)  # raises if the process is gone: a crashed worker

    served = [o for o in outcomes if o.served]
    rows = _settled_rows(stack, [o.task_id for o in outcomes], len(served))
    by_task: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        by_task.setdefault(row["session_id"], []).append(row)
    refused_with_rows = [o.task_id for o in outcomes if not o.served and o.task_id in by_task]
    assert not refused_with_rows, f"ledger rows for refused requests: {refused_with_rows[:5]}"
    wrong_count = [f"{len(by_task.get(o.task_id, []))} rows: {describe(o.case)}" for o in served if len(by_task.get(o.task_id, [])) != 1]
    assert not wrong_count, (
        f"{len(wrong_count)} served requests without exactly one row:\n" + "\n".join(wrong_count[:5])
        + "\nwriter errors:\n" + "\n".join(_writer_errors(stack)[-5:])
    )

    billed = asyncio.run(bills(stack, [o.message_id for o in served if o.message_id]))
    wrong_charge = []
    for outcome in served:
        [row] = by_task[outcome.task_id]
        bill = billed.get(outcome.message_id or "", 0)
        signed_in = not row["kilo_user_id"].startswith("anon:")
        expected = bill if signed_in and not is_free(row["requested_model"]) else 0
        if row["market_cost"] != bill or row["cost"] != expected or (outcome.message_id and row["message_id"] != outcome.message_id):
            wrong_charge.append(f"{describe(outcome.case)}: row {dict(row)}, bill {bill}")
    assert not wrong_charge, f"{len(wrong_charge)} rows not charged what the upstream billed:\n" + "\n".join(wrong_charge[:8])
    # The measured finding: an SSE answer to a truthy, non-true `stream` is charged in full.
    # (Its `streamed` column is the generation record's, contract 7.3, so it is not asserted.)
    truthy = [o for o in served if b'"truthy_stream": true' in o.case.body and o.content_type.startswith("text/event-stream")]
    for outcome in truthy:
        [row] = by_task[outcome.task_id]
        assert row["market_cost"] == billed[outcome.message_id or ""] > 0, dict(row)
    return len(truthy)


SECRET_FILES = {"nextauth_secret"}


def _outputs(gateway: Gateway) -> Iterator[tuple[str, str]]:
    """Every text the run wrote or serves: files under the data directory (process logs,
    Postgres's log), the metrics of every process, Envoy's statistics."""
    for path in sorted(Path(gateway.data_dir).rglob("*")):
        if path.is_file() and path.name not in SECRET_FILES and path.stat().st_size < 512 * 1024 * 1024:
            yield str(path), path.read_bytes().decode("utf-8", "replace")
    yield "metrics", gateway.metrics()
    yield "envoy stats", httpx.get(f"{gateway.admin_url}/stats/prometheus", timeout=30).text


def test_no_secret_reaches_logs_metrics_error_bodies_or_the_request_log(stack: Gateway, callers: Callers) -> None:
    byok_key = f"sk-byok-{uuid.uuid4().hex}"
    employee = stack.new_user(credits_usd="10", email=f"dev-{uuid.uuid4().hex[:6]}@kilo.ai")
    stack.cli("byok", "add", "--user", employee["id"], "--provider", "anthropic", "--key", byok_key)
    secrets = {
        "NEXTAUTH_SECRET": callers.secret.decode(),
        "BYOK_ENCRYPTION_KEY": SESSION_STACK["BYOK_ENCRYPTION_KEY"],
        "BYOK_ENCRYPTION_KEY (raw)": base64.b64decode(SESSION_STACK["BYOK_ENCRYPTION_KEY"]).decode(),
        "BYOK key": byok_key,
        "employee JWT": employee["token"],
        "paid JWT": callers.tokens["paid"],
        "broke JWT": callers.tokens["broke"],
    }
    # The stack's provider keys (the mock upstream's, one per provider of contract 3.1).
    for provider in ("openrouter", "gigapotato", "corethink", "martian", "mistral", "vercel"):
        secrets[f"{provider} key"] = f"mock-{provider}-key"
    # A JWT's signature is the part that must never leak; the header alone is not a secret.
    secrets |= {f"{name} signature": value.rsplit(".", 1)[1] for name, value in list(secrets.items()) if "JWT" in name}

    bodies: list[bytes] = []
    employee_auth = {"authorization": f"Bearer {employee['token']}"}
    exchanges: list[tuple[dict[str, Any], dict[str, str]]] = [
        # BYOK answers: a provider refusing the customer's key ([BYOK] texts, 6.3), and success.
        ({"model": "anthropic/claude-sonnet-4.6", "messages": [{"role": "user", "content": "k"}], "mock": {"status": 401}}, employee_auth),
        ({"model": "anthropic/claude-sonnet-4.6", "messages": [{"role": "user", "content": "k"}], "stream": True}, employee_auth),
        # The employee request log (8.2) of a plain paid request, and an upstream error.
        ({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "log"}]}, employee_auth),
        ({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "log"}], "mock": {"status": 500}}, employee_auth),
        # A refused token that starts with a real one: neither may be logged or echoed.
        ({"model": "openai/gpt-4o-mini", "messages": []}, {"authorization": f"Bearer {employee['token']}x"}),
    ]
    for body, headers in exchanges:
        response = httpx.post(stack.chat_url, json=body, headers={**headers, "x-kilocode-taskid": f"secrets-{uuid.uuid4().hex}"}, timeout=30)
        bodies.append(response.content)
    # The customer's key was used: the provider's 401 came back with the BYOK text (6.3).
    assert orjson.loads(bodies[0])["error"].startswith("[BYOK]"), bodies[0]
    # The employee's rows and request log are written: the outbox and the ledger settle.
    deadline = time.monotonic() + 120
    while True:
        count = asyncio.run(_count_request_log(stack, employee["id"]))
        if (count >= 4 and outbox_depth(stack) == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert count >= 4, "the employee's requests were not logged"

    outputs = list(_outputs(stack))
    outputs += [(f"error body {n}", body.decode("utf-8", "replace")) for n, body in enumerate(bodies)]
    outputs += [("api_request_log", text) for text in asyncio.run(_request_log_texts(stack, employee["id"]))]
    assert any(name.endswith("stack.log") for name, _ in outputs)
    leaks = [(where, name) for where, text in outputs for name, secret in secrets.items() if secret in text]
    assert not leaks, f"secrets found: {leaks[:10]}"


async def _count_request_log(gateway: Gateway, user_id: str) -> int:
    connection = await asyncpg.connect(gateway.database_url)
    try:
        return await connection.fetchval("SELECT count(*) FROM api_request_log WHERE kilo_user_id = $1", user_id)
    finally:
        await connection.close()


async def _request_log_texts(gateway: Gateway, user_id: str) -> list[str]:
    connection = await asyncpg.connect(gateway.database_url)
    try:
        rows = await connection.fetch("SELECT request::text, response FROM api_request_log WHERE kilo_user_id = $1", user_id)
    finally:
        await connection.close()
    return [f"{row['request']}\n{row['response']}" for row in rows]
