"""An ext_proc replica SIGKILLed while it serves: the requests it had in flight are still in
the ledger, once, from their write-ahead records (extproc/accounting/inflight.py).

Through the real stack with one ext_proc worker, its heartbeat expiring after 1 s: a paid
stream whose first chunks the client has read (so the replica has seen its message id), and a
paid JSON request whose upstream has not answered yet. After the kill, Envoy cuts both; the
supervisor starts a new replica, and the ledger writer moves the dead one's records to the
outbox. The stream's row is charged what the upstream billed (the writer looks the bill up by
the message id, contract 7.3); the JSON request's row records a cut request charged nothing,
since its message id never reached the gateway. The user's balance is the sum of the rows.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, fresh_ip, running_stack
from tests.ledger_support import bills

MODEL = "openai/gpt-4o-mini"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_stack(
        tmp_path_factory.mktemp("crash"),
        LLM_GATEWAY_EXTPROC_WORKERS="1",
        LLM_GATEWAY_INFLIGHT_TTL_SECONDS="1",
        LLM_GATEWAY_TRUSTED_PROXY_HOPS="1",
    ) as gateway:
        yield gateway


def _replica_pid(gateway: Gateway) -> int:
    children: dict[str, int] = json.loads((gateway.data_dir / "stack.json").read_text())["children"]
    return children["ext_proc"]  # the first (here the only) worker


def _rows(gateway: Gateway, task_id: str) -> list[Any]:
    return gateway.sql(
        """SELECT u.cost, m.market_cost, m.message_id, m.status_code, m.cancelled, u.has_error
           FROM microdollar_usage u JOIN microdollar_usage_metadata m ON m.id = u.id WHERE m.session_id = $1""",
        task_id,
    )


def _wait_for_rows(gateway: Gateway, task_ids: list[str], timeout: float = 60) -> dict[str, list[Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = {task_id: _rows(gateway, task_id) for task_id in task_ids}
        if all(rows.values()) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_requests_in_flight_on_a_killed_replica_are_accounted_once(stack: Gateway) -> None:
    user = stack.new_user(credits_usd="100")
    headers = {"authorization": f"Bearer {user['token']}", "x-forwarded-for": fresh_ip()}
    stream_task, json_task = f"crash-stream-{time.time_ns()}", f"crash-json-{time.time_ns()}"
    message_ids: list[str] = []
    two_chunks_read = threading.Event()
    json_sent = threading.Event()
    outcomes: dict[str, str] = {}

    def stream() -> None:
        body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "crash"}],
                "mock": {"chunks": 200, "chunk_delay_ms": 50}}
        content = 0
        try:
            with httpx.stream("POST", stack.chat_url, json=body, headers={**headers, "x-kilocode-taskid": stream_task},
                              timeout=60) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        message_ids.append(json.loads(line[6:])["id"])
                        if '"content":"' in line:
                            content += 1
                            if content == 2:
                                two_chunks_read.set()
            outcomes["stream"] = "finished"
        except httpx.HTTPError as exc:
            outcomes["stream"] = type(exc).__name__

    def json_request() -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "crash"}], "mock": {"headers_delay_ms": 5000, "tag": json_task}}
        json_sent.set()
        try:
            response = httpx.post(stack.chat_url, json=body, headers={**headers, "x-kilocode-taskid": json_task}, timeout=60)
            outcomes["json"] = str(response.status_code)
        except httpx.HTTPError as exc:
            outcomes["json"] = type(exc).__name__

    threads = [threading.Thread(target=stream), threading.Thread(target=json_request)]
    for thread in threads:
        thread.start()
    assert two_chunks_read.wait(30) and json_sent.wait(30)
    # The JSON request is admitted (and its upstream call open) once the mock has it.
    deadline = time.monotonic() + 30
    while json_task not in {a["tag"] for a in httpx.get(f"{stack.mock_url}/__mock/answers", timeout=10).json()}:
        assert time.monotonic() < deadline, "the JSON request never reached the upstream"
        time.sleep(0.05)
    os.kill(_replica_pid(stack), signal.SIGKILL)
    for thread in threads:
        thread.join(60)
    # The stream was cut (the replica's stream to Envoy died with it); the JSON request failed.
    assert outcomes["stream"] != "finished", outcomes

    rows = _wait_for_rows(stack, [stream_task, json_task])
    [streamed] = rows[stream_task]
    [unanswered] = rows[json_task]
    [message_id] = set(message_ids)
    bill = asyncio.run(bills(stack, [message_id]))[message_id]
    assert bill > 0
    # The stream: its message id was written ahead, so the writer found the upstream's bill.
    assert (streamed["message_id"], streamed["cost"], streamed["market_cost"]) == (message_id, bill, bill)
    assert streamed["cancelled"] and streamed["has_error"]
    # The JSON request: no response reached the gateway, so no message id and no charge (the
    # upstream, cut while it waited, generated nothing).
    assert (unanswered["message_id"], unanswered["status_code"], unanswered["cost"]) == ("<missing>", 0, 0)
    assert unanswered["cancelled"] and unanswered["has_error"]
    [used] = stack.sql("SELECT microdollars_used FROM kilocode_users WHERE id = $1", user["id"])
    assert used["microdollars_used"] == bill
    # Operators see it: the writer counts the records it took from the dead replica.
    [reaped] = [line for line in stack.metrics().splitlines() if line.startswith("llm_gateway_inflight_reaped_total")]
    assert float(reaped.rsplit(" ", 1)[1]) == 2

    # The supervisor's new replica serves (once Envoy tries it again after the ejection), and
    # nothing is written twice meanwhile.
    deadline = time.monotonic() + 60
    while httpx.post(stack.chat_url, json={"model": MODEL, "messages": [{"role": "user", "content": "after"}]},
                     headers=headers, timeout=60).status_code != 200:
        assert time.monotonic() < deadline, "the restarted replica never served"
        time.sleep(0.2)
    assert [len(r) for r in _wait_for_rows(stack, [stream_task, json_task]).values()] == [1, 1]
