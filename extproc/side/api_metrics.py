"""Contract 8.1: one `ApiMetricsParams` per upstream response (errors and the 402 included),
posted to `<O11Y_SERVICE_URL>/ingest/api-metrics` when the request ends, fire-and-forget.
Off while the URL or the client secret is unset."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from extproc.catalogue import normalize_model_id
from extproc.side.client import SideClient

if TYPE_CHECKING:
    from extproc.response_usage import ResponseSummary
    from extproc.settings import Settings

INGEST_PATH = "/ingest/api-metrics"
TOKEN_HEADER = "X-O11Y-ADMIN-TOKEN"


@dataclass(frozen=True, slots=True)
class AnsweredRequest:
    """What 8.1 reports of a request the upstream answered (built when the request ends)."""

    user_id: str
    anonymous: bool
    organization_id: str | None
    streaming: bool
    user_byok: bool
    provider_id: str
    requested_model: str  # what the client asked for (a kilo/auto id before it was resolved)
    model_lower: str  # the model as routed
    tools_available: tuple[str, ...]
    tools_used: tuple[str, ...]
    mode: str | None
    started: float  # monotonic
    first_byte_at: float  # monotonic
    status: int


def _millis(start: float, end: float) -> int:
    return max(0, round((end - start) * 1000))


def api_metrics_params(
    request: AnsweredRequest, summary: ResponseSummary | None, finished_at: float | None = None
) -> dict[str, Any]:
    """The params of one response."""
    finished_at = time.monotonic() if finished_at is None else finished_at
    params: dict[str, Any] = {
        "kiloUserId": request.user_id,
        "isAnonymous": request.anonymous,
        "isStreaming": request.streaming,
        "userByok": request.user_byok,
        "provider": request.provider_id,
        "inferenceProvider": (summary.inference_provider if summary is not None else None) or "",
        "requestedModel": request.requested_model,
        "resolvedModel": normalize_model_id(request.model_lower),
        "toolsAvailable": list(request.tools_available),
        "toolsUsed": list(request.tools_used),
        "ttfbMs": _millis(request.started, request.first_byte_at),
        "completeRequestMs": _millis(request.started, finished_at),
        "statusCode": request.status,
    }
    if request.organization_id is not None:
        params["organizationId"] = request.organization_id
    if request.mode is not None:
        params["mode"] = request.mode
    return params


class ApiMetrics:
    def __init__(self, client: SideClient, settings: Settings) -> None:
        self.client = client
        secret = settings.o11y_kilo_gateway_client_secret
        url = settings.o11y_service_url
        self.secret = secret.get_secret_value() if secret is not None and secret.get_secret_value() else None
        self.url = f"{url}{INGEST_PATH}" if url is not None else None

    @property
    def enabled(self) -> bool:
        return self.url is not None and self.secret is not None

    def report(self, request: AnsweredRequest, summary: ResponseSummary | None) -> None:
        """Called when the request ends; never awaited."""
        if self.url is None or self.secret is None:
            return
        params = api_metrics_params(request, summary)
        # As the reference does, the secret is also in the body.
        body = {**params, "clientSecret": self.secret}
        self.client.spawn("api_metrics", self.client.post("api_metrics", self.url, body, {TOKEN_HEADER: self.secret}))
