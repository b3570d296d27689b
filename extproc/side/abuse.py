"""Contract 8.3 and decision 4: the abuse service.

Classification starts right after provider selection (2.10), from the body as the client sent
it, as a task the request phase never awaits. The verdict is only logged (no blocking action);
its `request_id` becomes the usage record's `abuse_request_id`, for which the record's
submission waits at most `abuse_classify_budget_seconds` (2 s) after the upstream responded.
After the ledger row is written, the real (pre-zeroing) cost is reported, fire-and-forget.
`microdollar_usage.abuse_classification` stays 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from extproc.side.client import ERRORS, SideClient, failed

if TYPE_CHECKING:
    from extproc.accounting.record import RequestFacts, UsageRecord
    from extproc.pipeline.client_headers import ClientInfo
    from extproc.pipeline.identity import Identity
    from extproc.pipeline.parse import ChatRequest
    from extproc.response_usage import ReportedUsage
    from extproc.settings import Settings

logger = logging.getLogger(__name__)

CLASSIFY_PATH = "/api/classify"
COST_PATH = "/api/usage/cost"


@dataclass(frozen=True, slots=True)
class Verdict:
    request_id: int  # 0: the service could not classify
    verdict: str | None
    risk_score: float | None


def classification_payload(
    chat: ChatRequest, identity: Identity, client: ClientInfo, facts: RequestFacts, provider_id: str, user_byok: bool
) -> dict[str, Any]:
    """The classify payload of 8.3, from the body before any shaping (`facts`). Built on the
    request path so that later mutations of the body cannot change it; sent from a task."""
    return {
        "kilo_user_id": identity.user_id,
        "organization_id": identity.organization_id,
        "project_id": client.project_id,
        "ip_address": client.forwarded_for,
        "geo_city": None,
        "geo_country": None,
        "geo_latitude": None,
        "geo_longitude": None,
        "ja4_digest": None,
        "user_agent": client.user_agent,
        "provider": provider_id,
        "requested_model": chat.model_lower,
        "user_prompt": facts.user_prompt,
        "system_prompt": facts.system_prompt or None,
        "max_tokens": facts.max_tokens,
        "has_middle_out_transform": facts.has_middle_out_transform,
        "has_tools": facts.has_tools,
        "streamed": chat.stream,
        "is_user_byok": user_byok,
        "editor_name": client.editor_name,
    }


def parse_verdict(data: Any) -> Verdict | None:
    if not isinstance(data, dict):
        return None
    request_id = data.get("request_id")
    risk = data.get("risk_score")
    return Verdict(
        request_id=request_id if isinstance(request_id, int) and not isinstance(request_id, bool) else 0,
        verdict=data.get("verdict") if isinstance(data.get("verdict"), str) else None,
        risk_score=float(risk) if isinstance(risk, (int, float)) and not isinstance(risk, bool) else None,
    )


class Classification:
    """One request's classification, running in the background since the request phase."""

    __slots__ = ("_task", "_budget", "_log_extra")

    def __init__(self, task: asyncio.Task[Verdict | None], budget: float, log_extra: dict[str, Any]) -> None:
        self._task = task
        self._budget = budget
        self._log_extra = log_extra

    async def request_id(self, responded_at: float | None) -> int:
        """The abuse request id, waiting until `responded_at` (monotonic) + the budget at most.
        0 when there is no verdict by then (the classification is then abandoned)."""
        task = self._task
        if not task.done():
            start = responded_at if responded_at is not None else time.monotonic()
            remaining = start + self._budget - time.monotonic()
            # asyncio.wait neither raises if the task is cancelled (shutdown) nor cancels it.
            done, _ = await asyncio.wait({task}, timeout=max(0.0, remaining))
            if not done:
                task.cancel()
                ERRORS.labels("abuse_classify").inc()
                logger.warning(
                    "abuse classification not ready in time (ignored)",
                    extra={"budget_seconds": self._budget, **self._log_extra},
                )
                return 0
        if task.cancelled():
            return 0
        verdict = task.result()
        return verdict.request_id if verdict is not None else 0


class AbuseService:
    def __init__(self, client: SideClient, settings: Settings) -> None:
        self.client = client
        self.base_url = settings.abuse_service_url
        self.budget = settings.abuse_classify_budget_seconds
        self.headers: dict[str, str] = {}
        client_id, secret = settings.abuse_cf_access_client_id, settings.abuse_cf_access_client_secret
        if client_id is not None and secret is not None:
            self.headers = {
                "CF-Access-Client-Id": client_id.get_secret_value(),
                "CF-Access-Client-Secret": secret.get_secret_value(),
            }

    @property
    def enabled(self) -> bool:
        return self.base_url is not None

    def classify(
        self,
        chat: ChatRequest,
        identity: Identity,
        client: ClientInfo,
        facts: RequestFacts,
        provider_id: str,
        user_byok: bool,
        request_id: str = "",
    ) -> Classification | None:
        """Start the classification (2.10); None when the service is off."""
        if self.base_url is None:
            return None
        payload = classification_payload(chat, identity, client, facts, provider_id, user_byok)
        log_extra = {"request_id": request_id, "user_id": identity.user_id}
        task = self.client.spawn("abuse_classify", self._classify(payload, log_extra))
        return Classification(task, self.budget, log_extra) if task is not None else None

    async def _classify(self, payload: dict[str, Any], log_extra: dict[str, Any]) -> Verdict | None:
        ok, data = await self.client.post("abuse_classify", f"{self.base_url}{CLASSIFY_PATH}", payload, self.headers)
        if not ok:
            return None
        verdict = parse_verdict(data)
        if verdict is None:
            failed("abuse_classify", "answer is not a JSON object")
            return None
        context = data.get("context") if isinstance(data.get("context"), dict) else {}
        logger.info(
            "abuse classification",
            extra={
                **log_extra,
                "verdict": verdict.verdict,
                "risk_score": verdict.risk_score,
                "signals": data.get("signals"),
                "abuse_request_id": verdict.request_id,
                "identity_key": context.get("identity_key"),
            },
        )
        return verdict

    def report_cost(self, record: UsageRecord, usage: ReportedUsage) -> None:
        """8.3 cost report, after the row is written: the market cost (before zeroing) and the
        tokens that were recorded. Only for classified requests whose message id is known."""
        if self.base_url is None or not record.abuse_request_id or not record.message_id:
            return
        payload = {
            "kilo_user_id": record.kilo_user_id,
            "ip_address": record.forwarded_for,
            "ja4_digest": None,
            "user_agent": record.user_agent,
            "request_id": record.abuse_request_id,
            "message_id": record.message_id,
            "cost": usage.cost_microdollars,
            "requested_model": record.requested_model,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "cache_hit_tokens": usage.cache_hit_tokens,
        }
        self.client.spawn("abuse_cost", self._report_cost(payload))

    async def _report_cost(self, payload: dict[str, Any]) -> None:
        ok, data = await self.client.post("abuse_cost", f"{self.base_url}{COST_PATH}", payload, self.headers)
        if ok and isinstance(data, dict) and data.get("success") is False:
            failed("abuse_cost", str(data.get("error")), message_id=payload["message_id"])
