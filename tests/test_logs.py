"""Structured logs (extproc/logs.py): error fields that explain, and the request id on every line
written for a request."""

from __future__ import annotations

import asyncio
import logging

import orjson
from redis.exceptions import ResponseError

from extproc import logs


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logs.JsonFormatter("ext_proc"))
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))


def test_failure_gives_the_message_and_the_operation() -> None:
    exc = ResponseError("UNBLOCKED the stream key no longer exists")
    assert logs.failure(exc, "redis XREADGROUP > gw:usage") == {
        "error": "ResponseError: UNBLOCKED the stream key no longer exists",
        "operation": "redis XREADGROUP > gw:usage",
    }


def test_failure_takes_the_operation_from_the_exceptions_note() -> None:
    exc = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    exc.add_note("redis XADD gw:usage")
    assert logs.failure(exc)["operation"] == "redis XADD gw:usage"


def test_failure_of_an_exception_without_message_is_its_class() -> None:
    assert logs.failure(TimeoutError()) == {"error": "TimeoutError"}


def test_safe_url_drops_credentials_and_query() -> None:
    assert logs.safe_url("https://user:secret@api.example.com:8443/v1/generation?id=1&key=k") == (
        "https://api.example.com:8443/v1/generation"
    )
    assert logs.safe_url("http://[::1]:8090/openrouter/api/v1") == "http://[::1]:8090/openrouter/api/v1"


async def test_lines_written_for_a_request_carry_its_id_and_others_none() -> None:
    handler = _Lines()
    logger = logging.getLogger("test.request_id")
    logger.addHandler(handler)
    logger.propagate = False
    first_logged, second_set = asyncio.Event(), asyncio.Event()

    async def request(request_id: str, before: asyncio.Event | None, after: asyncio.Event) -> None:
        logs.REQUEST_ID.set(request_id)
        if before is not None:
            await before.wait()
        logger.warning("deep inside the request")
        after.set()

    try:
        # Interleaved: the second request sets its id before the first logs.
        await asyncio.gather(
            asyncio.create_task(request("req-1", second_set, first_logged)),
            asyncio.create_task(request("req-2", None, second_set)),
        )
        logger.warning("not on behalf of a request")
    finally:
        logger.removeHandler(handler)
    assert [line.get("request_id") for line in handler.lines] == ["req-2", "req-1", None]


def test_lines_written_for_a_traced_request_carry_its_trace_id() -> None:
    handler = _Lines()
    logger = logging.getLogger("test.trace_id")
    logger.addHandler(handler)
    logger.propagate = False
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"

    async def traced() -> None:
        logs.TRACE_ID.set(trace_id)
        logger.warning("inside a traced request")

    try:
        asyncio.run(traced())
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    assert [line.get("trace_id") for line in handler.lines] == [trace_id, None]
