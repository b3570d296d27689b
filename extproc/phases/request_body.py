"""Phase 2: the request pipeline of behaviour.md section 2, in the contract's order (2.0)."""

from __future__ import annotations

import uuid
from typing import Any

from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    ProcessingResponse,
)

from extproc import errors, protocol
from extproc.accounting.record import request_facts
from extproc.auth.rules import is_employee
from extproc.custom_llm import FORWARDABLE_KIND
from extproc.db.cache import DirectoryUnavailable
from extproc.limits import Admission
from extproc.pipeline.auto_model import apply_auto_model, resolve_auto_model
from extproc.pipeline.balance import (
    organization_balance,
    promotion_active,
    require_balance,
)
from extproc.pipeline.client_headers import extract_client_info
from extproc.pipeline.free_usage import log_free_model_usage
from extproc.pipeline.identity import Identity, admit_anonymous, authenticate
from extproc.pipeline.organization import apply_organization_rules, data_collection_gate
from extproc.pipeline.parse import ChatRequest, parse_chat_request
from extproc.pipeline.rejection import Rejection
from extproc.pipeline.routing import Route, select_route
from extproc.pipeline.upstream import forward
from extproc.pipeline.validation import validate_request
from extproc.services import Services
from extproc.shaping.provider_rules import apply_provider_specific_logic
from extproc.shaping.transform import transform_request
from extproc.state import RequestState
from extproc.translate.openai_phase import PhaseMemory

_LIMIT_REFUSALS = {
    Admission.FREE_MODEL_LIMIT: errors.FREE_MODEL_RATE_LIMITED,
    Admission.PROMOTION_LIMIT: errors.PROMOTION_MODEL_LIMIT_REACHED,
}


async def on_request_body(services: Services, state: RequestState, message: HttpBody) -> ProcessingResponse:
    try:
        return await _admit(services, state, message.body)
    except Rejection as rejection:
        state.status = rejection.error.status
        return protocol.immediate(rejection.error)
    except DirectoryUnavailable:
        state.status = errors.SERVICE_UNAVAILABLE.status
        return protocol.immediate(errors.SERVICE_UNAVAILABLE)


async def _admit(services: Services, state: RequestState, raw: bytes) -> ProcessingResponse:
    settings, catalogue = services.settings, services.settings.catalogue
    chat = parse_chat_request(raw)  # 2.1
    state.client = client = extract_client_info(state.headers, state.path)  # 2.9 (pure)
    auto = resolve_auto_model(chat.model_lower, client.mode)  # 2.3
    if auto is not None:
        state.auto_model = chat.model_lower
        chat = apply_auto_model(chat, auto)
    state.chat = chat
    model = chat.model_lower

    if state.client_ip is None:  # 2.2
        raise Rejection(errors.NO_CLIENT_IP)
    ip = state.client_ip

    # 2.5 and 2.6. Authentication has no visible effect of its own, so it runs before the
    # free-model limits; their refusals still take the contract's precedence below.
    identity = await authenticate(state.headers, settings, services.directory)
    identity = identity or admit_anonymous(model, ip, catalogue)
    state.identity = identity
    state.log_request = identity.user is not None and is_employee(
        identity.user.email, identity.organization_id, settings.employee_organization_id
    )

    # 2.4 and 2.7 in one atomic Redis script; 2.8 logs what it admitted.
    kilo_free = catalogue.is_kilo_free_model(model)
    if kilo_free or (identity.anonymous and catalogue.is_free_model(model)):
        # A member of the window per request, never a client-influenced id (a repeated id
        # would be counted once).
        admission = await services.limiter.admit(
            ip, kilo_free=kilo_free, anonymous=identity.anonymous, request_id=uuid.uuid4().hex
        )
        if admission in _LIMIT_REFUSALS:
            raise Rejection(_LIMIT_REFUSALS[admission])
    if kilo_free:
        await log_free_model_usage(
            services.resources.db,
            ip,
            model,
            None if identity.anonymous else identity.user_id,
            settings.directory_query_timeout_seconds,
        )

    route = await select_route(services, chat, identity, client.task_id)  # 3.2
    state.provider, state.user_byok = route.provider, bool(route.user_byok)
    # 7.6 and 8.3 read the request as sent: taken once, before shaping.
    state.facts = facts = request_facts(chat.body)
    # 2.10 and decision 4: in the background; never awaited here.
    state.abuse = services.side.abuse.classify(
        chat, identity, client, facts, route.provider.id, state.user_byok, request_id=state.request_id
    )
    validate_request(chat, catalogue)  # 2.11
    state.promotion = promotion_active(settings, model, identity)
    # 2.12 for signed-in callers, except on their organisation's own custom LLM.
    if not identity.anonymous and route.custom_llm is None:
        await _check_balance_and_organization(services, identity, chat.body, model, byok=state.user_byok)
    data_collection_gate(chat.body, model, catalogue)  # 2.13
    extra_headers = _shape(services, state, chat, route)
    route.record_metrics()
    phase_memory = None
    if route.custom_llm is not None and route.custom_llm.remembers_phases:
        phase_memory = PhaseMemory(
            services.resources.db, settings.directory_query_timeout_seconds, identity.user_id, client.task_id
        )
    return await forward(settings, state, chat, route, extra_headers, phase_memory)  # 2.15


def _shape(services: Services, state: RequestState, chat: ChatRequest, route: Route) -> dict[str, str]:
    """2.14 and 5.2: the body the provider handles best; returns the extra upstream headers."""
    assert state.identity is not None and state.client is not None
    provider = route.provider
    state.tools = transform_request(
        chat.body,
        user_id=state.identity.user_id,
        task_id=state.client.task_id,
        provider_id=provider.id,
        provider_base_url=provider.api_url or "",
        model_lower=chat.model_lower,
        is_opencode=state.client.is_opencode,
    )
    extra_headers: dict[str, str] = {}
    apply_provider_specific_logic(
        provider.id, chat.model_lower, chat.body, extra_headers, services.settings.catalogue, list(route.user_byok) or None
    )
    if route.custom_llm is not None and route.custom_llm.kind == FORWARDABLE_KIND:
        # An openai-compatible custom LLM gets its own model id and extra body fields (3.4); the
        # translated kinds take theirs from the row when the body is translated (forward).
        chat.body["model"] = route.custom_llm.internal_id
        chat.body.update(route.custom_llm.extra_body or {})
    return extra_headers


async def _check_balance_and_organization(
    services: Services, identity: Identity, body: dict[str, Any], model: str, *, byok: bool
) -> None:
    settings, directory = services.settings, services.directory
    assert identity.user is not None
    if identity.organization_id is None:
        if not byok:
            await require_balance(settings, directory, identity, model, identity.user.balance_microdollars)
        return
    account = await directory.organization_account(identity.organization_id, identity.user_id)
    if not byok:
        await require_balance(settings, directory, identity, model, organization_balance(account))
    if account is not None:
        apply_organization_rules(body, model, account.plan, account.settings, settings.catalogue)
