"""OpenRouter-compatible mock LLM upstream.

Serves deterministic chat completions (JSON or SSE shaped like OpenRouter's),
OpenRouter's generation-stats endpoint, and a little introspection for tests.
It backs the test suite, `make run` without a provider key, and the benchmark,
so the streaming path precomputes everything it can and each SSE event costs
one small `orjson.dumps` plus a bytes concatenation.

Clients talk to it through the gateway and cannot set headers, so per-request
behaviour is controlled by a top-level `"mock": {...}` key in the chat body;
see docs/mock-upstream.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from extproc.local.mock_base import (
    Recorded,
    RequestLog,
    json_post,
    json_response,
    last_user_text,
    mock_app,
    start,
    write_recorded,
)

log = logging.getLogger(__name__)

MAX_GENERATIONS = 10_000
REPLY_PREFIX = "Mock reply: "
MAX_REPLY_CHARS = 200

# USD per token. Decimal so the emitted cost is the exact price arithmetic and
# the gateway's accounting can be checked to the last digit.
_MICRO_USD = Decimal("0.000001")
PROMPT_PRICE = Decimal("0.3") * _MICRO_USD
CACHED_PROMPT_PRICE = Decimal("0.075") * _MICRO_USD
COMPLETION_PRICE = Decimal("1.5") * _MICRO_USD
# OpenRouter charges BYOK requests a fee of 5 % of the upstream cost.
BYOK_FEE = Decimal("0.05")

# `GET …/models`: the models the tests use, each at the prices above (so the bill of any
# reply is what these prices make of its usage), in OpenRouter's shape and, under `/vercel/`,
# in Vercel AI Gateway's (under the ids Vercel gives them, contract 3.6).
MODEL_CONTEXT_LENGTH = 1_000_000
MODEL_MAX_COMPLETION_TOKENS = 65_536
PRICED_MODELS = (
    "anthropic/claude-haiku-4.5",
    "anthropic/claude-opus-4.6",
    "anthropic/claude-sonnet-4.6",
    "google/gemini-2.5-pro",
    "google/gemini-3.1-pro-preview",
    "meta-llama/llama-4-maverick",
    "minimax/minimax-m2.5",
    "mistralai/codestral-2508",
    "mistralai/devstral-2512",
    "mistralai/mistral-large-2512",
    "moonshotai/kimi-k2.5",
    "openai/gpt-4o",
    "openai/gpt-4o-mini",
    "openai/gpt-5",
    "openai/gpt-5.2",
    "openai/gpt-5.3-codex",
    "openai/gpt-oss-120b",
    "qwen/qwen3-coder",
    "x-ai/grok-4",
    "x-ai/grok-code-fast-1",
    "z-ai/glm-5",
)


def _usd(price: Decimal) -> str:
    return format(price.normalize(), "f")


def openrouter_models() -> dict[str, Any]:
    """The mock's OpenRouter `GET /api/v1/models` answer."""
    return {
        "data": [
            {
                "id": model,
                "name": model,
                "context_length": MODEL_CONTEXT_LENGTH,
                "pricing": {
                    "prompt": _usd(PROMPT_PRICE),
                    "completion": _usd(COMPLETION_PRICE),
                    "request": "0",
                    "image": "0",
                    "web_search": "0",
                    "internal_reasoning": "0",
                    "input_cache_read": _usd(CACHED_PROMPT_PRICE),
                },
                "top_provider": {
                    "context_length": MODEL_CONTEXT_LENGTH,
                    "max_completion_tokens": MODEL_MAX_COMPLETION_TOKENS,
                    "is_moderated": False,
                },
            }
            for model in PRICED_MODELS
        ]
    }


def vercel_models() -> dict[str, Any]:
    """The mock's Vercel AI Gateway `GET /v1/models` answer."""
    from extproc.catalogue import DEFAULT_FREE_MODELS, DEFAULT_RATE_LIMITED_TO_DEATH, Catalogue, FreeModel
    from extproc.shaping.vercel import map_model_id_to_vercel

    catalogue = Catalogue.build(
        tuple(FreeModel.model_validate(m) for m in DEFAULT_FREE_MODELS), DEFAULT_RATE_LIMITED_TO_DEATH
    )
    return {
        "object": "list",
        "data": [
            {
                "id": map_model_id_to_vercel(model, catalogue),
                "object": "model",
                "type": "language",
                "context_window": MODEL_CONTEXT_LENGTH,
                "max_tokens": MODEL_MAX_COMPLETION_TOKENS,
                "pricing": {
                    "input": _usd(PROMPT_PRICE),
                    "output": _usd(COMPLETION_PRICE),
                    "input_cache_read": _usd(CACHED_PROMPT_PRICE),
                },
            }
            for model in PRICED_MODELS
        ],
    }


@dataclass(frozen=True)
class MockOptions:
    """Per-request knobs: server defaults, overridden by the body's "mock" key."""

    content: str | None = None
    chunks: int | None = None
    reasoning: str | None = None
    keepalives: int = 1
    provider: str = "MockProvider"
    cached_tokens: int | None = None
    is_byok: bool = False
    generation_delay_ms: float = 0
    status: int = 200
    error_body: Any = None
    headers_delay_ms: float = 0
    chunk_delay_ms: float = 0
    error_after: int | None = None
    no_usage: bool = False
    # Stream for any truthy `stream` value ("yes", 1), as some real upstreams do.
    truthy_stream: bool = False
    # Streaming faults: after N content chunks, drop the connection in the middle of the next
    # event (no [DONE], no usage); or send one event whose data is not JSON, then go on.
    cut_after: int | None = None
    malformed_after: int | None = None
    # Echoed in the answer log (`/__mock/answers`), so a test can tell which of its requests
    # reached the upstream and what each was answered.
    tag: str | None = None
    # Issue 25: failures on demand, per provider (the first segment of the path, as `make run`
    # mounts each provider; "*" for any) and per attempt: the n-th arrival of this `tag` at that
    # provider gets the n-th fault; arrivals past the list are served. See docs/mock-upstream.md.
    faults: dict[str, list[dict[str, Any]]] | None = None


class MockRequestError(ValueError):
    """The chat request (or its "mock" options) is invalid; answered with 400."""


def _is_count(value: object) -> bool:
    # bool is an int subclass; `true` must not pass for a count.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_duration(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_status(value: object) -> bool:
    # 1xx cannot be a final response, and aiohttp rejects codes outside 100-599.
    return isinstance(value, int) and not isinstance(value, bool) and 200 <= value <= 599


# What one fault may say: a status (with an optional Retry-After), a reset before the response
# headers, or a hang until the client leaves. `{}` serves that attempt normally.
_FAULT_CHECKS: dict[str, Callable[[object], bool]] = {
    "status": lambda value: _is_status(value),
    "retry_after": lambda value: isinstance(value, (int, str)) and not isinstance(value, bool),
    "error_body": lambda value: True,
    "reset": lambda value: _is_bool(value),
    "hang": lambda value: _is_bool(value),
}


def _is_faults(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(provider, str)
        and isinstance(faults, list)
        and all(
            isinstance(fault, dict)
            and all(key in _FAULT_CHECKS and _FAULT_CHECKS[key](item) for key, item in fault.items())
            for fault in faults
        )
        for provider, faults in value.items()
    )


def _or_null(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or check(value)


# One entry per MockOptions field: (validator, what the 400 message says it must be).
_OPTION_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "content": (_or_null(_is_str), "a string or null"),
    "chunks": (_or_null(_is_count), "a non-negative integer or null"),
    "reasoning": (_or_null(_is_str), "a string or null"),
    "keepalives": (_is_count, "a non-negative integer"),
    "provider": (_is_str, "a string"),
    "cached_tokens": (_or_null(_is_count), "a non-negative integer or null"),
    "is_byok": (_is_bool, "a boolean"),
    "generation_delay_ms": (_is_duration, "a non-negative number"),
    "status": (_is_status, "an HTTP status between 200 and 599"),
    "error_body": (lambda value: True, "any JSON value"),
    "headers_delay_ms": (_is_duration, "a non-negative number"),
    "chunk_delay_ms": (_is_duration, "a non-negative number"),
    "error_after": (_or_null(_is_count), "a non-negative integer or null"),
    "no_usage": (_is_bool, "a boolean"),
    "truthy_stream": (_is_bool, "a boolean"),
    "cut_after": (_or_null(_is_count), "a non-negative integer or null"),
    "malformed_after": (_or_null(_is_count), "a non-negative integer or null"),
    "tag": (_or_null(_is_str), "a string or null"),
    "faults": (
        _or_null(_is_faults),
        "an object of provider -> list of faults ({status, retry_after, error_body, reset, hang})",
    ),
}


def _apply_overrides(defaults: MockOptions, overrides: object) -> MockOptions:
    if not isinstance(overrides, dict):
        raise MockRequestError('"mock" must be a JSON object')
    for key, value in overrides.items():
        check = _OPTION_CHECKS.get(key)
        if check is None:
            raise MockRequestError(f"unknown mock option {key!r}")
        if not check[0](value):
            raise MockRequestError(f"mock option {key!r} must be {check[1]}")
    return replace(defaults, **overrides)


# Each token is a word with its trailing whitespace (leading whitespace gets its
# own token), so joining the tokens reproduces the text exactly.
_TOKEN = re.compile(r"\S+\s*|\s+")


def _reply_text(messages: list[Any], options: MockOptions) -> str:
    if options.chunks is not None:
        return " ".join(f"w{i}" for i in range(1, options.chunks + 1))
    if options.content is not None:
        return options.content
    return (REPLY_PREFIX + last_user_text(messages, " "))[:MAX_REPLY_CHARS]


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything the reply will contain, derived once from the request."""

    options: MockOptions
    model: str
    tokens: list[str]
    reasoning_tokens: list[str]
    prompt_tokens: int
    cached_tokens: int
    # "length" when `max_tokens` cut the reply (reasoning counts first, as providers do).
    finish_reason: str = "stop"

    def usage(self, content_sent: int, reasoning_sent: int) -> dict[str, Any]:
        completion = content_sent + reasoning_sent
        uncached = max(0, self.prompt_tokens - self.cached_tokens)
        amount = (
            uncached * PROMPT_PRICE
            + self.cached_tokens * CACHED_PROMPT_PRICE
            + completion * COMPLETION_PRICE
        )
        is_byok = self.options.is_byok
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "cost": float(amount * BYOK_FEE if is_byok else amount),
            "is_byok": is_byok,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "cost_details": {"upstream_inference_cost": float(amount) if is_byok else None},
            "completion_tokens_details": {"reasoning_tokens": reasoning_sent},
        }


def _plan(body: object, defaults: MockOptions) -> _Plan:
    if not isinstance(body, dict):
        raise MockRequestError("request body must be a JSON object")
    options = _apply_overrides(defaults, body.get("mock", {}))
    if options.faults and options.tag is None:
        raise MockRequestError('mock option "faults" needs a "tag": attempts are counted per tag')
    model = body.get("model")
    messages = body.get("messages")
    if not isinstance(model, str):
        raise MockRequestError('"model" must be a string')
    if not isinstance(messages, list):
        raise MockRequestError('"messages" must be a list')
    prompt_tokens = max(1, len(orjson.dumps(messages)) // 4)
    tokens = _TOKEN.findall(_reply_text(messages, options))
    reasoning = _TOKEN.findall(options.reasoning or "")
    limit = _reply_limit(body)
    finish_reason = "stop"
    if limit is not None and len(reasoning) + len(tokens) > limit:
        reasoning = reasoning[:limit]
        tokens = tokens[: limit - len(reasoning)]
        finish_reason = "length"
    return _Plan(
        options=options,
        model=model,
        tokens=tokens,
        reasoning_tokens=reasoning,
        prompt_tokens=prompt_tokens,
        cached_tokens=prompt_tokens // 4 if options.cached_tokens is None else options.cached_tokens,
        finish_reason=finish_reason,
    )


def _reply_limit(body: dict[str, Any]) -> int | None:
    """The completion tokens the request allows, as a real upstream enforces them: the smaller
    of `max_tokens` and `max_completion_tokens` that is a positive integer (reasoning included)."""
    limits = [
        value
        for value in (body.get("max_tokens"), body.get("max_completion_tokens"))
        if isinstance(value, int) and not isinstance(value, bool) and value > 0
    ]
    return min(limits) if limits else None


def expected_usage(request_body: dict[str, Any], options: MockOptions) -> dict[str, Any]:
    """The usage object the mock sends for a completed request.

    `options` are the server defaults; a "mock" key in `request_body` is applied
    on top, as the server does. Raises MockRequestError for a body the server
    would reject with 400.
    """
    plan = _plan(request_body, options)
    return plan.usage(len(plan.tokens), len(plan.reasoning_tokens))


def expected_text(request_body: dict[str, Any], options: MockOptions) -> str:
    """The reply text the mock sends for `request_body` (same rules as expected_usage)."""
    return "".join(_plan(request_body, options).tokens)


@dataclass(slots=True)
class _Run:
    """Progress of one generation, for the generation record."""

    plan: _Plan
    id: str
    streamed: bool
    started: float  # time.monotonic()
    created: float = field(default_factory=time.time)
    first_token_at: float | None = None
    content_sent: int = 0
    reasoning_sent: int = 0


@dataclass(slots=True)
class _Generation:
    data: dict[str, Any]
    available_at: float  # time.monotonic(); until then the endpoint says 404


def _elapsed_ms(start: float, end: float) -> int:
    return round((end - start) * 1000)


@dataclass
class _State:
    defaults: MockOptions
    # dicts keep insertion order, so the first key is the oldest generation.
    generations: dict[str, _Generation] = field(default_factory=dict)
    # Every chat request that got past validation, in arrival order: its `tag`, the status it
    # was answered (None until then, and for good if the client left first) and its generation.
    answers: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_GENERATIONS))
    # Arrivals so far per (tag, provider), for the per-attempt faults; oldest dropped first.
    attempts: dict[tuple[str, str], int] = field(default_factory=dict)

    def next_attempt(self, tag: str, provider: str) -> int:
        """This arrival's number (1 for the first) of `tag` at `provider`."""
        key = (tag, provider)
        count = self.attempts.pop(key, 0) + 1
        self.attempts[key] = count
        if len(self.attempts) > MAX_GENERATIONS:
            del self.attempts[next(iter(self.attempts))]
        return count
    # What `GET …/models` answers instead of the default (`PUT /__mock/models`): (status, body).
    models_override: tuple[int, bytes] | None = None

    def finish(self, run: _Run, finish_reason: str | None, cancelled: bool) -> dict[str, Any]:
        """Record the generation and return its usage."""
        now = time.monotonic()
        plan = run.plan
        usage = plan.usage(run.content_sent, run.reasoning_sent)
        self.generations[run.id] = _Generation(
            data={
                "id": run.id,
                "model": plan.model,
                "provider_name": plan.options.provider,
                "total_cost": usage["cost"],
                "upstream_inference_cost": usage["cost_details"]["upstream_inference_cost"],
                "cache_discount": float(
                    plan.cached_tokens * (PROMPT_PRICE - CACHED_PROMPT_PRICE)
                ),
                "native_tokens_prompt": plan.prompt_tokens,
                "native_tokens_completion": usage["completion_tokens"],
                "native_tokens_cached": plan.cached_tokens,
                "native_tokens_reasoning": run.reasoning_sent,
                "finish_reason": finish_reason,
                "latency": _elapsed_ms(run.started, run.first_token_at or now),
                "generation_time": _elapsed_ms(run.started, now),
                "moderation_latency": None,
                "streamed": run.streamed,
                "cancelled": cancelled,
                "is_byok": plan.options.is_byok,
                "created_at": datetime.fromtimestamp(run.created, timezone.utc).isoformat(),
            },
            available_at=now + plan.options.generation_delay_ms / 1000,
        )
        if len(self.generations) > MAX_GENERATIONS:
            del self.generations[next(iter(self.generations))]
        return usage


_STATE = web.AppKey("mock_upstream_state", _State)


def _error(status: int, message: str) -> web.Response:
    return json_response({"error": {"message": message, "code": status}}, status)


def _invalid_json(message: str) -> web.Response:
    return _error(400, f"invalid JSON body: {message}")


# SSE building blocks. A chunk is `data: ` + the JSON object opened by the
# per-request head ({"id":...,"created":T) + one of these tails.
_KEEPALIVE = b": OPENROUTER PROCESSING\n\n"
_DONE = b"data: [DONE]\n\n"
_CONTENT_DELTA = b',"choices":[{"index":0,"delta":{"role":"assistant","content":'
_REASONING_DELTA = (
    b',"choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning_content":'
)
_DELTA_END = b'},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}\n\n'
_ROLE_TAIL = _CONTENT_DELTA + b'""' + _DELTA_END
_FINISH_TAILS = {
    reason: _CONTENT_DELTA
    + b'""},"finish_reason":"%s","native_finish_reason":"%s","logprobs":null}]}\n\n' % (reason.encode(), reason.encode())
    for reason in ("stop", "length")
}
# An event whose data is cut inside a JSON string: not a JSON document.
_MALFORMED_EVENT = b'data: {"id":"gen-malformed","choices":[{"delta":{"content":"unterminated\n\n'
_ERROR_TAIL = (
    b',"error":{"code":502,"message":"Mock mid-stream error"},'
    b'"choices":[{"index":0,"delta":{"content":""},'
    b'"finish_reason":"error","native_finish_reason":"error"}]}\n\n'
)


@dataclass(slots=True)
class _EventWriter:
    response: web.StreamResponse
    delay_s: float
    record: Recorded
    started: bool = False

    async def send(self, event: bytes) -> None:
        # The delay goes between events, not before the first.
        if self.started and self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.started = True
        await write_recorded(self.response, self.record, event)


async def _stream(request: web.Request, state: _State, run: _Run, record: Recorded) -> web.StreamResponse:
    plan = run.plan
    options = plan.options
    # No content-length, so aiohttp uses chunked encoding on HTTP/1.1 (and
    # close-delimited on HTTP/1.0, which load generators sometimes speak).
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    head = b"data: " + orjson.dumps(
        {
            "id": run.id,
            "provider": options.provider,
            "model": plan.model,
            "object": "chat.completion.chunk",
            "created": int(run.created),
        }
    )[:-1]
    out = _EventWriter(response, options.chunk_delay_ms / 1000, record)
    try:
        await response.prepare(request)
        for _ in range(options.keepalives):
            await out.send(_KEEPALIVE)
        await out.send(head + _ROLE_TAIL)
        for token in plan.reasoning_tokens:
            await out.send(head + _REASONING_DELTA + orjson.dumps(token) + _DELTA_END)
            run.first_token_at = run.first_token_at or time.monotonic()
            run.reasoning_sent += 1
        # Slicing with None sends everything; an error_after beyond the reply
        # still ends in the error event, since that is what was asked for.
        for token in plan.tokens[: options.error_after]:
            event = head + _CONTENT_DELTA + orjson.dumps(token) + _DELTA_END
            if run.content_sent == options.cut_after:
                await out.send(event[: len(event) // 2])
                # close(), not abort(): the half event is flushed before the FIN.
                assert request.transport is not None
                request.transport.close()
                state.finish(run, None, cancelled=False)
                return response
            if run.content_sent == options.malformed_after:
                await out.send(_MALFORMED_EVENT)
            await out.send(event)
            run.first_token_at = run.first_token_at or time.monotonic()
            run.content_sent += 1
        if options.error_after is not None:
            await out.send(head + _ERROR_TAIL)
            finish_reason = "error"
        else:
            await out.send(head + _FINISH_TAILS[plan.finish_reason])
            if not options.no_usage:
                usage = plan.usage(run.content_sent, run.reasoning_sent)
                await out.send(head + b',"choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n")
            finish_reason = plan.finish_reason
        await out.send(_DONE)
    except (asyncio.CancelledError, ConnectionError) as exc:
        # The client hung up: record what was generated so the gateway can
        # still charge the aborted stream.
        state.finish(run, None, cancelled=True)
        if isinstance(exc, ConnectionError):
            return response  # aiohttp finishes a response on a dead connection quietly
        raise
    state.finish(run, finish_reason, cancelled=False)
    return response


async def _chat_completions(request: web.Request, body: Any, record: Recorded) -> web.StreamResponse:
    started = time.monotonic()
    state = request.app[_STATE]
    try:
        plan = _plan(body, state.defaults)
    except MockRequestError as exc:
        return _error(400, str(exc))
    options = plan.options
    # The provider is the path's first segment, as `make run` mounts each provider.
    provider = request.match_info["base"].strip("/").partition("/")[0]
    answer: dict[str, Any] = {"tag": options.tag, "status": None, "generation": None, "provider": provider}
    state.answers.append(answer)
    if options.faults and options.tag is not None:
        fault = _fault_for(state, options.faults, options.tag, provider, answer)
        if fault is not None:
            return await _inject(request, fault, answer)
    if options.headers_delay_ms:
        await asyncio.sleep(options.headers_delay_ms / 1000)
    answer["status"] = options.status
    if options.status != 200:
        # Real OpenRouter errors carry no generation id, so none is recorded.
        if options.error_body is None:
            return _error(options.status, f"Mock upstream error {options.status}")
        return json_response(options.error_body, options.status)
    run = _Run(
        plan=plan,
        id=f"gen-{uuid.uuid4().hex}",
        streamed=bool(body.get("stream")) if options.truthy_stream else body.get("stream") is True,
        started=started,
    )
    answer["generation"] = run.id
    if run.streamed:
        return await _stream(request, state, run, record)
    run.content_sent = len(plan.tokens)
    run.reasoning_sent = len(plan.reasoning_tokens)
    usage = state.finish(run, plan.finish_reason, cancelled=False)
    return json_response(
        {
            "id": run.id,
            "provider": options.provider,
            "model": plan.model,
            "object": "chat.completion",
            "created": int(run.created),
            "choices": [
                {
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": plan.finish_reason,
                    "native_finish_reason": plan.finish_reason,
                    "message": {
                        "role": "assistant",
                        "content": "".join(plan.tokens),
                        "refusal": None,
                        "reasoning": options.reasoning or None,
                    },
                }
            ],
            "usage": usage,
        }
    )


def _fault_for(
    state: _State, faults: dict[str, list[dict[str, Any]]], tag: str, provider: str, answer: dict[str, Any]
) -> dict[str, Any] | None:
    """The fault scripted for this attempt, if any; the answer log gets the attempt number."""
    key = provider if provider in faults else "*"
    attempt = state.next_attempt(tag, key)
    answer["attempt"] = attempt
    scripted = faults.get(key, [])
    fault = scripted[attempt - 1] if attempt <= len(scripted) else None
    return fault or None


async def _inject(request: web.Request, fault: dict[str, Any], answer: dict[str, Any]) -> web.StreamResponse:
    if fault.get("hang"):
        answer["status"] = "hang"
        await asyncio.Event().wait()  # until the client (Envoy) gives up and the handler is cancelled
    if fault.get("reset"):
        # No status line at all: the connection is cut (RST) before the response headers.
        answer["status"] = "reset"
        assert request.transport is not None
        request.transport.abort()
        return web.Response(status=500)  # never sent: the transport is gone
    status = int(fault.get("status", 500))
    answer["status"] = status
    body = fault.get("error_body") or {"error": {"message": f"Mock upstream error {status}", "code": status}}
    response = json_response(body, status)
    if "retry_after" in fault:
        response.headers["Retry-After"] = str(fault["retry_after"])
    return response


async def _generation(request: web.Request) -> web.Response:
    generation_id = request.query.get("id")
    if not generation_id:
        return _error(400, "missing generation id")
    generation = request.app[_STATE].generations.get(generation_id)
    if generation is None or time.monotonic() < generation.available_at:
        return _error(404, "Generation not found")
    return json_response({"data": generation.data})


async def _models(request: web.Request) -> web.Response:
    override = request.app[_STATE].models_override
    if override is not None:
        status, body = override
        return web.Response(status=status, body=body, content_type="application/json")
    vercel = request.path.startswith("/vercel/")
    return json_response(vercel_models() if vercel else openrouter_models())


async def _override_models(request: web.Request) -> web.Response:
    """`{"status": 200, "body": <any JSON>}` or `{"status": 200, "raw": "<text>"}`: what every
    `GET …/models` answers until `DELETE /__mock/models`."""
    try:
        spec = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return _invalid_json(str(exc))
    if not isinstance(spec, dict) or not _is_status(spec.get("status", 200)):
        return _error(400, 'expected {"status": <200-599>, "body": <JSON>} or {"raw": <text>}')
    raw = spec["raw"].encode() if isinstance(spec.get("raw"), str) else orjson.dumps(spec.get("body"))
    request.app[_STATE].models_override = (spec.get("status", 200), raw)
    return web.Response(status=204)


async def _reset_models(request: web.Request) -> web.Response:
    request.app[_STATE].models_override = None
    return web.Response(status=204)


async def _list_answers(request: web.Request) -> web.Response:
    return json_response(list(request.app[_STATE].answers))


def build_app(defaults: MockOptions | None = None) -> web.Application:
    app = mock_app(RequestLog())
    app[_STATE] = _State(defaults or MockOptions())
    app.router.add_get("/__mock/answers", _list_answers)
    # Match on the path suffix so any base path works (/api/v1, /v1/code, ...).
    app.router.add_post("/{base:(?:.*/)?}chat/completions", json_post(_chat_completions, _invalid_json))
    app.router.add_get("/{base:(?:.*/)?}generation", _generation)
    app.router.add_put("/__mock/models", _override_models)
    app.router.add_delete("/__mock/models", _reset_models)
    app.router.add_get("/{base:(?:.*/)?}models", _models)
    return app


async def serve(host: str, port: int, defaults: MockOptions | None = None) -> None:
    """Serve until cancelled. Port 0 picks a free port (the log line shows it)."""
    runner = await start(build_app(defaults), host, port)
    try:
        bound_port = runner.addresses[0][1]
        shown_host = f"[{host}]" if ":" in host else host
        log.info("mock upstream listening on http://%s:%d", shown_host, bound_port)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _non_negative(convert: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = convert(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    return parse


_DEFAULTS = MockOptions()


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8090, help="port to listen on (0: any free)")
    parser.add_argument(
        "--chunk-delay-ms",
        type=_non_negative(float),
        default=_DEFAULTS.chunk_delay_ms,
        help="default sleep between SSE events",
    )
    parser.add_argument(
        "--headers-delay-ms",
        type=_non_negative(float),
        default=_DEFAULTS.headers_delay_ms,
        help="default sleep before sending response headers",
    )
    parser.add_argument(
        "--chunks",
        type=_non_negative(int),
        default=_DEFAULTS.chunks,
        help="default reply of N words 'w1 ... wN' (one SSE chunk each)",
    )
    parser.add_argument(
        "--keepalives",
        type=_non_negative(int),
        default=_DEFAULTS.keepalives,
        help="default number of ': OPENROUTER PROCESSING' comments before the first chunk",
    )


def options_from_cli(args: argparse.Namespace) -> MockOptions:
    return MockOptions(
        chunk_delay_ms=args.chunk_delay_ms,
        headers_delay_ms=args.headers_delay_ms,
        chunks=args.chunks,
        keepalives=args.keepalives,
    )
