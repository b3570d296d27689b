"""Model classification (behaviour.md section 4): the free-model table and its predicates.

The tables are configuration (`Settings.free_models`, `Settings.rate_limited_to_death`); the
defaults below are the contract's values (decision 15: the reference's). Every lookup takes the
trimmed, lowercased model id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel


class FreeModel(BaseModel):
    """A Kilo-hosted free model (contract 4.1)."""

    model_config = {"frozen": True}

    public_id: str
    display_name: str
    context_length: int
    max_completion_tokens: int
    is_enabled: bool
    flags: tuple[str, ...] = ()
    gateway: str  # provider id that serves it
    internal_id: str
    inference_providers: tuple[str, ...] = ()


DEFAULT_FREE_MODELS: tuple[dict[str, object], ...] = (
    {"public_id": "corethink:free", "display_name": "CoreThink", "internal_id": "corethink",
     "context_length": 78_000, "max_completion_tokens": 8_192, "is_enabled": True,
     "gateway": "corethink", "inference_providers": ("corethink",)},
    {"public_id": "giga-potato", "display_name": "Giga Potato", "internal_id": "ep-20260109111813-hztxv",
     "context_length": 256_000, "max_completion_tokens": 32_000, "is_enabled": True,
     "flags": ("prompt_cache", "vision"), "gateway": "gigapotato", "inference_providers": ("stealth",)},
    {"public_id": "giga-potato-thinking", "display_name": "Giga Potato Thinking",
     "internal_id": "ep-20260109111813-hztxv", "context_length": 256_000, "max_completion_tokens": 32_000,
     "is_enabled": True, "flags": ("prompt_cache", "vision", "reasoning"), "gateway": "gigapotato",
     "inference_providers": ("stealth",)},
    {"public_id": "moonshotai/kimi-k2.5:free", "display_name": "Kimi K2.5 (free)", "internal_id": "moonshotai/kimi-k2.5",
     "context_length": 262_144, "max_completion_tokens": 65_536, "is_enabled": True,
     "flags": ("reasoning", "prompt_cache", "vision"), "gateway": "openrouter"},
    {"public_id": "minimax/minimax-m2.5:free", "display_name": "MiniMax M2.5 (free)", "internal_id": "minimax/minimax-m2.5",
     "context_length": 204_800, "max_completion_tokens": 131_072, "is_enabled": True,
     "flags": ("reasoning", "prompt_cache"), "gateway": "openrouter"},
    {"public_id": "minimax/minimax-m2.1:free", "display_name": "MiniMax M2.1 (free)", "internal_id": "minimax/minimax-m2.1",
     "context_length": 204_800, "max_completion_tokens": 131_072, "is_enabled": False,
     "flags": ("reasoning", "prompt_cache"), "gateway": "openrouter"},
    {"public_id": "x-ai/grok-code-fast-1:optimized:free", "display_name": "Grok Code Fast 1 Optimized (free)",
     "internal_id": "x-ai/grok-code-fast-1:optimized", "context_length": 256_000, "max_completion_tokens": 10_000,
     "is_enabled": False, "flags": ("reasoning", "prompt_cache"), "gateway": "martian",
     "inference_providers": ("stealth",)},
    {"public_id": "z-ai/glm-5:free", "display_name": "GLM 5 (free)", "internal_id": "z-ai/glm-5",
     "context_length": 202_800, "max_completion_tokens": 131_072, "is_enabled": False,
     "flags": ("reasoning", "prompt_cache"), "gateway": "openrouter"},
)

class Promotion(BaseModel):
    """A time-boxed free paid model for some callers (contract 2.12): no 402, cost zeroed."""

    model_config = {"frozen": True}

    model: str
    bot_id: str | None = None
    token_source: str | None = None
    starts_at: datetime | None = None
    ends_at: datetime

    def active(self, model: str, bot_id: str | None, token_source: str | None, now: datetime) -> bool:
        return (
            model == self.model
            and (self.bot_id is None or bot_id == self.bot_id)
            and (self.token_source is None or token_source == self.token_source)
            and (self.starts_at is None or now >= self.starts_at)
            and now < self.ends_at
        )


# Both have ended; they stay as configuration so a new one is a settings change, not code.
DEFAULT_PROMOTIONS: tuple[dict[str, object], ...] = (
    {"model": "anthropic/claude-sonnet-4.6", "bot_id": "reviewer", "ends_at": "2026-02-25T14:00:00Z"},
    {"model": "anthropic/claude-sonnet-4.6", "token_source": "cloud-agent",
     "starts_at": "2026-02-26T08:00:00Z", "ends_at": "2026-02-28T08:00:00Z"},
)

DEFAULT_RATE_LIMITED_TO_DEATH: tuple[str, ...] = (
    "arcee-ai/trinity-mini:free",
    "cognitivecomputations/dolphin-mistral-24b-venice-edition:free",
    "deepseek/deepseek-r1-0528:free",
    "google/gemma-3-12b-it:free",
    "google/gemma-3-27b-it:free",
    "google/gemma-3-4b-it:free",
    "google/gemma-3n-e2b-it:free",
    "google/gemma-3n-e4b-it:free",
    "liquid/lfm-2.5-1.2b-instruct:free",
    "liquid/lfm-2.5-1.2b-thinking:free",
    "meta-llama/llama-3.2-3b-instruct:free",
    "meta-llama/llama-3.3-70b-instruct:free",
    "mistralai/mistral-small-3.1-24b-instruct:free",
    "nousresearch/hermes-3-llama-3.1-405b:free",
    "nvidia/nemotron-3-nano-30b-a3b:free",
    "nvidia/nemotron-nano-12b-v2-vl:free",
    "nvidia/nemotron-nano-9b-v2:free",
    "openai/gpt-oss-120b:free",
    "openai/gpt-oss-20b:free",
    "qwen/qwen3-4b:free",
    "qwen/qwen3-coder:free",
    "qwen/qwen3-next-80b-a3b-instruct:free",
    "upstage/solar-pro-3:free",
    "z-ai/glm-4.5-air:free",
)


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The predicates of contract 4.3 over the configured tables."""

    free_models: dict[str, FreeModel]
    rate_limited_to_death: frozenset[str]

    @classmethod
    def build(cls, free_models: Iterable[FreeModel], rate_limited_to_death: Iterable[str]) -> Catalogue:
        return cls({m.public_id.lower(): m for m in free_models}, frozenset(m.lower() for m in rate_limited_to_death))

    def kilo_free_model(self, model: str) -> FreeModel | None:
        """The entry when `model` is a Kilo-hosted free model that is enabled."""
        entry = self.free_models.get(model)
        return entry if entry is not None and entry.is_enabled else None

    def is_kilo_free_model(self, model: str) -> bool:
        return self.kilo_free_model(model) is not None

    def is_free_model(self, model: str) -> bool:
        return (
            self.is_kilo_free_model(model)
            or model.endswith(":free")
            or model == "openrouter/free"
            or (model.startswith("openrouter/") and model.endswith(("-alpha", "-beta")))
        )

    def is_dead_free_model(self, model: str) -> bool:
        entry = self.free_models.get(model)
        return entry is not None and not entry.is_enabled

    def is_kilo_stealth_model(self, model: str) -> bool:
        entry = self.free_models.get(model)
        return entry is not None and "stealth" in entry.inference_providers

    def extra_required_providers(self, model: str) -> tuple[str, ...]:
        entry = self.free_models.get(model)
        return entry.inference_providers if entry is not None else ()

    def is_rate_limited_to_death(self, model: str) -> bool:
        return model in self.rate_limited_to_death


def normalize_model_id(model: str) -> str:
    """Contract 4.3: the part before the first ':' (strips `:free`, `:exacto`, ...)."""
    return model.split(":", 1)[0]
