"""Client-visible replies that test modules assert, each written out once: verbatim from the
contract (behaviour.md section 1 and Appendix A) or, for the few replies the gateway adds that
the contract does not have, as specified here. Never taken from extproc/errors.py, so
that a change of wording in the gateway fails the tests instead of moving their expectations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]


_DATA_COLLECTION = (
    "Data collection is required for this model. Please enable data collection to use this model or choose another model."
)

# Appendix A (and section 1), verbatim; named as the gateway's catalogue names them.
APPENDIX_A: dict[str, Reply] = {
    "INVALID_PATH": Reply(400, {"error": "Invalid path", "message": "This endpoint only accepts the path `/chat/completions`."}),
    "NOT_FOUND": Reply(404, {"error": "Not found"}),
    "INVALID_JSON": Reply(
        400, {"error": "Invalid request", "message": "Could not parse request body. Please ensure it is valid JSON."}
    ),
    "MODEL_NOT_FOUND": Reply(404, {"error": "Model not found", "message": "The requested model could not be found."}),
    "NO_CLIENT_IP": Reply(400, {"error": "Unable to determine client IP"}),
    "FREE_MODEL_RATE_LIMITED": Reply(429, {
        "error": "Rate limit exceeded",
        "message": "Free model usage limit reached. Please try again later or upgrade to a paid model.",
    }),
    "PAID_MODEL_AUTH_REQUIRED": Reply(
        401, {"error": {"code": "PAID_MODEL_AUTH_REQUIRED", "message": "You need to sign in to use this model."}}
    ),
    "PROMOTION_MODEL_LIMIT_REACHED": Reply(401, {"error": {
        "code": "PROMOTION_MODEL_LIMIT_REACHED",
        "message": "Sign up for free to continue and explore 500 other models. Takes 2 minutes, no credit card required."
        " Or come back later.",
    }}),
    "SERVICE_UNAVAILABLE": Reply(
        503, {"error": "Service Unavailable", "message": "The service is temporarily unavailable. Please try again later."}
    ),
    "MODEL_ALPHA_ENDED": Reply(
        404, {"error": "The alpha period for this model has ended.", "message": "The alpha period for this model has ended."}
    ),
    "MODEL_NOT_ALLOWED": Reply(
        404, {"error": "Model not allowed for your team.", "message": "The requested model is not allowed for your team."}
    ),
    "DATA_COLLECTION_REQUIRED": Reply(400, {"error": _DATA_COLLECTION, "message": _DATA_COLLECTION}),
    "INTERNAL_ERROR": Reply(500, {"error": "Internal server error"}),
}

# The gateway's own replies, not in the contract: Envoy's refusals (README and
# docs/ARCHITECTURE.md give their statuses; the texts are specified here) and a routing refusal
# the reference answered with a bare 500.
GATEWAY_REPLIES: dict[str, Reply] = {
    "PAYLOAD_TOO_LARGE": Reply(
        413, {"error": "Payload too large", "message": "The request body exceeds the gateway's size limit."}
    ),
    "GATEWAY_TIMEOUT": Reply(504, {
        "error": "Gateway timeout",
        "message": "The gateway timed out waiting for a response. Please try again later.",
    }),
    "BYOK_KEY_UNREADABLE": Reply(500, {
        "error": "[BYOK] Your stored API key could not be decrypted. Please enter it again in your BYOK settings.",
        "message": "[BYOK] Your stored API key could not be decrypted. Please enter it again in your BYOK settings.",
    }),
    "CUSTOM_LLM_URL_REFUSED": Reply(502, {
        "error": "The custom model's endpoint is not reachable from this gateway (its address is not allowed).",
        "message": "The custom model's endpoint is not reachable from this gateway (its address is not allowed).",
    }),
}

FREE_LIMIT = APPENDIX_A["FREE_MODEL_RATE_LIMITED"].body
SERVICE_UNAVAILABLE = APPENDIX_A["SERVICE_UNAVAILABLE"].body
# Appendix A #20: an unhandled exception, and Envoy's answer when the ext_proc stream fails.
INTERNAL_ERROR = APPENDIX_A["INTERNAL_ERROR"].body
