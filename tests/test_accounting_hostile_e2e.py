"""A NUL in any text that reaches the ledger, through real Envoy: the paid request is charged
exactly once, what the upstream billed (it used to be served free, its record retried forever).

One test per field a client (or the upstream) controls and the ledger stores. Headers cannot
carry a NUL through Envoy (it refuses them), so the fields are the body's texts and the
upstream's. NUL is stored as U+FFFD (extproc/storable.py).
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest

from extproc.local.mock_upstream import MockOptions, expected_usage
from extproc.money import usd_to_microdollars
from tests.conftest import Gateway, fresh_ip
from tests.test_accounting_e2e import _message_id, db, wait_for_rows

MODEL = "openai/gpt-4o-mini"
NUL = "hello\u0000world"


def _body(field: str) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "hi"}]
    body: dict[str, Any] = {"model": MODEL, "messages": messages}
    if field == "user message":
        messages[0]["content"] = NUL
    elif field == "user message text part":
        messages[0]["content"] = [{"type": "text", "text": NUL}]
    elif field == "system message":
        messages.insert(0, {"role": "system", "content": NUL})
    elif field == "developer message":
        messages.insert(0, {"role": "developer", "content": NUL})
    elif field == "model":
        body["model"] = MODEL + "\u0000"  # the mock answers with the model it was asked for
    elif field == "upstream provider name":
        body["mock"] = {"provider": "Mock\u0000Provider"}
    elif field == "employee request log":
        messages[0]["content"] = NUL  # logged in the request, and echoed in the response
    return body


FIELDS = (
    "user message",
    "user message text part",
    "system message",
    "developer message",
    "model",
    "upstream provider name",
    "employee request log",
)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("field", FIELDS)
def test_a_nul_in_a_stored_text_is_charged_exactly_once(gateway: Gateway, field: str, stream: bool) -> None:
    email = f"nul-{uuid.uuid4().hex[:10]}@kilo.ai" if field == "employee request log" else None
    user = gateway.new_user(credits_usd="10", email=email)
    body = {**_body(field), "stream": stream}
    response = httpx.post(
        gateway.chat_url,
        json=body,
        headers={"authorization": f"Bearer {user['token']}", "x-forwarded-for": fresh_ip()},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    [row] = wait_for_rows(gateway, [_message_id(response, stream)], timeout=30)
    bill = usd_to_microdollars(expected_usage(body, MockOptions())["cost"])
    assert row["cost"] == bill > 0
    assert row["kilo_user_id"] == user["id"]
    rows, used = db(
        gateway,
        lambda c: c.fetchrow(
            "SELECT (SELECT count(*) FROM microdollar_usage WHERE kilo_user_id = $1) AS rows,"
            " (SELECT microdollars_used FROM kilocode_users WHERE id = $1) AS used",
            user["id"],
        ),
    )
    assert (rows, used) == (1, bill)
    stored = db(
        gateway,
        lambda c: c.fetchrow(
            "SELECT model, requested_model, inference_provider, user_prompt_prefix, system_prompt_prefix"
            " FROM microdollar_usage_view WHERE id = $1",
            row["id"],
        ),
    )
    if field == "model":
        assert stored["model"] == stored["requested_model"] == MODEL + "\ufffd"
    elif field == "upstream provider name":
        assert stored["inference_provider"] == "Mock\ufffdProvider"
    elif field in ("system message", "developer message"):
        assert stored["system_prompt_prefix"] == "hello\ufffdworld"
    else:
        assert stored["user_prompt_prefix"] == "hello\ufffdworld"
    if field == "employee request log":
        log = db(gateway, lambda c: c.fetchrow("SELECT request, response FROM api_request_log WHERE kilo_user_id = $1", user["id"]))
        assert orjson.loads(log["request"])["messages"][0]["content"] == "hello\ufffdworld"
        # The upstream's JSON escapes the NUL it echoes: text Postgres stores as it came.
        assert "hello\\u0000world" in log["response"]
    assert gateway.cli("outbox", "dead-letters")["count"] == 0
