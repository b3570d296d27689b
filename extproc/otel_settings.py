"""Tracing's configuration, read from OpenTelemetry's own environment variables.

One reading serves the ext_proc, the ledger writer (extproc/tracing.py) and the Envoy bootstrap
(extproc/envoy_config.py), so the proxy's spans and ours go to the same collector with the same
sampling. Tracing is off unless an endpoint is set, and off whenever `OTEL_SDK_DISABLED=true`.

Every process exports OTLP over HTTP (Envoy protobuf, the Python processes JSON) to one
endpoint: the Python OTLP exporters in protobuf import `opentelemetry.proto`, whose files
`xds-protos` overwrites with an older copy when pip installs it later (README, "Tracing").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_SERVICE_NAME = "llm-gateway"
TRACES_PATH = "/v1/traces"
# OTEL_TRACES_SAMPLER values (the SDK's own names) and whether they follow the parent's decision.
_RATIO_SAMPLERS = {"traceidratio": False, "parentbased_traceidratio": True}
_FIXED_SAMPLERS = {
    "always_on": (1.0, False),
    "always_off": (0.0, False),
    "parentbased_always_on": (1.0, True),
    "parentbased_always_off": (0.0, True),
}
_HTTP_PROTOCOLS = ("http/json", "http/protobuf")


class TracingConfigError(ValueError):
    """An OTEL_* variable this gateway cannot honour; the message names it and the fix."""


@dataclass(frozen=True, slots=True)
class TraceSettings:
    traces_url: str | None  # where spans are POSTed; None: tracing off
    service_name: str
    sampler: str
    ratio: float  # the share of new traces sampled, 0..1
    parent_based: bool

    @property
    def enabled(self) -> bool:
        return self.traces_url is not None

    @property
    def envoy_sampling_percent(self) -> float:
        """Envoy's `random_sampling` for requests that arrive without a sampled parent."""
        return round(self.ratio * 100, 4)


def read(env: Mapping[str, str] | None = None) -> TraceSettings:
    env = os.environ if env is None else env
    service = env.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    sampler = (env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    if sampler in _FIXED_SAMPLERS:
        ratio, parent_based = _FIXED_SAMPLERS[sampler]
    elif sampler in _RATIO_SAMPLERS:
        parent_based = _RATIO_SAMPLERS[sampler]
        ratio = _ratio(env.get("OTEL_TRACES_SAMPLER_ARG"))
    else:
        known = ", ".join([*_FIXED_SAMPLERS, *_RATIO_SAMPLERS])
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER={sampler!r} is not supported; use one of {known}")
    url = _traces_url(env)
    return TraceSettings(url, service, sampler, ratio, parent_based)


def _ratio(raw: str | None) -> float:
    if raw is None or not raw.strip():
        return 1.0  # the specification's default
    try:
        ratio = float(raw)
    except ValueError:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG={raw!r} is not a number between 0 and 1") from None
    if not 0.0 <= ratio <= 1.0:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG={raw!r} is not a number between 0 and 1")
    return ratio


def _traces_url(env: Mapping[str, str]) -> str | None:
    if (env.get("OTEL_SDK_DISABLED") or "").strip().lower() == "true":
        return None
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "").strip()
    if protocol and protocol not in _HTTP_PROTOCOLS:
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: the gateway exports OTLP over HTTP; "
            "point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's OTLP/HTTP port (4318 by default)"
        )
    # As the specification says: the signal's own variable is the URL as it is, the generic
    # one is a base to which the signal's path is added.
    if url := (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or "").strip():
        return _checked(url, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if base := (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip():
        return _checked(base.rstrip("/") + TRACES_PATH, "OTEL_EXPORTER_OTLP_ENDPOINT")
    return None


def _checked(url: str, name: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TracingConfigError(f"{name}={url!r} is not an http:// or https:// URL")
    return url


@dataclass(frozen=True, slots=True)
class Collector:
    """The collector's address, for Envoy's cluster."""

    host: str
    port: int
    tls: bool
    path: str


def collector(traces_url: str) -> Collector:
    parts = urlsplit(traces_url)
    tls = parts.scheme == "https"
    return Collector(parts.hostname or "", parts.port or (443 if tls else 80), tls, parts.path or "/")
