"""Phase 2: the request pipeline of behaviour.md section 2, in the contract's order (2.0).

Two stages around provider selection (3.2, which the exchange runs between them): who is
calling (2.1 to 2.9), then the checks and shaping of the routed request (2.10 to 2.15). Both
refuse a request by raising `Rejection`.
"""

from __future__ import annotations

import uuid
from typing import Any

from extproc import errors
from extproc.accounting.record import RequestFacts, request_facts
from extproc.auth.rules import is_employee
from extproc.collaborators import Collaborators
from extproc.custom_llm import FORWARDABLE_KIND
from extproc.directory import User
from extproc.limits import Admission
from extproc.pipeline import spend
from extproc.pipeline.auto_model import apply_auto_model, resolve_auto_model
from extproc.pipeline.balance import (
    organization_balance,
    payment_required,
    promotion_active,
    require_balance,
)
from extproc.pipeline.client_headers import extract_client_info
from extproc.pipeline.identity import Identity, admit_anonymous, authenticate
from extproc.pipeline.organization import apply_organization_rules, data_collection_gate
from extproc.pipeline.parse import parse_chat_request
from extproc.pipeline.rejection import Rejection
from extproc.pipeline.routing import Route
from extproc.pipeline.spend import SpendHold
from extproc.pipeline.upstream import Forwarded, forward
from extproc.pipeline.validation import validate_request
from extproc.shaping.provider_rules import apply_provider_specific_logic
from extproc.shaping.transform import TransformResult, transform_request
from extproc.side.abuse import Classification
from extproc.state import AdmittedRequest, Caller, ClientRequest

_LIMIT_REFUSALS = {
    Admission.FREE_MODEL_LIMIT: errors.FREE_MODEL_RATE_LIMITED,
    Admission.PROMOTION_LIMIT: errors.PROMOTION_MODEL_LIMIT_REACHED,
}


async def identify_caller(core: Collaborators, request: ClientRequest, raw: bytes) -> Caller:
    """Steps 2.1 to 2.9."""
    settings, catalogue = core.settings, core.settings.catalogue
    # Envoy lets bodies through up to the limit plus the shaping headroom; the client's own
    # limit is ours to enforce, with the same 413 Envoy gives beyond its buffer.
    if len(raw) > settings.max_request_body_bytes:
        raise Rejection(errors.PAYLOAD_TOO_LARGE)
    chat = parse_chat_request(raw)  # 2.1
    client = extract_client_info(request.headers, request.path)  # 2.9 (pure)
    auto = resolve_auto_model(chat.model_lower, client.mode)  # 2.3
    auto_model = None
    if auto is not None:
        auto_model = chat.model_lower
        chat = apply_auto_model(chat, auto)
    model = chat.model_lower

    if request.client_ip is None:  # 2.2
        raise Rejection(errors.NO_CLIENT_IP)
    ip = request.client_ip

    # 2.5 and 2.6. Authentication has no visible effect of its own, so it runs before the
    # free-model limits; their refusals still take the contract's precedence below.
    identity = await authenticate(request.headers, settings, core.accounts)
    identity = identity or admit_anonymous(model, ip, catalogue)

    # 2.4 and 2.7 in one atomic Redis script; 2.8 logs what it admitted.
    kilo_free = catalogue.is_kilo_free_model(model)
    if kilo_free or (identity.anonymous and catalogue.is_free_model(model)):
        # A member of the window per request, never a client-influenced id (a repeated id
        # would be counted once).
        admission = await core.limiter.admit(
            ip, kilo_free=kilo_free, anonymous=identity.anonymous, request_id=uuid.uuid4().hex
        )
        if admission in _LIMIT_REFUSALS:
            raise Rejection(_LIMIT_REFUSALS[admission])
    if kilo_free:
        await core.free_usage.record(ip, model, None if identity.anonymous else identity.user_id)

    log_request = identity.user is not None and is_employee(
        identity.user.email, identity.organization_id, settings.employee_organization_id
    )
    return Caller(chat, client, identity, ip, auto_model, log_request)


async def send_upstream(
    core: Collaborators, request: ClientRequest, caller: Caller, route: Route
) -> tuple[AdmittedRequest, Forwarded]:
    """Steps 2.10 to 2.15 for the routed request."""
    settings, catalogue = core.settings, core.settings.catalogue
    chat, identity, client = caller.chat, caller.identity, caller.client
    model = chat.model_lower
    user_byok = bool(route.user_byok)
    # 7.6 and 8.3 read the request as sent: taken once, before shaping.
    facts = request_facts(chat.body)
    # 2.10 and decision 4: in the background; never awaited here.
    abuse = core.abuse.classify(
        chat, identity, client, facts, route.provider.id, user_byok, request_id=request.request_id
    )
    validate_request(chat, catalogue)  # 2.11
    promotion = promotion_active(settings, model, identity)
    usage_id = str(uuid.uuid4())
    hold = None
    # 2.12 for signed-in callers, except on their organisation's own custom LLM.
    if identity.user is not None and route.custom_llm is None:
        hold = await _check_balance_and_organization(
            core, identity, identity.user, chat.body, model, route.provider.id, usage_id, byok=user_byok, promotion=promotion
        )
    try:
        return await _shape_and_forward(core, request, caller, route, facts, abuse, promotion, usage_id, hold)
    except BaseException:
        if hold is not None and core.holds is not None:
            core.holds.release(usage_id, hold.scopes, hold.microdollars)  # refused after its hold
        raise


async def _shape_and_forward(
    core: Collaborators,
    request: ClientRequest,
    caller: Caller,
    route: Route,
    facts: RequestFacts,
    abuse: Classification | None,
    promotion: bool,
    usage_id: str,
    hold: SpendHold | None,
) -> tuple[AdmittedRequest, Forwarded]:
    """2.13 to 2.15."""
    settings, catalogue = core.settings, core.settings.catalogue
    chat, identity, client = caller.chat, caller.identity, caller.client
    model = chat.model_lower
    data_collection_gate(chat.body, model, catalogue)  # 2.13
    tools, extra_headers = _shape(core, caller, route)
    route.record_metrics()
    phase_memory = None
    if route.custom_llm is not None and route.custom_llm.remembers_phases:
        phase_memory = core.phase_memories(identity.user_id, client.task_id)
    forwarded = await forward(  # 2.15
        settings,
        request.headers,
        request.query,
        chat,
        route,
        extra_headers,
        legacy_extension=client.is_legacy_extension,
        phase_memory=phase_memory,
    )
    admitted = AdmittedRequest(
        request=request,
        caller=caller,
        route=route,
        facts=facts,
        abuse=abuse,
        promotion=promotion,
        tools=tools,
        upstream_body=forwarded.body,
        translator=forwarded.translator,
        usage_id=usage_id,
        hold=hold,
    )
    return admitted, forwarded


def _shape(core: Collaborators, caller: Caller, route: Route) -> tuple[TransformResult, dict[str, str]]:
    """2.14 and 5.2: the body the provider handles best; returns the tools seen and the extra
    upstream headers."""
    chat, provider = caller.chat, route.provider
    tools = transform_request(
        chat.body,
        user_id=caller.identity.user_id,
        task_id=caller.client.task_id,
        provider_id=provider.id,
        provider_base_url=provider.api_url or "",
        model_lower=chat.model_lower,
        is_opencode=caller.client.is_opencode,
    )
    extra_headers: dict[str, str] = {}
    apply_provider_specific_logic(
        provider.id, chat.model_lower, chat.body, extra_headers, core.settings.catalogue, list(route.user_byok) or None
    )
    if route.custom_llm is not None and route.custom_llm.kind == FORWARDABLE_KIND:
        # An openai-compatible custom LLM gets its own model id and extra body fields (3.4); the
        # translated kinds take theirs from the row when the body is translated (forward).
        chat.body["model"] = route.custom_llm.internal_id
        chat.body.update(route.custom_llm.extra_body or {})
    return tools, extra_headers


async def _check_balance_and_organization(
    core: Collaborators,
    identity: Identity,
    user: User,
    body: dict[str, Any],
    model: str,
    provider_id: str,
    usage_id: str,
    *,
    byok: bool,
    promotion: bool,
) -> SpendHold | None:
    """2.12; the request's spend hold when it takes one (issue 23)."""
    settings, accounts = core.settings, core.accounts
    organization_id = identity.organization_id
    account = None if organization_id is None else await accounts.organization_account(organization_id, identity.user_id)
    hold = None
    if not byok:
        balance = user.balance_microdollars if organization_id is None else organization_balance(account)
        holds = core.holds
        paid = not (promotion or settings.catalogue.is_free_model(model))
        if paid and settings.spend_holds and holds is not None and balance > 0:
            if organization_id is None or account is None:
                reads = spend.user_reads(user)
            else:  # a positive organisation balance: the account was found
                reads = spend.organization_reads(organization_id, identity.user_id, account)

            async def refusal(available: int) -> errors.GatewayError:
                return await payment_required(settings, accounts, identity, available)

            try:
                bound = spend.request_bound(settings, core.prices, model, body, provider_id)
                hold = await spend.reserve(settings, holds, usage_id, reads, bound, body, refusal)
            except spend.RedisDown:
                await require_balance(settings, accounts, identity, model, balance)
        else:
            await require_balance(settings, accounts, identity, model, balance)
    if account is not None:
        apply_organization_rules(body, model, account.plan, account.settings, settings.catalogue)
    return hold
