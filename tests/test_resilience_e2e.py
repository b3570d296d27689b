"""Upstream resilience through real Envoy (issue 25): same-provider retries, what is never
retried, and that a retried request is charged once, for the attempt that served.

Faults are scripted per attempt in the mock upstream (`"mock": {"tag", "faults"}`, see
docs/mock-upstream.md); its answer log says what each attempt of a tag was answered.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, fresh_ip
from tests.ledger_support import microdollars
from tests.test_routing_e2e import new_user

PAID_MODEL = "openai/gpt-4o-mini"  # OpenRouter only (not in the Vercel split)
# Contract 6.1 / Appendix A: what a client sees for an upstream the gateway could not use.
SERVICE_UNAVAILABLE = {
    "error": "Service Unavailable",
    "message": "The service is temporarily unavailable. Please try again later.",
}


@pytest.fixture
def user(gateway: Gateway) -> dict[str, Any]:
    return new_user(gateway, credits_usd=100)


def _chat(gateway: Gateway, user: dict[str, Any], tag: str, *, stream: bool = False, **mock: Any) -> httpx.Response:
    body: dict[str, Any] = {
        "model": PAID_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "mock": {"tag": tag, **mock},
    }
    if stream:
        body["stream"] = True
    headers = {"authorization": f"Bearer {user['token']}", "x-forwarded-for": fresh_ip(), "x-kilocode-taskid": tag}
    return httpx.post(gateway.chat_url, json=body, headers=headers, timeout=60)


def _answers(gateway: Gateway, tag: str) -> list[dict[str, Any]]:
    """What the upstream answered each attempt of `tag`, in order."""
    return [a for a in httpx.get(f"{gateway.mock_url}/__mock/answers", timeout=10).json() if a["tag"] == tag]


def _ledger_rows(gateway: Gateway, tag: str, *, expect: int) -> list[Any]:
    sql = """SELECT u.cost, u.provider, m.message_id FROM microdollar_usage u
             JOIN microdollar_usage_metadata m ON m.id = u.id WHERE m.session_id = $1"""
    deadline = time.monotonic() + 60
    while len(rows := gateway.sql(sql, tag)) < expect:
        assert time.monotonic() < deadline, f"{len(rows)} ledger rows for {tag}, expected {expect}"
        time.sleep(0.2)
    return rows


def _billed(gateway: Gateway, message_id: str) -> int:
    response = httpx.get(f"{gateway.mock_url}/openrouter/api/v1/generation", params={"id": message_id}, timeout=10)
    response.raise_for_status()
    return microdollars(response.json()["data"]["total_cost"])


@pytest.mark.parametrize(("status", "stream"), [(503, False), (502, True)])
def test_a_transient_failure_is_served_after_one_retry_and_charged_once(
    upstream: Gateway, user: dict[str, Any], status: int, stream: bool
) -> None:
    tag = f"retry-{uuid.uuid4().hex}"
    response = _chat(upstream, user, tag, stream=stream, faults={"*": [{"status": status}]})
    assert response.status_code == 200, response.text
    if stream:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "data: [DONE]" in response.text
    else:
        assert response.json()["choices"][0]["message"]["content"].startswith("Mock reply")
    answers = _answers(upstream, tag)
    assert [a["status"] for a in answers] == [status, 200]
    # Two attempts upstream, one row: the served attempt's, charged what it billed.
    [row] = _ledger_rows(upstream, tag, expect=1)
    assert row["message_id"] == answers[1]["generation"]
    assert row["provider"] == "openrouter"
    assert row["cost"] == _billed(upstream, row["message_id"])
    time.sleep(0.5)  # a second row would be written by now (the first arrived within it)
    assert len(_ledger_rows(upstream, tag, expect=1)) == 1


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500])
def test_other_statuses_are_never_retried(upstream: Gateway, user: dict[str, Any], status: int) -> None:
    tag = f"no-retry-{uuid.uuid4().hex}"
    response = _chat(upstream, user, tag, faults={"*": [{"status": status}]})
    assert response.status_code != 200
    assert [a["status"] for a in _answers(upstream, tag)] == [status]


def test_a_reset_after_the_request_was_sent_is_not_retried(upstream: Gateway, user: dict[str, Any]) -> None:
    """The abandoned attempt may still run (and be billed) upstream: no second one."""
    tag = f"reset-{uuid.uuid4().hex}"
    response = _chat(upstream, user, tag, faults={"*": [{"reset": True}]})
    assert response.status_code == 503
    assert response.json() == SERVICE_UNAVAILABLE
    assert [a["status"] for a in _answers(upstream, tag)] == ["reset"]


def test_a_mid_stream_failure_is_never_retried(upstream: Gateway, user: dict[str, Any]) -> None:
    tag = f"cut-{uuid.uuid4().hex}"
    body = {
        "model": PAID_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "mock": {"tag": tag, "chunks": 5, "cut_after": 2, "chunk_delay_ms": 100},
    }
    headers = {"authorization": f"Bearer {user['token']}", "x-forwarded-for": fresh_ip()}
    received = b""
    with httpx.stream("POST", upstream.chat_url, json=body, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        try:
            for data in response.iter_bytes():
                received += data
        except httpx.RemoteProtocolError:
            pass  # the cut reaches the client as a cut
    assert b"w1" in received and b"w4" not in received
    assert len(_answers(upstream, tag)) == 1


def test_everything_down_gives_the_contract_error_after_the_bounded_attempts(
    upstream: Gateway, user: dict[str, Any]
) -> None:
    tag = f"down-{uuid.uuid4().hex}"
    response = _chat(upstream, user, tag, faults={"*": [{"status": 503}] * 5})
    # The last attempt's answer, passed on as the contract says (6.2: an upstream error is relayed).
    assert response.status_code == 503
    assert response.json() == {"error": {"message": "Mock upstream error 503", "code": 503}}
    # Two attempts (one retry), then the client has its answer; one row for the request (an
    # error row, contract 7), charged nothing.
    assert [a["status"] for a in _answers(upstream, tag)] == [503, 503]
    [row] = _ledger_rows(upstream, tag, expect=1)
    assert row["cost"] == 0 and row["provider"] == "openrouter"
    time.sleep(0.5)
    assert len(_ledger_rows(upstream, tag, expect=1)) == 1


def test_a_body_larger_than_envoys_default_buffer_keeps_its_retry(upstream: Gateway, user: dict[str, Any]) -> None:
    """Envoy keeps a copy of the body to replay; a body beyond that copy's limit (the route's
    `request_body_buffer_limit`, else the stream's buffer limit) would lose its retry silently.
    3 MiB is within the client limit (8 MiB) and beyond Envoy's default 1 MiB."""
    tag = f"large-{uuid.uuid4().hex}"
    body = {
        "model": PAID_MODEL,
        "messages": [{"role": "user", "content": "x" * (3 * 1024 * 1024)}],
        "mock": {"tag": tag, "faults": {"*": [{"status": 503}]}, "content": "ok"},
    }
    headers = {"authorization": f"Bearer {user['token']}", "x-forwarded-for": fresh_ip()}
    response = httpx.post(upstream.chat_url, json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert [a["status"] for a in _answers(upstream, tag)] == [503, 200]
