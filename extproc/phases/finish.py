"""End of the request (completed, refused or cut): summarise it and hand it to accounting.

Runs after the last reply went to Envoy, so nothing here delays the client: the usage record
is built from the admitted request in memory and submitted to the outbox by a task of its own
(which first waits, within its budget, for the abuse classification's request id), and the API
metrics of the upstream response leave by another task (extproc/side).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from extproc import metrics
from extproc.accounting.record import UsageRecord, response_fields
from extproc.collaborators import Collaborators
from extproc.response_usage import (
    ReportedUsage,
    ResponseSummary,
    suspicious_no_usage,
    usage_from_summary,
)
from extproc.settings import Settings
from extproc.shaping.provider_rules import without_byok_credentials
from extproc.state import AdmittedRequest, ResponseTap

logger = logging.getLogger(__name__)


def summarize(admitted: AdmittedRequest, tap: ResponseTap, aborted: bool) -> ResponseSummary | None:
    """What the upstream's response said; None when it never reached the accounting tap."""
    if tap.reader is None:
        return None
    if aborted and admitted.translator is not None and not tap.buffered:
        # A custom LLM's stream cut short: the translator's finish chunk carries the usage
        # the provider had reported so far (contract 3.4; it never reached the client).
        tap.reader.feed(admitted.translator.finish())
    return tap.reader.finish(aborted=aborted)


def finish_request(
    core: Collaborators,
    admitted: AdmittedRequest | None,
    written_ahead: UsageRecord | None,
    tap: ResponseTap | None,
    *,
    status: int,
    provider_id: str | None,
    aborted: bool,
) -> None:
    """`written_ahead`: the admitted request's `unanswered_record`; `status`: the upstream's, or
    the one we answered with; `provider_id`: the route chosen, also for a request refused after
    provider selection."""
    summary = summarize(admitted, tap, aborted) if admitted is not None and tap is not None else None
    provider = provider_id or "none"
    model = (summary.model if summary is not None else None) or "none"
    metrics.child(metrics.REQUESTS, "aborted" if aborted else str(status), provider, model).inc()
    if admitted is None or written_ahead is None:
        if admitted is not None:  # failed after admission: never sent, never charged
            _release_hold(core, admitted)
        return  # refused: nothing reached an upstream
    if tap is None or summary is None:
        # Cut before the response reached us (the upstream dropped the connection, or the
        # client left, before the response's headers got through Envoy): the written-ahead
        # record is the row, an error charged nothing, since no message id came to look up.
        written_ahead.created_at = time.time()
        core.submitter.submit(written_ahead)
        return
    request_id = admitted.request.request_id
    if suspicious_no_usage(summary):
        logger.warning("SUSPICIOUS: No usage chunk in stream", extra={"request_id": request_id})
    # Once: it also logs the contract's cost sanity warnings.
    reported = usage_from_summary(summary, cache_writes=admitted.translator is not None)
    _record_genai_metrics(admitted, tap, summary, reported, provider, model)
    if core.api_metrics.enabled:
        answered = admitted.answered(tap.status, tap.first_byte_at)
        if answered is not None:
            core.api_metrics.report(answered, summary)  # 8.1: every upstream response, the 402 too
    # Contract 6.2: a provider's 402 on Kilo's own key is answered 503 and not accounted.
    if tap.status == 402 and not admitted.user_byok:
        _release_hold(core, admitted)
        core.submitter.forget(admitted.usage_id)
        return
    # The written-ahead record was serialised when written (Submitter.write_ahead) and is the
    # exchange's alone: completed in place, as copying its 47 fields cost ~6 % of a JSON request.
    record = written_ahead
    record.created_at = time.time()
    record.status_code = tap.status
    record.aborted = aborted
    record.request_log = _request_log(admitted, tap)
    for name, value in response_fields(summary, reported).items():
        setattr(record, name, value)
    # 8.3: the abuse request id only serves the cost report, which needs a message id.
    abuse = None
    if admitted.abuse is not None and record.message_id:
        abuse = admitted.abuse.request_id(tap.first_byte_at)
    core.submitter.submit(record, abuse)


def _release_hold(core: Collaborators, admitted: AdmittedRequest) -> None:
    """A request that gets no ledger row: its spend hold ends now (nothing will be charged)."""
    if admitted.hold is not None and core.holds is not None:
        core.holds.release(admitted.usage_id, admitted.hold.scopes, admitted.hold.microdollars)


def _request_log(admitted: AdmittedRequest, tap: ResponseTap) -> dict[str, Any] | None:
    """8.2, employees only: the final request as sent upstream, and the response."""
    if tap.response_copy is None:
        return None
    chat = admitted.chat
    logged = without_byok_credentials(chat.body) if admitted.user_byok else chat.body
    return {"request": logged, "response": bytes(tap.response_copy).decode("utf-8", "replace")}


_NOTHING_REPORTED = ReportedUsage(
    input_tokens=0, output_tokens=0, cache_hit_tokens=0, cache_write_tokens=0, cost_microdollars=0, is_byok=None
)


def unanswered_record(settings: Settings, admitted: AdmittedRequest) -> UsageRecord:
    """The record of an admitted request whose response never reached the gateway: no status
    (0), cut, an error, nothing reported. Written ahead at admission (accounting/inflight.py);
    the final record is this one with the response's fields."""
    chat, identity, client, facts = admitted.chat, admitted.identity, admitted.client, admitted.facts
    catalogue = settings.catalogue
    user = identity.user
    return UsageRecord(
        usage_id=admitted.usage_id,
        created_at=time.time(),
        kilo_user_id=identity.user_id,
        organization_id=identity.organization_id,
        provider=admitted.provider.id,
        requested_model=chat.model_lower,  # resolved (contract 7.6); the kilo/auto* id is auto_model
        auto_model=admitted.caller.auto_model,
        status_code=0,
        streamed=chat.stream,
        aborted=True,
        free_model=catalogue.is_free_model(chat.model_lower),
        stealth_model=catalogue.is_kilo_stealth_model(chat.model_lower),
        user_byok=admitted.user_byok,
        promotion=admitted.promotion,
        **response_fields(ResponseSummary(status=0, streamed=chat.stream, has_error=True), _NOTHING_REPORTED),
        project_id=client.project_id,
        prompt=facts.prompt_info(),
        max_tokens=facts.max_tokens if isinstance(facts.max_tokens, int) else None,  # a bigint column
        has_middle_out_transform=facts.has_middle_out_transform,
        has_tools=facts.has_tools,
        editor_name=client.editor_name,
        machine_id=client.machine_id,
        session_id=client.task_id,
        mode=client.mode,
        feature=client.feature,
        user_agent=client.user_agent,
        forwarded_for=client.forwarded_for,
        # 7.5: the analytics events' inputs, carried only when analytics is on.
        posthog_distinct_id=user.email if user is not None and settings.posthog_api_key else None,
        prior_microdollar_usage=user.microdollars_used if user is not None else None,
        held_scopes=admitted.hold.scopes if admitted.hold is not None else None,
        held_microdollars=admitted.hold.microdollars if admitted.hold is not None else 0,
    )


def _record_genai_metrics(
    admitted: AdmittedRequest,
    tap: ResponseTap,
    summary: ResponseSummary,
    reported: ReportedUsage,
    provider: str,
    model: str,
) -> None:
    labels = ("chat", provider, model)
    for token_type, count in (
        ("input", reported.input_tokens),
        ("output", reported.output_tokens),
        ("cached_input", reported.cache_hit_tokens),
    ):
        metrics.observe(metrics.child(metrics.TOKEN_USAGE, *labels, token_type), count)
    started = admitted.request.started
    duration = time.monotonic() - started
    metrics.observe(metrics.child(metrics.REQUEST_DURATION, *labels), duration)
    if summary.streamed and tap.first_chunk_at is not None:
        ttft = tap.first_chunk_at - started
        metrics.observe(metrics.child(metrics.TIME_TO_FIRST_TOKEN, *labels), ttft)
        if reported.output_tokens > 1:
            per_token = (duration - ttft) / (reported.output_tokens - 1)
            metrics.observe(metrics.child(metrics.TIME_PER_OUTPUT_TOKEN, *labels), per_token)
