"""Steps 3.2 and 2.15: pick the provider and build the request Envoy sends upstream.

Only the gateway's own headers go upstream (contract 2.15 and 10): the client's credentials,
cookies and every other client header are removed here.
"""

from __future__ import annotations

import orjson
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingResponse

from extproc import protocol
from extproc.envoy_config import ENVOY_REQUEST_HEADERS, UPSTREAM_HEADER
from extproc.settings import Provider, Settings
from extproc.state import ChatRequest, RequestState

# Envoy owns these: host is rewritten per route, the others are dropped by the provider
# route on the way out (removing x-forwarded-proto here would break Envoy's re-routing).
_KEPT = frozenset({"host", *ENVOY_REQUEST_HEADERS})


def select_provider(settings: Settings, chat: ChatRequest) -> Provider:
    """Contract 3.2. Until BYOK, custom LLMs, the Vercel split and free-model gateways exist,
    every request takes the decision's last branch: OpenRouter."""
    return settings.providers["openrouter"]


def upstream_headers(settings: Settings, provider: Provider, query: str, body_length: int) -> dict[str, str]:
    headers = {
        UPSTREAM_HEADER: provider.cluster,
        ":path": f"{provider.base_path}/chat/completions{query}",
        "http-referer": settings.http_referer,
        "x-title": settings.x_title,
        "content-type": "application/json",
        "content-length": str(body_length),
    }
    if provider.api_key is not None:
        headers["authorization"] = f"Bearer {provider.api_key.get_secret_value()}"
    return headers


def forward(settings: Settings, state: RequestState, chat: ChatRequest, provider: Provider) -> ProcessingResponse:
    state.upstream_body = body = orjson.dumps(chat.body)
    headers = upstream_headers(settings, provider, state.query, len(body))
    remove = [
        name
        for name in state.headers
        if not name.startswith(":") and name not in _KEPT and name not in headers
    ]
    return protocol.request_body_replace(
        body, protocol.header_mutation(headers, remove), clear_route_cache=True
    )
