"""Contract 3.5: recent error rates of OpenRouter and Vercel, for the A/B split.

One query over the last 10 minutes of the ledger, cached 60 s, given 500 ms; any failure
counts as no errors (0, 0), so the split falls back to its normal share.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from extproc import logs
from extproc.db import POSTGRES_ERRORS

logger = logging.getLogger(__name__)

_SQL = """
SELECT provider, count(*) FILTER (WHERE has_error) AS errors, count(*) AS total
FROM microdollar_usage_view
WHERE created_at > now() - interval '10 minutes' AND is_user_byok = false
  AND provider IN ('openrouter', 'vercel')
GROUP BY provider
"""


class ErrorRates:
    def __init__(self, pool: asyncpg.Pool, ttl: float = 60.0, timeout: float = 0.5) -> None:
        self.pool = pool
        self.ttl = ttl
        self.timeout = timeout
        self._value: tuple[float, float] = (0.0, 0.0)
        self._at = float("-inf")
        self._refresh: asyncio.Task[None] | None = None

    async def get(self) -> tuple[float, float]:
        """(openrouter, vercel). A stale value is refreshed by one request for everyone."""
        if time.monotonic() - self._at >= self.ttl:
            if self._refresh is None or self._refresh.done():
                self._refresh = asyncio.ensure_future(self._load())
            await asyncio.shield(self._refresh)
        return self._value

    async def _load(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                async with self.pool.acquire() as connection:
                    rows = await connection.fetch(_SQL)
            rates = {row["provider"]: row["errors"] / row["total"] for row in rows if row["total"]}
            self._value = (rates.get("openrouter", 0.0), rates.get("vercel", 0.0))
        except POSTGRES_ERRORS as exc:
            logger.warning("error-rate query failed; using 0", extra=logs.failure(exc, "SELECT provider error rates"))
            self._value = (0.0, 0.0)
        self._at = time.monotonic()
