"""Prometheus metrics of the ext_proc, served on `metrics_host:metrics_port/metrics`.

Every process keeps its metrics in process. Started on its own (Compose, Kubernetes), it serves
them itself; under `llm-gateway run` it hands them to the supervisor at each scrape
(extproc/metrics_export.py), which serves every process's merged on one port.

Label values are bounded: status codes, configured provider ids, and model ids as reported
by the upstream (its catalogue), never a client-supplied string.
"""

from __future__ import annotations

import bisect
import collections
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

from extproc import metrics_export

_Metric = TypeVar("_Metric", bound=MetricWrapperBase)
_CHILDREN: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}


def child(metric: _Metric, *values: str) -> _Metric:
    """`metric.labels(*values)` (positional, in the metric's label order), each child looked up
    once: `labels()` validates and takes a lock on every call (~2.5 us, several per request).
    Bounded as the label values are, as prometheus_client's own table of children is."""
    key = (metric, values)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*values)
    return found  # type: ignore[return-value]

# `observe` and `observe_all` write a labelled histogram's child as `Histogram.observe` does,
# relying on prometheus_client keeping a per-bucket (non-cumulative) count for each upper bound,
# the last +Inf (it has no batch API; tests/test_metrics.py holds them equal to `observe`).


def observe(histogram: Histogram, amount: float) -> None:
    """`histogram.observe(amount)`, the bucket found by bisection instead of a scan of the
    bounds in Python, and without its per-call checks (~2 % of a JSON request's instructions)."""
    histogram._sum.inc(amount)
    # The first bucket whose bound is >= the amount, as observe's `amount <= bound`.
    histogram._buckets[bisect.bisect_left(histogram._upper_bounds, amount)].inc(1)


def observe_all(histogram: Histogram, amounts: Sequence[float]) -> None:
    """`observe(histogram, amount)` for each amount, written as one increment of the sum and one
    of each bucket reached: two writes per observation for a stream's chunks were ~10 % of the
    ext_proc's instructions per stream (bench/instructions.py)."""
    if len(amounts) < 2:  # a JSON body's one chunk: nothing to gather
        for amount in amounts:
            observe(histogram, amount)
        return
    bounds: list[float] = histogram._upper_bounds
    reached = collections.Counter(bisect.bisect_left(bounds, amount) for amount in amounts)
    histogram._sum.inc(sum(amounts))
    for index, count in reached.items():
        histogram._buckets[index].inc(count)


REQUESTS = Counter(
    "llm_gateway_requests",
    "Chat requests finished, by final status, provider and upstream-reported model.",
    ["status", "provider", "model"],
)
PHASE_SECONDS = Histogram(
    "llm_gateway_extproc_phase_seconds",
    "Time the ext_proc spends on one Envoy message, by phase.",
    ["phase"],
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
# How each ext_proc stream ended: "ok" (complete, then half-closed by Envoy, which got our
# status), "cancelled" (Envoy reset it, or closed it before the response was complete: a client
# that went away; for completed requests, an Envoy without the graceful-close guard of
# envoy_config.SIDE_STREAM_RUNTIME, which leaks native memory in grpc.aio), "failed" (raised).
STREAMS_ENDED = Counter(
    "llm_gateway_extproc_streams_ended",
    "ext_proc streams ended, by how: ok (complete, closed by Envoy), cancelled (reset or cut short), failed.",
    ["outcome"],
)
STREAM_OK, STREAM_CANCELLED, STREAM_FAILED = (STREAMS_ENDED.labels(outcome) for outcome in ("ok", "cancelled", "failed"))

# OpenTelemetry GenAI semantic conventions (gen_ai.* metrics), recorded when a request ends.
# Labels: provider id and the upstream-reported model (bounded by the provider's catalogue).
_GENAI = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_response_model"]
TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Tokens used per request, by token type (input, output, cached_input).",
    [*_GENAI, "gen_ai_token_type"],
    buckets=tuple(4**n for n in range(14)),
)
REQUEST_DURATION = Histogram(
    "gen_ai_server_request_duration_seconds",
    "From the request reaching the ext_proc to the end of the response.",
    _GENAI,
    buckets=(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92, 300),
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "From the request reaching the ext_proc to the first response chunk (streams).",
    _GENAI,
    buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0),
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "gen_ai_server_time_per_output_token_seconds",
    "(duration - time to first token) / (output tokens - 1), for streams.",
    _GENAI,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5),
)


def serve(host: str, port: int) -> Callable[[], None]:
    """Serves this process's metrics, or, under the stack (which serves every process's), hands
    them to the supervisor. Returns the function that stops the server."""
    export_port = os.environ.get(metrics_export.METRICS_EXPORT_PORT)
    if export_port:
        return metrics_export.serve(int(export_port))
    return start_server(host, port, REGISTRY)


def start_server(host: str, port: int, registry: CollectorRegistry) -> Callable[[], None]:
    """Serves `registry` on a thread; returns the function that stops it."""
    server, thread = start_http_server(port, host, registry=registry)

    def stop() -> None:
        server.shutdown()
        thread.join(timeout=5)

    return stop
