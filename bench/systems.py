"""The systems the benchmark compares, each started on free ports as a user would run it.

- the upstream: an Envoy answering chat completions and generation lookups with its own direct
  responses (never the bottleneck), and routing `?mode=sse` (or the `/sse/` prefix, for clients
  that cannot add a query string) to the lean streaming mock (bench/sse_upstream.py);
- Envoy alone: the same Envoy build routing the gateway's path straight to the upstream;
- the floors: the no-op ext_proc (bench/noop_extproc.py) behind a minimal Envoy configuration
  with the gateway's processing modes, and behind the gateway's own rendered configuration;
- the gateway: `llm-gateway run` with OpenRouter pointed at the upstream, a real user with credits;
- LiteLLM's proxy (optional `bench-peers` extra), with the same upstream behind it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from extproc.envoy_config import PROCESSING_MODE, UPSTREAM_HEADER
from extproc.local.mock_upstream import openrouter_models
from extproc.local.processes import Child, free_port, port_open, wait_until
from extproc.local.stack import envoy_binary

MODEL = "openai/gpt-4o-mini"
GATEWAY_PATH = "/api/gateway/chat/completions"
PROMPT_TOKENS, COMPLETION_TOKENS, COST_USD = 12, 8, 0.000123

COMPLETION = {
    "id": "gen-bench",
    "object": "chat.completion",
    "created": 1764230400,
    "model": MODEL,
    "provider": "OpenAI",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello from the bench upstream."}, "finish_reason": "stop"}
    ],
    "usage": {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "cost": COST_USD,
        "is_byok": False,
        "prompt_tokens_details": {"cached_tokens": 0},
        "cost_details": {"upstream_inference_cost": None},
    },
}
GENERATION = {
    "data": {
        "id": "gen-bench",
        "model": MODEL,
        "provider_name": "OpenAI",
        "total_cost": COST_USD,
        "upstream_inference_cost": None,
        "cache_discount": None,
        "native_tokens_prompt": PROMPT_TOKENS,
        "native_tokens_completion": COMPLETION_TOKENS,
        "native_tokens_cached": 0,
        "finish_reason": "stop",
        "latency": 1,
        "generation_time": 1,
        "moderation_latency": None,
        "streamed": False,
        "cancelled": False,
        "is_byok": False,
    }
}


@dataclass(frozen=True)
class Ledger:
    """Where the gateway's accounting of the benchmark's requests can be checked."""

    database_url: str
    user_id: str
    metrics_url: str


@dataclass
class System:
    """One running system under test: where to send requests, and its processes."""

    name: str
    url: str  # the chat completions endpoint
    headers: dict[str, str]
    children: list[Child]
    # Streams go to the upstream's streaming mock: by a query string where the system passes
    # one on, else by a model configured with the mock's path.
    stream_query: str = "?mode=sse"
    stream_model: str = MODEL
    # Processes whose CPU and memory the report shows, by role (ext_proc workers, writer).
    measured: dict[str, list[int]] = field(default_factory=dict)
    ledger: Ledger | None = None
    # The system's Envoy admin, where bench/soak.py reads how many requests it has served.
    admin_url: str | None = None

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


def _envoy(name: str, config: Path, admin_port: int) -> Child:
    child = Child.start(name, [envoy_binary(), "-c", str(config), "--log-level", "warn", "--base-id", str(admin_port)])
    wait_until(name, lambda: _get(f"http://127.0.0.1:{admin_port}/ready") == 200, child)
    return child


def _json_file(work: Path, name: str, config: dict[str, Any]) -> Path:
    path = work / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=1) as response:
        return int(response.status)


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}],
        },
        # A benchmark opens far more concurrent requests than Envoy's default limits allow.
        "circuit_breakers": {"thresholds": [{"max_connections": 100_000, "max_pending_requests": 100_000,
                                             "max_requests": 100_000}]},
    }


def _bootstrap(admin_port: int, listen_port: int, routes: list[dict[str, Any]], clusters: list[dict[str, Any]]) -> dict[str, Any]:
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "stream_idle_timeout": "0s",
        # The models list (the price catalogue) is larger than Envoy's 4 KB default.
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
                         "max_direct_response_body_size_bytes": 1 << 20},
        "http_filters": [
            {"name": "envoy.filters.http.router",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
        ],
    }
    return {
        "admin": {"address": _address(admin_port)},
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": _address(listen_port),
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": manager}]}],
            }],
            "clusters": clusters,
        },
    }


def _json_response(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "direct_response": {"status": 200, "body": {"inline_bytes": base64.b64encode(orjson.dumps(body)).decode()}},
        "response_headers_to_add": [
            {"header": {"key": "content-type", "value": "application/json"},
             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        ],
    }


def start_upstream(work: Path, chunks: int, interval_ms: int) -> tuple[str, list[Child]]:
    """The upstream every system talks to; returns its base URL and processes."""
    sse_port, port, admin = free_port(), free_port(), free_port()
    sse = Child.start(
        "sse-upstream",
        [sys.executable, "-m", "bench.sse_upstream", "--port", str(sse_port),
         "--chunks", str(chunks), "--interval-ms", str(interval_ms)],
    )
    wait_until("sse upstream", lambda: port_open("127.0.0.1", sse_port), sse)
    sse_route = {"cluster": "sse", "timeout": "0s"}
    routes = [
        {"match": {"prefix": "/sse/"}, "route": {**sse_route, "prefix_rewrite": "/"}},
        {"match": {"prefix": "/api/v1/chat/completions",
                   "query_parameters": [{"name": "mode", "string_match": {"exact": "sse"}}]},
         "route": sse_route},
        {"match": {"prefix": "/api/v1/chat/completions"}, **_json_response(COMPLETION)},
        {"match": {"prefix": "/api/v1/generation"}, **_json_response(GENERATION)},
        # The price catalogue the gateway bounds paid requests with (issue 23): the mock's.
        {"match": {"path": "/api/v1/models"}, **_json_response(openrouter_models())},
    ]
    bootstrap = _bootstrap(admin, port, routes, [_cluster("sse", sse_port)])
    envoy = _envoy("upstream-envoy", _json_file(work, "upstream-envoy", bootstrap), admin)
    return f"http://127.0.0.1:{port}", [sse, envoy]


def start_envoy_alone(work: Path, upstream: str) -> System:
    port, admin = free_port(), free_port()
    upstream_port = int(upstream.rsplit(":", 1)[1])
    routes = [{
        "match": {"prefix": GATEWAY_PATH},
        "route": {"cluster": "upstream", "prefix_rewrite": "/api/v1/chat/completions", "timeout": "0s"},
    }]
    bootstrap = _bootstrap(admin, port, routes, [_cluster("upstream", upstream_port)])
    envoy = _envoy("envoy-alone", _json_file(work, "envoy-alone", bootstrap), admin)
    return System("envoy-alone", f"http://127.0.0.1:{port}{GATEWAY_PATH}", {}, [envoy],
                  measured={"envoy": [envoy.process.pid]})


def _gateway_environment(data: Path, upstream: str, workers: int) -> dict[str, str]:
    """The environment a user would give `llm-gateway`: OpenRouter is the bench upstream."""
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_API_URL"))}
    ports = {name: free_port() for name in ("LISTEN", "ENVOY_ADMIN", "METRICS", "MOCK_UPSTREAM")}
    env.update({f"LLM_GATEWAY_{name}_PORT": str(port) for name, port in ports.items()})
    env.update(
        LLM_GATEWAY_EXTPROC_PORT=str(free_port(block=workers)),
        LLM_GATEWAY_EXTPROC_WORKERS=str(workers),
        LLM_GATEWAY_DATA_DIR=str(data),
        OPENROUTER_API_URL=f"{upstream}/api/v1",
        OPENROUTER_API_KEY="bench-upstream-key",
    )
    return env


def start_extproc_floor(work: Path, upstream: str, workers: int) -> System:
    """The gateway's own Envoy configuration with no-op ext_proc processes (bench/noop_extproc.py)."""
    data = work / "floor"
    data.mkdir()
    env = _gateway_environment(data, upstream, workers)
    config = data / "envoy.yaml"
    config.write_text(subprocess.run([sys.executable, "-m", "extproc.cli", "envoy-config"], env=env, check=True,
                                     capture_output=True, text=True).stdout)
    children = _noop_extprocs(env, int(env["LLM_GATEWAY_EXTPROC_PORT"]), workers)
    envoy = _envoy("envoy", config, int(env["LLM_GATEWAY_ENVOY_ADMIN_PORT"]))
    return System(
        "ext_proc-floor",
        f"http://127.0.0.1:{env['LLM_GATEWAY_LISTEN_PORT']}{GATEWAY_PATH}",
        {},
        [*children, envoy],
        measured={"envoy": [envoy.process.pid],
                  **{f"ext_proc_{i}": [child.process.pid] for i, child in enumerate(children)}},
        admin_url=f"http://127.0.0.1:{env['LLM_GATEWAY_ENVOY_ADMIN_PORT']}",
    )


FLOOR_CLUSTER = "provider_openrouter"


def minimal_floor_bootstrap(admin_port: int, listen_port: int, extproc_ports: list[int], upstream_port: int) -> dict[str, Any]:
    """Envoy with nothing but the ext_proc filter (the gateway's four processing modes) and the
    router: the route picks the cluster the no-op ext_proc names in its routing header, after it
    cleared the route cache, as the gateway's configuration does."""
    bootstrap = _bootstrap(admin_port, listen_port, [{
        "match": {"prefix": "/"},
        "route": {"cluster_header": UPSTREAM_HEADER, "timeout": "0s"},
    }], [_cluster(FLOOR_CLUSTER, upstream_port)])
    extproc = {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": "extproc"}},
            "processing_mode": PROCESSING_MODE,
            "allow_mode_override": True,
        },
    }
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    manager["http_filters"].insert(0, extproc)
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    bootstrap["static_resources"]["clusters"].append({
        **_cluster("extproc", extproc_ports[0]),
        "load_assignment": {"cluster_name": "extproc", "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": _address(port)}} for port in extproc_ports]}]},
        "typed_extension_protocol_options": {options: {
            "@type": f"type.googleapis.com/{options}",
            "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 100_000}},
        }},
    })
    return bootstrap


def _noop_extprocs(env: dict[str, str], first: int, workers: int) -> list[Child]:
    children = []
    for port in range(first, first + workers):
        child = Child.start(
            f"noop-ext_proc-{port - first}",
            [sys.executable, "-m", "bench.noop_extproc", "--port", str(port), "--cluster", FLOOR_CLUSTER,
             "--path", "/api/v1/chat/completions"],
            env=env,
        )
        wait_until("no-op ext_proc", lambda: port_open("127.0.0.1", port), child)
        children.append(child)
    return children


def start_minimal_floor(work: Path, upstream: str, workers: int) -> System:
    """A minimal Envoy configuration (`minimal_floor_bootstrap`) with the same no-op ext_proc
    processes as the gateway-configuration floor: what the protocol alone costs."""
    data = work / "minimal-floor"
    data.mkdir()
    env = _gateway_environment(data, upstream, workers)
    first = int(env["LLM_GATEWAY_EXTPROC_PORT"])
    children = _noop_extprocs(env, first, workers)
    port, admin = free_port(), free_port()
    bootstrap = minimal_floor_bootstrap(admin, port, list(range(first, first + workers)),
                                        int(upstream.rsplit(":", 1)[1]))
    envoy = _envoy("minimal-floor-envoy", _json_file(work, "minimal-floor-envoy", bootstrap), admin)
    return System(
        "minimal-floor",
        f"http://127.0.0.1:{port}{GATEWAY_PATH}",
        {},
        [*children, envoy],
        measured={"envoy": [envoy.process.pid],
                  **{f"ext_proc_{i}": [child.process.pid] for i, child in enumerate(children)}},
    )


def start_gateway(work: Path, upstream: str, workers: int, name: str = "gateway",
                  extra_env: dict[str, str] | None = None, extra_children: list[Child] | None = None) -> System:
    data = work / name
    data.mkdir()
    env = {**_gateway_environment(data, upstream, workers), **(extra_env or {})}
    log = (data / "stack.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "extproc.cli", "run"], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    stack = Child("gateway", process, stop_timeout=60)
    state_file = data / "stack.json"
    deadline = time.monotonic() + 120
    while not state_file.exists():
        if not stack.alive or time.monotonic() > deadline:
            stack.stop()
            raise SystemExit(f"the gateway did not start; see {data / 'stack.log'}")
        time.sleep(0.1)
    state = json.loads(state_file.read_text())
    user = json.loads(subprocess.run(
        [sys.executable, "-m", "extproc.cli", "user", "create", "--email", "bench@example.com", "--credits-usd", "10000"],
        env={**env, "DATABASE_URL": state["database_url"]}, check=True, capture_output=True, text=True,
    ).stdout)
    children = state["children"]
    extra = extra_children or []
    return System(
        name,
        f"{state['gateway_url']}{GATEWAY_PATH}",
        {"authorization": f"Bearer {user['token']}"},
        [*extra, stack],
        measured={
            **{gateway_role(child): [pid] for child, pid in children.items()},
            "supervisor": [state["pid"]],
            **{child.name.replace("-", "_"): [child.process.pid] for child in extra},
        },
        ledger=Ledger(state["database_url"], user["id"], state["metrics_url"]),
        admin_url=state["envoy_admin_url"],
    )


# Tracing on (issue 28): what an operator would run, 10 % of new traces kept, parent-based,
# every span exported (to a sink that answers at once: bench/otlp_sink.py).
TRACED_RATIO = "0.1"


def start_traced_gateway(work: Path, upstream: str, workers: int) -> System:
    port = free_port()
    sink = Child.start("otlp-sink", [sys.executable, "-m", "bench.otlp_sink", "--port", str(port)])
    wait_until("OTLP sink", lambda: port_open("127.0.0.1", port), sink)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": TRACED_RATIO,
    }
    try:
        return start_gateway(work, upstream, workers, "gateway-traced", env, [sink])
    except BaseException:
        sink.stop()
        raise


def gateway_role(child: str) -> str:
    """The role a process of `llm-gateway run` is reported under: "ext_proc" and "ext_proc-N"
    are the workers ext_proc_0 and ext_proc_N, as the floors' no-op processes are."""
    if child == "ext_proc":
        return "ext_proc_0"
    return child.replace("-", "_")


def litellm_available() -> bool:
    return shutil.which("litellm", path=str(Path(sys.executable).parent)) is not None


def start_litellm(work: Path, upstream: str, workers: int) -> System:
    """LiteLLM's proxy as its docs run it: a config file with the model list and a master key
    (its virtual keys need a Prisma-generated database client, which cannot be built offline)."""
    port = free_port()
    key = "sk-bench-master-key"
    config = work / "litellm.json"
    config.write_text(json.dumps({
        "model_list": [
            {"model_name": MODEL, "litellm_params": {"model": f"openai/{MODEL}", "api_base": f"{upstream}/api/v1",
                                                      "api_key": "bench-upstream-key"}},
            {"model_name": "bench-sse", "litellm_params": {"model": f"openai/{MODEL}",
                                                           "api_base": f"{upstream}/sse/api/v1",
                                                           "api_key": "bench-upstream-key"}},
        ],
        "general_settings": {"master_key": key},
        "litellm_settings": {"telemetry": False, "drop_params": True},
    }))
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"}
    child = Child.start(
        "litellm",
        [str(Path(sys.executable).parent / "litellm"), "--config", str(config), "--host", "127.0.0.1",
         "--port", str(port), "--num_workers", str(workers)],
        env=env,
        log=work / "litellm.log",
    )
    wait_until("litellm", lambda: port_open("127.0.0.1", port), child, timeout=180)
    return System(
        "litellm",
        f"http://127.0.0.1:{port}/chat/completions",
        {"authorization": f"Bearer {key}"},
        [child],
        stream_query="",
        stream_model="bench-sse",
        measured={"litellm": [child.process.pid]},
    )
