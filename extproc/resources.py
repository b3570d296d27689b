"""Connections shared by all streams of one ext_proc process: the Postgres pool and Redis.

Created once at start-up and closed on shutdown. Neither is required to be up at start: the
pool opens connections on demand, and each user of them has its own failure policy.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from extproc import logs
from extproc.db import Connection, init_connection
from extproc.db.migrate import migrate
from extproc.settings import Settings

logger = logging.getLogger(__name__)


async def _keep_session(connection: Connection) -> None:
    return None


@dataclass(slots=True)
class Resources:
    db: asyncpg.Pool
    redis: aioredis.Redis

    @classmethod
    async def open(cls, settings: Settings) -> Resources:
        if settings.database_url is None or settings.redis_url is None:
            raise RuntimeError("DATABASE_URL and REDIS_URL must be set for the ext_proc server")
        db = await asyncpg.create_pool(
            settings.database_url.get_secret_value(),
            min_size=0,
            max_size=20,
            command_timeout=5,
            # asyncpg resets every connection it takes back (a round trip: UNLISTEN, RESET ALL,
            # advisory unlock...). Ours leave no session state behind (no LISTEN, SET or
            # session-level lock), so the reset is skipped.
            reset=_keep_session,
            init=init_connection,
        )
        # A blocking pool: past its size requests wait for a connection instead of failing
        # (redis-py's default pool raises, which the limiter would count as "Redis down").
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url.get_secret_value(),
            max_connections=512,
            timeout=1,
            socket_timeout=2,
            socket_connect_timeout=2,
        )
        client = aioredis.Redis(connection_pool=pool)
        resources = cls(db=db, redis=client)
        await resources.prepare()
        return resources

    async def prepare(self) -> None:
        """Apply migrations and report what is reachable; neither outage stops start-up."""

        async def postgres() -> None:
            async with self.db.acquire(timeout=5) as connection:
                await migrate(connection)

        for name, operation, check in (("postgres", "migrations", postgres), ("redis", "redis PING", self.redis.ping)):
            try:
                await asyncio.wait_for(check(), timeout=30)
                logger.info(f"{name} reachable")
            except Exception as exc:  # reported, not fatal: see each dependency's failure policy
                logger.error(f"{name} unreachable at start-up", extra=logs.failure(exc, operation))

    async def close(self) -> None:
        await self.redis.aclose()
        await self.db.close()
