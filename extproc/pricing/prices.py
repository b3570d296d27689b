"""Model prices as exact integers, parsed from a provider's `GET /models` answer.

Unit: **picodollars** (10^-12 USD) per token, per request, per image or per search. OpenRouter
publishes decimal USD strings ("0.000003", "0.0000000375"); 12 decimal places hold every
price it publishes exactly, as a Python int (never a float). A price with more decimals is
rounded *up* to the next picodollar, so it still bounds the bill. A bad entry (negative, NaN,
non-numeric, absurd) is refused whole: a model refused is priced as an unknown model (the
table's highest prices), never as free.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

logger = logging.getLogger(__name__)

PICODOLLARS_PER_USD = 10**12
PICODOLLARS_PER_MICRODOLLAR = 10**6
# Beyond these a price is garbage, not a price: nobody sells a token for more than $1, or a
# request, an image or a search for more than $100 (the dearest OpenRouter token is ~$0.0006).
_MAX_TOKEN_PRICE = Decimal(1)
_MAX_UNIT_PRICE = Decimal(100)
# Llama 4 Scout's 10M is the largest context published; past 1e9 tokens it is garbage.
_MAX_TOKENS = 10**9

# The price fields of OpenRouter's `pricing` object (and of each of its `overrides`, the
# long-context bands), by what they are charged on. An input or output token is charged at one
# of these, so the bound takes the highest of each side. Per-image-output prices are added to
# the output price per token: every generated image is at least one output token.
_INPUT_TOKEN_FIELDS = (
    "prompt",
    "input_cache_read",
    "input_cache_write",
    "input_cache_write_1h",
    "audio",
    "input_audio_cache",
    "image_token",
)
_OUTPUT_TOKEN_FIELDS = ("completion", "internal_reasoning", "audio_output")
_UNIT_FIELDS = ("request", "image", "web_search", "image_output")
_KNOWN_PRICE_FIELDS = frozenset((*_INPUT_TOKEN_FIELDS, *_OUTPUT_TOKEN_FIELDS, *_UNIT_FIELDS))
# Not prices: `discount` only lowers the bill; `overrides` is read below.
_IGNORED_FIELDS = frozenset(("discount", "overrides", "min_prompt_tokens"))


class BadPrice(ValueError):
    """A model entry that cannot be priced; the message says why (for the log)."""


@dataclass(frozen=True, slots=True)
class ModelPrices:
    """One model at one provider. Prices in picodollars (10^-12 USD): per token unless named
    per request / image / search. The first eight are the provider's base prices as published
    (for `catalogue show`); the `*_max` ones are the highest that can apply to a request
    (every price field and long-context band folded in), which is what the bound uses."""

    model_id: str
    prompt: int
    completion: int
    request: int
    image: int
    internal_reasoning: int
    input_cache_read: int
    input_cache_write: int
    web_search: int
    context_length: int  # tokens
    max_completion_tokens: int | None  # tokens; None when the provider publishes none
    input_token_max: int  # highest price of an input token (prompt, cache write, audio, bands)
    output_token_max: int  # highest price of an output token (completion, reasoning, bands, + image output)
    request_max: int  # per request
    image_max: int  # per input image
    web_search_max: int  # per search

    @property
    def output_cap(self) -> int:
        """Most output tokens the model can produce in one reply."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.context_length

    def as_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def ceiling(entries: Iterable[ModelPrices], model_id: str = "*") -> ModelPrices | None:
    """The highest of every price and limit of `entries`: what bounds a model missing from the
    table, or a request that may go to any of several providers. None for no entries."""
    items = list(entries)
    if not items:
        return None
    caps = [e.max_completion_tokens for e in items]
    return ModelPrices(
        model_id=model_id,
        **{
            f.name: max(getattr(e, f.name) for e in items)
            for f in fields(ModelPrices)
            if f.name not in ("model_id", "max_completion_tokens")
        },
        max_completion_tokens=None if None in caps else max(c for c in caps if c is not None),
    )


def parse_price(value: object, name: str, *, limit: Decimal) -> int:
    """A decimal USD price (string or JSON number) as picodollars, rounded up."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadPrice(f"{name} is not a number: {value!r}")
    try:
        amount = Decimal(repr(value) if isinstance(value, float) else value)
    except InvalidOperation:
        raise BadPrice(f"{name} is not a number: {value!r}") from None
    if not amount.is_finite():
        raise BadPrice(f"{name} is not finite: {value!r}")
    if amount < 0:
        # OpenRouter's `openrouter/auto` says "-1": priced by the model it picks, unknown here.
        raise BadPrice(f"{name} is negative: {value!r}")
    if amount > limit:
        raise BadPrice(f"{name} is absurd: {value!r}")
    return int((amount * PICODOLLARS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def _token_count(value: object, name: str, *, required: bool) -> int | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_TOKENS:
        raise BadPrice(f"{name} is not a token count: {value!r}")
    return value


def _price_fields(pricing: Mapping[str, Any], where: str) -> dict[str, int]:
    prices: dict[str, int] = {}
    for name, value in pricing.items():
        if name in _IGNORED_FIELDS or value is None:
            continue
        if name not in _KNOWN_PRICE_FIELDS:
            logger.warning("unknown price field ignored", extra={"field": f"{where}{name}", "value": str(value)[:40]})
            continue
        limit = _MAX_UNIT_PRICE if name in _UNIT_FIELDS else _MAX_TOKEN_PRICE
        prices[name] = parse_price(value, f"{where}{name}", limit=limit)
    return prices


def _model_prices(
    model_id: str,
    pricing: Mapping[str, Any],
    context_length: object,
    max_completion_tokens: object,
) -> ModelPrices:
    """One entry, from OpenRouter's field names (other shapes are renamed to them first)."""
    base = _price_fields(pricing, "")
    for required in ("prompt", "completion"):
        if required not in base:
            raise BadPrice(f"no {required} price")
    bands = [base]
    overrides = pricing.get("overrides")
    if overrides is not None:
        if not isinstance(overrides, list) or not all(isinstance(o, dict) for o in overrides):
            raise BadPrice("overrides is not a list of objects")
        bands += [_price_fields(band, f"overrides[{i}].") for i, band in enumerate(overrides)]

    def highest(names: Sequence[str]) -> int:
        return max((band.get(n, 0) for band in bands for n in names), default=0)

    context = _token_count(context_length, "context_length", required=True)
    assert context is not None
    return ModelPrices(
        model_id=model_id,
        prompt=base["prompt"],
        completion=base["completion"],
        request=base.get("request", 0),
        image=base.get("image", 0),
        internal_reasoning=base.get("internal_reasoning", 0),
        input_cache_read=base.get("input_cache_read", 0),
        input_cache_write=base.get("input_cache_write", 0),
        web_search=base.get("web_search", 0),
        context_length=context,
        max_completion_tokens=_token_count(max_completion_tokens, "max_completion_tokens", required=False),
        input_token_max=highest(_INPUT_TOKEN_FIELDS),
        output_token_max=highest(_OUTPUT_TOKEN_FIELDS) + highest(("image_output",)),
        request_max=highest(("request",)),
        image_max=highest(("image",)),
        web_search_max=highest(("web_search",)),
    )


@dataclass(frozen=True, slots=True)
class ParsedModels:
    """A `/models` answer: the entries that could be priced, and why the others could not."""

    models: dict[str, ModelPrices]  # by lowercased model id
    refused: dict[str, str]  # model id -> reason


class BadAnswer(ValueError):
    """A `/models` answer that is not a catalogue at all (not JSON, no `data` list)."""


def _entries(answer: object) -> list[Any]:
    if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
        raise BadAnswer("the answer has no `data` list")
    entries: list[Any] = answer["data"]
    return entries


def _collect(entries: list[Any], read: Any) -> ParsedModels:
    models: dict[str, ModelPrices] = {}
    refused: dict[str, str] = {}
    for index, entry in enumerate(entries):
        model_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(model_id, str) or not model_id.strip():
            refused[f"#{index}"] = "entry without a model id"
            continue
        key = model_id.strip().lower()
        try:
            models[key] = read(key, entry)
        except BadPrice as exc:
            refused[key] = str(exc)
            models.pop(key, None)  # a duplicate id with a bad entry: trust neither
    return ParsedModels(models, refused)


def parse_openrouter_models(answer: object) -> ParsedModels:
    """OpenRouter's `GET /api/v1/models`: `data[]` of `{id, context_length, pricing{prompt,
    completion, request, image, web_search, internal_reasoning, input_cache_read,
    input_cache_write, ...}, top_provider{context_length, max_completion_tokens}}`."""

    def read(key: str, entry: dict[str, Any]) -> ModelPrices:
        pricing = entry.get("pricing")
        if not isinstance(pricing, dict):
            raise BadPrice("no pricing object")
        top = entry.get("top_provider")
        top = top if isinstance(top, dict) else {}
        return _model_prices(key, pricing, entry.get("context_length"), top.get("max_completion_tokens"))

    return _collect(_entries(answer), read)


# Vercel AI Gateway's `GET /v1/models` names the same prices differently.
_VERCEL_NAMES = {
    "input": "prompt",
    "output": "completion",
    "input_cache_read": "input_cache_read",
    "input_cache_write": "input_cache_write",
    "web_search": "web_search",
    "image": "image",
    "request": "request",
    "reasoning": "internal_reasoning",
}


def parse_vercel_models(answer: object) -> ParsedModels:
    """Vercel's `GET /v1/models`: `data[]` of `{id, context_window, max_tokens, pricing{input,
    output, input_cache_read, input_cache_write, ...}}`. An unknown price field makes the
    entry bad (its unit is unknown, so it cannot be bounded)."""

    def read(key: str, entry: dict[str, Any]) -> ModelPrices:
        pricing = entry.get("pricing")
        if not isinstance(pricing, dict):
            raise BadPrice("no pricing object")
        renamed: dict[str, Any] = {}
        for name, value in pricing.items():
            if name not in _VERCEL_NAMES:
                raise BadPrice(f"unknown price field {name}")
            renamed[_VERCEL_NAMES[name]] = value
        return _model_prices(key, renamed, entry.get("context_window"), entry.get("max_tokens"))

    return _collect(_entries(answer), read)
