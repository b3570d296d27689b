"""Contract 7.3 with decision 10: the generation refetch's retry rule, backoff and 20 s cap, and
the BYOK branch of the charge (extproc/accounting/generation.py, cost.py).

A real aiohttp server plays the generation endpoint; the waits are recorded instead of slept,
so the schedule is checked exactly and the tests take no wall-clock time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from extproc.accounting import generation
from extproc.accounting.cost import Charge, billable, from_generation
from extproc.accounting.http1 import Client
from extproc.response_usage import ReportedUsage

DATA = {"id": "gen-1", "total_cost": 0.000123, "native_tokens_prompt": 10, "native_tokens_completion": 5}
# Contract 7.3: first delay 200 ms, x1.5 each time, give up when the next delay would pass
# 20 s in total: 0.2 + 0.3 + ... + 5.126 = 14.98 s, and the next (7.69 s) would pass 20 s.
CONTRACT_DELAYS = [0.2, 0.3, 0.45, 0.675, 1.0125, 1.51875, 2.278125, 3.4171875, 5.12578125]
FIRST_WAIT = 0.2


class Endpoint:
    """Answers each lookup with the next scripted status (the last one repeats)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.calls = 0

    async def handle(self, request: web.Request) -> web.Response:
        status = self.statuses[min(self.calls, len(self.statuses) - 1)]
        self.calls += 1
        if status == 200:
            return web.json_response({"data": {**DATA, "id": request.query["id"]}})
        return web.json_response({"error": {"code": status}}, status=status)


@pytest.fixture
async def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait the refetch asks for, recorded and not slept."""
    recorded: list[float] = []
    real_sleep = asyncio.sleep

    async def record(delay: float, *args: Any) -> Any:
        if delay > 0:
            recorded.append(delay)
        return await real_sleep(0, *args)

    monkeypatch.setattr(generation.asyncio, "sleep", record)
    return recorded


Fetch = Callable[[list[int]], Awaitable[tuple[dict[str, Any] | None, Endpoint]]]


@pytest.fixture
async def fetch() -> AsyncIterator[Fetch]:
    servers: list[TestServer] = []
    client = Client()
    try:

        async def run(statuses: list[int]) -> tuple[dict[str, Any] | None, Endpoint]:
            endpoint = Endpoint(statuses)
            app = web.Application()
            app.router.add_get("/api/v1/generation", endpoint.handle)
            server = TestServer(app)
            await server.start_server()
            servers.append(server)
            data = await generation.fetch_generation(
                client, str(server.make_url("/api/v1")), "key", "gen-1", {}
            )
            return data, endpoint

        yield run
    finally:
        await client.close()
    for server in servers:
        await server.close()


@pytest.mark.parametrize("status", [401, 403, 400, 402])
async def test_no_retry_on_statuses_that_will_not_change(fetch: Fetch, waits: list[float], status: int) -> None:
    """Decision 10 and the seed review: no retries on 401/403 (nor any non-404/429/5xx)."""
    data, endpoint = await fetch([status, 200])
    assert data is None
    assert endpoint.calls == 1
    assert waits == [FIRST_WAIT]


@pytest.mark.parametrize("status", [404, 429, 500, 502, 503])
async def test_retryable_statuses_are_retried_until_found(fetch: Fetch, waits: list[float], status: int) -> None:
    data, endpoint = await fetch([status, status, status, 200])
    assert data is not None and data["total_cost"] == DATA["total_cost"]
    assert endpoint.calls == 4


async def test_backoff_follows_the_contract_and_stops_at_20_seconds(fetch: Fetch, waits: list[float]) -> None:
    data, endpoint = await fetch([404])
    assert data is None
    assert endpoint.calls == len(CONTRACT_DELAYS) + 1  # the first try, then one per delay
    assert waits[0] == FIRST_WAIT
    retries = waits[1:]
    assert len(retries) == len(CONTRACT_DELAYS)
    for waited, nominal in zip(retries, CONTRACT_DELAYS, strict=True):
        assert nominal * 0.975 <= waited <= nominal * 1.025  # +-2.5 % jitter
    assert sum(CONTRACT_DELAYS) <= 20 < sum(CONTRACT_DELAYS) + CONTRACT_DELAYS[-1] * 1.5


def _charge() -> Charge:
    usage = ReportedUsage(input_tokens=1, output_tokens=1, cache_hit_tokens=0, cache_write_tokens=0, cost_microdollars=999, is_byok=None)
    return Charge(usage=usage, cache_discount_microdollars=None, inference_provider=None)


def test_byok_generation_is_charged_the_upstream_inference_cost() -> None:
    """Contract 7.3: BYOK cost is `upstream_inference_cost`, not OpenRouter's 5 % fee."""
    data = {"is_byok": True, "total_cost": 0.00005, "upstream_inference_cost": 0.001, "native_tokens_prompt": 3}
    charge = from_generation(_charge(), data, streamed=False)
    assert charge.usage.cost_microdollars == 1_000
    assert charge.usage.is_byok is True


def test_byok_generation_without_upstream_cost_is_twenty_times_the_fee() -> None:
    data = {"is_byok": True, "total_cost": 0.00005}
    assert from_generation(_charge(), data, streamed=False).usage.cost_microdollars == 1_000


def test_non_byok_generation_is_charged_the_total_cost() -> None:
    data = {"is_byok": False, "total_cost": 0.00005, "upstream_inference_cost": 0.001}
    assert from_generation(_charge(), data, streamed=True).usage.cost_microdollars == 50


def test_byok_requests_are_billed_nothing() -> None:
    """Contract 7.4: BYOK zeroes the charge (the market cost keeps the figure)."""
    charge = from_generation(_charge(), {"is_byok": True, "upstream_inference_cost": 0.001, "cache_discount": 0.0001}, streamed=False)
    assert billable(charge, free_model=False, user_byok=True, promotion=False) == (0, 0)
    assert billable(charge, free_model=False, user_byok=False, promotion=False) == (1_000, 100)
