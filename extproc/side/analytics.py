"""Contract 7.5 (PostHog part) and decision 22: the first-usage analytics events.

For signed-in users with an e-mail, when `POSTHOG_API_KEY` is set:

* `first_usage`: the user's usage was 0 when the request came in, no organisation, and no
  earlier `microdollar_usage` row for the user, looked up in the same transaction as the
  ledger write, before its insert (`accounting.writer._write_checking_first_usage`).
* `first_microdollar_usage`: after the charge, |microdollars_used - cost| < 1 (this charge is
  the user's first microdollar); also carries `has_prior_free_usage = not first_usage`.

Both are sent after the ledger transaction committed, fire-and-forget, as
`POST <posthog_url>/capture {api_key, distinct_id: e-mail, event, properties}`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import asyncpg

from extproc.db import Connection
from extproc.side.client import SideClient, failed

if TYPE_CHECKING:
    from extproc.accounting.record import UsageRecord
    from extproc.settings import Settings

logger = logging.getLogger(__name__)

CAPTURE_PATH = "/capture"
FIRST_USAGE = "first_usage"
FIRST_MICRODOLLAR_USAGE = "first_microdollar_usage"
_HAS_PAYMENT_METHOD = "SELECT EXISTS (SELECT 1 FROM payment_methods WHERE user_id = $1 AND deleted_at IS NULL)"
_HAS_EARLIER_USAGE = "SELECT EXISTS (SELECT 1 FROM microdollar_usage WHERE kilo_user_id = $1)"
# Read in the ledger's transaction right after its UPDATE, which holds the row lock: the value
# the UPDATE's RETURNING gave.
_MICRODOLLARS_USED = "SELECT microdollars_used FROM kilocode_users WHERE id = $1"


def first_usage_candidate(record: UsageRecord) -> bool:
    """Whether the ledger must look for an earlier usage row (the rest of the first_usage rule)."""
    return bool(record.posthog_distinct_id) and record.prior_microdollar_usage == 0 and record.organization_id is None


async def has_earlier_usage(connection: Connection, user_id: str) -> bool:
    return bool(await connection.fetchval(_HAS_EARLIER_USAGE, user_id))


async def microdollars_used(connection: Connection, user_id: str) -> int | None:
    value = await connection.fetchval(_MICRODOLLARS_USED, user_id)
    return int(value) if value is not None else None


def crossed_first_microdollar(microdollars_used: int | None, cost: int) -> bool:
    return microdollars_used is not None and abs(microdollars_used - cost) < 1


class Analytics:
    def __init__(self, client: SideClient, settings: Settings, query_timeout: float = 5.0) -> None:
        self.client = client
        key = settings.posthog_api_key
        self.api_key = key.get_secret_value() if key is not None and key.get_secret_value() else None
        self.url = f"{settings.posthog_url}{CAPTURE_PATH}"
        self.query_timeout = query_timeout

    @property
    def enabled(self) -> bool:
        return self.api_key is not None

    def check_first_usage(self, record: UsageRecord) -> bool:
        return self.api_key is not None and first_usage_candidate(record)

    def usage_written(
        self,
        db: asyncpg.Pool,
        record: UsageRecord,
        *,
        model: str,
        cost: int,
        first_usage: bool,
        microdollars_used: int | None,
    ) -> None:
        """After the ledger committed a new row: send what the row makes true. Never awaited."""
        if self.api_key is None or not record.posthog_distinct_id:
            return
        events = [FIRST_USAGE] if first_usage else []
        if crossed_first_microdollar(microdollars_used, cost):
            events.append(FIRST_MICRODOLLAR_USAGE)
        if events:
            properties = {"model": model, "cost_mUsd": cost}
            send = self._send(db, record.kilo_user_id, record.posthog_distinct_id, events, properties, first_usage)
            self.client.spawn("posthog", send)

    async def _send(
        self,
        db: asyncpg.Pool,
        user_id: str,
        distinct_id: str,
        events: list[str],
        properties: dict[str, Any],
        first_usage: bool,
    ) -> None:
        properties = {**properties, "has_payment_method": await self._has_payment_method(db, user_id)}
        for event in events:
            extra = {"has_prior_free_usage": not first_usage} if event == FIRST_MICRODOLLAR_USAGE else {}
            body = {
                "api_key": self.api_key,
                "distinct_id": distinct_id,
                "event": event,
                "properties": {**properties, **extra},
            }
            ok, _ = await self.client.post("posthog", self.url, body, {})
            if ok:
                logger.info("analytics event sent", extra={"event": event, "user_id": user_id})

    async def _has_payment_method(self, db: asyncpg.Pool, user_id: str) -> bool | None:
        """A non-deleted `payment_methods` row; None (unknown) when Postgres does not answer."""
        try:
            async with db.acquire(timeout=self.query_timeout) as connection:
                return bool(await connection.fetchval(_HAS_PAYMENT_METHOD, user_id, timeout=self.query_timeout))
        except Exception as exc:  # fail-open: the events still go out
            failed("posthog", f"payment method lookup: {exc!r}", user_id=user_id)
            return None
