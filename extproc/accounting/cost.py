"""Contract 7.2-7.4: what a request is charged, in integer microdollars."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from extproc.money import parse_usd, usd_to_microdollars
from extproc.response_usage import ReportedUsage, token_count

# OpenRouter bills 5 % on BYOK, so a missing upstream cost is total_cost x 20 (contract 7.3).
_BYOK_UPSTREAM_MULTIPLIER = 20


@dataclass(frozen=True, slots=True)
class Charge:
    usage: ReportedUsage
    cache_discount_microdollars: int | None
    inference_provider: str | None
    upstream_id: str | None = None
    finish_reason: str | None = None
    latency: float | None = None
    moderation_latency: float | None = None
    generation_time: float | None = None
    streamed: bool | None = None
    cancelled: bool | None = None


def charge_from_dict(values: dict[str, Any]) -> Charge:
    """A `Charge` from its JSON form (orjson writes the dataclass as a dict)."""
    return Charge(**{**values, "usage": ReportedUsage(**values["usage"])})


def from_generation(charge: Charge, data: dict[str, Any], streamed: bool) -> Charge:
    """Contract 7.3: the generation endpoint's numbers replace the stream's."""
    is_byok = data.get("is_byok") if isinstance(data.get("is_byok"), bool) else None
    if is_byok:
        upstream = data.get("upstream_inference_cost")
        cost_usd = upstream if upstream is not None else _times(data.get("total_cost"), _BYOK_UPSTREAM_MULTIPLIER)
    else:
        cost_usd = data.get("total_cost")
    usage = ReportedUsage(
        input_tokens=token_count(data.get("native_tokens_prompt")),
        output_tokens=token_count(data.get("native_tokens_completion")),
        cache_hit_tokens=token_count(data.get("native_tokens_cached")),
        cache_write_tokens=0,
        cost_microdollars=usd_to_microdollars(cost_usd),
        is_byok=is_byok,
    )
    discount = data.get("cache_discount")
    # Built whole rather than with dataclasses.replace, which costs several times as much (it
    # introspects the fields on every call); every field is set here.
    return Charge(
        usage=usage,
        cache_discount_microdollars=usd_to_microdollars(discount) if discount is not None else None,
        inference_provider=_str(data.get("provider_name")) or charge.inference_provider,
        upstream_id=_str(data.get("upstream_id")),
        finish_reason=_str(data.get("finish_reason")) or charge.finish_reason,
        latency=_float(data.get("latency")),
        moderation_latency=_float(data.get("moderation_latency")),
        generation_time=_float(data.get("generation_time")),
        streamed=data["streamed"] if isinstance(data.get("streamed"), bool) else streamed,
        cancelled=data["cancelled"] if isinstance(data.get("cancelled"), bool) else None,
    )


def billable(charge: Charge, *, free_model: bool, user_byok: bool, promotion: bool) -> tuple[int, int | None]:
    """Contract 7.4: (cost, cache discount) actually charged; free models, BYOK and promotions
    are charged nothing (the market cost keeps the real figure)."""
    if free_model or user_byok or promotion:
        return 0, (0 if charge.cache_discount_microdollars is not None else None)
    return charge.usage.cost_microdollars, charge.cache_discount_microdollars


def _times(value: object, factor: int) -> Decimal | None:
    amount = parse_usd(value)
    return amount * factor if amount is not None else None


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
