"""The rendered Envoy bootstrap is accepted by the real Envoy binary."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from extproc.envoy_config import UPSTREAM_HEADER, render_bootstrap, render_bootstrap_yaml
from extproc.local.stack import envoy_binary
from extproc.settings import Settings, load_settings


def _validate(settings: Settings, tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_text(render_bootstrap_yaml(settings))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    # Deprecated fields are warnings today and errors in a later Envoy.
    assert "Deprecated field" not in result.stdout + result.stderr


def test_default_bootstrap_validates(tmp_path: Path) -> None:
    _validate(load_settings(), tmp_path)


def test_bootstrap_with_every_provider_and_proxy_hops_validates(tmp_path: Path) -> None:
    settings = load_settings(
        trusted_proxy_hops=2,
        listen_host="0.0.0.0",
        providers={"gigapotato": {"api_url": "https://giga.example.com:8443/v1"}, "mistral": {"api_url": "http://10.1.2.3:9000/v1"}},
    )
    _validate(settings, tmp_path)


def _clusters(settings: Settings) -> dict[str, dict]:
    return {c["name"]: c for c in render_bootstrap(settings)["static_resources"]["clusters"]}


def test_https_providers_get_tls_with_sni_and_certificate_validation() -> None:
    cluster = _clusters(load_settings())["provider_openrouter"]
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["sni"] == "openrouter.ai"
    validation = tls["common_tls_context"]["validation_context"]
    assert Path(validation["trusted_ca"]["filename"]).is_file()
    assert validation["match_typed_subject_alt_names"] == [{"san_type": "DNS", "matcher": {"exact": "openrouter.ai"}}]
    assert cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "openrouter.ai", "port_value": 443}
    }


def test_http_providers_are_reached_in_plain_text() -> None:
    settings = load_settings(providers={"openrouter": {"api_url": "http://127.0.0.1:9000/api/v1"}})
    cluster = _clusters(settings)["provider_openrouter"]
    assert "transport_socket" not in cluster
    assert cluster["type"] == "STATIC"


def test_unconfigured_providers_get_no_cluster() -> None:
    clusters = _clusters(load_settings())
    assert "provider_gigapotato" not in clusters  # contract 3.1: its URL has no default
    assert {"provider_openrouter", "provider_vercel", "provider_corethink"} <= set(clusters)


def test_routes_never_time_out_a_long_generation_at_envoys_15s_default() -> None:
    hcm = render_bootstrap(load_settings())["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    upstream_routes = [r for r in routes if "route" in r]
    assert upstream_routes
    for route in upstream_routes:
        assert route["route"]["timeout"] == "600s"
        assert route["match"]["headers"][0]["name"] == UPSTREAM_HEADER
        assert UPSTREAM_HEADER in route["request_headers_to_remove"]


@pytest.mark.parametrize("hops", [0, 3])
def test_trusted_hops_are_configurable(hops: int) -> None:
    text = render_bootstrap_yaml(load_settings(trusted_proxy_hops=hops))
    hcm = yaml.safe_load(text)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["xff_num_trusted_hops"] == hops
    assert hcm["use_remote_address"] is True


def test_the_example_in_envoy_folder_is_the_current_default_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("LLM_GATEWAY_", "OTEL_")) or name.endswith(("_API_URL", "_API_KEY")):
            monkeypatch.delenv(name)
    example = Path(__file__).parent.parent / "envoy" / "envoy.example.yaml"
    rendered = render_bootstrap_yaml(load_settings(ca_bundle="/etc/ssl/certs/ca-certificates.crt"))
    assert example.read_text() == rendered, "regenerate with: LLM_GATEWAY_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt make envoy-config > envoy/envoy.example.yaml"


def test_envoy_closes_ext_proc_side_streams_gracefully_instead_of_resetting_them() -> None:
    # Envoy 1.40's guard (off by default) and its wait for the ext_proc's status (issue 27).
    layers = render_bootstrap(load_settings())["layered_runtime"]["layers"]
    values = {key: value for layer in layers for key, value in layer["static_layer"].items()}
    assert values["envoy.reloadable_features.ext_proc_graceful_grpc_close"] is True
    assert values["envoy.filters.http.ext_proc.remote_close_timeout_milliseconds"] == 1000
