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


def readable(status: int, message: str) -> GatewayError:
    """The `{"error": m, "message": m}` shape of makeErrorReadable (contract 6.3)."""
    return GatewayError(status, {"error": message, "message": message})


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

FREE_MODEL_RATE_LIMITED = GatewayError(
    429,
    {
        "error": "Rate limit exceeded",
        "message": "Free model usage limit reached. Please try again later or upgrade to a paid model.",
    },
)
PAID_MODEL_AUTH_REQUIRED = GatewayError(
    401,
    {"error": {"code": "PAID_MODEL_AUTH_REQUIRED", "message": "You need to sign in to use this model."}},
)
# 401, not 429: the extension cannot handle a 429 here yet (contract 2.7).
PROMOTION_MODEL_LIMIT_REACHED = GatewayError(
    401,
    {
        "error": {
            "code": "PROMOTION_MODEL_LIMIT_REACHED",
            "message": "Sign up for free to continue and explore 500 other models. "
            "Takes 2 minutes, no credit card required. Or come back later.",
        }
    },
)
MODEL_ALPHA_ENDED = readable(404, "The alpha period for this model has ended.")
MODEL_NOT_ALLOWED = GatewayError(
    404,
    {"error": "Model not allowed for your team.", "message": "The requested model is not allowed for your team."},
)
_DATA_COLLECTION = (
    "Data collection is required for this model. "
    "Please enable data collection to use this model or choose another model."
)
DATA_COLLECTION_REQUIRED = readable(400, _DATA_COLLECTION)


def payment_required(*, returning: bool, balance_microdollars: int, buy_credits_url: str, bonus_usd: int) -> GatewayError:
    """Contract 2.12: the 402 for a paid model with no balance, first-time or returning."""
    if returning:
        title, message = "Low Credit Warning!", "Add credits to continue, or switch to a free model"
    else:
        title = "Paid Model - Credits Required"
        message = f"This is a paid model. To use paid models, you need to add credits. Get ${bonus_usd} free on your first topup!"
    return GatewayError(
        402,
        {
            "error": {
                "title": title,
                "message": message,
                "balance": usd_number(balance_microdollars),
                "buyCreditsUrl": buy_credits_url,
            }
        },
    )


def usd_number(microdollars: int) -> int | float:
    """USD as the reference's JSON shows it: a whole amount has no fraction (`0`, not `0.0`)."""
    return microdollars // 1_000_000 if microdollars % 1_000_000 == 0 else microdollars / 1_000_000


BYOK_MESSAGES: dict[int, str] = {
    401: "[BYOK] Your API key is invalid or has been revoked. Please check your API key configuration.",
    402: "[BYOK] Your API account has insufficient funds. Please check your billing details with your API provider.",
    403: "[BYOK] Your API key does not have permission to access this resource. Please check your API key permissions.",
    429: "[BYOK] Your API key has hit its rate limit. Please try again later or check your rate limit settings with your API provider.",
}
STEALTH_MODEL_ERROR = "Stealth model unable to process request"


def context_length_exceeded(status: int, context_length: int, estimate: int) -> GatewayError:
    return readable(
        status,
        f"The maximum context length is {context_length} tokens. However, about {estimate} tokens were requested.",
    )


# Not in the contract: the event that ends a free-model stream whose upstream sent something
# that cannot be rewritten (the reference cut the connection instead). The 502 is only the
# `code` inside the event; the HTTP status was sent long before.
INVALID_UPSTREAM_STREAM = GatewayError(
    502,
    {
        "error": {
            "code": 502,
            "message": "The upstream provider returned an invalid response.",
            "type": "invalid_response",
        }
    },
)

# Not in the contract: refusals of the routing step that the reference answered with a 500.
BYOK_KEY_UNREADABLE = readable(
    500,
    "[BYOK] Your stored API key could not be decrypted. Please enter it again in your BYOK settings.",
)
CUSTOM_LLM_URL_REFUSED = readable(
    502, "The custom model's endpoint is not reachable from this gateway (its address is not allowed)."
)

