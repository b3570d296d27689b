"""Step 2.8's insert (extproc/pipeline/free_usage.py): a Postgres failure of any kind is logged
and the request goes on (the limiter has already counted it), never a 500."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import asyncpg
import pytest

from extproc.pipeline.free_usage import FreeModelUsageLog


class BrokenConnection:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def execute(self, *args: Any) -> None:
        raise self.error


class Pool:
    def __init__(self, error: Exception) -> None:
        self.error = error

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[BrokenConnection]:
        yield BrokenConnection(self.error)


@pytest.mark.parametrize(
    "error",
    [
        # A pooled connection left mid-protocol when Postgres restarted (seen in the fault scenario).
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=type,
)
async def test_a_failed_insert_is_logged_and_the_request_goes_on(error: Exception, caplog: pytest.LogCaptureFixture) -> None:
    log = FreeModelUsageLog(cast(asyncpg.Pool, Pool(error)), timeout=1)
    with caplog.at_level(logging.ERROR):
        await log.record("203.0.113.9", "minimax/minimax-m2.5:free", None)
    assert [r.getMessage() for r in caplog.records] == ["free_model_usage insert failed"]
