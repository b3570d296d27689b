"""Step 2.8: a Kilo free-model request is logged before the upstream call, so it counts even
if the upstream fails. A failed insert is logged and the request goes on (the reference
worker's choice): the Redis limiter has already counted it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg

from extproc import logs
from extproc.db import POSTGRES_ERRORS

logger = logging.getLogger(__name__)

_INSERT = "INSERT INTO free_model_usage (ip_address, model, kilo_user_id) VALUES ($1, $2, $3)"


@dataclass(frozen=True, slots=True)
class FreeModelUsageLog:
    pool: asyncpg.Pool
    timeout: float

    async def record(self, ip: str, model_lower: str, user_id: str | None) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                async with self.pool.acquire() as connection:
                    await connection.execute(_INSERT, ip, model_lower, user_id)
        except POSTGRES_ERRORS as exc:
            logger.error(
                "free_model_usage insert failed",
                extra={"model": model_lower, **logs.failure(exc, "INSERT free_model_usage")},
            )
