"""Step 2.12, balance part: a paid model needs a positive balance (user or organisation)."""

from __future__ import annotations

from datetime import UTC, datetime

from extproc import errors
from extproc.directory import OrganizationAccount
from extproc.pipeline.identity import Identity
from extproc.pipeline.ports import Accounts
from extproc.pipeline.rejection import Rejection
from extproc.settings import Settings


def organization_balance(account: OrganizationAccount | None) -> int:
    """Microdollars the member may still spend: the organisation's balance, capped by the
    member's daily limit unless the organisation uses seats. No account: nothing to spend."""
    if account is None:
        return 0
    balance = account.total_microdollars_acquired - account.microdollars_used
    if account.require_seats or account.daily_limit_microdollars is None:
        return balance
    return min(account.daily_limit_microdollars - account.today_usage_microdollars, balance)


def promotion_active(settings: Settings, model_lower: str, identity: Identity, now: datetime | None = None) -> bool:
    moment = now or datetime.now(UTC)
    return any(p.active(model_lower, identity.bot_id, identity.token_source, moment) for p in settings.promotions)


async def require_balance(
    settings: Settings, directory: Accounts, identity: Identity, model_lower: str, balance: int
) -> None:
    if balance > 0 or settings.catalogue.is_free_model(model_lower) or promotion_active(settings, model_lower, identity):
        return
    raise Rejection(await payment_required(settings, directory, identity, balance))


async def payment_required(settings: Settings, directory: Accounts, identity: Identity, balance: int) -> errors.GatewayError:
    """The contract's 402 for `balance`, first-time or returning."""
    returning = await directory.is_returning_customer(identity.user_id)
    return errors.payment_required(
        returning=returning,
        balance_microdollars=balance,
        buy_credits_url=f"{settings.app_url}/profile",
        bonus_usd=settings.first_topup_bonus_usd,
    )
