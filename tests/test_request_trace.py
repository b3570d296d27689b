"""The ext_proc's sampling and span export (extproc/otel_sdk.py, extproc/request_trace.py):
parent-based decisions follow Envoy's, and a full export queue shows in the drop metric."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from extproc import otel_sdk, otel_settings, request_trace

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _tracer(sampler: str, ratio: str) -> TracerProvider:
    settings = otel_settings.read(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_SAMPLER": sampler, "OTEL_TRACES_SAMPLER_ARG": ratio}
    )
    return TracerProvider(sampler=otel_sdk.sampler(settings), shutdown_on_exit=False)


@pytest.mark.parametrize(("flags", "traced"), [("01", True), ("00", False)])
def test_a_parent_based_sampler_follows_envoys_decision(flags: str, traced: bool) -> None:
    # Ratio 0 for new traces: only the parent's decision can sample.
    tracer = _tracer("parentbased_traceidratio", "0").get_tracer("test")
    metadata = [("traceparent", f"00-{TRACE}-00f067aa0ba902b7-{flags}"), ("x-request-id", "r1")]
    trace = request_trace.begin(tracer, metadata)
    assert (trace is not None) == traced
    if trace is not None:
        # The request span continues Envoy's trace, and its context goes with the usage record.
        assert trace.traceparent.startswith(f"00-{TRACE}-") and trace.traceparent.endswith("-01")


def test_new_traces_follow_the_ratio() -> None:
    assert request_trace.begin(_tracer("parentbased_traceidratio", "0").get_tracer("t"), []) is None
    assert request_trace.begin(_tracer("parentbased_traceidratio", "1").get_tracer("t"), []) is not None


class _Stuck(SpanExporter):
    """A collector that does not answer until told to."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(10)
        return SpanExportResult.SUCCESS


def test_spans_beyond_a_full_queue_are_counted_as_dropped() -> None:
    exporter = _Stuck()
    processor = otel_sdk._CountingProcessor(exporter, max_queue_size=8, max_export_batch_size=4)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    before = otel_sdk.SPANS_DROPPED.labels(reason="queue_full")._value.get()
    try:
        for _ in range(600):  # the worker holds at most one batch (4) while the export is stuck
            tracer.start_span("s").end()
        dropped = otel_sdk.SPANS_DROPPED.labels(reason="queue_full")._value.get() - before
        assert dropped >= 600 - 4 - 8
    finally:
        exporter.release.set()
        processor.shutdown()
