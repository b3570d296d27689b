"""How Envoy ends the ext_proc's side streams, through real Envoy (issue 27).

Envoy must half-close each side stream and wait for the ext_proc's status: a reset makes
grpc.aio leak the failed status batch (grpc/grpc#43360), about 50-115 bytes of native memory
per request. `llm_gateway_extproc_streams_ended_total` counts how each stream ended, so these
tests assert on a counter instead of on memory or timing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Gateway
from tests.test_accounting_e2e import wait_for_rows

MODEL = "openai/gpt-4o-mini"
BURST = 40


def streams_ended(gateway: Gateway) -> dict[str, float]:
    ended = {"ok": 0.0, "cancelled": 0.0, "failed": 0.0}
    for family in text_string_to_metric_families(gateway.metrics()):
        if family.name == "llm_gateway_extproc_streams_ended":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    ended[sample.labels["outcome"]] += sample.value
    return ended


def wait_for_ends(gateway: Gateway, before: dict[str, float], count: int, timeout: float = 30) -> dict[str, float]:
    """The change in each outcome once `count` more streams have ended."""
    deadline = time.monotonic() + timeout
    while True:
        now = streams_ended(gateway)
        change = {outcome: now[outcome] - before[outcome] for outcome in now}
        if sum(change.values()) >= count or time.monotonic() > deadline:
            return change
        time.sleep(0.1)


def _body(k: int, stream: bool) -> dict[str, Any]:
    return {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": f"side stream {k}"}],
            "mock": {"chunks": 5}}


async def _burst(gateway: Gateway, headers: dict[str, str]) -> list[int]:
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(k: int) -> int:
            response = await client.post(gateway.chat_url, json=_body(k, k % 2 == 0), headers=headers)
            return response.status_code

        return await asyncio.gather(*(one(k) for k in range(BURST)))


def test_completed_requests_end_their_side_streams_cleanly_never_cancelled(gateway: Gateway) -> None:
    user = gateway.new_user(credits_usd="100")
    headers = {"authorization": f"Bearer {user['token']}"}
    before = streams_ended(gateway)

    statuses = asyncio.run(_burst(gateway, headers))

    assert statuses == [200] * BURST
    assert wait_for_ends(gateway, before, BURST) == {"ok": BURST, "cancelled": 0, "failed": 0}


def test_a_client_abort_still_ends_cancelled_and_is_still_charged(gateway: Gateway) -> None:
    user = gateway.new_user(credits_usd="10")
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "cut short"}],
            "mock": {"chunks": 30, "chunk_delay_ms": 150}}
    before = streams_ended(gateway)
    message_id = None
    with httpx.stream("POST", gateway.chat_url, json=body, headers={"authorization": f"Bearer {user['token']}"},
                      timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                message_id = orjson.loads(line[6:])["id"]
                break  # the client goes away mid-stream

    assert wait_for_ends(gateway, before, 1) == {"ok": 0, "cancelled": 1, "failed": 0}
    assert message_id is not None
    [row] = wait_for_rows(gateway, [message_id])
    assert row["cancelled"] is True
    assert row["cost"] > 0
