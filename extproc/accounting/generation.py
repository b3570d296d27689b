"""Contract 7.3 with decision 10: ask the provider's generation endpoint what it billed.

OpenRouter answers 404 while the generation is not recorded yet, so the fetch waits 200 ms,
then retries 404, 429 and 5xx with exponential backoff (200 ms x 1.5^n, +-2.5 % jitter) until
the next wait would pass 20 s in total. Any other answer, or giving up, keeps the stream's own
numbers. Used for every response with a message id from a provider with the endpoint: error
responses and streams the client cut included, so they are charged what the upstream billed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import Counter

from extproc import logs
from extproc.accounting.http1 import Client, HttpError

logger = logging.getLogger(__name__)

REFETCHES = Counter(
    "llm_gateway_generation_refetches",
    "Generation endpoint lookups, by outcome (found, not_found, failed).",
    ["outcome"],
)
# Bound once: zero series before the first of each, and no label lookup per record.
_FOUND, _NOT_FOUND, _FAILED = (REFETCHES.labels(outcome) for outcome in ("found", "not_found", "failed"))


@dataclass(frozen=True, slots=True)
class Backoff:
    first_wait: float = 0.2
    first_delay: float = 0.2
    factor: float = 1.5
    jitter: float = 0.025
    budget: float = 20.0

    def delays(self) -> tuple[float, ...]:
        return _delays(self)


@functools.lru_cache(maxsize=8)
def _delays(backoff: Backoff) -> tuple[float, ...]:
    """The nominal waits between tries: computed once per schedule, not per record."""
    delays: list[float] = []
    total, delay = 0.0, backoff.first_delay
    while total + delay <= backoff.budget:
        delays.append(delay)
        total += delay
        delay *= backoff.factor
    return tuple(delays)


def _retryable(status: int) -> bool:
    return status in (404, 429) or status >= 500


async def fetch_generation(
    client: Client,
    api_url: str,
    api_key: str | None,
    message_id: str,
    headers: dict[str, str],
    backoff: Backoff = Backoff(),
) -> dict[str, Any] | None:
    request_headers = dict(headers)
    if api_key:
        request_headers["Authorization"] = f"Bearer {api_key}"
    url = f"{api_url}/generation"
    await asyncio.sleep(backoff.first_wait)
    delays = backoff.delays()
    for attempt in range(len(delays) + 1):
        try:
            response = await client.get(url, {"id": message_id}, request_headers)
            if response.status == 200:
                payload = orjson.loads(response.body)
                data = payload.get("data") if isinstance(payload, dict) else None
                if isinstance(data, dict):
                    _FOUND.inc()
                    return data
                break
            if not _retryable(response.status):
                break
        except (OSError, EOFError, TimeoutError, HttpError, ValueError) as exc:  # orjson's error is a ValueError
            logger.warning(
                "generation lookup failed",
                extra={"message_id": message_id, **logs.failure(exc, f"GET {logs.safe_url(url)}")},
            )
        if attempt < len(delays):
            delay = delays[attempt]
            await asyncio.sleep(delay * random.uniform(1 - backoff.jitter, 1 + backoff.jitter))
    else:
        _NOT_FOUND.inc()
        return None
    _FAILED.inc()
    return None
