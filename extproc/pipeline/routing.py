"""Step 3.2: which upstream serves the request, in the contract's order: BYOK, custom LLM,
Vercel A/B, free-model gateway, OpenRouter."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import Counter

from extproc import errors, metrics
from extproc.byok import ByokDecryptionError
from extproc.custom_llm import FORWARDABLE_KIND, TRANSLATED_KINDS, CustomLlm, UnsafeCustomLlmUrl, martian_llm
from extproc.envoy_names import CUSTOM_HTTP_CLUSTER, CUSTOM_HTTPS_CLUSTER
from extproc.pipeline.identity import Identity
from extproc.pipeline.parse import ChatRequest
from extproc.pipeline.ports import ByokKeys, CooldownSource, CustomLlmSource, ErrorRateSource
from extproc.pipeline.rejection import Rejection
from extproc.settings import Provider, Settings
from extproc.shaping.provider_rules import ByokKey
from extproc.shaping.vercel import (
    map_model_id_to_vercel,
    route_to_vercel,
    vercel_eligible,
    vercel_percentage,
)

logger = logging.getLogger(__name__)

ROUTED = Counter("llm_gateway_routed_requests", "Requests sent upstream, by provider.", ["provider"])
VERCEL_AB = Counter(
    "llm_gateway_vercel_ab_decisions",
    "Vercel A/B routing decisions for eligible requests: the side, the share sent to Vercel, and why "
    "that share (the default, or OpenRouter's recent error rate above 0.5).",
    ["routed_to", "percentage", "reason"],
)

ROUTED_AROUND = Counter(
    "llm_gateway_routed_around_cooldown",
    "Requests sent to another provider than the contract's choice, which was cooling down for the "
    "model (issue 25): the provider passed over and the one used.",
    ["cooled", "used"],
)

CUSTOM_LLM_PREFIX = "kilo-internal/"
# The providers that serve the same models under mapped ids (contract 3.6): each one's other.
_DUAL = {"openrouter": "vercel", "vercel": "openrouter"}
# The share of eligible requests sent to Vercel when OpenRouter is healthy (contract 3.5).
_DEFAULT_VERCEL_SHARE = vercel_percentage(0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider  # for `custom`, built from the custom_llm row
    cluster: str  # the value of the routing header Envoy matches
    custom_host: str | None = None  # a custom LLM's authority, for Host and SNI
    custom_address: str | None = None  # the checked "ip:port" Envoy connects to for it
    user_byok: tuple[ByokKey, ...] = ()
    custom_llm: CustomLlm | None = None
    # The Vercel A/B decision (side, percentage in force) when the request was eligible.
    ab_decision: tuple[str, int] | None = None
    # Every provider that could serve this request, in preference order (cooled ones last);
    # the first is `provider`, the one it is sent to. A spend bound must cover them all.
    candidates: tuple[str, ...] = ()

    def record_metrics(self) -> None:
        """Metrics, once the request is on its way upstream (not when it is refused later)."""
        metrics.child(ROUTED, self.provider.id).inc()
        if self.ab_decision is not None:
            routed_to, percentage = self.ab_decision
            reason = "openrouter_error_rate" if percentage > _DEFAULT_VERCEL_SHARE else "default_share"
            VERCEL_AB.labels(routed_to, str(percentage), reason).inc()


def _table_route(
    provider: Provider,
    user_byok: tuple[ByokKey, ...] = (),
    ab_decision: tuple[str, int] | None = None,
    candidates: tuple[str, ...] = (),
) -> Route:
    if not provider.configured:
        # A free-model gateway without a URL in this deployment (GIGAPOTATO_API_URL unset).
        logger.error("provider has no URL configured", extra={"provider": provider.id})
        raise Rejection(errors.SERVICE_UNAVAILABLE)
    return Route(
        provider=provider,
        cluster=provider.cluster,
        user_byok=user_byok,
        ab_decision=ab_decision,
        candidates=candidates or (provider.id,),
    )


def order_candidates(preferred: tuple[str, ...], cooled: frozenset[str]) -> tuple[str, ...]:
    """The contract's order, except that providers cooling down for the model go last."""
    return tuple(sorted(preferred, key=lambda provider: provider in cooled))


@dataclass(frozen=True, slots=True)
class Router:
    """Step 3.2 from its own sources: BYOK keys, custom LLMs, error rates, providers, catalogue."""

    settings: Settings
    byok: ByokKeys
    byok_key: bytes | None  # BYOK is off without the encryption key
    custom_llms: CustomLlmSource
    error_rates: ErrorRateSource
    cooldowns: CooldownSource

    async def select(self, chat: ChatRequest, identity: Identity, task_id: str | None) -> Route:
        settings, catalogue = self.settings, self.settings.catalogue
        model = chat.model_lower
        providers = settings.providers

        # 1. BYOK: the caller's own keys for a provider that serves this model, through Vercel.
        if not identity.anonymous and self.byok_key is not None:
            byok_providers = await self.byok.providers_for_model(model, map_model_id_to_vercel(model, catalogue))
            if byok_providers:
                try:
                    keys = await self.byok.keys(
                        byok_providers,
                        user_id=identity.user_id,
                        organization_id=identity.organization_id,
                        encryption_key=self.byok_key,
                    )
                except ByokDecryptionError:
                    logger.error("a stored BYOK key cannot be decrypted", extra={"user_id": identity.user_id})
                    raise Rejection(errors.BYOK_KEY_UNREADABLE) from None
                if keys:
                    return _table_route(providers["vercel"], user_byok=tuple(keys))

        # 2. Custom LLM of the caller's organisation.
        if model.startswith(CUSTOM_LLM_PREFIX) and identity.organization_id is not None:
            llm = await self.custom_llms.get(chat.model)
            if llm is not None and identity.organization_id in llm.organization_ids:
                return await self._custom_route(llm)

        # 3. Vercel A/B.
        decision = None
        if vercel_eligible(model, chat.body, catalogue, universal_routing=settings.universal_vercel_routing):
            openrouter_rate, vercel_rate = await self.error_rates.get()
            percentage = vercel_percentage(openrouter_rate, vercel_rate)
            to_vercel = route_to_vercel(task_id or identity.user_id, percentage)
            decision = ("vercel" if to_vercel else "openrouter", percentage)
            if to_vercel:
                return await self._dual_route("vercel", chat, decision)

        # 4. The free model's own gateway.
        entry = catalogue.kilo_free_model(model)
        if entry is not None and entry.gateway != "openrouter":
            if entry.gateway == "martian":
                return await self._custom_route(martian_llm(entry, providers["martian"]))
            return _table_route(providers[entry.gateway])

        # 5. OpenRouter.
        return await self._dual_route("openrouter", chat, decision)

    async def _dual_route(self, first: str, chat: ChatRequest, decision: tuple[str, int] | None) -> Route:
        """`first`, unless it is cooling down for the model and the other of OpenRouter and
        Vercel is not (issue 25). Only for the requests the A/B split took (`decision`): those
        the contract lets Vercel serve at all (3.5), under its own model id (3.6)."""
        providers, model = self.settings.providers, chat.model_lower
        other = _DUAL[first]
        if decision is None or not providers[other].configured:
            return _table_route(providers[first], ab_decision=decision)
        preferred = (first, other)
        order = order_candidates(preferred, await self.cooldowns.cooled(preferred, model))
        if order[0] != first:
            metrics.child(ROUTED_AROUND, first, order[0]).inc()
            logger.info(
                "provider cooling down for the model; routed to the other",
                extra={"provider": first, "model": model, "routed_to": order[0]},
            )
            decision = (order[0], decision[1])
        return _table_route(providers[order[0]], ab_decision=decision, candidates=order)

    async def _custom_route(self, llm: CustomLlm) -> Route:
        if llm.kind != FORWARDABLE_KIND and llm.kind not in TRANSLATED_KINDS:
            logger.error("custom LLM of an unknown kind", extra={"model": llm.public_id, "kind": llm.kind})
            raise Rejection(errors.SERVICE_UNAVAILABLE)
        try:
            pinned = await self.custom_llms.upstream(llm)
        except UnsafeCustomLlmUrl as exc:
            logger.error("custom LLM URL refused", extra={"model": llm.public_id, "reason": str(exc)})
            raise Rejection(errors.CUSTOM_LLM_URL_REFUSED) from None
        provider = pinned.provider
        cluster = CUSTOM_HTTPS_CLUSTER if provider.tls else CUSTOM_HTTP_CLUSTER
        return Route(
            provider=provider,
            cluster=cluster,
            custom_host=provider.authority,
            custom_address=pinned.address,
            custom_llm=llm,
        )
