"""Response tap for usage accounting (contract 7.2).

Reads the original upstream bytes (never the rewritten ones) and keeps only what accounting
needs: ids, model, provider, finish reason, the last usage object and whether the response
failed. Upstream data is never trusted to be well formed: nothing here raises on it
(contract decision 9).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from .money import MICRODOLLARS_PER_USD, parse_usd, usd_to_microdollars
from .sse import SseEvent, SseParser

__all__ = [
    "JsonTap",
    "ReportedUsage",
    "ResponseSummary",
    "StreamTap",
    "summarize_json_body",
    "suspicious_no_usage",
    "token_count",
    "usage_from_summary",
]

logger = logging.getLogger(__name__)

# OpenRouter bills BYOK requests 5 % of the upstream cost, so cost × 20 ≈ upstream cost.
_BYOK_COST_MULTIPLIER = 20
_BYOK_TOLERANCE_MICRODOLLARS = Decimal("1.1")
# A non-streamed completion is one JSON document; beyond this it is not a chat response.
MAX_JSON_BODY_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class ResponseSummary:
    status: int
    streamed: bool
    message_id: str | None = None
    model: str | None = None
    inference_provider: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None  # the last non-null usage object, as sent
    has_error: bool = False
    # Data events that were not JSON objects; for a JSON body, 1 when the body was not one.
    malformed_events: int = 0


@dataclass(frozen=True, slots=True)
class ReportedUsage:
    """Tokens and cost as the upstream reported them for one response (contract 7.2)."""

    input_tokens: int
    output_tokens: int
    cache_hit_tokens: int
    cache_write_tokens: int
    cost_microdollars: int
    is_byok: bool | None


class StreamTap:
    """Summarises a `stream: true` response from its raw SSE chunks."""

    __slots__ = ("_parser", "_summary")

    def __init__(self, status: int) -> None:
        self._parser = SseParser()
        self._summary = ResponseSummary(status=status, streamed=True, has_error=status >= 400)

    def feed(self, chunk: bytes) -> None:
        for item in self._parser.feed(chunk):
            if isinstance(item, SseEvent):
                self._apply(item.data)

    @property
    def message_id(self) -> str | None:
        """The last message id seen so far."""
        return self._summary.message_id

    def finish(self, aborted: bool = False) -> ResponseSummary:
        for item in self._parser.finish():
            if isinstance(item, SseEvent):
                self._apply(item.data)
        summary = self._summary
        if aborted:
            summary.has_error = True
        if summary.malformed_events:
            logger.warning(
                "stream had %d data events that were not JSON objects (model %s, id %s)",
                summary.malformed_events,
                summary.model,
                summary.message_id,
            )
        if self._parser.dropped_oversized:
            logger.warning(
                "stream had %d oversized SSE events dropped (model %s, id %s)",
                self._parser.dropped_oversized,
                summary.model,
                summary.message_id,
            )
        return summary

    def _apply(self, data: str) -> None:
        if data == "[DONE]":
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._summary.malformed_events += 1
            return
        if not isinstance(obj, dict):
            self._summary.malformed_events += 1
            return
        if "error" in obj:
            self._summary.has_error = True
        _apply_object(self._summary, obj, "delta")


class JsonTap:
    """Summarises a response that is one JSON document, kept whole up to a size cap."""

    __slots__ = ("_body", "_status")

    def __init__(self, status: int) -> None:
        self._status = status
        self._body = bytearray()

    def feed(self, chunk: bytes) -> None:
        if len(self._body) + len(chunk) <= MAX_JSON_BODY_BYTES:
            self._body += chunk

    def finish(self, aborted: bool = False) -> ResponseSummary:
        summary = summarize_json_body(bytes(self._body), self._status)
        summary.has_error = summary.has_error or aborted
        return summary


def summarize_json_body(body: bytes, status: int) -> ResponseSummary:
    """Summarises a non-streaming response body; invalid JSON leaves every field null."""
    summary = ResponseSummary(status=status, streamed=False)
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        _apply_object(summary, obj, "message")
    else:
        summary.malformed_events = 1
        logger.warning(
            "upstream response body is not a JSON object (status %d, %d bytes)", status, len(body)
        )
    summary.has_error = not summary.model or status >= 400
    return summary


def usage_from_summary(summary: ResponseSummary, *, cache_writes: bool = False) -> ReportedUsage:
    """Tokens and cost from an OpenRouter-format usage object; missing fields count as 0.

    Contract 7.2 counts no cache writes for providers; a custom LLM's synthesized usage does
    carry them (`cache_writes`, contract 3.4)."""
    usage = summary.usage or {}
    raw_byok = usage.get("is_byok")
    is_byok = raw_byok if isinstance(raw_byok, bool) else None
    cost = usage.get("cost")
    upstream_cost = _dig(usage, "cost_details", "upstream_inference_cost")
    _warn_on_cost_anomaly(summary, is_byok, cost, upstream_cost)
    return ReportedUsage(
        input_tokens=token_count(usage.get("prompt_tokens")),
        output_tokens=token_count(usage.get("completion_tokens")),
        cache_hit_tokens=token_count(_dig(usage, "prompt_tokens_details", "cached_tokens")),
        cache_write_tokens=token_count(_dig(usage, "prompt_tokens_details", "cache_write_tokens")) if cache_writes else 0,
        cost_microdollars=usd_to_microdollars(upstream_cost if is_byok else cost),
        is_byok=is_byok,
    )


def suspicious_no_usage(summary: ResponseSummary) -> bool:
    """A clean response without usage cannot be charged from the stream alone."""
    return summary.usage is None and not summary.has_error


def _apply_object(summary: ResponseSummary, obj: dict[str, Any], choice_key: str) -> None:
    # Last non-null wins: later chunks refine earlier ones, and a usage-only final chunk
    # must not erase what the content chunks said.
    model = obj.get("model")
    if isinstance(model, str):
        summary.model = model
    message_id = obj.get("id")
    if isinstance(message_id, str):
        summary.message_id = message_id
    usage = obj.get("usage")
    if isinstance(usage, dict):
        summary.usage = usage
    choices = obj.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    provider = obj.get("provider")
    if not isinstance(provider, str):
        # Vercel AI Gateway names the provider it routed to only inside the choice.
        provider = _dig(
            choice, choice_key, "provider_metadata", "gateway", "routing", "finalProvider"
        )
    if isinstance(provider, str):
        summary.inference_provider = provider
    if isinstance(choice, dict):
        finish_reason = choice.get("finish_reason")
        if isinstance(finish_reason, str):
            summary.finish_reason = finish_reason


def _dig(value: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


# A token count the ledger's bigint columns cannot hold is garbage from upstream, like an
# amount beyond them (extproc/money.py): counted as 0 rather than refused by every insert.
_MAX_TOKENS = 2**63 - 1


def token_count(value: object) -> int:
    """An upstream token count: an integer (or integral float: "12.0" parses to a float) that
    fits bigint, else 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and -_MAX_TOKENS <= value <= _MAX_TOKENS:
        return value
    return 0


def _warn_on_cost_anomaly(
    summary: ResponseSummary, is_byok: bool | None, cost: object, upstream_cost: object
) -> None:
    cost_usd = parse_usd(cost)
    upstream_usd = parse_usd(upstream_cost) or Decimal(0)
    if is_byok is None and (cost_usd or upstream_usd):
        logger.warning(
            "SUSPICIOUS: is_byok is null but costs are non-zero (model %s, id %s)",
            summary.model,
            summary.message_id,
        )
    # A BYOK cost of exactly 0 is an OpenRouter promotion, not an accounting error.
    elif is_byok and cost_usd != 0:
        error = abs((cost_usd or 0) * _BYOK_COST_MULTIPLIER - upstream_usd) * MICRODOLLARS_PER_USD
        if error > _BYOK_TOLERANCE_MICRODOLLARS:
            logger.warning(
                "SUSPICIOUS: BYOK cost %s is not 5%% of upstream cost %s (model %s, id %s)",
                cost,
                upstream_cost,
                summary.model,
                summary.message_id,
            )
