"""What every mock upstream shares: the aiohttp app with its request log and introspection
routes (`/__mock/requests`, `/__mock/health`), a JSON POST handler that records the request
and what was answered, the runner that serves an app, and the last user turn's text.

The OpenRouter-compatible mock (mock_upstream.py) and the custom-LLM mocks (mock_script.py's
`MockServer`, for mock_anthropic.py and mock_openai_responses.py) are built on it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

MAX_RECORDED_REQUESTS = 200
MAX_RECORDED_RESPONSE_CHARS = 1024 * 1024
# Real providers take prompts of many MiB; aiohttp's default limit is 1 MiB.
MAX_REQUEST_BYTES = 64 * 1024 * 1024

# One recorded request: method, path, query, headers (lower-case names), body (None when it
# was not JSON) and response (the exact text sent back, up to MAX_RECORDED_RESPONSE_CHARS).
Recorded = dict[str, Any]
Respond = Callable[[web.Request, Any, Recorded], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class RequestLog:
    """The last requests a mock received, oldest first, for tests."""

    entries: deque[Recorded] = field(default_factory=lambda: deque(maxlen=MAX_RECORDED_REQUESTS))

    def record(self, request: web.Request, body: Any) -> Recorded:
        entry = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": {name.lower(): value for name, value in request.headers.items()},
            "body": body,
            "response": "",
        }
        self.entries.append(entry)
        return entry


REQUEST_LOG = web.AppKey("mock_request_log", RequestLog)


async def write_recorded(response: web.StreamResponse, entry: Recorded, data: bytes) -> None:
    """One streamed write (its own flush and HTTP chunk), kept in the request's record."""
    await response.write(data)
    if len(entry["response"]) < MAX_RECORDED_RESPONSE_CHARS:
        entry["response"] += data.decode()


def json_post(respond: Respond, invalid_json: Callable[[str], web.Response]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A POST handler: the body parsed as JSON and recorded (`invalid_json` answers one that is
    not JSON, given the parser's message), then `respond`; a whole response is recorded as sent."""

    async def handle(request: web.Request) -> web.StreamResponse:
        log = request.app[REQUEST_LOG]
        try:
            body: Any = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            log.record(request, None)
            return invalid_json(str(exc))
        entry = log.record(request, body)
        response = await respond(request, body, entry)
        if isinstance(response, web.Response) and response.body is not None:
            entry["response"] = (response.text or "")[:MAX_RECORDED_RESPONSE_CHARS]
        return response

    return handle


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


async def _list_requests(request: web.Request) -> web.Response:
    return json_response(list(request.app[REQUEST_LOG].entries))


async def _clear_requests(request: web.Request) -> web.Response:
    request.app[REQUEST_LOG].entries.clear()
    return web.Response(status=204)


async def _health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def mock_app(log: RequestLog) -> web.Application:
    """An app with the request log and its introspection routes; the mock adds its own."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[REQUEST_LOG] = log
    app.router.add_get("/__mock/requests", _list_requests)
    app.router.add_delete("/__mock/requests", _clear_requests)
    app.router.add_get("/__mock/health", _health)
    return app


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve `app` on host:port (0: a free port; `runner.addresses` says which) until the
    returned runner is cleaned up."""
    runner = web.AppRunner(
        app,
        # Per-request access logging would dominate the benchmark's profile.
        access_log=None,
        # Stop a handler as soon as its client hangs up, so aborted streams are
        # recorded at once and don't keep sleeping through their delays.
        handler_cancellation=True,
        # In-flight streams may be long and slow; don't hold shutdown for them.
        shutdown_timeout=1.0,
    )
    await runner.setup()
    # A deep backlog so benchmark connection bursts aren't dropped.
    await web.TCPSite(runner, host, port, backlog=1024).start()
    return runner


def last_user_text(messages: object, separator: str) -> str:
    """The last user turn's text in any of the APIs' shapes: the string, or its parts that have
    a `text` joined by `separator`; "" when there is none."""
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return separator.join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
            return ""
    return ""
