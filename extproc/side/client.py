"""The HTTP client every side service shares: one `aiohttp.ClientSession` per process, the
background tasks it runs, and the failure counter (fail-open, see the package's docstring)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import aiohttp
import orjson
from prometheus_client import Counter

from extproc import logs, storable

logger = logging.getLogger(__name__)

# `service`: abuse_classify, abuse_cost, api_metrics, posthog.
ERRORS = Counter(
    "llm_gateway_side_service_errors",
    "Side-service calls that failed, timed out or were dropped (the request went on regardless).",
    ["service"],
)
# A zero series per service from the start, so dashboards and rate() see a service before its
# first failure.
for _service in ("abuse_classify", "abuse_cost", "api_metrics", "posthog"):
    ERRORS.labels(_service)

# Calls in flight at once; past this a call is dropped (and counted) rather than queued, so a
# side service that hangs cannot make the process hoard tasks.
MAX_PENDING = 10_000
_LOGGED_BODY_CHARS = 500


class SideClient:
    """The HTTP client every side service shares, and the tasks it runs."""

    def __init__(self, timeout_seconds: float, max_pending: int = MAX_PENDING) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.max_pending = max_pending
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def session(self) -> aiohttp.ClientSession:
        """Created on first use, inside the running loop (a session belongs to its loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout, connector=aiohttp.TCPConnector(limit=256))
        return self._session

    def spawn(self, service: str, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
        """Run `coroutine` in the background; the caller never awaits it."""
        if self._closed or len(self._tasks) >= self.max_pending:
            coroutine.close()
            ERRORS.labels(service).inc()
            logger.warning("side-service call dropped", extra={"service": service, "pending": len(self._tasks)})
            return None
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda done: _report_crash(service, done))
        return task

    async def post(self, service: str, url: str, payload: Any, headers: dict[str, str]) -> tuple[bool, Any]:
        """POST `payload` as JSON, its text made storable (`extproc/storable.py`: a service that
        stores it must not refuse a NUL from a prompt). Returns (True, parsed JSON body or None)
        on a 2xx answer; (False, None) on anything else, which is logged and counted here."""
        data = orjson.dumps(storable.json_value(payload))
        try:
            async with self.session().post(
                url, data=data, headers={"content-type": "application/json", **headers}
            ) as response:
                body = await response.read()
                if not 200 <= response.status < 300:
                    failed(
                        service,
                        f"HTTP {response.status}",
                        url=logs.safe_url(url),
                        body=body[:_LOGGED_BODY_CHARS].decode("utf-8", "replace"),
                    )
                    return False, None
        except Exception as exc:  # fail-open: connection refused, timeout, TLS, anything
            failed(service, logs.failure(exc)["error"], url=logs.safe_url(url))
            return False, None
        try:
            return True, orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            return True, None

    async def close(self, timeout: float) -> None:
        """At shutdown: give calls in flight `timeout` seconds, cancel the rest, close."""
        self._closed = True
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, timeout))
        leftovers = set(self._tasks)
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.gather(*leftovers, return_exceptions=True)
            logger.warning("side-service calls cancelled at shutdown", extra={"count": len(leftovers)})
        if self._session is not None:
            await self._session.close()
            self._session = None


def _report_crash(service: str, task: asyncio.Task[Any]) -> None:
    """A bug in a side-service task is logged and counted like any other failure."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        ERRORS.labels(service).inc()
        logger.error(f"{service} task failed", exc_info=exc, extra={"service": service})


def failed(service: str, error: str, **extra: Any) -> None:
    ERRORS.labels(service).inc()
    logger.warning(f"{service} call failed (ignored)", extra={"service": service, "error": error, **extra})
