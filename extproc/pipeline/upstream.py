"""Step 2.15: the request Envoy sends upstream.

Only the gateway's own headers go upstream (contract 2.15 and 10): the client's credentials,
cookies and every other client header are removed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingResponse

from extproc import errors, protocol
from extproc.custom_llm import TRANSLATED_KINDS
from extproc.envoy_names import (
    CUSTOM_ADDRESS_KEY,
    CUSTOM_HOST_HEADER,
    ENVOY_REQUEST_HEADERS,
    LOG_NAMESPACE,
    UPSTREAM_HEADER,
)
from extproc.pipeline.parse import ChatRequest
from extproc.pipeline.rejection import Rejection
from extproc.pipeline.routing import Route
from extproc.settings import Settings
from extproc.translate.chat import ProviderRequest, ResponseTranslator
from extproc.translate.openai_phase import PhaseMemory

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


def translated_headers(route: Route, request: ProviderRequest, body_length: int) -> dict[str, str]:
    """A translated custom LLM (contract 3.4) gets only what its own API expects: its path, its
    way of presenting the key, and the JSON body."""
    headers = {
        UPSTREAM_HEADER: route.cluster,
        ":path": f"{route.provider.base_path}{request.path}",
        "content-type": "application/json",
        "content-length": str(body_length),
        **request.headers,
    }
    if route.custom_host is not None:
        headers[CUSTOM_HOST_HEADER] = route.custom_host
    return headers


def serialised(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        # orjson reads 1024 levels of nesting but writes only 254: a body nested deeper than
        # can be sent on is refused as unparseable, not failed with a 500 (issue 14 fuzzing).
        raise Rejection(errors.INVALID_JSON) from None


@dataclass(frozen=True, slots=True)
class Forwarded:
    reply: ProcessingResponse  # the body and headers Envoy sends upstream
    body: bytes  # the request body as sent
    translator: ResponseTranslator | None  # a translated custom LLM's response reader (3.4)


async def forward(
    settings: Settings,
    client_headers: Mapping[str, str],
    query: str,
    chat: ChatRequest,
    route: Route,
    extra_headers: dict[str, str],
    *,
    legacy_extension: bool,
    phase_memory: PhaseMemory | None = None,
) -> Forwarded:
    """`phase_memory`: for a custom LLM at OpenAI's own endpoint (contract 3.4)."""
    llm = route.custom_llm
    translator = None
    if llm is not None and llm.kind in TRANSLATED_KINDS:
        request = llm.provider_request(chat.body, legacy_extension=legacy_extension)
        if phase_memory is not None:
            await phase_memory.inject(request.body)
        on_phase = phase_memory.remember if phase_memory is not None else None
        translator = llm.response_translator(legacy_extension=legacy_extension, on_phase=on_phase)
        body = serialised(request.body)
        headers = translated_headers(route, request, len(body))
    else:
        body = serialised(chat.body)
        headers = upstream_headers(settings, route, query, len(body), extra_headers)
    remove = [
        name
        for name in client_headers
        if not name.startswith(":") and name not in _KEPT and name not in headers
    ]
    reply = protocol.request_body_replace(body, headers, remove, clear_route_cache=True)
    if route.custom_address is not None:
        # The address the custom LLM's check passed: Envoy connects there (custom_llm.py).
        reply.dynamic_metadata.fields[LOG_NAMESPACE].struct_value.fields[
            CUSTOM_ADDRESS_KEY
        ].string_value = route.custom_address
    return Forwarded(reply, body, translator)
