"""The gateway's defaults against the contract's own tables, written out here from behaviour.md.

Unit tests elsewhere build their catalogue from `DEFAULT_FREE_MODELS` and compare errors by
identity with `extproc.errors`; these tests pin those sources to the contract's text, so a
changed default or a reworded body fails here instead of moving every expectation with it.
"""

from __future__ import annotations

import orjson

from extproc import errors
from extproc.catalogue import DEFAULT_FREE_MODELS, DEFAULT_RATE_LIMITED_TO_DEATH
from tests.test_contract_gaps_e2e import RATE_LIMITED_TO_DEATH

# Contract 4.2 (R values): public_id -> (internal_id, ctx, max out, enabled, flags, gateway, inference_providers)
FREE_MODELS = {
    "corethink:free": ("corethink", 78_000, 8_192, True, set(), "corethink", ("corethink",)),
    "giga-potato": ("ep-20260109111813-hztxv", 256_000, 32_000, True, {"prompt_cache", "vision"}, "gigapotato", ("stealth",)),
    "giga-potato-thinking": (
        "ep-20260109111813-hztxv", 256_000, 32_000, True, {"prompt_cache", "vision", "reasoning"}, "gigapotato", ("stealth",)
    ),
    "moonshotai/kimi-k2.5:free": (
        "moonshotai/kimi-k2.5", 262_144, 65_536, True, {"reasoning", "prompt_cache", "vision"}, "openrouter", ()
    ),
    "minimax/minimax-m2.5:free": ("minimax/minimax-m2.5", 204_800, 131_072, True, {"reasoning", "prompt_cache"}, "openrouter", ()),
    "minimax/minimax-m2.1:free": ("minimax/minimax-m2.1", 204_800, 131_072, False, {"reasoning", "prompt_cache"}, "openrouter", ()),
    "x-ai/grok-code-fast-1:optimized:free": (
        "x-ai/grok-code-fast-1:optimized", 256_000, 10_000, False, {"reasoning", "prompt_cache"}, "martian", ("stealth",)
    ),
    "z-ai/glm-5:free": ("z-ai/glm-5", 202_800, 131_072, False, {"reasoning", "prompt_cache"}, "openrouter", ()),
}

# Appendix A (and section 1), verbatim.
APPENDIX_A = {
    "INVALID_PATH": (400, {"error": "Invalid path", "message": "This endpoint only accepts the path `/chat/completions`."}),
    "NOT_FOUND": (404, {"error": "Not found"}),
    "INVALID_JSON": (400, {"error": "Invalid request", "message": "Could not parse request body. Please ensure it is valid JSON."}),
    "MODEL_NOT_FOUND": (404, {"error": "Model not found", "message": "The requested model could not be found."}),
    "NO_CLIENT_IP": (400, {"error": "Unable to determine client IP"}),
    "FREE_MODEL_RATE_LIMITED": (429, {
        "error": "Rate limit exceeded",
        "message": "Free model usage limit reached. Please try again later or upgrade to a paid model.",
    }),
    "PAID_MODEL_AUTH_REQUIRED": (401, {"error": {"code": "PAID_MODEL_AUTH_REQUIRED", "message": "You need to sign in to use this model."}}),
    "PROMOTION_MODEL_LIMIT_REACHED": (401, {"error": {
        "code": "PROMOTION_MODEL_LIMIT_REACHED",
        "message": "Sign up for free to continue and explore 500 other models. Takes 2 minutes, no credit card required. Or come back later.",
    }}),
    "SERVICE_UNAVAILABLE": (503, {"error": "Service Unavailable", "message": "The service is temporarily unavailable. Please try again later."}),
    "MODEL_ALPHA_ENDED": (404, {"error": "The alpha period for this model has ended.", "message": "The alpha period for this model has ended."}),
    "MODEL_NOT_ALLOWED": (404, {"error": "Model not allowed for your team.", "message": "The requested model is not allowed for your team."}),
    "DATA_COLLECTION_REQUIRED": (400, {
        "error": "Data collection is required for this model. Please enable data collection to use this model or choose another model.",
        "message": "Data collection is required for this model. Please enable data collection to use this model or choose another model.",
    }),
    "INTERNAL_ERROR": (500, {"error": "Internal server error"}),
}


def test_default_free_models_are_the_contracts_table() -> None:
    defaults = {
        m["public_id"]: (
            m["internal_id"], m["context_length"], m["max_completion_tokens"], m["is_enabled"],
            set(m.get("flags", ())), m["gateway"], tuple(m.get("inference_providers", ())),  # type: ignore[call-overload]
        )
        for m in DEFAULT_FREE_MODELS
    }
    assert defaults == FREE_MODELS


def test_default_rate_limited_to_death_models_are_the_contracts_set() -> None:
    assert len(RATE_LIMITED_TO_DEATH) == 24
    assert sorted(DEFAULT_RATE_LIMITED_TO_DEATH) == sorted(RATE_LIMITED_TO_DEATH)


def test_error_catalogue_is_appendix_a_verbatim() -> None:
    for name, (status, body) in APPENDIX_A.items():
        error = getattr(errors, name)
        assert (error.status, error.body) == (status, body), name
        assert orjson.loads(error.json()) == body, name
