"""Upstream resilience through real Envoy (issue 25): same-provider retries, what is never
retried, and that a retried request is charged once, for the attempt that served.

Faults are scripted per attempt in the mock upstream (`"mock": {"tag", "faults"}`, see
docs/mock-upstream.md); its answer log says what each attempt of a tag was answered.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import SESSION_STACK, Gateway, fresh_ip, running_stack
from tests.ledger_support import microdollars
from tests.test_routing_e2e import BYOK_MODELS, Metrics, new_user, task_id

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


def _envoy_counter(gateway: Gateway, name: str) -> int:
    """One of Envoy's own counters (`/stats`), e.g. a provider cluster's retries."""
    text = httpx.get(f"{gateway.admin_url}/stats", params={"filter": f"^{name}$"}, timeout=10).text
    values = [int(line.rsplit(": ", 1)[1]) for line in text.splitlines() if line.startswith(f"{name}: ")]
    return values[0] if values else 0


def _billed(gateway: Gateway, message_id: str) -> int:
    response = httpx.get(f"{gateway.mock_url}/openrouter/api/v1/generation", params={"id": message_id}, timeout=10)
    response.raise_for_status()
    return microdollars(response.json()["data"]["total_cost"])


@pytest.mark.parametrize(("status", "stream"), [(503, False), (502, True)])
def test_a_transient_failure_is_served_after_one_retry_and_charged_once(
    upstream: Gateway, user: dict[str, Any], status: int, stream: bool
) -> None:
    tag = f"retry-{uuid.uuid4().hex}"
    stat = "cluster.provider_openrouter.upstream_rq_retry_success"
    retried_before = _envoy_counter(upstream, stat)
    response = _chat(upstream, user, tag, stream=stream, faults={"*": [{"status": status}]})
    assert response.status_code == 200, response.text
    # The failed attempt is in Envoy's metrics of the provider's cluster (never on the bill).
    assert _envoy_counter(upstream, stat) == retried_before + 1
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


# --- cooldowns: the next requests go to the other provider (a stack of their own: a cooldown
# lasts for seconds and would move other tests' requests) ------------------------------------

A_B_MODEL = "z-ai/glm-5"  # in the Vercel split (contract 3.5); Vercel's id is zai/glm-5 (3.6)
DOWN_MODEL = "x-ai/grok-code-fast-1"  # likewise; xai/grok-code-fast-1 on Vercel
BYOK_MODEL = "anthropic/claude-sonnet-4.6"


@pytest.fixture(scope="module")
def cooling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_stack(tmp_path_factory.mktemp("cooling"), **SESSION_STACK) as gw:
        # Before any request: the BYOK map is cached from the first authenticated request.
        gw.sql("INSERT INTO models_by_provider (vercel) VALUES ($1::jsonb)", orjson.dumps(BYOK_MODELS).decode())
        yield gw


def _counter(gateway: Gateway, name: str, **labels: str) -> float:
    return Metrics(gateway).get(name, **labels)


def _wait_for_counter(gateway: Gateway, name: str, at_least: float, **labels: str) -> None:
    deadline = time.monotonic() + 10
    while _counter(gateway, name, **labels) < at_least:
        assert time.monotonic() < deadline, f"{name}{labels} never reached {at_least}"
        time.sleep(0.05)


def _routed_chat(
    gateway: Gateway, token: str, model: str, task: str, tag: str, *, stream: bool = False, **mock: Any
) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "mock": {"tag": tag, **mock}}
    if stream:
        body["stream"] = True
    headers = {"authorization": f"Bearer {token}", "x-forwarded-for": fresh_ip(), "x-kilocode-taskid": task}
    return httpx.post(gateway.chat_url, json=body, headers=headers, timeout=60)


def _received(gateway: Gateway, tag: str) -> list[dict[str, Any]]:
    return [r for r in gateway.upstream_requests() if (r["body"] or {}).get("mock", {}).get("tag") == tag]


def test_a_429_with_retry_after_moves_the_next_requests_for_the_model_to_the_other_provider(cooling: Gateway) -> None:
    user = new_user(cooling, credits_usd=100)
    task = task_id(vercel=False)  # the split sends this task to OpenRouter
    cooled_before = _counter(cooling, "llm_gateway_provider_cooldowns_total", provider="openrouter", reason="retry_after")
    first = _routed_chat(
        cooling, user["token"], A_B_MODEL, task, "limited", faults={"openrouter": [{"status": 429, "retry_after": 30}]}
    )
    assert first.status_code == 429
    assert [(a["provider"], a["status"]) for a in _answers(cooling, "limited")] == [("openrouter", 429)]
    _wait_for_counter(
        cooling, "llm_gateway_provider_cooldowns_total", cooled_before + 1, provider="openrouter", reason="retry_after"
    )

    served = _routed_chat(cooling, user["token"], A_B_MODEL, task, "moved")
    assert served.status_code == 200, served.text
    # Vercel, under Vercel's id for the model and with Kilo's Vercel key; no OpenRouter request.
    [received] = _received(cooling, "moved")
    assert received["path"] == "/vercel/v1/chat/completions"
    assert received["headers"]["authorization"] == "Bearer mock-vercel-key"
    assert received["body"]["model"] == "zai/glm-5"
    assert [a["provider"] for a in _answers(cooling, "moved")] == ["vercel"]
    assert _counter(cooling, "llm_gateway_routed_around_cooldown_total", cooled="openrouter", used="vercel") >= 1
    # One row per request: the refused one (nothing charged) and the served one, under Vercel,
    # charged what Vercel billed.
    rows = {row["message_id"]: row for row in _ledger_rows(cooling, task, expect=2)}
    generation = _answers(cooling, "moved")[0]["generation"]
    assert rows[generation]["provider"] == "vercel"
    assert rows[generation]["cost"] == _billed(cooling, generation)
    assert [row["cost"] for message_id, row in rows.items() if message_id != generation] == [0]
    # A stream goes the same way and streams as usual.
    streamed = _routed_chat(cooling, user["token"], A_B_MODEL, task, "moved-stream", stream=True)
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert [a["provider"] for a in _answers(cooling, "moved-stream")] == ["vercel"]


def test_a_provider_down_for_a_model_is_replaced_by_the_other_after_a_burst_of_5xx(cooling: Gateway) -> None:
    user = new_user(cooling, credits_usd=100)
    task = task_id(vercel=False)
    down = {"openrouter": [{"status": 503}] * 2}
    for i in range(5):  # LLM_GATEWAY_COOLDOWN_5XX_BURST
        response = _routed_chat(cooling, user["token"], DOWN_MODEL, task, f"down-{task}-{i}", faults=down)
        assert response.status_code == 503
    _wait_for_counter(cooling, "llm_gateway_provider_cooldowns_total", 1, provider="openrouter", reason="5xx_burst")
    # OpenRouter is still down for it, but the next request does not go there.
    tag = f"down-{task}-served"
    served = _routed_chat(cooling, user["token"], DOWN_MODEL, task, tag, faults=down)
    assert served.status_code == 200, served.text
    [received] = _received(cooling, tag)
    assert received["path"] == "/vercel/v1/chat/completions"
    assert received["body"]["model"] == "xai/grok-code-fast-1"
    assert received["headers"]["authorization"] == "Bearer mock-vercel-key"


def test_a_byok_request_stays_on_its_own_provider_through_retries_and_cooldowns(cooling: Gateway) -> None:
    user = new_user(cooling, credits_usd=0)
    cooling.cli("byok", "add", "--user", user["id"], "--provider", "anthropic", "--key", f"sk-ant-{uuid.uuid4().hex}")
    task = f"byok-{uuid.uuid4().hex}"
    # Retried on its own provider (Vercel with the customer's key), and served there.
    retried = _routed_chat(cooling, user["token"], BYOK_MODEL, task, "byok-retried", faults={"*": [{"status": 503}]})
    assert retried.status_code == 200, retried.text
    assert [(a["provider"], a["status"]) for a in _answers(cooling, "byok-retried")] == [("vercel", 503), ("vercel", 200)]
    # Its failures never cool Vercel for everyone, and never send it to OpenRouter's keys.
    for i in range(6):
        failed = _routed_chat(
            cooling, user["token"], BYOK_MODEL, task, f"byok-down-{i}", faults={"*": [{"status": 503}] * 2}
        )
        assert failed.status_code == 503
    answers = [a for a in _answers_all(cooling) if str(a["tag"]).startswith("byok-")]
    assert {a["provider"] for a in answers} == {"vercel"}
    assert _counter(cooling, "llm_gateway_provider_cooldowns_total", provider="vercel") == 0


def _answers_all(gateway: Gateway) -> list[dict[str, Any]]:
    return list(httpx.get(f"{gateway.mock_url}/__mock/answers", timeout=10).json())
