"""The OpenTelemetry SDK of a process that traces (extproc/tracing.py imports this module only
when tracing is on): a tracer with a batch exporter, set up from OpenTelemetry's own variables
(extproc/otel_settings.py), and the trace-context helpers.

Nothing on the request path waits for the collector: spans are queued in memory and a thread of
the SDK's sends them in batches. A collector that is down or slow loses spans (the queue is
bounded), never a request; `llm_gateway_trace_spans_dropped_total` counts what was lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence, Sized

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Counter

from extproc import logs, otel_settings

logger = logging.getLogger(__name__)

SPANS_EXPORTED = Counter("llm_gateway_trace_spans_exported", "Spans the collector accepted.")
SPANS_DROPPED = Counter(
    "llm_gateway_trace_spans_dropped",
    "Spans lost on the way to the collector: `export_failed` (unreachable, too slow, refused), "
    "`queue_full` (the in-memory queue overflowed while the collector lagged).",
    ["reason"],
)
for _reason in ("export_failed", "queue_full"):
    SPANS_DROPPED.labels(reason=_reason)

_PROPAGATOR = TraceContextTextMapPropagator()
# The batch processor's queue (the SDK's default); a span beyond it is dropped.
_MAX_QUEUE = 2048


class _CountingExporter(SpanExporter):
    """The OTLP exporter, counting what it delivered and what it lost (the SDK only logs it)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # the SDK would log and drop them the same way
            logger.error("span export failed", extra=logs.failure(exc))
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            SPANS_EXPORTED.inc(len(spans))
        else:
            SPANS_DROPPED.labels(reason="export_failed").inc(len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _CountingProcessor(BatchSpanProcessor):
    """Counts the spans the full queue makes the SDK drop (it only logs a warning once)."""

    def __init__(self, exporter: SpanExporter, max_queue_size: int, max_export_batch_size: int | None = None) -> None:
        super().__init__(exporter, max_queue_size=max_queue_size, max_export_batch_size=max_export_batch_size)
        self._max_queue = max_queue_size
        # The SDK keeps no public count of its queue (a deque: `len` is thread-safe). Should a
        # later SDK move it, the count stays off rather than failing every span's end.
        self._queue: Sized | None = getattr(getattr(self, "_batch_processor", None), "_queue", None)

    def on_end(self, span: ReadableSpan) -> None:
        if self._queue is not None and len(self._queue) >= self._max_queue:
            SPANS_DROPPED.labels(reason="queue_full").inc()
        super().on_end(span)


def sampler(settings: otel_settings.TraceSettings) -> Sampler:
    root = TraceIdRatioBased(settings.ratio)
    return ParentBased(root) if settings.parent_based else root


def start(settings: otel_settings.TraceSettings, component: str) -> tuple[Tracer, BatchSpanProcessor]:
    resource = Resource.create({"service.name": settings.service_name, "llm_gateway.process": component})
    # Our own bounded shutdown (extproc/tracing.py), not the SDK's at exit, which waits up to
    # 30 s on a collector that does not answer.
    provider = TracerProvider(sampler=sampler(settings), resource=resource, shutdown_on_exit=False)
    exporter = _CountingExporter(OTLPSpanExporter(endpoint=settings.traces_url))
    processor = _CountingProcessor(exporter, max_queue_size=_MAX_QUEUE)
    provider.add_span_processor(processor)
    return provider.get_tracer("llm-gateway"), processor


def extract(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The W3C trace context (`traceparent`, `tracestate`) in gRPC metadata or HTTP headers."""
    carrier = {key: value for key, value in metadata or () if key in ("traceparent", "tracestate") and isinstance(value, str)}
    return _PROPAGATOR.extract(carrier) if carrier else Context()


def traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def parent_from_traceparent(value: str) -> Context | None:
    """The context of a span whose `traceparent` a usage record carried; None if malformed."""
    parts = value.split("-")
    if len(parts) != 4:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    context = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
    return set_span_in_context(NonRecordingSpan(context)) if context.is_valid else None
