"""Step 2.15: the request Envoy sends upstream.

Only the gateway's own headers go upstream (contract 2.15 and 10): the client's credentials,
cookies and every other client header are removed here.
"""

from __future__ import annotations

import orjson
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingResponse

from extproc import errors, protocol
from extproc.envoy_config import (
    CUSTOM_HOST_HEADER,
    ENVOY_REQUEST_HEADERS,
    UPSTREAM_HEADER,
)
from extproc.pipeline.rejection import Rejection
from extproc.pipeline.routing import Route
from extproc.settings import Settings
from extproc.state import ChatRequest, RequestState

# Envoy owns these: host is rewritten per route, the others are dropped by the provider
# route on the way out (removing x-forwarded-proto here would break Envoy's re-routing).
_KEPT = frozenset({"host", *ENVOY_REQUEST_HEADERS})


def upstream_headers(
    settings: Settings, route: Route, query: str, body_length: int, extra: dict[str, str]
) -> dict[str, str]:
    provider = route.provider
    headers = {
        UPSTREAM_HEADER: route.cluster,
        ":path": f"{provider.base_path}/chat/completions{query}",
        "http-referer": settings.http_referer,
        "x-title": settings.x_title,
        "content-type": "application/json",
        "content-length": str(body_length),
    }
    if route.custom_host is not None:
        headers[CUSTOM_HOST_HEADER] = route.custom_host
    if provider.api_key is not None:
        headers["authorization"] = f"Bearer {provider.api_key.get_secret_value()}"
    # Provider extra headers go on top (contract 2.15).
    headers.update(extra)
    return headers


def forward(
    settings: Settings, state: RequestState, chat: ChatRequest, route: Route, extra_headers: dict[str, str]
) -> ProcessingResponse:
    try:
        state.upstream_body = body = orjson.dumps(chat.body)
    except orjson.JSONEncodeError:
        # orjson reads 1024 levels of nesting but writes only 254: a body nested deeper than
        # can be sent on is refused as unparseable, not failed with a 500 (issue 14 fuzzing).
        raise Rejection(errors.INVALID_JSON) from None
    headers = upstream_headers(settings, route, state.query, len(body), extra_headers)
    remove = [
        name
        for name in state.headers
        if not name.startswith(":") and name not in _KEPT and name not in headers
    ]
    return protocol.request_body_replace(
        body, protocol.header_mutation(headers, remove), clear_route_cache=True
    )
