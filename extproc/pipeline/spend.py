"""Step 2.12 with spend holds (issue 23; the decision beside contract 2.12 in
docs/ARCHITECTURE.md): a paid request reserves its cost bound H in every scope it spends from,
in one atomic Redis script, before it goes upstream.

- H fits everywhere: held, the request goes as it is.
- H does not fit, but the input and the shortest useful reply
  (`spend_minimum_reply_tokens`) do: what is available is held, and `max_tokens` is lowered
  in the upstream body to the largest value whose bound fits (`x-gateway-max-tokens: N` tells
  the client).
- Not even that: the contract's 402 (first-time or returning), `balance` = what is available,
  also when only other requests' live holds took it.
- Redis unavailable: the contract's check (a positive balance admits), logged and counted; or
  the contract's 503 with `SPEND_HOLDS_REDIS_DOWN=refuse`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from extproc import errors, logs
from extproc.admission import counters, scopes
from extproc.admission.holds import ScopeRead
from extproc.directory import OrganizationAccount, User
from extproc.pipeline.ports import SpendHolder
from extproc.pipeline.rejection import Rejection
from extproc.pipeline.upstream import serialised
from extproc.pricing.bound import SpendBound, largest_max_tokens, spend_bound
from extproc.pricing.candidates import candidate_models
from extproc.pricing.catalogue import PriceCatalogue, PricesUnavailable
from extproc.settings import Settings

logger = logging.getLogger(__name__)

# What a hold that cannot reach Redis raises (TimeoutError: its deadline).
HOLD_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class SpendHold:
    scopes: list[str]
    microdollars: int
    max_tokens: int | None  # lowered to this (x-gateway-max-tokens); None: as the client sent it


def user_reads(user: User) -> list[ScopeRead]:
    return [ScopeRead(scopes.user_balance(user.id), user.balance_microdollars, user.microdollars_used)]


def organization_reads(organization_id: str, user_id: str, account: OrganizationAccount) -> list[ScopeRead]:
    """The organisation's balance, and the member's day when a daily limit applies (the scopes
    `balance.organization_balance` takes the least of)."""
    balance = account.total_microdollars_acquired - account.microdollars_used
    reads = [ScopeRead(scopes.organization_balance(organization_id), balance, account.microdollars_used)]
    if not account.require_seats and account.daily_limit_microdollars is not None:
        reads.append(
            ScopeRead(
                scopes.member_day(organization_id, user_id, account.usage_date),
                account.daily_limit_microdollars - account.today_usage_microdollars,
                account.today_usage_microdollars,
            )
        )
    return reads


def request_bound(settings: Settings, prices: PriceCatalogue, model: str, body: dict[str, Any], provider_id: str) -> SpendBound:
    """H for the request at every provider the routing may send it to; the contract's 503 when
    no price catalogue was ever loaded (nothing bounds the request)."""
    models = candidate_models(
        model, body, settings.catalogue, routed_to=provider_id, universal_vercel_routing=settings.universal_vercel_routing
    )
    try:
        # Measured as it will be sent; a body too deep to send is the contract's 400 here too.
        return spend_bound(body, prices.candidates(models), model_id=model, body_bytes=len(serialised(body)))
    except PricesUnavailable as exc:
        logger.error("no price catalogue loaded; paid requests refused", extra=logs.failure(exc))
        raise Rejection(errors.SERVICE_UNAVAILABLE) from exc


class RedisDown(Exception):
    """The hold could not be taken and the degraded mode admits on the contract's check."""


async def reserve(
    settings: Settings,
    holder: SpendHolder,
    usage_id: str,
    reads: list[ScopeRead],
    bound: SpendBound,
    body: dict[str, Any],
    payment_required: Callable[[int], Awaitable[errors.GatewayError]],
) -> SpendHold:
    """Holds `bound` (or less, lowering `body`'s max_tokens) or raises `Rejection`.
    `payment_required(available)`: the contract's 402 for that balance (a coroutine). Raises
    `RedisDown` when the caller should fall back to the contract's check."""
    minimum = min(settings.spend_minimum_reply_tokens, bound.output_tokens)
    floor = bound.with_output_tokens(minimum).microdollars
    try:
        hold = await holder.hold(usage_id, reads, bound.microdollars, floor)
    except HOLD_ERRORS as exc:
        counters.DEGRADED.inc()
        refuse = settings.spend_holds_redis_down == "refuse"
        logger.error(
            "spend holds unavailable; " + ("refusing paid requests" if refuse else "admitting on the contract's check"),
            extra=logs.failure(exc, "redis EVALSHA spend hold"),
        )
        if refuse:
            counters.REFUSALS.labels("redis_unavailable").inc()
            raise Rejection(errors.SERVICE_UNAVAILABLE) from exc
        raise RedisDown from exc
    reason = scopes.kind(hold.binding).value if hold.binding else scopes.Kind.USER_BALANCE.value
    if not hold.admitted:
        counters.REFUSALS.labels(reason).inc()
        raise Rejection(await payment_required(hold.available))
    held = [read.scope for read in reads]
    if hold.held >= bound.microdollars:
        return SpendHold(held, hold.held, None)
    max_tokens = largest_max_tokens(bound, hold.held, minimum)
    if max_tokens is None:  # the script held at least the floor, so this is a rounding edge
        holder.release(usage_id, held, hold.held)
        counters.REFUSALS.labels(reason).inc()
        raise Rejection(await payment_required(hold.available))
    counters.LOWERED.labels(reason).inc()
    lower_max_tokens(body, max_tokens)
    return SpendHold(held, hold.held, max_tokens)


def lower_max_tokens(body: dict[str, Any], output_tokens: int) -> None:
    """At most `output_tokens` of output, as the bound counts it (extproc/pricing/bound.py:
    `max_tokens` plus an explicit reasoning budget): the reasoning budget keeps at most half."""
    reasoning = body.get("reasoning")
    budget = reasoning.get("max_tokens") if isinstance(reasoning, dict) else None
    if isinstance(reasoning, dict) and isinstance(budget, int | float) and not isinstance(budget, bool) and budget > 0:
        reasoning["max_tokens"] = kept = min(int(budget), output_tokens // 2)
        output_tokens -= kept
    body["max_tokens"] = output_tokens
    if "max_completion_tokens" in body:
        body["max_completion_tokens"] = output_tokens
