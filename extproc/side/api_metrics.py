"""Contract 8.1: one `ApiMetricsParams` per upstream response (errors and the 402 included),
posted to `<O11Y_SERVICE_URL>/ingest/api-metrics` when the request ends, fire-and-forget.
Off while the URL or the client secret is unset."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from extproc.catalogue import normalize_model_id
from extproc.side.client import SideClient

if TYPE_CHECKING:
    from extproc.settings import Settings
    from extproc.state import RequestState
    from extproc.usage import ResponseSummary

INGEST_PATH = "/ingest/api-metrics"
TOKEN_HEADER = "X-O11Y-ADMIN-TOKEN"


def _millis(start: float, end: float) -> int:
    return max(0, round((end - start) * 1000))


def api_metrics_params(
    state: RequestState, summary: ResponseSummary | None, finished_at: float | None = None
) -> dict[str, Any] | None:
    """The params of one response, or None when nothing reached the upstream (no status)."""
    chat, identity, provider = state.chat, state.identity, state.provider
    status = state.status
    if chat is None or identity is None or provider is None or state.first_byte_at is None:
        return None
    if status is None or not 100 <= status <= 599:
        return None
    finished_at = time.monotonic() if finished_at is None else finished_at
    params: dict[str, Any] = {
        "kiloUserId": identity.user_id,
        "isAnonymous": identity.anonymous,
        "isStreaming": chat.stream,
        "userByok": state.user_byok,
        "provider": provider.id,
        "inferenceProvider": (summary.inference_provider if summary is not None else None) or "",
        "requestedModel": state.auto_model or chat.model_lower,
        "resolvedModel": normalize_model_id(chat.model_lower),
        "toolsAvailable": list(state.tools.tools_available) if state.tools is not None else [],
        "toolsUsed": list(state.tools.tools_used) if state.tools is not None else [],
        "ttfbMs": _millis(state.started, state.first_byte_at),
        "completeRequestMs": _millis(state.started, finished_at),
        "statusCode": status,
    }
    if identity.organization_id is not None:
        params["organizationId"] = identity.organization_id
    if state.client is not None and state.client.mode is not None:
        params["mode"] = state.client.mode
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

    def report(self, state: RequestState, summary: ResponseSummary | None) -> None:
        """Called when the request ends; never awaited."""
        if self.url is None or self.secret is None:
            return
        params = api_metrics_params(state, summary)
        if params is None:
            return
        # As the reference does, the secret is also in the body.
        body = {**params, "clientSecret": self.secret}
        self.client.spawn("api_metrics", self.client.post("api_metrics", self.url, body, {TOKEN_HEADER: self.secret}))
