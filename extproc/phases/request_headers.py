"""Phase 1: keep the request headers in the state; the body phase decides."""

from __future__ import annotations

from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpHeaders,
    ProcessingResponse,
)
from google.protobuf.struct_pb2 import Struct

from extproc import errors, logs, protocol
from extproc.envoy_names import EXTPROC_FILTER
from extproc.state import RequestState


def client_ip(attributes: Struct | None) -> str | None:
    """Envoy's `source.address` ("ip:port" or "[v6]:port"): the client as derived with the
    configured trusted proxy hops, never a raw client header (contract decision 2)."""
    if attributes is None or "source.address" not in attributes.fields:
        return None
    address = attributes.fields["source.address"].string_value
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        host = address
    return host.strip("[]") or None


def on_request_headers(
    state: RequestState, message: HttpHeaders, attributes: dict[str, Struct]
) -> ProcessingResponse:
    state.headers = protocol.read_headers(message)
    state.method = state.headers.get(":method", "")
    state.path = state.headers.get(":path", "")
    state.request_id = state.headers.get("x-request-id", "")
    logs.REQUEST_ID.set(state.request_id or None)
    state.client_ip = client_ip(attributes.get(EXTPROC_FILTER))
    if message.end_of_stream:
        # No body will follow: an empty body is not valid JSON (contract 2.1).
        state.status = errors.INVALID_JSON.status
        return protocol.with_request_id(protocol.immediate(errors.INVALID_JSON), state.request_id)
    return protocol.with_request_id(protocol.request_headers_continue(), state.request_id)
