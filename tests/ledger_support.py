"""What the ledger tests read besides the ledger: the upstream's bill and the outbox's depth."""

from __future__ import annotations

import asyncio
from decimal import ROUND_HALF_UP, Decimal

import httpx

from tests.conftest import Gateway


def outbox_depth(gateway: Gateway) -> float:
    depth = 0.0
    for line in gateway.metrics().splitlines():
        if line.startswith("llm_gateway_outbox_depth"):
            depth += float(line.rsplit(" ", 1)[1])
    return depth


def microdollars(usd: float) -> int:
    """Contract 7.2's round(cost x 1,000,000), on the amount as the upstream wrote it (its
    shortest decimal), halves rounded up: a float product would turn 0.0121905 USD into
    12190.4999... and lose the half microdollar."""
    return int((Decimal(repr(usd)) * 1_000_000).to_integral_value(ROUND_HALF_UP))


async def bills(gateway: Gateway, message_ids: list[str]) -> dict[str, int]:
    """What the upstream billed for each generation, in microdollars (its generation record)."""
    limit = asyncio.Semaphore(16)
    billed: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(message_id: str) -> None:
            async with limit:
                response = await client.get(f"{gateway.mock_url}/openrouter/api/v1/generation", params={"id": message_id})
            response.raise_for_status()
            billed[message_id] = microdollars(response.json()["data"]["total_cost"])

        await asyncio.gather(*(one(m) for m in message_ids))
    return billed
