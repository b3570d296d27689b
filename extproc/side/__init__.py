"""Optional side services: the abuse service (behaviour.md 8.3), API metrics (8.1) and product
analytics (PostHog, 7.5).

Every one is off unless configured and fail-open: a non-2xx answer, an exception or a timeout
is logged and counted in `llm_gateway_side_service_errors_total{service}`, and is never seen
by the client. Nothing here is awaited by a response chunk: calls run as tasks of their own,
on one `aiohttp.ClientSession` per process, created lazily in the running loop and closed
when the accounting drains at shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass

from extproc.settings import Settings
from extproc.side.abuse import AbuseService
from extproc.side.analytics import Analytics
from extproc.side.api_metrics import ApiMetrics
from extproc.side.client import SideClient


@dataclass(slots=True)
class SideServices:
    client: SideClient
    abuse: AbuseService
    api_metrics: ApiMetrics
    analytics: Analytics

    @classmethod
    def build(cls, settings: Settings) -> SideServices:
        client = SideClient(settings.side_service_timeout_seconds)
        return cls(
            client=client,
            abuse=AbuseService(client, settings),
            api_metrics=ApiMetrics(client, settings),
            analytics=Analytics(client, settings),
        )

    async def close(self, timeout: float) -> None:
        await self.client.close(timeout)
