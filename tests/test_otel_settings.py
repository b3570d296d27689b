"""Tracing's configuration from OpenTelemetry's standard variables (extproc/otel_settings.py),
and Envoy's tracer rendered from the same values (extproc/envoy_config.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from extproc import otel_settings
from extproc.envoy_config import render_bootstrap, render_bootstrap_yaml
from extproc.local.stack import envoy_binary
from extproc.otel_settings import TracingConfigError
from extproc.settings import load_settings

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}


def test_tracing_is_off_without_an_endpoint_and_when_the_sdk_is_disabled() -> None:
    assert not otel_settings.read({}).enabled
    assert not otel_settings.read({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}).enabled
    assert otel_settings.read({**ENDPOINT, "OTEL_SDK_DISABLED": "false"}).enabled


def test_the_generic_endpoint_gets_the_traces_path_and_the_signals_own_is_used_as_it_is() -> None:
    assert otel_settings.read(ENDPOINT).traces_url == "http://collector:4318/v1/traces"
    assert otel_settings.read({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}).traces_url == "http://c:4318/v1/traces"
    own = {**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://otlp.example/api/traces"}
    assert otel_settings.read(own).traces_url == "https://otlp.example/api/traces"


@pytest.mark.parametrize(
    ("sampler", "arg", "ratio", "parent_based"),
    [
        (None, None, 1.0, True),  # the specification's default: parentbased_always_on
        ("parentbased_traceidratio", "0.1", 0.1, True),
        ("traceidratio", "0.25", 0.25, False),
        ("parentbased_traceidratio", None, 1.0, True),
        ("always_off", None, 0.0, False),
    ],
)
def test_samplers(sampler: str | None, arg: str | None, ratio: float, parent_based: bool) -> None:
    env = dict(ENDPOINT)
    if sampler is not None:
        env["OTEL_TRACES_SAMPLER"] = sampler
    if arg is not None:
        env["OTEL_TRACES_SAMPLER_ARG"] = arg
    read = otel_settings.read(env)
    assert (read.ratio, read.parent_based) == (ratio, parent_based)
    assert read.envoy_sampling_percent == ratio * 100


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "ten"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(env: dict[str, str], named: str) -> None:
    with pytest.raises(TracingConfigError, match=named):
        otel_settings.read({**ENDPOINT, **env})


def _hcm(bootstrap: dict) -> dict:
    return bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def test_envoy_gets_no_tracer_while_tracing_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    bootstrap = render_bootstrap(load_settings())
    assert "tracing" not in _hcm(bootstrap)
    assert "opentelemetry_collector" not in {c["name"] for c in bootstrap["static_resources"]["clusters"]}


def test_envoys_tracer_follows_the_same_variables_and_validates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4318")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.1")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-gateway")
    settings = load_settings()
    tracing = _hcm(render_bootstrap(settings))["tracing"]
    assert tracing["random_sampling"] == {"value": 10.0}
    assert tracing["spawn_upstream_span"] is True  # one span per upstream attempt
    config = tracing["provider"]["typed_config"]
    assert config["service_name"] == "my-gateway"
    assert config["http_service"]["http_uri"]["uri"] == "http://otel-collector:4318/v1/traces"
    clusters = {c["name"]: c for c in render_bootstrap(settings)["static_resources"]["clusters"]}
    address = clusters["opentelemetry_collector"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert address["endpoint"]["address"]["socket_address"] == {"address": "otel-collector", "port_value": 4318}
    path = tmp_path / "envoy.yaml"
    path.write_text(render_bootstrap_yaml(settings))
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Deprecated field" not in result.stdout + result.stderr
    assert yaml.safe_load(path.read_text())
