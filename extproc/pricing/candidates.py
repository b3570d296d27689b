"""Which (provider, model id) a paid request may be billed by: the bound must cover each."""

from __future__ import annotations

from typing import Any

from extproc.catalogue import Catalogue
from extproc.shaping.vercel import map_model_id_to_vercel, vercel_eligible


def candidate_models(
    model_lower: str,
    body: dict[str, Any],
    catalogue: Catalogue,
    *,
    routed_to: str,
    universal_vercel_routing: bool = False,
) -> tuple[tuple[str, str], ...]:
    """OpenRouter's id always (the routing's last resort, and a fallback's), and Vercel's id
    (contract 3.6) when the request went to Vercel or takes part in the A/B split (3.5), so one
    bound holds whichever side the split or a fallback picks."""
    candidates = [("openrouter", model_lower)]
    if routed_to == "vercel" or vercel_eligible(
        model_lower, body, catalogue, universal_routing=universal_vercel_routing
    ):
        candidates.append(("vercel", map_model_id_to_vercel(model_lower, catalogue)))
    return tuple(candidates)
