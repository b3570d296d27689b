"""The contract's model tables (behaviour.md 4.2 and 4.3), written out once, and the catalogue
the unit tests build from them instead of from the gateway's own defaults
(`extproc.catalogue.DEFAULT_*`, pinned to these tables by tests/test_contract_tables.py)."""

from __future__ import annotations

from extproc.catalogue import Catalogue, FreeModel

# Contract 4.2 (R values): public_id -> (internal_id, ctx, max out, enabled, flags, gateway, inference_providers)
FREE_MODELS: dict[str, tuple[str, int, int, bool, frozenset[str], str, tuple[str, ...]]] = {
    "corethink:free": ("corethink", 78_000, 8_192, True, frozenset(), "corethink", ("corethink",)),
    "giga-potato": (
        "ep-20260109111813-hztxv", 256_000, 32_000, True, frozenset({"prompt_cache", "vision"}), "gigapotato", ("stealth",)
    ),
    "giga-potato-thinking": (
        "ep-20260109111813-hztxv", 256_000, 32_000, True, frozenset({"prompt_cache", "vision", "reasoning"}), "gigapotato",
        ("stealth",),
    ),
    "moonshotai/kimi-k2.5:free": (
        "moonshotai/kimi-k2.5", 262_144, 65_536, True, frozenset({"reasoning", "prompt_cache", "vision"}), "openrouter", ()
    ),
    "minimax/minimax-m2.5:free": (
        "minimax/minimax-m2.5", 204_800, 131_072, True, frozenset({"reasoning", "prompt_cache"}), "openrouter", ()
    ),
    "minimax/minimax-m2.1:free": (
        "minimax/minimax-m2.1", 204_800, 131_072, False, frozenset({"reasoning", "prompt_cache"}), "openrouter", ()
    ),
    "x-ai/grok-code-fast-1:optimized:free": (
        "x-ai/grok-code-fast-1:optimized", 256_000, 10_000, False, frozenset({"reasoning", "prompt_cache"}), "martian",
        ("stealth",),
    ),
    "z-ai/glm-5:free": ("z-ai/glm-5", 202_800, 131_072, False, frozenset({"reasoning", "prompt_cache"}), "openrouter", ()),
}

# Contract 4.3, verbatim: the rate-limited-to-death set.
RATE_LIMITED_TO_DEATH = [
    "arcee-ai/trinity-mini:free", "cognitivecomputations/dolphin-mistral-24b-venice-edition:free",
    "deepseek/deepseek-r1-0528:free", "google/gemma-3-12b-it:free", "google/gemma-3-27b-it:free",
    "google/gemma-3-4b-it:free", "google/gemma-3n-e2b-it:free", "google/gemma-3n-e4b-it:free",
    "liquid/lfm-2.5-1.2b-instruct:free", "liquid/lfm-2.5-1.2b-thinking:free",
    "meta-llama/llama-3.2-3b-instruct:free", "meta-llama/llama-3.3-70b-instruct:free",
    "mistralai/mistral-small-3.1-24b-instruct:free", "nousresearch/hermes-3-llama-3.1-405b:free",
    "nvidia/nemotron-3-nano-30b-a3b:free", "nvidia/nemotron-nano-12b-v2-vl:free", "nvidia/nemotron-nano-9b-v2:free",
    "openai/gpt-oss-120b:free", "openai/gpt-oss-20b:free", "qwen/qwen3-4b:free", "qwen/qwen3-coder:free",
    "qwen/qwen3-next-80b-a3b-instruct:free", "upstage/solar-pro-3:free", "z-ai/glm-4.5-air:free",
]


def free_models(enabled: dict[str, bool] | None = None) -> tuple[FreeModel, ...]:
    """The 4.2 entries as the gateway's model, with the `is_enabled` of some (by public id)
    replaced. The contract gives no display names; no rule reads them."""
    enabled = enabled or {}
    return tuple(
        FreeModel(
            public_id=public_id, display_name=public_id, internal_id=internal_id, context_length=ctx,
            max_completion_tokens=max_out, is_enabled=enabled.get(public_id, on), flags=tuple(sorted(flags)),
            gateway=gateway, inference_providers=providers,
        )
        for public_id, (internal_id, ctx, max_out, on, flags, gateway, providers) in FREE_MODELS.items()
    )


def catalogue(enabled: dict[str, bool] | None = None) -> Catalogue:
    return Catalogue.build(free_models(enabled), RATE_LIMITED_TO_DEATH)
