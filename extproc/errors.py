"""The error catalogue: every client-visible error body, verbatim from behaviour.md Appendix A.

Nothing else in the gateway writes error JSON. Envoy's own direct responses for invalid and
unknown paths are rendered from `INVALID_PATH` and `NOT_FOUND` here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class GatewayError:
    status: int
    body: dict[str, Any]

    def json(self) -> bytes:
        return orjson.dumps(self.body)


INVALID_PATH = GatewayError(
    400,
    {
        "error": "Invalid path",
        "message": "This endpoint only accepts the path `/chat/completions`.",
    },
)
NOT_FOUND = GatewayError(404, {"error": "Not found"})
INVALID_JSON = GatewayError(
    400,
    {
        "error": "Invalid request",
        "message": "Could not parse request body. Please ensure it is valid JSON.",
    },
)
MODEL_NOT_FOUND = GatewayError(
    404,
    {"error": "Model not found", "message": "The requested model could not be found."},
)
NO_CLIENT_IP = GatewayError(400, {"error": "Unable to determine client IP"})
SERVICE_UNAVAILABLE = GatewayError(
    503,
    {
        "error": "Service Unavailable",
        "message": "The service is temporarily unavailable. Please try again later.",
    },
)
INTERNAL_ERROR = GatewayError(500, {"error": "Internal server error"})
# Not in the contract; Envoy answers these two itself (the reference ran behind Vercel's own
# body limit and request timeout).
GATEWAY_TIMEOUT = GatewayError(
    504,
    {
        "error": "Gateway timeout",
        "message": "The gateway timed out waiting for a response. Please try again later.",
    },
)
PAYLOAD_TOO_LARGE = GatewayError(
    413,
    {
        "error": "Payload too large",
        "message": "The request body exceeds the gateway's size limit.",
    },
)

