"""Builders for ext_proc replies and readers for Envoy's header maps.

Header values travel in `raw_value` bytes both ways (envoy-extproc.md B9: the legacy `value`
string is ignored and yields silently empty headers).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3.base_pb2 import HeaderValueOption
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    BodyResponse,
    HeaderMutation,
    HttpHeaders,
    ProcessingResponse,
)

from extproc.envoy_names import IMMEDIATE_DETAILS, LOG_NAMESPACE
from extproc.errors import GatewayError

_OVERWRITE = HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
BUFFERED = ProcessingMode.BodySendMode.BUFFERED
STREAMED = ProcessingMode.BodySendMode.STREAMED
_JSON_CONTENT = {"content-type": "application/json"}


def read_headers(headers: HttpHeaders) -> dict[str, str]:
    """Envoy's header map as a dict of lowercase names; repeated headers joined by ','."""
    result: dict[str, str] = {}
    for header in headers.headers.headers:
        raw = header.raw_value
        value = raw.decode("latin-1") if raw else header.value
        key = header.key.lower()
        previous = result.get(key)
        result[key] = value if previous is None else f"{previous},{value}"
    return result


# The builders below fill each reply in place, field by field, header mutations included:
# nested messages passed to constructors as keyword arguments are each built and then copied
# again into their parent, which measured about three times the CPU for a request-body reply
# (bench/micro.py); a mutation built apart and copied in cost ~1 % of a JSON request's
# instructions (bench/instructions.py).


def _fill_mutation(
    mutation: HeaderMutation, set_headers: Mapping[str, str] | None, remove: Iterable[str]
) -> None:
    add = mutation.set_headers.add
    for key, value in (set_headers or {}).items():
        option = add(append_action=_OVERWRITE)
        option.header.key = key
        option.header.raw_value = value.encode("latin-1")
    mutation.remove_headers.extend(remove)


def immediate(error: GatewayError) -> ProcessingResponse:
    reply = ProcessingResponse()
    answer = reply.immediate_response
    answer.status.code = error.status
    _fill_mutation(answer.headers, _JSON_CONTENT, ())
    answer.body = error.json()
    answer.details = f"{IMMEDIATE_DETAILS}{error.status}"
    return reply


def request_headers_continue() -> ProcessingResponse:
    reply = ProcessingResponse()
    reply.request_headers.SetInParent()
    return reply


def with_request_id(reply: ProcessingResponse, request_id: str) -> ProcessingResponse:
    """The request id for Envoy's access log (`%DYNAMIC_METADATA(llm_gateway:request_id)%`), so
    one grep joins its line with the ext_proc's logs of the request."""
    if request_id:
        reply.dynamic_metadata.fields[LOG_NAMESPACE].struct_value.fields["request_id"].string_value = request_id
    return reply


def request_body_replace(
    body: bytes, set_headers: Mapping[str, str], remove: Iterable[str], clear_route_cache: bool
) -> ProcessingResponse:
    reply = ProcessingResponse()
    common = reply.request_body.response
    _fill_mutation(common.header_mutation, set_headers, remove)
    common.body_mutation.body = body
    common.clear_route_cache = clear_route_cache
    return reply


def response_headers_reply(
    set_headers: Mapping[str, str] | None, remove: Iterable[str], body_mode: ProcessingMode.BodySendMode.ValueType
) -> ProcessingResponse:
    reply = ProcessingResponse()
    _fill_mutation(reply.response_headers.response.header_mutation, set_headers, remove)
    reply.mode_override.response_body_mode = body_mode
    return reply


# Answering a body chunk unchanged is the same message every time: build it once.
RESPONSE_BODY_CONTINUE = ProcessingResponse(response_body=BodyResponse())


def response_body_replace(body: bytes, set_headers: Mapping[str, str] | None = None) -> ProcessingResponse:
    """Replace this response chunk (STREAMED) or the whole body (BUFFERED, where headers are
    still held and may be set too)."""
    reply = ProcessingResponse()
    common = reply.response_body.response
    if set_headers is not None:
        _fill_mutation(common.header_mutation, set_headers, ())
    common.body_mutation.body = body
    return reply
