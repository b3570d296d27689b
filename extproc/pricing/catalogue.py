"""The process's price catalogue: the last good table of each priced provider, in memory.

The request path reads it synchronously (`prices_for`, `candidates`); only the refresher
(`extproc/pricing/refresh.py`) replaces a table, whole, and only with one that passed
`accept`. A model missing from a table is bounded at that table's highest prices (or, with
that provider's table empty, the highest of all tables): never unbounded, never skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from extproc.pricing.prices import ModelPrices, ParsedModels, ceiling

logger = logging.getLogger(__name__)

# The providers whose bills the gateway pays from a caller's balance (contract 3.2: paid models
# go to OpenRouter or, on the Vercel A/B, to Vercel); their `/models` are fetched.
PRICED_PROVIDERS = ("openrouter", "vercel")
# OpenRouter's routing suffixes that keep the model's prices (`:online` adds web search, which
# the bound adds itself); `:free` variants are listed under their own id.
_ROUTING_SUFFIXES = frozenset(("nitro", "floor", "online", "exacto"))
# A new answer is partial, not a new catalogue, when it lists fewer than this share of the
# models of the last good one, or refuses more than this share of its own entries.
_MIN_KEPT_SHARE = 0.5
_MAX_REFUSED_SHARE = 0.2


class PricesUnavailable(Exception):
    """No table was ever loaded (nothing in Postgres, no answer from any provider): nothing to
    bound a request with. The request path answers the contract's 503."""


@dataclass(frozen=True, slots=True)
class PriceTable:
    provider: str
    models: dict[str, ModelPrices]  # by lowercased model id
    fetched_at: float  # Unix time the provider answered
    highest: ModelPrices  # `ceiling` of the table: what an unknown model is priced at

    @classmethod
    def build(cls, provider: str, models: dict[str, ModelPrices], fetched_at: float) -> PriceTable:
        highest = ceiling(models.values())
        if highest is None:
            raise ValueError("a price table needs at least one model")
        return cls(provider, models, fetched_at, highest)


def accept(parsed: ParsedModels, last: PriceTable | None) -> str | None:
    """Why a parsed answer must not replace the last good table (None: it may)."""
    kept, refused = len(parsed.models), len(parsed.refused)
    if kept == 0:
        return "no model could be priced"
    if refused > _MAX_REFUSED_SHARE * (kept + refused):
        return f"{refused} of {kept + refused} entries refused"
    if last is not None and kept < _MIN_KEPT_SHARE * len(last.models):
        return f"{kept} models, the last good table had {len(last.models)}"
    return None


@dataclass(slots=True)
class PriceCatalogue:
    tables: dict[str, PriceTable] = field(default_factory=dict)

    def replace(self, table: PriceTable) -> None:
        self.tables[table.provider] = table

    def age_seconds(self, provider: str, now: float | None = None) -> float:
        """Seconds since the provider's table was fetched; infinite when there is none."""
        table = self.tables.get(provider)
        if table is None:
            return float("inf")
        return max(0.0, (time.time() if now is None else now) - table.fetched_at)

    def entry(self, provider: str, model_id: str) -> ModelPrices | None:
        """The provider's own entry for the model (lowercased id), routing suffix tolerated."""
        table = self.tables.get(provider)
        if table is None:
            return None
        found = table.models.get(model_id)
        if found is None:
            base, colon, suffix = model_id.rpartition(":")
            if colon and suffix in _ROUTING_SUFFIXES:
                found = table.models.get(base)
        return found

    def prices_for(self, provider: str, model_id: str) -> ModelPrices:
        """What bounds the model at the provider: its entry, else the provider's highest
        prices, else the highest of every table. Raises PricesUnavailable with no table."""
        found = self.entry(provider, model_id)
        if found is not None:
            return found
        table = self.tables.get(provider)
        if table is not None:
            return table.highest
        highest = ceiling(t.highest for t in self.tables.values())
        if highest is None:
            raise PricesUnavailable("no price catalogue loaded")
        return highest

    def candidates(self, models: Iterable[tuple[str, str]]) -> tuple[ModelPrices, ...]:
        """`prices_for` each (provider, lowercased model id) the request may be sent to."""
        return tuple(self.prices_for(provider, model_id) for provider, model_id in models)
