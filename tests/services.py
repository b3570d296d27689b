"""Postgres and Redis owned by a test rather than by the stack (which is given their URLs), so
the test can stop, restart or kill them while the stack runs. Each keeps its data directory
and port across restarts: a restarted server is the same server to the stack."""

from __future__ import annotations

from pathlib import Path

from extproc.local.embedded import start_postgres, start_redis
from extproc.local.processes import Child, free_port


class Services:
    def __init__(self, root: Path, *, durable_redis: bool = False) -> None:
        self.root = root
        # The AOF (appendfsync everysec) the outbox relies on, or no persistence at all.
        self.durable_redis = durable_redis
        self.pg_port, self.redis_port = free_port(), free_port()
        self.postgres: Child | None = None
        self.redis: Child | None = None
        self.database_url = self.redis_url = ""

    def start_postgres(self) -> None:
        self.postgres, self.database_url = start_postgres(self.root / "pg", self.pg_port, durable=False)

    def start_redis(self) -> None:
        self.redis, self.redis_url = start_redis(self.root / "redis", self.redis_port, durable=self.durable_redis)

    def restart_postgres(self) -> None:
        assert self.postgres is not None
        self.postgres.stop()
        self.start_postgres()

    def restart_redis(self) -> None:
        """A clean restart: SIGTERM, so Redis writes out its AOF before it exits."""
        assert self.redis is not None
        self.redis.stop()
        self.start_redis()

    def kill_redis(self) -> None:
        """A crash: SIGKILL, then start again from whatever the AOF holds."""
        assert self.redis is not None
        self.redis.process.kill()
        self.redis.process.wait()
        self.start_redis()

    def stop(self) -> None:
        for child in (self.redis, self.postgres):
            if child is not None:
                child.stop()
