"""Phase 1: the request line, headers and client address; the body phase decides."""

from __future__ import annotations

from envoy.service.ext_proc.v3.external_processor_pb2 import HttpHeaders
from google.protobuf.struct_pb2 import Struct

from extproc import protocol
from extproc.envoy_names import EXTPROC_FILTER
from extproc.state import ClientRequest


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


def read_request(message: HttpHeaders, attributes: dict[str, Struct]) -> ClientRequest:
    headers = protocol.read_headers(message)
    return ClientRequest(
        request_id=headers.get("x-request-id", ""),
        method=headers.get(":method", ""),
        path=headers.get(":path", ""),
        headers=headers,
        client_ip=client_ip(attributes.get(EXTPROC_FILTER)),
    )
