"""H: an upper bound, in integer microdollars, of what one chat request can be billed.

Pure: the parsed request body and the prices of every provider the request may be sent to in,
a `SpendBound` out. Why each part bounds the bill:

- Input tokens. A byte-level BPE token covers at least one byte of the text it encodes, so a
  prompt has at most as many tokens as the UTF-8 bytes of its texts. Every text of the request
  (messages, tool schemas, response formats, anything the provider may put in the prompt) is a
  JSON string of the body, and a JSON document is at least as long as the UTF-8 of its
  strings, so the body's JSON size bounds them all without knowing which fields a provider
  reads. Added: a chat template's tokens per message and per request, and the provider's tool
  prompt. Images are not counted by their bytes but at `IMAGE_TOKENS` each plus the per-image
  price; any other media part (audio, files, video) has no byte bound, so the input is then
  the whole context. Never more than the context length: the provider refuses a longer prompt.
- Output tokens: `max_tokens` / `max_completion_tokens` (the larger when both are sent, plus
  an explicit `reasoning.max_tokens`), never more than the model's own cap; without a usable
  one, the model's cap (the catalogue's max completion tokens, else its context length).
  Only a positive JSON integer is a limit; anything else (negative, zero, 1.5, "100") counts
  as absent: a provider may refuse, round or ignore it, and the cap bounds all three.
- Prices: each token at the highest price that can apply to its side (input vs cache writes
  and long-context bands; output vs reasoning), across every candidate; plus the per-request
  fee, the images, and the searches the request can trigger. All of it times `n`.

Units: prices in picodollars (extproc/pricing/prices.py); H in microdollars, rounded up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, Decimal
from typing import Any

import orjson

from extproc.pricing.prices import PICODOLLARS_PER_MICRODOLLAR, PICODOLLARS_PER_USD, ModelPrices, ceiling

# Chat templates wrap each message in a few special tokens (OpenAI: 3-4, Llama 3: 5, ChatML:
# 4-5) and prime the reply with a few more; these are comfortably above all of them.
MESSAGE_OVERHEAD_TOKENS = 16
REQUEST_OVERHEAD_TOKENS = 32
# Providers that render tools into a system prompt add instructions of their own (Anthropic
# documents 313-346 tokens, Llama 3.1's tool prompt is a few hundred).
TOOLS_OVERHEAD_TOKENS = 1_024
# The most tokens one input image is billed as: OpenAI's high detail tops out near 1,800
# (gpt-4o) to ~2,500 (patch-based mini models), Anthropic's ~1,600, Gemini's 258 per tile.
IMAGE_TOKENS = 6_000
# A request that can search the web (OpenRouter's web plugin, `:online`, `web_search_options`,
# a provider's search tool) is bounded at this many searches, each at the model's search price
# or OpenRouter's plugin price ($4 per 1,000 results) for the results asked (default 5).
MAX_SEARCHES = 10
_PLUGIN_PRICE_PER_RESULT = 4 * PICODOLLARS_PER_USD // 1_000
_DEFAULT_PLUGIN_RESULTS = 5
_MAX_PLUGIN_RESULTS = 100
# OpenAI's largest `n`; a value that is not a usable count is bounded at it.
MAX_CHOICES = 128
# Above every model's limits (and the contract's 99,999,999,999 `max_tokens` cap): a count past
# it is as good as infinite, and is kept as this instead of a gigantic int.
_HUGE_COUNT = 10**12
_IMAGE_PART_TYPES = frozenset(("image_url", "input_image"))
_TEXT_PART_TYPES = frozenset(("text", "input_text"))

DEFAULT_MINIMUM_REPLY_TOKENS = 256


@dataclass(frozen=True, slots=True)
class SpendBound:
    """H and what it was made of. Tokens are per choice; the request may produce `choices`
    of them (so a token limiter reserves `choices * (input_tokens + output_tokens)`)."""

    microdollars: int  # H: ceil(choices * (fixed_picodollars + output_tokens * output_price)) in µ$
    input_tokens: int  # input bound (tokens), at most the context length
    output_tokens: int  # output cap (tokens): the `max_tokens` the bound was sized for
    choices: int  # `n` as bounded (1 unless the request asks for more)
    fixed_picodollars: int  # per choice: the input at its highest price, images, request fee, searches
    output_picodollars_per_token: int  # the highest price of an output token
    output_tokens_limit: int  # the model's own cap: no `max_tokens` above it changes anything

    @property
    def total_tokens(self) -> int:
        return self.choices * (self.input_tokens + self.output_tokens)

    def with_output_tokens(self, output_tokens: int) -> SpendBound:
        """The same request with `max_tokens` set to `output_tokens` (at most the model's cap)."""
        tokens = min(output_tokens, self.output_tokens_limit)
        return replace(
            self,
            output_tokens=tokens,
            microdollars=_microdollars(self.choices, self.fixed_picodollars, tokens, self.output_picodollars_per_token),
        )


def _microdollars(choices: int, fixed: int, output_tokens: int, output_price: int) -> int:
    total = choices * (fixed + output_tokens * output_price)
    return -(-total // PICODOLLARS_PER_MICRODOLLAR)


def _count(value: object) -> int | None:
    """A positive count as a provider could read it: an integer, a finite number (rounded
    up), or the decimal text of one; anything else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        try:
            value = Decimal(value.strip())
        except ArithmeticError:
            return None
    if isinstance(value, int):
        return min(value, _HUGE_COUNT) if value > 0 else None
    if isinstance(value, float):
        value = Decimal(repr(value))
    if isinstance(value, Decimal) and value.is_finite() and value > 0:
        # Compared before converting: "1e999999999" would make an int of a billion digits.
        return _HUGE_COUNT if value > _HUGE_COUNT else int(value.to_integral_value(rounding=ROUND_CEILING))
    return None


def _choices(body: Mapping[str, Any]) -> int:
    value = body.get("n")
    if value is None:
        return 1
    return _count(value) or MAX_CHOICES


def _limit(value: object) -> int | None:
    """A reply limit every provider honours: a positive JSON integer. Anything else (1.5, "100",
    -1) one provider may round, another ignore, another refuse, so it counts as absent."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _output_tokens(body: Mapping[str, Any], limit: int) -> int:
    asked = [c for c in (_limit(body.get("max_tokens")), _limit(body.get("max_completion_tokens"))) if c]
    if not asked:
        return limit
    reasoning = body.get("reasoning")
    budget = _limit(reasoning.get("max_tokens")) if isinstance(reasoning, dict) else None
    return min(limit, max(asked) + (budget or 0))


@dataclass(slots=True)
class _Media:
    images: int = 0
    image_bytes: int = 0  # their share of the body's JSON, counted as images instead
    unbounded: bool = False  # audio, files, video: no byte bound on their tokens


def _media(body: Mapping[str, Any]) -> _Media:
    media = _Media()
    messages = body.get("messages")
    if not isinstance(messages, list):
        return media
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in _IMAGE_PART_TYPES:
                media.images += 1
                media.image_bytes += len(orjson.dumps(part))
            elif isinstance(part, dict) and kind not in _TEXT_PART_TYPES:
                media.unbounded = True
    return media


def _message_count(body: Mapping[str, Any]) -> int:
    messages = body.get("messages")
    return len(messages) if isinstance(messages, list) else 1


def _searches_price(body: Mapping[str, Any], model_id: str, prices: ModelPrices) -> int:
    """What the web searches the request can trigger may cost, at most (0 if it cannot)."""
    results = 0
    plugins = body.get("plugins")
    if isinstance(plugins, list):
        for plugin in plugins:
            if isinstance(plugin, dict) and plugin.get("id") == "web":
                if "max_results" in plugin:  # a value that is not a count: the most allowed
                    asked = _count(plugin.get("max_results")) or _MAX_PLUGIN_RESULTS
                else:
                    asked = _DEFAULT_PLUGIN_RESULTS
                results = max(results, min(asked, _MAX_PLUGIN_RESULTS))
    online = model_id.endswith(":online") or results > 0
    tools = body.get("tools")
    server_tool = isinstance(tools, list) and any(
        isinstance(t, dict) and t.get("type") not in (None, "function") for t in tools
    )
    if not (online or server_tool or "web_search_options" in body):
        return 0
    per_search = max(prices.web_search_max, _PLUGIN_PRICE_PER_RESULT * (results or _DEFAULT_PLUGIN_RESULTS))
    return MAX_SEARCHES * per_search


def spend_bound(
    body: Mapping[str, Any],
    candidates: Sequence[ModelPrices],
    *,
    model_id: str = "",
    body_bytes: int | None = None,
) -> SpendBound:
    """H for `body` sent to any of `candidates` (one `ModelPrices` per provider the routing may
    choose; `PriceCatalogue.candidates` gives them, unknown models at the highest prices).

    `model_id` is the lowercased requested model (its `:online` suffix turns on web search);
    `body_bytes` the size of the body's JSON as it is sent, when the caller has it (else it is
    serialised here). Raises ValueError for no candidates.
    """
    prices = candidates[0] if len(candidates) == 1 else ceiling(candidates)
    if prices is None:
        raise ValueError("a spend bound needs the prices of at least one provider")
    media = _media(body)
    if media.unbounded:
        input_tokens = prices.context_length
    else:
        size = len(orjson.dumps(body)) if body_bytes is None else body_bytes
        tools = body.get("tools") or body.get("functions")
        estimate = (
            max(0, size - media.image_bytes)
            + MESSAGE_OVERHEAD_TOKENS * _message_count(body)
            + REQUEST_OVERHEAD_TOKENS
            + (TOOLS_OVERHEAD_TOKENS if tools else 0)
            + IMAGE_TOKENS * media.images
        )
        input_tokens = min(prices.context_length, estimate)
    limit = prices.output_cap
    output_tokens = _output_tokens(body, limit)
    choices = _choices(body)
    fixed = (
        input_tokens * prices.input_token_max
        + media.images * prices.image_max
        + prices.request_max
        + _searches_price(body, model_id, prices)
    )
    return SpendBound(
        microdollars=_microdollars(choices, fixed, output_tokens, prices.output_token_max),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        choices=choices,
        fixed_picodollars=fixed,
        output_picodollars_per_token=prices.output_token_max,
        output_tokens_limit=limit,
    )


def largest_max_tokens(
    bound: SpendBound, available_microdollars: int, minimum_reply_tokens: int = DEFAULT_MINIMUM_REPLY_TOKENS
) -> int | None:
    """The largest `max_tokens` (at most the bound's own output cap) whose H fits in
    `available_microdollars`, or None when not even the input plus a reply of
    `minimum_reply_tokens` (or the model's whole cap, if smaller) fits."""
    if available_microdollars <= 0:
        return None
    per_choice = available_microdollars * PICODOLLARS_PER_MICRODOLLAR // bound.choices
    room = per_choice - bound.fixed_picodollars
    if room < 0:
        return None
    price = bound.output_picodollars_per_token
    tokens = bound.output_tokens if price == 0 else min(bound.output_tokens, room // price)
    if tokens < max(1, min(minimum_reply_tokens, bound.output_tokens)):
        return None
    return tokens
