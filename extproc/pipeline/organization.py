"""Steps 2.12 (organisation restrictions) and 2.13 (data-collection gate).

Both mutate or inspect `body["provider"]`, the OpenRouter provider-routing object, so the
organisation's rules must run first: the gate sees the provider config they impose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from extproc import errors, js
from extproc.catalogue import Catalogue, normalize_model_id
from extproc.pipeline.rejection import Rejection

ENTERPRISE = "enterprise"
DATA_COLLECTION_VALUES = frozenset({"allow", "deny"})


def apply_organization_rules(
    body: dict[str, Any],
    model_lower: str,
    plan: str | None,
    settings: Mapping[str, Any] | None,
    catalogue: Catalogue,
) -> None:
    """Enforce an organisation's allow lists and impose its provider preferences on the body.

    Allow lists bind enterprise plans only; the data-collection preference binds every plan.
    """
    if not settings:
        return
    enterprise = plan == ENTERPRISE

    model_allow_list = _list(settings.get("model_allow_list"))
    if enterprise and model_allow_list:
        normalized = normalize_model_id(model_lower)
        wildcard = normalized.split("/", 1)[0] + "/*"
        if normalized not in model_allow_list and wildcard not in model_allow_list:
            raise Rejection(errors.MODEL_NOT_ALLOWED)

    provider: dict[str, Any] = {}
    provider_allow_list = _list(settings.get("provider_allow_list"))
    if enterprise and provider_allow_list:
        # Decision 12: the raw id, so `:free` entries are found and their providers enforced.
        required = catalogue.extra_required_providers(model_lower)
        if required and not all(p in provider_allow_list for p in required):
            raise Rejection(errors.MODEL_NOT_ALLOWED)
        provider["only"] = provider_allow_list

    data_collection = settings.get("data_collection")
    if data_collection in DATA_COLLECTION_VALUES:
        provider["data_collection"] = data_collection

    # Replaced, not merged: the client cannot widen what the organisation allows.
    if provider:
        body["provider"] = provider


def data_collection_gate(body: dict[str, Any], model_lower: str, catalogue: Catalogue) -> None:
    """Kilo-hosted free models are paid for with training data: refuse callers that opt out.

    Decision 6: applies to every caller, anonymous included.
    """
    if not catalogue.is_kilo_free_model(model_lower):
        return
    provider = body.get("provider")
    if not isinstance(provider, dict):
        # The reference reads fields off whatever `provider` is: on a non-object both are absent.
        return
    if provider.get("data_collection") == "deny" or js.truthy(provider.get("zdr")):
        raise Rejection(errors.DATA_COLLECTION_REQUIRED)


def _list(value: Any) -> list[Any]:
    """Settings are JSON from the database: anything but an array is treated as no list."""
    return list(value) if isinstance(value, list | tuple) else []
