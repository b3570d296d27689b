"""The gateway behind an Envoy it did not render: `envoy/bring-your-own.yaml`.

Three kinds of checks on the hand-written bootstrap:
- the real Envoy binary accepts the file as shipped;
- every value it shares with the ext_proc agrees with the single source of truth
  (`extproc/settings.py` defaults, `extproc/envoy_config.py` names) and its error bodies are the
  contract's (tests/bodies.py), so the file cannot drift silently;
- the contract's core scenarios run through it: a second Envoy started from the file beside a
  normal test stack (ext_proc, Postgres, Redis, mock upstream, ledger writer), with only the
  substitutions `envoy/CONTRACT.md` lists (ports, the ext_proc's address, providers -> mock);
  and once more with the ext_proc filter named as Envoy Gateway names it.

Each scenario is its own client: Linux routes all of 127.0.0.0/8 to loopback, so a client that
binds a fresh 127.x address is a new client IP to Envoy's `source.address`, with the bootstrap's
own `xff_num_trusted_hops: 0`.
"""

from __future__ import annotations

import copy
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from extproc.envoy_config import (
    CUSTOM_HOST_HEADER,
    CUSTOM_HTTP_CLUSTER,
    CUSTOM_HTTPS_CLUSTER,
    ENVOY_REQUEST_HEADERS,
    EXTPROC_FILTER,
    IMMEDIATE_DETAILS,
    UPSTREAM_HEADER,
    render_bootstrap,
)
from extproc.local.mock_upstream import MockOptions, expected_usage
from extproc.local.processes import Child, free_port, wait_until
from extproc.local.stack import envoy_binary
from extproc.money import usd_to_microdollars
from extproc.settings import Settings, load_settings
from tests.bodies import APPENDIX_A, FREE_LIMIT, GATEWAY_REPLIES
from tests.conftest import Gateway, running_stack
from tests.test_accounting_e2e import db, wait_for_rows

BOOTSTRAP = Path(__file__).parent.parent / "envoy" / "bring-your-own.yaml"
PAID = "openai/gpt-4o-mini"  # served by OpenRouter; no rule of 5.2 touches it
KILO_FREE = "minimax/minimax-m2.5:free"
MESSAGES = [{"role": "user", "content": "hello from a client"}]
FREE_MODEL_LIMIT = 3  # per IP and hour, small so the 429 is reached in a few requests

PAID_MODEL_AUTH_REQUIRED = APPENDIX_A["PAID_MODEL_AUTH_REQUIRED"].body
FIRST_TOPUP_402 = {
    "error": {
        "title": "Paid Model - Credits Required",
        "message": "This is a paid model. To use paid models, you need to add credits. Get $20 free on your first topup!",
        "balance": 0,
        "buyCreditsUrl": "https://app.kilo.ai/profile",
    }
}
PAYLOAD_TOO_LARGE = GATEWAY_REPLIES["PAYLOAD_TOO_LARGE"].body


def bootstrap() -> dict[str, Any]:
    return yaml.safe_load(BOOTSTRAP.read_text())


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    [listener] = config["static_resources"]["listeners"]
    [chain] = listener["filter_chains"]
    [manager] = chain["filters"]
    return manager["typed_config"]


def _http_filter(config: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [f["typed_config"] for f in _hcm(config)["http_filters"] if f["name"] == name]
    return found


def _clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}


def _routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    [host] = _hcm(config)["route_config"]["virtual_hosts"]
    return host["routes"]


def _endpoint(cluster: dict[str, Any]) -> dict[str, Any]:
    [group] = cluster["load_assignment"]["endpoints"]
    [endpoint] = group["lb_endpoints"]
    return endpoint["endpoint"]["address"]["socket_address"]


# --- the file as shipped ----------------------------------------------------------------------


def test_the_real_envoy_accepts_the_bootstrap_as_shipped() -> None:
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(BOOTSTRAP)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    assert "Deprecated field" not in result.stdout + result.stderr


@pytest.fixture
def defaults(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings an operator gets with no configuration: what the file must agree with."""
    for name in list(os.environ):
        if name.startswith("LLM_GATEWAY_") or name.endswith(("_API_URL", "_API_KEY")):
            monkeypatch.delenv(name)
    return load_settings()


def test_the_ext_proc_filter_is_configured_as_the_ext_proc_expects(defaults: Settings) -> None:
    config = bootstrap()
    names = [f["name"] for f in _hcm(config)["http_filters"]]
    # The body is whole before the ext_proc sees it, and the router comes last.
    assert names.index("envoy.filters.http.buffer") < names.index(EXTPROC_FILTER) < names.index("envoy.filters.http.router")
    extproc = _http_filter(config, EXTPROC_FILTER)
    # The same filter settings as the gateway renders for itself: processing modes, the
    # per-response override, fail-closed, message timeout, attributes, mutation rules.
    rendered = _http_filter(render_bootstrap(defaults), EXTPROC_FILTER)
    assert extproc == {**rendered, "grpc_service": extproc["grpc_service"]}
    assert extproc["processing_mode"]["response_body_mode"] == "STREAMED"
    assert extproc["message_timeout"] == f"{defaults.extproc_message_timeout_ms / 1000:g}s"
    assert extproc["request_attributes"] == ["source.address"]
    assert extproc["grpc_service"] == {"envoy_grpc": {"cluster_name": "extproc"}}  # no timeout


def test_side_streams_end_gracefully_as_in_the_rendered_bootstrap(defaults: Settings) -> None:
    # Issue 27: a reset side stream leaks native memory in the ext_proc (grpc/grpc#43360).
    assert bootstrap()["layered_runtime"] == render_bootstrap(defaults)["layered_runtime"]


def test_the_ext_proc_cluster_is_its_port_over_http2_with_raised_limits(defaults: Settings) -> None:
    config = bootstrap()
    cluster = _clusters(config)["extproc"]
    rendered = _clusters(render_bootstrap(defaults))["extproc"]
    assert _endpoint(cluster)["port_value"] == defaults.extproc_port
    # Every in-flight request holds one stream for its whole life: Envoy's default of 1,024
    # would answer the 1,025th concurrent request with a 500 (`overflow`).
    assert cluster["circuit_breakers"] == rendered["circuit_breakers"]
    [thresholds] = cluster["circuit_breakers"]["thresholds"]
    assert min(thresholds[k] for k in ("max_connections", "max_pending_requests", "max_requests")) >= 100_000
    assert cluster["typed_extension_protocol_options"] == rendered["typed_extension_protocol_options"]
    # A dead replica leaves the rotation at its first refused connection.
    assert cluster["outlier_detection"] == rendered["outlier_detection"]


def test_the_routing_headers_are_stripped_before_routing_and_removed_on_the_way_out(defaults: Settings) -> None:
    config = bootstrap()
    rendered = render_bootstrap(defaults)
    [strip] = _hcm(config)["early_header_mutation_extensions"]
    assert [m["remove"] for m in strip["typed_config"]["mutations"]] == [UPSTREAM_HEADER, CUSTOM_HOST_HEADER]
    assert _hcm(config)["early_header_mutation_extensions"] == _hcm(rendered)["early_header_mutation_extensions"]
    mine = {route["name"]: route for route in _routes(config) if "route" in route}
    for route in _routes(rendered):
        if "route" in route:
            assert mine[route["name"]]["request_headers_to_remove"] == route["request_headers_to_remove"]
            assert {UPSTREAM_HEADER, *ENVOY_REQUEST_HEADERS} <= set(route["request_headers_to_remove"])


def test_every_cluster_the_ext_proc_chooses_has_a_route_and_reaches_its_provider(defaults: Settings) -> None:
    config = bootstrap()
    clusters = _clusters(config)
    routed = {
        route["match"]["headers"][0]["string_match"]["exact"]: route["route"]
        for route in _routes(config)
        if route["match"].get("headers", [{}])[0].get("name") == UPSTREAM_HEADER
    }
    chosen = {p.cluster: p for p in defaults.routable_providers.values()}
    assert set(routed) == {*chosen, CUSTOM_HTTPS_CLUSTER, CUSTOM_HTTP_CLUSTER}
    for name, route in routed.items():
        assert route["cluster"] == name and name in clusters
        assert route["timeout"] == f"{defaults.upstream_timeout_seconds}s"
        assert route["idle_timeout"] == f"{defaults.stream_idle_timeout_seconds}s"
    for name, provider in chosen.items():
        cluster = clusters[name]
        assert routed[name]["host_rewrite_literal"] == provider.authority
        assert _endpoint(cluster) == {"address": provider.host, "port_value": provider.port}
        assert provider.tls
        tls = cluster["transport_socket"]["typed_config"]
        validation = tls["common_tls_context"]["validation_context"]
        assert tls["sni"] == provider.host
        assert validation["match_typed_subject_alt_names"] == [{"san_type": "DNS", "matcher": {"exact": provider.host}}]
        assert Path(validation["trusted_ca"]["filename"]).is_file()


def test_upstream_retries_replay_buffers_and_pinned_custom_llm_addresses_are_the_rendered_ones(
    defaults: Settings,
) -> None:
    """Issue 25: each upstream route retries as the rendered bootstrap does, with a replay copy
    as large as the largest body; custom LLMs connect to the ext_proc's checked address."""
    config, rendered = bootstrap(), render_bootstrap(defaults)
    mine = {route["name"]: route for route in _routes(config) if "route" in route}
    theirs = [route for route in _routes(rendered) if "route" in route]
    assert theirs
    for route in theirs:
        assert mine[route["name"]]["route"]["retry_policy"] == route["route"]["retry_policy"]
        assert mine[route["name"]]["request_body_buffer_limit"] == defaults.envoy_request_buffer_bytes
        assert mine[route["name"]]["route"].get("host_rewrite_header") == route["route"].get("host_rewrite_header")
    assert theirs[0]["route"]["retry_policy"]["retriable_status_codes"] == [502, 503]
    assert _hcm(config)["http_filters"][-1] == _hcm(rendered)["http_filters"][-1]  # router + upstream log
    clusters, rendered_clusters = _clusters(config), _clusters(rendered)
    for name in (CUSTOM_HTTPS_CLUSTER, CUSTOM_HTTP_CLUSTER):
        for key in ("type", "lb_policy", "original_dst_lb_config", "typed_extension_protocol_options", "circuit_breakers"):
            assert clusters[name][key] == rendered_clusters[name][key], (name, key)
    for provider in defaults.routable_providers.values():
        assert clusters[provider.cluster]["circuit_breakers"] == rendered_clusters[provider.cluster]["circuit_breakers"]


def test_the_body_limit_and_error_bodies_are_the_gateways(defaults: Settings) -> None:
    config = bootstrap()
    assert _http_filter(config, "envoy.filters.http.buffer")["max_request_bytes"] == defaults.envoy_request_buffer_bytes
    mappers = _hcm(config)["local_reply_config"]["mappers"]
    replies = {}
    for mapper in mappers:
        status_filter, details_filter = mapper["filter"]["and_filter"]["filters"]
        status = status_filter["status_code_filter"]["comparison"]["value"]["default_value"]
        replies[status] = mapper.get("status_code", status), orjson.loads(mapper["body"]["inline_string"])
        expression = details_filter["extension_filter"]["typed_config"]["expression"]
        # The ext_proc's own refusals (details prefixed so) keep their bodies.
        assert expression == f"!response.code_details.startsWith('{IMMEDIATE_DETAILS}')"
        assert mapper["body_format_override"]["content_type"] == "application/json"
    envoy_replies = (GATEWAY_REPLIES["PAYLOAD_TOO_LARGE"], APPENDIX_A["INTERNAL_ERROR"], APPENDIX_A["SERVICE_UNAVAILABLE"],
                     GATEWAY_REPLIES["GATEWAY_TIMEOUT"])
    expected = {reply.status: (reply.status, reply.body) for reply in envoy_replies}
    # Envoy's 502 (a provider gone before its headers) is answered as the contract's 503.
    expected[502] = (APPENDIX_A["SERVICE_UNAVAILABLE"].status, APPENDIX_A["SERVICE_UNAVAILABLE"].body)
    assert replies == expected
    direct = {route["name"]: route["direct_response"] for route in _routes(config) if "direct_response" in route}
    assert {(r["status"], r["body"]["inline_string"]) for r in direct.values()} == {
        (reply.status, orjson.dumps(reply.body).decode())
        for reply in (APPENDIX_A[name] for name in ("INTERNAL_ERROR", "INVALID_PATH", "NOT_FOUND"))
    }


# --- the contract through this Envoy ----------------------------------------------------------


def for_test(config: dict[str, Any], *, listen: int, admin: int, extproc: int, mock: int) -> dict[str, Any]:
    """The only changes the tests make: ports, the ext_proc's address, and every provider
    cluster pointed at the mock upstream in plain HTTP/1.1 (no TLS)."""
    config = copy.deepcopy(config)
    config["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": admin}
    [listener] = config["static_resources"]["listeners"]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": listen}
    for name, cluster in _clusters(config).items():
        if name == "extproc":
            _endpoint(cluster).update(address="127.0.0.1", port_value=extproc)
        elif name.startswith("provider_"):
            _endpoint(cluster).update(address="127.0.0.1", port_value=mock)
            del cluster["transport_socket"]
            options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
            cluster["typed_extension_protocol_options"] = {
                options: {"@type": f"type.googleapis.com/{options}", "explicit_http_config": {"http_protocol_options": {}}}
            }
    return config


def renamed_ext_proc_filter(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The bootstrap with the ext_proc filter under another name, as Envoy Gateway names it."""
    config = copy.deepcopy(config)
    for http_filter in _hcm(config)["http_filters"]:
        if http_filter["name"] == EXTPROC_FILTER:
            http_filter["name"] = name
    for route in _routes(config):
        per_filter = route.get("typed_per_filter_config", {})
        if EXTPROC_FILTER in per_filter:  # shared by several routes (a YAML alias): once
            per_filter[name] = per_filter.pop(EXTPROC_FILTER)
    return config


@dataclass
class ByoEnvoy:
    stack: Gateway
    url: str

    @property
    def chat_url(self) -> str:
        return f"{self.url}/api/gateway/chat/completions"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_stack(tmp_path_factory.mktemp("stack"), LLM_GATEWAY_FREE_MODEL_LIMIT=str(FREE_MODEL_LIMIT)) as gateway:
        yield gateway


@contextmanager
def envoy_from(config: dict[str, Any], stack: Gateway, directory: Path) -> Iterator[ByoEnvoy]:
    """Envoy started from `config` (with the test substitutions) in front of `stack`."""
    listen, admin = free_port(), free_port()
    path = directory / "envoy.yaml"
    path.write_text(
        yaml.safe_dump(for_test(config, listen=listen, admin=admin, extproc=stack.ports["extproc"], mock=stack.ports["mock"]))
    )
    envoy = Child.start(
        "byo-envoy",
        [envoy_binary(), "-c", str(path), "--base-id", str(admin), "--log-level", "warn"],
        log=directory / "envoy.log",
    )
    try:
        wait_until("byo envoy", lambda: _ready(admin), envoy)
        yield ByoEnvoy(stack, f"http://127.0.0.1:{listen}")
    finally:
        envoy.stop()


@pytest.fixture(scope="module")
def byo(stack: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ByoEnvoy]:
    with envoy_from(bootstrap(), stack, tmp_path_factory.mktemp("byo")) as envoy:
        yield envoy


def _ready(admin: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as response:
        return response.status == 200


_addresses = iter(range(2, 60_000))


def new_client() -> tuple[httpx.Client, str]:
    """A client on a loopback address of its own: a new client IP for Envoy and its limits."""
    n = next(_addresses)
    address = f"127.0.{n // 250}.{n % 250 + 2}"
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30), address


def chat(byo: ByoEnvoy, body: dict[str, Any], token: str | None = None, client: httpx.Client | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if client is None:
        with new_client()[0] as own:
            return own.post(byo.chat_url, json={"messages": MESSAGES, **body}, headers=headers)
    return client.post(byo.chat_url, json={"messages": MESSAGES, **body}, headers=headers)


def _events(body: bytes) -> list[bytes]:
    return [event for event in body.split(b"\n\n") if event]


def test_a_paid_stream_passes_through_and_is_charged_once(byo: ByoEnvoy) -> None:
    stack = byo.stack
    user = stack.new_user(credits_usd="10")
    stack.clear_upstream_requests()
    body = {"model": PAID, "stream": True}
    client, _ = new_client()
    # A client naming a cluster itself is ignored: the ext_proc's choice (OpenRouter) wins.
    response = client.post(
        byo.chat_url,
        json={"messages": MESSAGES, **body},
        headers={
            "authorization": f"Bearer {user['token']}",
            UPSTREAM_HEADER: "provider_vercel",
            CUSTOM_HOST_HEADER: "evil.example",
            "x-client-secret": "leak-me",
            "x-envoy-client-header": "leak-me",
        },
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    [received] = stack.upstream_requests()
    assert received["path"] == "/openrouter/api/v1/chat/completions"
    # Byte for byte what the provider sent, and the provider saw only the gateway's headers.
    assert response.content == received["response"].encode()
    assert _events(response.content)[-1] == b"data: [DONE]"
    # The shipped file traces (envoy/CONTRACT.md 10a): Envoy's tracer adds its own W3C context
    # for the attempt's span, the only headers beside the contract's (2.15).
    assert set(received["headers"]) == {
        "host", "authorization", "http-referer", "x-title", "content-type", "content-length", "traceparent", "tracestate"
    }
    assert received["headers"]["authorization"] == "Bearer mock-openrouter-key"
    assert received["headers"]["host"] == "openrouter.ai"

    message_id = next(orjson.loads(e[6:])["id"] for e in _events(response.content) if e.startswith(b"data: {"))
    [row] = wait_for_rows(stack, [message_id])
    cost = usd_to_microdollars(expected_usage(received["body"], MockOptions())["cost"])
    assert row["cost"] == cost > 0
    assert row["kilo_user_id"] == user["id"]
    used = db(stack, lambda c: c.fetchval("SELECT microdollars_used FROM kilocode_users WHERE id = $1", user["id"]))
    assert used == cost


def test_a_free_model_is_served_to_an_anonymous_client_and_recorded_under_its_address(byo: ByoEnvoy) -> None:
    client, address = new_client()
    response = chat(byo, {"model": KILO_FREE}, client=client)
    assert response.status_code == 200
    assert response.json()["model"] == KILO_FREE
    [row] = wait_for_rows(byo.stack, [response.json()["id"]])
    # The address Envoy derived (attribute `source.address`), not one a client could claim.
    assert row["kilo_user_id"] == f"anon:{address}"
    assert row["cost"] == 0 and row["market_cost"] > 0


def test_a_free_models_stream_is_rewritten(byo: ByoEnvoy) -> None:
    response = chat(byo, {"model": KILO_FREE, "stream": True, "mock": {"keepalives": 2, "reasoning": "deep thought"}})
    assert response.status_code == 200
    events = _events(response.content)
    assert events[:2] == [b": KILO PROCESSING", b": KILO PROCESSING"]
    assert events[-1] == b"data: [DONE]" and response.content.count(b"[DONE]") == 1
    chunks = [orjson.loads(event[6:]) for event in events[2:-1]]
    assert chunks and all(chunk["model"] == KILO_FREE for chunk in chunks)
    assert not {"cost", "cost_details", "is_byok"} & set(chunks[-1]["usage"])


def test_an_anonymous_paid_request_gets_401(byo: ByoEnvoy) -> None:
    byo.stack.clear_upstream_requests()
    response = chat(byo, {"model": PAID})
    assert response.status_code == 401
    assert response.json() == PAID_MODEL_AUTH_REQUIRED
    assert response.headers["content-type"] == "application/json"
    assert byo.stack.upstream_requests() == []


def test_a_user_without_credits_gets_402(byo: ByoEnvoy) -> None:
    user = byo.stack.new_user(credits_usd="0")
    byo.stack.clear_upstream_requests()
    response = chat(byo, {"model": PAID}, token=user["token"])
    assert response.status_code == 402
    assert response.json() == FIRST_TOPUP_402
    assert byo.stack.upstream_requests() == []


def test_the_free_model_limit_per_client_address_gives_429(byo: ByoEnvoy) -> None:
    user = byo.stack.new_user(credits_usd="10")
    client, _ = new_client()
    statuses = [chat(byo, {"model": KILO_FREE}, user["token"], client).status_code for _ in range(FREE_MODEL_LIMIT)]
    assert statuses == [200] * FREE_MODEL_LIMIT
    refused = chat(byo, {"model": KILO_FREE}, user["token"], client)
    assert refused.status_code == 429
    assert refused.json() == FREE_LIMIT
    # Another address is a fresh client.
    assert chat(byo, {"model": KILO_FREE}, user["token"]).status_code == 200


def test_envoys_own_refusals_carry_json_bodies(byo: ByoEnvoy) -> None:
    client, _ = new_client()
    too_large = client.post(byo.chat_url, content=b"x" * (8 * 1024 * 1024 + 1), headers={"content-type": "application/json"})
    assert too_large.status_code == 413
    assert too_large.json() == PAYLOAD_TOO_LARGE
    # A client naming a cluster on a path that is not the chat path still gets the 404.
    not_found = client.post(f"{byo.url}/anything", json={}, headers={UPSTREAM_HEADER: "provider_openrouter"})
    assert not_found.status_code == 404
    assert not_found.json() == APPENDIX_A["NOT_FOUND"].body
    invalid = client.get(f"{byo.url}/api/gateway/models")
    assert invalid.status_code == 400
    assert invalid.json() == APPENDIX_A["INVALID_PATH"].body


def test_the_client_address_arrives_whatever_the_ext_proc_filter_is_named(
    stack: Gateway, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Envoy Gateway names the filter after its policy; the attributes still arrive under the
    # extension's own name, which is where the ext_proc reads them.
    config = renamed_ext_proc_filter(bootstrap(), f"{EXTPROC_FILTER}/envoyextensionpolicy/llm/gateway/extproc/0")
    with envoy_from(config, stack, tmp_path_factory.mktemp("renamed")) as envoy:
        client, address = new_client()
        response = chat(envoy, {"model": KILO_FREE}, client=client)
        assert response.status_code == 200
        [row] = wait_for_rows(stack, [response.json()["id"]])
        assert row["kilo_user_id"] == f"anon:{address}"
        # The per-route switch follows the name: other paths still skip the ext_proc.
        assert client.get(f"{envoy.url}/anything").json() == {"error": "Not found"}


def test_the_tracer_is_what_the_gateway_renders_from_the_otel_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4318",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    rendered = render_bootstrap(load_settings())
    config = bootstrap()
    assert _hcm(config)["tracing"] == _hcm(rendered)["tracing"]
    assert _clusters(config)["opentelemetry_collector"] == _clusters(rendered)["opentelemetry_collector"]
