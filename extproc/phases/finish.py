"""End of the request (completed, refused or cut): summarise the response off the hot path.

Runs after the last reply went to Envoy, so nothing here delays the client. The usage record
built from the original upstream bytes is where accounting (ledger hand-off) attaches.
"""

from __future__ import annotations

import logging

from extproc import metrics
from extproc.state import RequestState
from extproc.usage import ResponseSummary, summarize_json_body, suspicious_no_usage, usage_from_summary

logger = logging.getLogger(__name__)


def summarize(state: RequestState, aborted: bool) -> ResponseSummary | None:
    if state.stream_tap is not None:
        return state.stream_tap.finish(aborted=aborted)
    if state.json_body is not None and state.status is not None:
        summary = summarize_json_body(bytes(state.json_body), state.status)
        summary.has_error = summary.has_error or aborted
        return summary
    return None


def finish_request(state: RequestState, aborted: bool) -> None:
    state.summary = summary = summarize(state, aborted)
    status = str(state.status or 0) if not aborted else "aborted"
    provider = state.provider.id if state.provider is not None else "none"
    model = (summary.model if summary is not None else None) or "none"
    metrics.REQUESTS.labels(status=status, provider=provider, model=model).inc()
    if summary is None:
        return
    if suspicious_no_usage(summary):
        logger.warning("SUSPICIOUS: No usage chunk in stream", extra={"request_id": state.request_id})
    usage = usage_from_summary(summary)
    logger.info(
        "request finished",
        extra={
            "request_id": state.request_id,
            "provider": provider,
            "model": summary.model,
            "status": state.status,
            "aborted": aborted,
            "message_id": summary.message_id,
            "finish_reason": summary.finish_reason,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cost_microdollars": usage.cost_microdollars,
        },
    )
