"""Deployment files (deploy/, docker-compose.yml): each validates against the schema of what
reads it, and the values the ext_proc depends on agree with the project's single source of
truth, `extproc/settings.py` defaults and the Envoy configuration `extproc/envoy_config.py`
renders from them.

Schemas: Kubernetes kinds with `kubernetes-validate` (it ships Kubernetes' OpenAPI schemas);
Envoy Gateway and Gateway API kinds against their CRDs' openAPIV3Schema, and Compose against
the Compose Specification, both from `../shared/schemas/` beside the repository. Kinds whose
schema is not shipped (ServiceMonitor, Istio's EnvoyFilter, Envoy Gateway's HTTPRouteFilter)
get explicit checks of the fields the deployment relies on.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2  # noqa: F401 (registers the type for Any)
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2  # noqa: F401 (registers the type for Any)
from google.protobuf import any_pb2, json_format

from extproc.cli import build_parser
from extproc.envoy_config import (
    CHAT_PATHS,
    CUSTOM_HOST_HEADER,
    CUSTOM_HTTP_CLUSTER,
    CUSTOM_HTTPS_CLUSTER,
    EXTPROC_CLUSTER,
    EXTPROC_FILTER,
    UPSTREAM_HEADER,
    render_bootstrap,
)
from extproc.settings import DEFAULT_PROVIDERS, Settings, load_settings, provider_env_prefix

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SCHEMAS = REPO.parent / "shared" / "schemas"
COMPOSE_FILE = REPO / "docker-compose.yml"
# The oldest Kubernetes the manifests are meant for, and the newest kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.33", kubernetes_validate.latest_version())
# Envoy's default circuit-breaker threshold: the 1,025th concurrent request gets 500 overflow.
ENVOY_DEFAULT_MAX_REQUESTS = 1024
# Time a process needs beyond its configured drains (closing pools, flushing logs).
STOP_MARGIN_SECONDS = 5
# Kinds with no shipped schema; each has its own test below.
EXPLICITLY_CHECKED = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("networking.istio.io/v1alpha3", "EnvoyFilter"),
    ("gateway.envoyproxy.io/v1alpha1", "HTTPRouteFilter"),
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyProxy"),
    ("telemetry.istio.io/v1", "Telemetry"),
}
# Commands of the local stack (extproc/local/): no deployed service may run them.
LOCAL_STACK_COMMANDS = ("run", "mock-upstream")
MOCK_SERVICE = "mock-upstream"
DEV_LABEL = "llm-gateway.dev"


# --- reading the files -----------------------------------------------------------------------


def _manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


# libyaml's loader when PyYAML has it: the Gateway API CRDs are 1.4 MB of YAML.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=_LOADER) if doc is not None]


def _all_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in _manifest_files() for doc in _documents(path)]


def _doc_id(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.relative_to(DEPLOY)}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


DOCUMENTS = _all_documents()


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in DOCUMENTS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _port(container: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


# Written by hand: two small formats (Gateway API durations, Kubernetes quantities) that no
# dependency of the project parses.
_DURATION_PART = re.compile(r"(\d+)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_BINARY_SUFFIX = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def _seconds(duration: str) -> float:
    """Seconds in "5s", "1m30s", "250ms" (Gateway API and Envoy Gateway durations, Envoy's "600s")."""
    parts = _DURATION_PART.findall(duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


def _bytes(quantity: str | int) -> int:
    if isinstance(quantity, int):
        return quantity
    for suffix, factor in _BINARY_SUFFIX.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


# --- the source of truth ---------------------------------------------------------------------


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The defaults, whatever the environment of the test run holds."""
    fixed = {"DATABASE_URL", "REDIS_URL", "NEXTAUTH_SECRET", "BLACKLIST_DOMAINS", "BYOK_ENCRYPTION_KEY"}
    fixed |= {f"{provider_env_prefix(p)}_{s}" for p in DEFAULT_PROVIDERS for s in ("API_URL", "API_KEY")}
    for name in list(os.environ):
        if name.startswith("LLM_GATEWAY_") or name in fixed:
            monkeypatch.delenv(name)
    return load_settings()


def _hcm(settings: Settings) -> dict[str, Any]:
    listener = render_bootstrap(settings)["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def _http_filter(settings: Settings, name: str) -> dict[str, Any]:
    return next(f["typed_config"] for f in _hcm(settings)["http_filters"] if f["name"] == name)


def _rendered_routes(settings: Settings) -> dict[str, dict[str, Any]]:
    """Routes that send upstream, by the routing header's value that selects them."""
    routes = _hcm(settings)["route_config"]["virtual_hosts"][0]["routes"]
    return {r["match"]["headers"][0]["string_match"]["exact"]: r for r in routes if "route" in r}


def _rendered_clusters(settings: Settings) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in render_bootstrap(settings)["static_resources"]["clusters"]}


def _thresholds(cluster: dict[str, Any]) -> dict[str, Any]:
    (threshold,) = cluster["circuit_breakers"]["thresholds"]
    return threshold


def _envoy_gateway_breaker(threshold: dict[str, Any]) -> dict[str, Any]:
    """Envoy's circuit-breaker threshold in Envoy Gateway's field names."""
    breaker: dict[str, Any] = {
        "maxConnections": threshold["max_connections"],
        "maxPendingRequests": threshold["max_pending_requests"],
        "maxParallelRequests": threshold["max_requests"],
        "maxParallelRetries": threshold["max_retries"],
    }
    if "retry_budget" in threshold:  # the provider clusters (issue 25)
        budget = threshold["retry_budget"]
        breaker["retryBudget"] = {
            "percent": {"numerator": round(budget["budget_percent"]["value"]), "denominator": 100},
            "minRetryConcurrency": budget["min_retry_concurrency"],
        }
    return breaker


# --- schemas -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schemas_dir() -> Path:
    if not SCHEMAS.is_dir():
        pytest.fail(
            f"deployment schemas not found at {SCHEMAS}: the shared/ folder must sit beside the "
            "repository (shared/schemas/envoy-gateway-v1.9.0/, shared/schemas/compose-spec/)"
        )
    return SCHEMAS


def _strict(schema: Any) -> Any:
    """Rejects unknown fields, as `kubectl apply` does by default (server-side field validation
    Strict): an object schema that lists its properties and keeps no unknown fields is closed."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    return closed


@pytest.fixture(scope="module")
def crd_schemas(schemas_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema, for every CRD shipped for Envoy Gateway v1.9.0."""
    folder = schemas_dir / "envoy-gateway-v1.9.0"
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(folder.glob("*.yaml")):
        for crd in _documents(path):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                found[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = _strict(
                    version["schema"]["openAPIV3Schema"]
                )
    assert found, f"no CustomResourceDefinition in {folder}"
    return found


@pytest.mark.parametrize("item", DOCUMENTS, ids=[_doc_id(i) for i in DOCUMENTS])
def test_manifest_validates_against_its_schema(
    item: tuple[Path, dict[str, Any]], crd_schemas: dict[tuple[str, str], dict[str, Any]]
) -> None:
    _, doc = item
    key = (doc["apiVersion"], doc["kind"])
    if key in EXPLICITLY_CHECKED:
        return  # no shipped schema; see the kind's own test
    if key in crd_schemas:
        jsonschema.Draft4Validator(crd_schemas[key]).validate(doc)
        return
    for version in KUBERNETES_VERSIONS:
        # SchemaNotFoundError here means a kind nobody validates: give it a schema or a test.
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_an_unknown_field(crd_schemas: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The strictness above is real: a misspelt field of a policy fails, as kubectl would."""
    policy = _one("EnvoyExtensionPolicy")
    misspelt = {**policy, "spec": {**policy["spec"], "extProcs": policy["spec"]["extProc"]}}
    with pytest.raises(jsonschema.ValidationError, match="extProcs"):
        jsonschema.Draft4Validator(crd_schemas[(policy["apiVersion"], policy["kind"])]).validate(misspelt)


def test_every_manifest_is_part_of_a_kustomization_or_the_istio_example() -> None:
    listed: set[Path] = set()
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kustomization.read_text())["resources"]:
            target = (kustomization.parent / resource).resolve()
            assert target.exists(), f"{kustomization}: missing resource {resource}"
            if target.is_file():
                listed.add(target)
    unlisted = {p for p in _manifest_files() if p.resolve() not in listed and p.parent.name != "istio"}
    assert not unlisted, f"manifests no kustomization applies: {sorted(map(str, unlisted))}"


# --- Kubernetes: the two processes -------------------------------------------------------------


def test_processes_run_the_runtime_commands_with_the_configured_addresses(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, command in (("llm-gateway-extproc", "serve"), ("llm-gateway-ledger-writer", "ledger-writer")):
        container = _container(_one("Deployment", name))
        assert container["args"][:2] == ["llm-gateway", command]
        assert build_parser().parse_args(container["args"][1:]).command == command
        assert {"name": "llm-gateway-config"} in [e.get("configMapRef") for e in container["envFrom"]]
    # The ConfigMap's variables, read by the real settings: they must make the processes
    # reachable from Envoy's pod, and leave the ports Envoy is configured for unchanged.
    for key, value in _one("ConfigMap", "llm-gateway-config")["data"].items():
        monkeypatch.setenv(key, value)
    configured = load_settings()
    assert configured.extproc_host == "0.0.0.0"
    assert configured.metrics_host == "0.0.0.0"
    assert (configured.extproc_port, configured.metrics_port, configured.ledger_metrics_port) == (
        settings.extproc_port,
        settings.metrics_port,
        settings.ledger_metrics_port,
    )


def test_extproc_ports_probes_and_service(settings: Settings) -> None:
    deployment = _one("Deployment", "llm-gateway-extproc")
    container = _container(deployment)
    assert _port(container, "grpc") == settings.extproc_port
    assert _port(container, "metrics") == settings.metrics_port
    # grpc.health.v1 on the ext_proc port: NOT_SERVING from SIGTERM on takes the pod out.
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": settings.extproc_port}, probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == settings.metrics_port
    ports = {p["name"]: p for p in _one("Service", "llm-gateway-extproc")["spec"]["ports"]}
    assert ports["grpc"]["port"] == settings.extproc_port and ports["grpc"]["targetPort"] == "grpc"
    # Envoy speaks gRPC to the ext_proc over HTTP/2 (the rendered cluster's http2 options).
    assert "http2_protocol_options" in str(_rendered_clusters(settings)[EXTPROC_CLUSTER])
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert ports["metrics"]["port"] == settings.metrics_port


def test_ledger_writer_ports_probes_and_service(settings: Settings) -> None:
    deployment = _one("Deployment", "llm-gateway-ledger-writer")
    container = _container(deployment)
    assert _port(container, "metrics") == settings.ledger_metrics_port
    # Its one HTTP endpoint is the metrics server (no gRPC port).
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == settings.ledger_metrics_port
    (port,) = _one("Service", "llm-gateway-ledger-writer")["spec"]["ports"]
    assert (port["name"], port["port"]) == ("metrics", settings.ledger_metrics_port)


def test_grace_periods_cover_the_configured_drains(settings: Settings) -> None:
    extproc = _one("Deployment", "llm-gateway-extproc")["spec"]["template"]["spec"]
    pre_stop = extproc["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = (pre_stop + settings.extproc_stop_delay_seconds + settings.extproc_drain_seconds
              + settings.accounting_drain_seconds + STOP_MARGIN_SECONDS)
    assert extproc["terminationGracePeriodSeconds"] >= needed
    writer = _one("Deployment", "llm-gateway-ledger-writer")["spec"]["template"]["spec"]
    assert writer["terminationGracePeriodSeconds"] >= settings.accounting_drain_seconds + STOP_MARGIN_SECONDS


def _secret_names() -> set[str]:
    """The fixed names whose values are secrets (SecretStr settings, provider keys)."""
    names = {
        field.validation_alias
        for field in Settings.model_fields.values()
        if isinstance(field.validation_alias, str) and "SecretStr" in str(field.annotation)
    }
    return names | {f"{provider_env_prefix(p)}_API_KEY" for p in DEFAULT_PROVIDERS}


def test_secrets_come_by_reference_only() -> None:
    secret_names = _secret_names()
    assert {"DATABASE_URL", "REDIS_URL", "NEXTAUTH_SECRET", "OPENROUTER_API_KEY"} <= secret_names
    assert not [d for _, d in DOCUMENTS if d["kind"] == "Secret"], "a Secret with values in the repository"
    assert not secret_names & set(_one("ConfigMap", "llm-gateway-config")["data"])
    for name in ("llm-gateway-extproc", "llm-gateway-ledger-writer"):
        container = _container(_one("Deployment", name))
        assert {"name": "llm-gateway-secrets"} in [e.get("secretRef") for e in container["envFrom"]]
        for variable in container.get("env", []):
            assert variable["name"] not in secret_names or "valueFrom" in variable, variable["name"]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_disruption_budgets_and_autoscaler_target_the_processes() -> None:
    for name in ("llm-gateway-extproc", "llm-gateway-ledger-writer"):
        pod_labels = _one("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        budget = _one("PodDisruptionBudget", name)["spec"]
        assert _selects(budget["selector"]["matchLabels"], pod_labels)
        assert budget["minAvailable"] >= 1
    autoscaler = _one("HorizontalPodAutoscaler", "llm-gateway-extproc")["spec"]
    assert autoscaler["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "llm-gateway-extproc",
    }
    (metric,) = autoscaler["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    # Utilization is relative to the request: without one the HPA never scales.
    assert "cpu" in _container(_one("Deployment", "llm-gateway-extproc"))["resources"]["requests"]


def test_service_monitor_scrapes_both_metrics_ports(settings: Settings) -> None:
    monitor = _one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    scraped = {
        port["port"]
        for _, service in DOCUMENTS
        if service["kind"] == "Service" and _selects(selector, service["metadata"].get("labels", {}))
        for port in service["spec"]["ports"]
        if port["name"] == endpoint["port"]
    }
    assert scraped == {settings.metrics_port, settings.ledger_metrics_port}


# --- Envoy Gateway -----------------------------------------------------------------------------


def _route_rules() -> list[dict[str, Any]]:
    return _one("HTTPRoute", "llm-gateway")["spec"]["rules"]


def _rule_for(decision: str) -> dict[str, Any]:
    (rule,) = [
        rule
        for rule in _route_rules()
        for match in rule["matches"]
        if {"name": UPSTREAM_HEADER, "value": decision} in match.get("headers", [])
    ]
    return rule


def _filter(rule: dict[str, Any], kind: str) -> dict[str, Any]:
    (found,) = [f for f in rule.get("filters", []) if f["type"] == kind]
    return found


def _targets_the_route(policy: dict[str, Any]) -> bool:
    return {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "llm-gateway"} in policy["spec"][
        "targetRefs"
    ]


def test_extension_policy_attaches_the_extproc_as_envoy_config_renders_it(settings: Settings) -> None:
    policy = _one("EnvoyExtensionPolicy")
    assert _targets_the_route(policy)
    (extproc,) = policy["spec"]["extProc"]
    rendered = _http_filter(settings, EXTPROC_FILTER)
    modes = rendered["processing_mode"]
    mode = extproc["processingMode"]
    # Envoy Gateway sends a direction's headers when the direction is present (SEND) and
    # never sends trailers (SKIP).
    assert (modes["request_header_mode"], modes["response_header_mode"]) == ("SEND", "SEND")
    assert (modes["request_trailer_mode"], modes["response_trailer_mode"]) == ("SKIP", "SKIP")
    assert mode["request"]["body"].upper() == modes["request_body_mode"] == "BUFFERED"
    assert mode["response"]["body"].upper() == modes["response_body_mode"]
    assert mode["allowModeOverride"] is rendered["allow_mode_override"] is True
    assert mode["request"]["attributes"] == rendered["request_attributes"] == ["source.address"]
    assert _seconds(extproc["messageTimeout"]) * 1000 == settings.extproc_message_timeout_ms
    assert _seconds(extproc["messageTimeout"]) == _seconds(rendered["message_timeout"])
    assert extproc["failOpen"] is rendered["failure_mode_allow"] is False
    (backend,) = extproc["backendRefs"]
    assert backend == {"name": "llm-gateway-extproc", "port": settings.extproc_port}
    assert _one("Service", backend["name"])  # the ext_proc's Service, in the same namespace


def test_extproc_cluster_holds_far_more_than_1024_streams(settings: Settings) -> None:
    (extproc,) = _one("EnvoyExtensionPolicy")["spec"]["extProc"]
    breaker = extproc["backendSettings"]["circuitBreaker"]
    assert breaker == _envoy_gateway_breaker(_thresholds(_rendered_clusters(settings)[EXTPROC_CLUSTER]))
    assert breaker["maxParallelRequests"] > ENVOY_DEFAULT_MAX_REQUESTS
    assert breaker["maxPendingRequests"] > ENVOY_DEFAULT_MAX_REQUESTS


def test_a_dead_extproc_replica_leaves_the_rotation_as_envoy_config_renders_it(settings: Settings) -> None:
    (extproc,) = _one("EnvoyExtensionPolicy")["spec"]["extProc"]
    passive = extproc["backendSettings"]["healthCheck"]["passive"]
    rendered = _rendered_clusters(settings)[EXTPROC_CLUSTER]["outlier_detection"]
    assert passive == {
        "splitExternalLocalOriginErrors": rendered["split_external_local_origin_errors"],
        "consecutiveLocalOriginFailures": rendered["consecutive_local_origin_failure"],
        "baseEjectionTime": rendered["base_ejection_time"],
        "maxEjectionPercent": rendered["max_ejection_percent"],
    }


def test_traffic_policy_sets_the_provider_limits_body_size_and_timeouts(settings: Settings) -> None:
    policy = _one("BackendTrafficPolicy")
    assert _targets_the_route(policy)
    spec = policy["spec"]
    rendered_routes = _rendered_routes(settings)
    clusters = _rendered_clusters(settings)
    for route in rendered_routes.values():
        assert spec["circuitBreaker"] == _envoy_gateway_breaker(_thresholds(clusters[route["route"]["cluster"]]))
        assert _seconds(spec["timeout"]["http"]["requestTimeout"]) == _seconds(route["route"]["timeout"])
        assert _seconds(spec["timeout"]["http"]["streamIdleTimeout"]) == _seconds(route["route"]["idle_timeout"])
    assert spec["circuitBreaker"]["maxParallelRequests"] > ENVOY_DEFAULT_MAX_REQUESTS
    assert _seconds(spec["timeout"]["http"]["requestTimeout"]) == settings.upstream_timeout_seconds
    limit = _bytes(spec["requestBuffer"]["limit"])
    assert limit == settings.envoy_request_buffer_bytes
    assert limit == _http_filter(settings, "envoy.filters.http.buffer")["max_request_bytes"]


def test_traffic_policy_retries_as_the_rendered_routes_do(settings: Settings) -> None:
    """Issue 25: the same triggers, statuses, count and backoff as every rendered upstream route."""
    retry = _one("BackendTrafficPolicy")["spec"]["retry"]
    for route in _rendered_routes(settings).values():
        rendered = route["route"]["retry_policy"]
        assert ",".join(retry["retryOn"]["triggers"]) == rendered["retry_on"]
        assert retry["retryOn"]["httpStatusCodes"] == rendered["retriable_status_codes"]
        assert retry["numRetries"] == rendered["num_retries"]
        back_off = retry["perRetry"]["backOff"]
        # Envoy's protobuf JSON durations are fractional seconds ("0.05s").
        assert _seconds(back_off["baseInterval"]) == float(rendered["retry_back_off"]["base_interval"].removesuffix("s"))
        assert _seconds(back_off["maxInterval"]) == float(rendered["retry_back_off"]["max_interval"].removesuffix("s"))
        # The replay copy: the rendered route's limit is the request buffer's.
        assert route["request_body_buffer_limit"] == settings.envoy_request_buffer_bytes


def test_chat_paths_reach_the_extproc_and_nothing_else() -> None:
    (chat,) = [r for r in _route_rules() if r["name"] == "chat"]
    assert [(m["path"]["type"], m["path"]["value"], m["method"]) for m in chat["matches"]] == [
        ("Exact", path, "POST") for path in CHAT_PATHS
    ]
    assert "backendRefs" not in chat  # without the ext_proc's decision: Envoy Gateway's 500
    # Every other rule needs the ext_proc's decision header.
    for rule in _route_rules():
        if rule is not chat:
            assert all(m["headers"][0]["name"] == UPSTREAM_HEADER for m in rule["matches"]), rule["name"]


def _backend(ref: dict[str, Any]) -> dict[str, Any]:
    assert (ref["group"], ref["kind"]) == ("gateway.envoyproxy.io", "Backend")
    return _one("Backend", ref["name"])


def test_each_provider_decision_routes_to_its_provider_with_tls(settings: Settings) -> None:
    clusters = _rendered_clusters(settings)
    decisions = {p.cluster for p in settings.routable_providers.values()}
    assert decisions and decisions <= set(_rendered_routes(settings))
    for decision in decisions:
        rendered = _rendered_routes(settings)[decision]
        rule = _rule_for(decision)
        assert _filter(rule, "URLRewrite")["urlRewrite"] == {"hostname": rendered["route"]["host_rewrite_literal"]}
        removed = _filter(rule, "RequestHeaderModifier")["requestHeaderModifier"]["remove"]
        assert set(removed) == set(rendered["request_headers_to_remove"])
        (ref,) = rule["backendRefs"]
        backend = _backend(ref)["spec"]
        cluster = clusters[rendered["route"]["cluster"]]
        address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        expected = {"hostname": address["socket_address"]["address"], "port": address["socket_address"]["port_value"]}
        assert backend["endpoints"] == [{"fqdn": expected}]
        assert ref["port"] == expected["port"]
        tls = cluster["transport_socket"]["typed_config"]
        assert backend["tls"] == {"sni": tls["sni"], "wellKnownCACertificates": "System"}


def test_custom_llm_decisions_use_a_dynamic_resolver_on_the_custom_host(settings: Settings) -> None:
    """Envoy Gateway resolves the custom host again itself (its Backend API has no way to
    connect to the address the ext_proc checked; docs/ARCHITECTURE.md, "Custom LLMs"): the Host
    comes from the same header as the rendered route's host rewrite."""
    clusters = _rendered_clusters(settings)
    host_filter = _one("HTTPRouteFilter", "custom-llm-host")
    assert host_filter["apiVersion"] == "gateway.envoyproxy.io/v1alpha1"
    for decision in (CUSTOM_HTTPS_CLUSTER, CUSTOM_HTTP_CLUSTER):
        rendered = _rendered_routes(settings)[decision]
        rule = _rule_for(decision)
        ref = _filter(rule, "ExtensionRef")["extensionRef"]
        assert ref == {"group": "gateway.envoyproxy.io", "kind": "HTTPRouteFilter", "name": "custom-llm-host"}
        assert host_filter["spec"]["urlRewrite"]["hostname"] == {
            "type": "Header",
            "header": rendered["route"]["host_rewrite_header"],
        }
        assert rendered["route"]["host_rewrite_header"] == CUSTOM_HOST_HEADER
        removed = _filter(rule, "RequestHeaderModifier")["requestHeaderModifier"]["remove"]
        # Both keep the custom host, which the host rewrite still has to read.
        assert set(removed) == set(rendered["request_headers_to_remove"])
        assert CUSTOM_HOST_HEADER not in removed
        (backend_ref,) = rule["backendRefs"]
        backend = _backend(backend_ref)["spec"]
        assert backend["type"] == "DynamicResolver"
        # CRD rule (CEL, not checked by jsonschema): a dynamic resolver has no endpoints.
        assert "endpoints" not in backend
        tls = "transport_socket" in clusters[decision]
        assert ("tls" in backend) is tls
        if tls:
            assert backend["tls"] == {"wellKnownCACertificates": "System"}


# --- Istio -------------------------------------------------------------------------------------


def _typed_config(value: dict[str, Any]) -> dict[str, Any]:
    """The filter's typed_config, after checking Envoy itself would parse it (the proto types)."""
    json_format.ParseDict(value["typed_config"], any_pb2.Any())
    return value["typed_config"]


def test_istio_envoy_filter_inserts_the_extproc_as_envoy_config_renders_it(settings: Settings) -> None:
    envoy_filter = _one("EnvoyFilter")
    assert envoy_filter["apiVersion"] == "networking.istio.io/v1alpha3"
    patches = envoy_filter["spec"]["configPatches"]
    filters = [p for p in patches if p["applyTo"] == "HTTP_FILTER"]
    for patch in filters:
        assert patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == "envoy.filters.http.router"
        assert patch["patch"]["operation"] == "INSERT_BEFORE"
    # Each inserted before the router in turn: the buffer ends up before the ext_proc.
    assert [p["patch"]["value"]["name"] for p in filters] == ["envoy.filters.http.buffer", EXTPROC_FILTER]
    buffer, extproc = (_typed_config(p["patch"]["value"]) for p in filters)
    assert buffer["max_request_bytes"] == settings.envoy_request_buffer_bytes
    rendered = _http_filter(settings, EXTPROC_FILTER)
    assert {k: v for k, v in extproc.items() if k != "grpc_service"} == {
        k: v for k, v in rendered.items() if k != "grpc_service"
    }
    service = _one("Service", "llm-gateway-extproc")
    namespace = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())["namespace"]
    host = f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
    assert extproc["grpc_service"] == {"envoy_grpc": {"cluster_name": f"outbound|{settings.extproc_port}||{host}"}}

    (cluster_patch,) = [p for p in patches if p["applyTo"] == "CLUSTER"]
    assert cluster_patch["match"]["cluster"] == {"service": host, "portNumber": settings.extproc_port}
    assert cluster_patch["patch"]["operation"] == "MERGE"
    value = cluster_patch["patch"]["value"]
    json_format.ParseDict(value, cluster_pb2.Cluster())
    assert value["circuit_breakers"] == _rendered_clusters(settings)[EXTPROC_CLUSTER]["circuit_breakers"]
    assert value["outlier_detection"] == _rendered_clusters(settings)[EXTPROC_CLUSTER]["outlier_detection"]


# --- Docker Compose ----------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_compose_file_validates_against_the_compose_specification(schemas_dir: Path) -> None:
    schema = yaml.safe_load((schemas_dir / "compose-spec" / "compose-spec.json").read_text())
    # Its $schema names draft-07 in a spelling jsonschema does not look up.
    jsonschema.Draft7Validator(schema).validate(_compose())


def _command_words(service: dict[str, Any]) -> Iterator[str]:
    command = service.get("command", [])
    yield from (command.split() if isinstance(command, str) else (w for part in command for w in part.split()))


def _llm_gateway_commands(service: dict[str, Any]) -> list[str]:
    words = list(_command_words(service))
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == "llm-gateway"]


def _is_dev(service: dict[str, Any]) -> bool:
    labels = service.get("labels", {})
    if isinstance(labels, list):
        labels = dict(label.split("=", 1) for label in labels)
    return labels.get(DEV_LABEL) == "true" or "dev" in service.get("profiles", [])


_FROM = re.compile(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", re.IGNORECASE)
_PROJECT_EXTRA = re.compile(r"(^|\s)['\"]?(\.|llm-gateway)\[")


def _stage_lines(dockerfile: Path, target: str | None) -> list[str]:
    """The instructions that build `target` (the last stage when None), with the stages it
    starts FROM: other stages of the file (a dev image, say) are not part of it."""
    stages: dict[str, tuple[str, list[str]]] = {}
    order: list[str] = []
    for line in dockerfile.read_text().replace("\\\n", " ").splitlines():
        if match := _FROM.match(line.strip()):
            name = match.group(2) or f"#{len(order)}"
            stages[name] = (match.group(1), [])
            order.append(name)
        elif order:
            stages[order[-1]][1].append(line)
    lines: list[str] = []
    stage, seen = target or order[-1], set()
    while stage in stages and stage not in seen:
        seen.add(stage)
        base, instructions = stages[stage]
        lines += instructions
        stage = base
    return lines


def _installs_extras(lines: list[str]) -> bool:
    """Any `pip install` of the project with an extra (`.[local]`, `llm-gateway[test]`)."""
    return any(_PROJECT_EXTRA.search(line.split("pip install", 1)[1]) for line in lines if "pip install" in line)


def test_compose_services_run_the_runtime_package_only() -> None:
    services = _compose()["services"]
    assert _is_dev(services[MOCK_SERVICE]), f"{MOCK_SERVICE} must be marked dev (label {DEV_LABEL}: 'true')"
    for name, service in services.items():
        if name == MOCK_SERVICE:
            continue
        assert not _is_dev(service), f"{name} is marked dev: only {MOCK_SERVICE} may be"
        for command in _llm_gateway_commands(service):
            assert command not in LOCAL_STACK_COMMANDS, f"{name} runs the local stack's `{command}`"
        build = service.get("build")
        if build is None:
            continue  # a third-party image (Postgres, Redis, Envoy)
        spec = {"context": build} if isinstance(build, str) else build
        assert not spec.get("args"), f"{name}: build arguments may select extras"
        dockerfile = COMPOSE_FILE.parent / spec.get("context", ".") / spec.get("dockerfile", "Dockerfile")
        assert not _installs_extras(_stage_lines(dockerfile, spec.get("target"))), f"{name} installs extras"


# --- side streams end gracefully in every Envoy (issue 27) -------------------------------------


def _runtime_values(bootstrap: dict[str, Any]) -> dict[str, Any]:
    return {key: value for layer in bootstrap["layered_runtime"]["layers"] for key, value in layer["static_layer"].items()}


def test_envoy_gateways_envoy_closes_side_streams_as_the_rendered_bootstrap_does(settings: Settings) -> None:
    proxy = _one("EnvoyProxy", "llm-gateway")
    assert proxy["spec"]["bootstrap"]["type"] == "Merge"  # appended to Envoy Gateway's own layers
    merged = yaml.safe_load(proxy["spec"]["bootstrap"]["value"])
    assert set(merged) == {"layered_runtime"}
    assert _runtime_values(merged) == _runtime_values(render_bootstrap(settings))
    assert _runtime_values(merged)["envoy.reloadable_features.ext_proc_graceful_grpc_close"] is True
    gateway = _one("Gateway", "llm-gateway")
    assert gateway["spec"]["infrastructure"]["parametersRef"] == {
        "group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": "llm-gateway"}


def test_istios_bootstrap_override_closes_side_streams_as_the_rendered_bootstrap_does(settings: Settings) -> None:
    override = json.loads(_one("ConfigMap", "llm-gateway-bootstrap")["data"]["custom_bootstrap.json"])
    assert set(override) == {"layered_runtime"}
    assert _runtime_values(override) == _runtime_values(render_bootstrap(settings))
# --- Tracing: the collector, and everything that sends it spans -------------------------------

COLLECTOR_CONFIG = DEPLOY / "kubernetes" / "otel-collector-config.yml"


def _compose_default(value: str) -> str:
    """A Compose value with its `${NAME:-default}`s as they are when NAME is unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _collector_ports() -> dict[str, int]:
    service = _one("Service", "otel-collector")
    return {port["name"]: port["port"] for port in service["spec"]["ports"]}


def test_the_collector_takes_otlp_over_grpc_and_http_and_sends_traces_on() -> None:
    config = yaml.safe_load(COLLECTOR_CONFIG.read_text())
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317" and protocols["http"]["endpoint"] == "0.0.0.0:4318"
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    assert set(pipeline["processors"]) <= set(config["processors"]) and pipeline["exporters"]
    assert set(pipeline["exporters"]) <= set(config["exporters"])
    # Kubernetes: the Deployment reads the generated ConfigMap of that file; the Service
    # exposes both ports.
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    [generated] = [g for g in kustomization["configMapGenerator"] if g["name"] == "otel-collector-config"]
    assert generated["files"] == [f"config.yaml={COLLECTOR_CONFIG.name}"]
    deployment = _one("Deployment", "otel-collector")
    container = _container(deployment)
    [volume] = deployment["spec"]["template"]["spec"]["volumes"]
    [mount] = container["volumeMounts"]
    assert volume["configMap"]["name"] == "otel-collector-config" and mount["name"] == volume["name"]
    assert container["args"] == [f"--config={mount['mountPath']}/config.yaml"]
    assert _collector_ports() == {"otlp-grpc": 4317, "otlp-http": 4318}
    assert {p["containerPort"] for p in container["ports"]} == {4317, 4318}
    # Compose: the same file, where the same image reads it.
    collector = _compose()["services"]["otel-collector"]
    assert collector["image"] == container["image"]
    assert collector["volumes"] == [f"./{COLLECTOR_CONFIG.relative_to(REPO)}:/etc/otelcol/config.yaml:ro"]
    assert collector["command"] == container["args"]


def test_every_process_and_proxy_sends_its_spans_to_the_collector_at_one_sampling() -> None:
    from extproc import otel_settings

    ports = _collector_ports()
    # The ext_proc and the ledger writer (Kubernetes and Compose): OTLP/HTTP to the collector.
    kubernetes = otel_settings.read(_one("ConfigMap", "llm-gateway-config")["data"])
    compose_env = {k: _compose_default(str(v)) for k, v in _compose()["x-gateway-env"].items()}
    compose = otel_settings.read(compose_env)
    for read in (kubernetes, compose):
        assert read.enabled and read.parent_based
        assert read.traces_url == f"http://otel-collector:{ports['otlp-http']}/v1/traces"
    assert kubernetes.ratio == compose.ratio
    for name in ("extproc", "ledger-writer", "envoy-config"):
        assert _compose()["services"][name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == compose_env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    # Envoy Gateway's Envoy: OTLP/gRPC to the collector, at the same ratio, for this Gateway.
    proxy = _one("EnvoyProxy", "llm-gateway")
    tracing = proxy["spec"]["telemetry"]["tracing"]
    assert tracing["samplingRate"] == kubernetes.envoy_sampling_percent
    assert tracing["provider"]["type"] == "OpenTelemetry"
    assert tracing["provider"]["backendRefs"] == [{"name": "otel-collector", "port": ports["otlp-grpc"]}]
    infrastructure = _one("Gateway")["spec"]["infrastructure"]["parametersRef"]
    assert infrastructure == {"group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": "llm-gateway"}
    # Istio: the gateway's workload (the EnvoyFilter's), at the same ratio.
    telemetry = _one("Telemetry", "llm-gateway-tracing")
    assert telemetry["spec"]["selector"]["matchLabels"] == _one("EnvoyFilter")["spec"]["workloadSelector"]["labels"]
    [tracer] = telemetry["spec"]["tracing"]
    assert tracer["randomSamplingPercentage"] == kubernetes.envoy_sampling_percent
    assert tracer["providers"] == [{"name": "llm-gateway-otel"}]
