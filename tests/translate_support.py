"""Test helpers for the custom-LLM mocks: run one in a background thread on a free port."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from extproc.local.mock_base import Recorded, start
from extproc.local.mock_script import DIRECTIVE_PREFIX, MockServer


def directive(script: dict[str, Any], text: str = "Hello") -> str:
    """A user message carrying mock directives (extproc/local/mock_script.py)."""
    return f"{text}\n{DIRECTIVE_PREFIX} {orjson.dumps(script).decode()}"


class RunningMock:
    """The mock's aiohttp app in its own event loop and thread, listening on 127.0.0.1."""

    def __init__(self, server: MockServer) -> None:
        self.server = server
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def url(self, base_path: str) -> str:
        return f"http://127.0.0.1:{self.port}{base_path}"

    @property
    def requests(self) -> Sequence[Recorded]:
        return self.server.requests

    async def _start(self) -> None:
        self._runner = await start(self.server.app(), "127.0.0.1", 0)
        self.port = self._runner.addresses[0][1]

    def __enter__(self) -> RunningMock:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
