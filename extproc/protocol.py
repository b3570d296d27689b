"""Builders for ext_proc replies and readers for Envoy's header maps.

Header values travel in `raw_value` bytes both ways (envoy-extproc.md B9: the legacy `value`
string is ignored and yields silently empty headers).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    BodyMutation,
    BodyResponse,
    CommonResponse,
    HeaderMutation,
    HeadersResponse,
    HttpHeaders,
    ImmediateResponse,
    ProcessingResponse,
)
from envoy.type.v3.http_status_pb2 import HttpStatus

from extproc.envoy_names import IMMEDIATE_DETAILS, LOG_NAMESPACE
from extproc.errors import GatewayError

_OVERWRITE = HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
BUFFERED = ProcessingMode.BodySendMode.BUFFERED
STREAMED = ProcessingMode.BodySendMode.STREAMED


def read_headers(headers: HttpHeaders) -> dict[str, str]:
    """Envoy's header map as a dict of lowercase names; repeated headers joined by ','."""
    result: dict[str, str] = {}
    for header in headers.headers.headers:
        value = header.raw_value.decode("latin-1") if header.raw_value else header.value
        key = header.key.lower()
        result[key] = f"{result[key]},{value}" if key in result else value
    return result


def header_mutation(
    set_headers: Mapping[str, str] | None = None, remove: Iterable[str] = ()
) -> HeaderMutation:
    return HeaderMutation(
        set_headers=[
            HeaderValueOption(
                header=HeaderValue(key=key, raw_value=value.encode("latin-1")),
                append_action=_OVERWRITE,
            )
            for key, value in (set_headers or {}).items()
        ],
        remove_headers=list(remove),
    )


def immediate(error: GatewayError) -> ProcessingResponse:
    return ProcessingResponse(
        immediate_response=ImmediateResponse(
            status=HttpStatus(code=error.status),
            headers=header_mutation({"content-type": "application/json"}),
            body=error.json(),
            details=f"{IMMEDIATE_DETAILS}{error.status}",
        )
    )


def request_headers_continue() -> ProcessingResponse:
    return ProcessingResponse(request_headers=HeadersResponse())


def with_request_id(reply: ProcessingResponse, request_id: str) -> ProcessingResponse:
    """The request id for Envoy's access log (`%DYNAMIC_METADATA(llm_gateway:request_id)%`), so
    one grep joins its line with the ext_proc's logs of the request."""
    if request_id:
        reply.dynamic_metadata.fields[LOG_NAMESPACE].struct_value.fields["request_id"].string_value = request_id
    return reply


def request_body_replace(
    body: bytes, mutation: HeaderMutation, clear_route_cache: bool
) -> ProcessingResponse:
    return ProcessingResponse(
        request_body=BodyResponse(
            response=CommonResponse(
                header_mutation=mutation,
                body_mutation=BodyMutation(body=body),
                clear_route_cache=clear_route_cache,
            )
        )
    )


def response_headers_reply(
    mutation: HeaderMutation, body_mode: ProcessingMode.BodySendMode.ValueType
) -> ProcessingResponse:
    return ProcessingResponse(
        response_headers=HeadersResponse(response=CommonResponse(header_mutation=mutation)),
        mode_override=ProcessingMode(response_body_mode=body_mode),
    )


# Answering a body chunk unchanged is the same message every time: build it once.
RESPONSE_BODY_CONTINUE = ProcessingResponse(response_body=BodyResponse())


def response_body_replace(body: bytes, mutation: HeaderMutation | None = None) -> ProcessingResponse:
    """Replace this response chunk (STREAMED) or the whole body (BUFFERED, where headers are
    still held and may be mutated too)."""
    return ProcessingResponse(
        response_body=BodyResponse(
            response=CommonResponse(header_mutation=mutation, body_mutation=BodyMutation(body=body))
        )
    )
