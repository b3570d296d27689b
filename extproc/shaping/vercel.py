"""Vercel AI Gateway: the A/B split of behaviour.md 3.5 and the id mappings of 3.6.

Everything here is pure: the error rates and the seed are looked up by the caller, so the
routing decision is reproducible from its inputs (the same seed always lands on the same side).
"""

from __future__ import annotations

import hashlib
from typing import Any

from extproc.catalogue import Catalogue

# Vercel names these differently from what the prefix rename below would produce.
_MODEL_OVERRIDES: dict[str, str] = {
    "arcee-ai/trinity-large-preview:free": "arcee-ai/trinity-large-preview",
    "mistralai/codestral-2508": "mistral/codestral",
    "mistralai/devstral-2512": "mistral/devstral-2",
}

# OpenRouter model-id vendor prefix -> the Vercel id of that vendor's first-party provider.
_MODEL_PREFIXES: dict[str, str] = {
    "anthropic": "anthropic",
    "google": "google",
    "openai": "openai",
    "minimax": "minimax",
    "mistralai": "mistral",
    "qwen": "alibaba",  # decision 14
    "x-ai": "xai",
    "z-ai": "zai",
}

# OpenRouter inference-provider slug -> Vercel inference-provider id (others keep their name).
_PROVIDER_IDS: dict[str, str] = {
    "amazon-bedrock": "bedrock",
    "google-ai-studio": "google",
    "google-vertex": "vertex",
    "z-ai": "zai",
}

# Models tested on Vercel; the free entries fall back to their paid twins when disabled.
_PREFERRED_FIXED: tuple[str, ...] = (
    "kilo/auto",
    "kilo/auto-free",
    "arcee-ai/trinity-large-preview:free",
    "anthropic/claude-opus-4.6",
    "anthropic/claude-sonnet-4.6",
    "openai/gpt-5.2",
    "openai/gpt-5.3-codex",
    "google/gemini-3.1-pro-preview",
    "z-ai/glm-5",
    "x-ai/grok-code-fast-1",
)
_PREFERRED_FREE_OR_PAID: dict[str, str | None] = {
    "minimax/minimax-m2.5:free": "minimax/minimax-m2.5",
    "moonshotai/kimi-k2.5:free": "moonshotai/kimi-k2.5",
    "giga-potato-thinking": None,
}

_BUCKET_PREFIX = "vercel_routing_"
_ERROR_RATE_THRESHOLD = 0.5
_NORMAL_PERCENTAGE = 10
_FAILOVER_PERCENTAGE = 90


def is_openai_model(model_lower: str) -> bool:
    """OpenAI's own models; the open-weight gpt-oss ones are served by many providers."""
    return model_lower.startswith("openai/") and not model_lower.startswith("openai/gpt-oss")


def map_model_id_to_vercel(model_lower: str, catalogue: Catalogue) -> str:
    """The id Vercel knows the model by (contract 3.6)."""
    override = _MODEL_OVERRIDES.get(model_lower)
    if override is not None:
        return override
    if "/" not in model_lower:
        return model_lower
    # A free model served via OpenRouter is the paid model under another name; Vercel only
    # knows the paid one.
    entry = catalogue.kilo_free_model(model_lower)
    model = entry.internal_id if entry is not None and entry.gateway == "openrouter" else model_lower
    if model.startswith("openai/gpt-oss"):
        return model
    prefix, slash, rest = model.partition("/")
    vendor = _MODEL_PREFIXES.get(prefix)
    return f"{vendor}/{rest}" if vendor is not None and slash else model


def map_provider_id_to_vercel(provider: str) -> str:
    """An OpenRouter inference-provider slug (`provider.only`/`order` entry) as a Vercel id;
    a variant suffix such as `minimax/fp8` has no Vercel equivalent and is dropped."""
    name = provider.partition("/")[0].lower()
    return _PROVIDER_IDS.get(name, name)


def preferred_models(catalogue: Catalogue) -> frozenset[str]:
    """The models eligible for the random split (contract 3.5)."""
    models = set(_PREFERRED_FIXED)
    for free_id, paid_id in _PREFERRED_FREE_OR_PAID.items():
        chosen = free_id if catalogue.kilo_free_model(free_id) is not None else paid_id
        if chosen is not None:
            models.add(chosen)
    return frozenset(models)


def vercel_eligible(
    model_lower: str, body: dict[str, Any], catalogue: Catalogue, *, universal_routing: bool = False
) -> bool:
    """Whether the request takes part in the random split at all (contract 3.5, in order).

    `universal_routing` is the emergency switch for an OpenRouter outage: every model that can
    be served by both gateways goes to the split, tested on Vercel or not.
    """
    provider = body.get("provider")
    # Vercel cannot enforce OpenRouter's data-collection policy.
    if isinstance(provider, dict) and provider.get("data_collection") == "deny":
        return False
    if model_lower.startswith("openrouter/"):
        return False
    entry = catalogue.kilo_free_model(model_lower)
    if entry is not None and entry.gateway != "openrouter":
        return False
    if universal_routing:
        return True
    # Pending fine-grained tool streaming on Vercel.
    if model_lower.startswith("anthropic/"):
        return False
    if is_openai_model(model_lower):
        return False
    return model_lower in preferred_models(catalogue)


def vercel_bucket(seed: str) -> int:
    """A stable number in [0, 100) per seed (task id, else user id), so a task or user stays
    on one gateway and keeps its upstream prompt cache."""
    digest = hashlib.sha256((_BUCKET_PREFIX + seed).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100


def vercel_percentage(openrouter_error_rate: float, vercel_error_rate: float) -> int:
    """Share of eligible traffic sent to Vercel: most of it while OpenRouter is failing and
    Vercel is not, a small steady share otherwise so Vercel stays exercised."""
    if openrouter_error_rate > _ERROR_RATE_THRESHOLD and vercel_error_rate < _ERROR_RATE_THRESHOLD:
        return _FAILOVER_PERCENTAGE
    return _NORMAL_PERCENTAGE


def route_to_vercel(seed: str, percentage: int) -> bool:
    return vercel_bucket(seed) < percentage
