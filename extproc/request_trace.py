"""One request's spans in the ext_proc, under Envoy's span of the ext_proc stream.

Envoy passes its trace context to the ext_proc in the stream's gRPC metadata (`traceparent`);
the request span starts when the stream opens and ends when it ends, completed or cut. Its
children are made when the request ends, from the moments the exchange noted on the way
(admission: authentication and limits, routing, balance and shaping; the wait for the
provider; the first token; the response), so a request pays for its spans once, after its
last reply, and a request the sampler leaves out pays only the sampling decision.
Each upstream attempt is Envoy's own span (`spawn_upstream_span`), beside ours in the trace.

Attributes follow OpenTelemetry's GenAI semantic conventions; no prompt, completion, key or
token ever goes into a span.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context

from extproc import logs, otel_sdk, tracing
from extproc.accounting import cost
from extproc.accounting.record import UsageRecord
from extproc.state import AdmittedRequest, ResponseTap


@dataclass(slots=True)
class RequestTrace:
    span: Span  # the request's span, recording
    traceparent: str  # its context, carried by the usage record to the ledger writer
    started_ns: int  # wall clock, for the children's times
    started: float  # monotonic, the same moment
    body_at: float | None = None
    identified_at: float | None = None
    routed_at: float | None = None
    admitted_at: float | None = None

    def ns(self, moment: float) -> int:
        return self.started_ns + int((moment - self.started) * 1e9)


def begin(tracer: Tracer, metadata: Iterable[tuple[str, str | bytes]] | None) -> RequestTrace | None:
    """The request span, child of Envoy's; None when the sampler leaves the request out."""
    span = tracer.start_span("chat", context=otel_sdk.extract(metadata), kind=SpanKind.SERVER)
    if not span.is_recording():
        return None
    context = span.get_span_context()
    logs.TRACE_ID.set(f"{context.trace_id:032x}")
    return RequestTrace(span, otel_sdk.traceparent(context), time.time_ns(), time.monotonic())


def end(
    trace: RequestTrace,
    admitted: AdmittedRequest | None,
    response: ResponseTap | None,
    record: UsageRecord | None,
    *,
    status: int,
    provider_id: str | None,
    aborted: bool,
) -> None:
    """After `finish_request`: `record` is the admitted request's usage record, complete."""
    tracer = tracing.TRACER
    span = trace.span
    ended = time.monotonic()
    if tracer is not None:
        _children(tracer, trace, response, provider_id, ended, aborted)
    span.set_attribute("gen_ai.operation.name", "chat")
    if provider_id is not None:
        span.set_attribute("gen_ai.provider.name", provider_id)
    if status:
        span.set_attribute("http.response.status_code", status)
    span.set_attribute("llm_gateway.aborted", aborted)
    if admitted is not None:
        chat = admitted.chat
        span.update_name(f"chat {chat.model_lower}")
        span.set_attribute("gen_ai.request.model", chat.model_lower)
        span.set_attribute("gen_ai.request.stream", chat.stream)
        span.set_attribute("llm_gateway.usage_id", admitted.usage_id)
        span.set_attribute("llm_gateway.request_id", admitted.request.request_id)
    if record is not None and response is not None:
        _usage(span, record)
    if aborted:
        span.set_status(Status(StatusCode.ERROR, "stream cut before its end"))
    elif status >= 500 or (status >= 400 and admitted is None):
        span.set_status(Status(StatusCode.ERROR))
    span.end(trace.ns(ended))


def _usage(span: Span, record: UsageRecord) -> None:
    if record.model:
        span.set_attribute("gen_ai.response.model", record.model)
    if record.message_id:
        span.set_attribute("gen_ai.response.id", record.message_id)
    if record.max_tokens is not None:
        span.set_attribute("gen_ai.request.max_tokens", record.max_tokens)
    span.set_attribute("gen_ai.usage.input_tokens", record.input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", record.output_tokens)
    if record.finish_reason:
        span.set_attribute("gen_ai.response.finish_reasons", [record.finish_reason])
    # What the ledger will charge for what the response reported (contract 7.4); a generation
    # lookup that changes it shows on the ledger write's span.
    charged, _ = cost.billable(
        cost.Charge(usage=record.stream_usage(), cache_discount_microdollars=None, inference_provider=None),
        free_model=record.free_model,
        user_byok=record.user_byok,
        promotion=record.promotion,
    )
    span.set_attribute("llm_gateway.cost_microdollars", charged)


def _children(
    tracer: Tracer,
    trace: RequestTrace,
    response: ResponseTap | None,
    provider_id: str | None,
    ended: float,
    aborted: bool,
) -> None:
    def child(name: str, start: float | None, stop: float | None, **attributes: str | int | bool) -> Span | None:
        if start is None or stop is None:
            return None
        span = tracer.start_span(name, context=parent, start_time=trace.ns(start), attributes=attributes)
        if aborted and stop == ended:
            span.set_status(Status(StatusCode.ERROR, "stream cut before its end"))
        span.end(trace.ns(stop))
        return span

    parent = set_span_in_context(trace.span)
    admitted_at = trace.admitted_at
    # Admission ends where the request was refused, if it was.
    admission_end = admitted_at or trace.routed_at or trace.identified_at or ended
    child("gateway.admission", trace.body_at, admission_end)
    child("gateway.auth_and_limits", trace.body_at, trace.identified_at or admission_end)
    if trace.routed_at is not None and provider_id is not None:
        child("gateway.routing", trace.identified_at, trace.routed_at, **{"gen_ai.provider.name": provider_id})
    child("gateway.balance_and_shaping", trace.routed_at, admitted_at or (ended if trace.routed_at else None))
    if admitted_at is None:
        return
    if response is None:
        # No response reached us: the provider was unreachable or cut before its headers.
        child("gateway.upstream", admitted_at, ended, **{"llm_gateway.response": "none"})
        return
    child("gateway.upstream", admitted_at, response.first_byte_at, **{"http.response.status_code": response.status})
    if response.first_chunk_at is not None:
        child("gateway.first_token", admitted_at, response.first_chunk_at)
    child("gateway.response", response.first_byte_at, ended)
