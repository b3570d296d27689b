"""Prometheus metrics of the ext_proc, served on `metrics_host:metrics_port/metrics`.

Label values are bounded: status codes, configured provider ids, and model ids as reported
by the upstream (its catalogue), never a client-supplied string.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
