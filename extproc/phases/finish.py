"""End of the request (completed, refused or cut): summarise it and hand it to accounting.

Runs after the last reply went to Envoy, so nothing here delays the client: the usage record
is built from the state in memory and submitted to the outbox by a task of its own (which first
waits, within its budget, for the abuse classification's request id), and the API metrics of
the upstream response leave by another task (extproc/side).
"""

from __future__ import annotations

import logging
import time
import uuid

from extproc import metrics
from extproc.accounting.record import UsageRecord, response_fields
from extproc.accounting.submit import UsageSubmitter
from extproc.response_usage import (
    ReportedUsage,
    ResponseSummary,
    summarize_json_body,
    suspicious_no_usage,
    usage_from_summary,
)
from extproc.settings import Settings
from extproc.shaping.provider_rules import without_byok_credentials
from extproc.side import SideServices
from extproc.state import RequestState

logger = logging.getLogger(__name__)


def summarize(state: RequestState, aborted: bool) -> ResponseSummary | None:
    if state.stream_tap is not None:
        if aborted and state.translator is not None and not state.buffered:
            # A custom LLM's stream cut short: the translator's finish chunk carries the usage
            # the provider had reported so far (contract 3.4; it never reached the client).
            state.stream_tap.feed(state.translator.finish())
        return state.stream_tap.finish(aborted=aborted)
    if state.json_body is not None and state.status is not None:
        summary = summarize_json_body(bytes(state.json_body), state.status)
        summary.has_error = summary.has_error or aborted
        return summary
    return None


def finish_request(
    settings: Settings, submitter: UsageSubmitter, side: SideServices, state: RequestState, aborted: bool
) -> None:
    state.summary = summary = summarize(state, aborted)
    provider = state.provider.id if state.provider is not None else "none"
    model = (summary.model if summary is not None else None) or "none"
    metrics.REQUESTS.labels(status="aborted" if aborted else str(state.status or 0), provider=provider, model=model).inc()
    if summary is None:
        return
    if suspicious_no_usage(summary):
        logger.warning("SUSPICIOUS: No usage chunk in stream", extra={"request_id": state.request_id})
    # Once: it also logs the contract's cost sanity warnings.
    reported = usage_from_summary(summary, cache_writes=state.translator is not None)
    _record_genai_metrics(state, summary, reported, provider, model)
    answered = state.answered_request()
    if answered is not None:
        side.api_metrics.report(answered, summary)  # 8.1: every upstream response, the 402 too
    # Contract 6.2: a provider's 402 on Kilo's own key is answered 503 and not accounted.
    if state.status == 402 and not state.user_byok:
        return
    record = build_record(settings, state, summary, reported, aborted)
    if record is not None:
        # 8.3: the abuse request id only serves the cost report, which needs a message id.
        abuse = None
        if state.abuse is not None and record.message_id:
            abuse = state.abuse.request_id(state.first_byte_at)
        submitter.submit(record, abuse)


def build_record(
    settings: Settings, state: RequestState, summary: ResponseSummary, reported: ReportedUsage, aborted: bool
) -> UsageRecord | None:
    chat, identity, provider, client, facts = state.chat, state.identity, state.provider, state.client, state.facts
    if chat is None or identity is None or provider is None or client is None or facts is None:
        return None
    catalogue = settings.catalogue
    user = identity.user
    request_log = None
    if state.response_copy is not None:
        # 8.2: the final request as sent upstream, and the response.
        logged = without_byok_credentials(chat.body) if state.user_byok else chat.body
        request_log = {"request": logged, "response": bytes(state.response_copy).decode("utf-8", "replace")}
    return UsageRecord(
        usage_id=str(uuid.uuid4()),
        created_at=time.time(),
        kilo_user_id=identity.user_id,
        organization_id=identity.organization_id,
        provider=provider.id,
        requested_model=chat.model_lower,  # resolved (contract 7.6); the kilo/auto* id is auto_model
        auto_model=state.auto_model,
        status_code=state.status or 0,
        streamed=chat.stream,
        aborted=aborted,
        free_model=catalogue.is_free_model(chat.model_lower),
        stealth_model=catalogue.is_kilo_stealth_model(chat.model_lower),
        user_byok=state.user_byok,
        promotion=state.promotion,
        **response_fields(summary, reported),
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
        request_log=request_log,
        # 7.5: the analytics events' inputs, carried only when analytics is on.
        posthog_distinct_id=user.email if user is not None and settings.posthog_api_key else None,
        prior_microdollar_usage=user.microdollars_used if user is not None else None,
    )


def _record_genai_metrics(
    state: RequestState, summary: ResponseSummary, reported: ReportedUsage, provider: str, model: str
) -> None:
    labels = ("chat", provider, model)
    for token_type, count in (
        ("input", reported.input_tokens),
        ("output", reported.output_tokens),
        ("cached_input", reported.cache_hit_tokens),
    ):
        metrics.TOKEN_USAGE.labels(*labels, token_type).observe(count)
    duration = time.monotonic() - state.started
    metrics.REQUEST_DURATION.labels(*labels).observe(duration)
    if summary.streamed and state.first_chunk_at is not None:
        ttft = state.first_chunk_at - state.started
        metrics.TIME_TO_FIRST_TOKEN.labels(*labels).observe(ttft)
        if reported.output_tokens > 1:
            metrics.TIME_PER_OUTPUT_TOKEN.labels(*labels).observe((duration - ttft) / (reported.output_tokens - 1))
