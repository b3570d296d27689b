"""Renders the Envoy bootstrap from `Settings`, so a provider is declared once.

Request path through Envoy (see docs/ARCHITECTURE.md):
  listener -> HCM (trusted hops, request id, routing header stripped before routing)
  -> ext_proc (headers SEND, request body BUFFERED, response headers SEND, response body
     STREAMED with per-response override) -> router.
The two chat paths start on a route whose only job is to let the ext_proc run; the ext_proc
then sets `x-gateway-upstream` and clears the route cache, and Envoy re-routes to that
provider's cluster. Every other path is answered by Envoy itself with no Python round trip.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml

from extproc import errors, otel_settings
from extproc.envoy_names import (
    CHAT_PATHS,
    CUSTOM_ADDRESS_KEY,
    CUSTOM_HOST_HEADER,
    CUSTOM_HTTP_CLUSTER,
    CUSTOM_HTTPS_CLUSTER,
    ENVOY_REQUEST_HEADERS,
    EXTPROC_FILTER,
    IMMEDIATE_DETAILS,
    LOG_NAMESPACE,
    UPSTREAM_HEADER,
)
from extproc.errors import GatewayError
from extproc.settings import Provider, Settings

GATEWAY_PREFIXES = ("/api/gateway/", "/api/openrouter/")
EXTPROC_CLUSTER = "extproc"

_HIGH_LIMITS = {
    "thresholds": [
        {
            "priority": "DEFAULT",
            "max_connections": 100_000,
            "max_pending_requests": 100_000,
            "max_requests": 100_000,
            "max_retries": 10,
        }
    ]
}


# Issue 25: a provider cluster's retries are bounded by a share of its active requests (a
# fleet's worth, not Envoy's default of 3 concurrent retries), so a provider outage cannot
# double the load on it.
_PROVIDER_LIMITS = {
    "thresholds": [
        {
            **_HIGH_LIMITS["thresholds"][0],
            "retry_budget": {"budget_percent": {"value": 25.0}, "min_retry_concurrency": 100},
        }
    ]
}


def _retry_policy(settings: Settings) -> dict[str, Any]:
    """Issue 25: Envoy retries an attempt that failed before any byte reached the client and
    that the provider cannot have billed: no connection, a refused stream, a reset before the
    request was sent, or one of the configured 5xx. Never another status, never a reset after
    the request went out (the abandoned attempt could still be billed), never once the response
    started (Envoy cannot retry then)."""
    return {
        "retry_on": "connect-failure,refused-stream,reset-before-request,retriable-status-codes",
        "retriable_status_codes": list(settings.upstream_retry_statuses),
        "num_retries": settings.upstream_retries,
        # Full-jitter exponential backoff.
        "retry_back_off": {"base_interval": "0.05s", "max_interval": "0.5s"},
    }


def _retried(settings: Settings, route: dict[str, Any]) -> dict[str, Any]:
    """`route` with the retry policy; the router keeps a copy of the body to replay as large as
    the largest body Envoy accepts, or it would drop the retry of a large one silently."""
    route["route"]["retry_policy"] = _retry_policy(settings)
    route["request_body_buffer_limit"] = settings.envoy_request_buffer_bytes
    return route


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _extproc_disabled() -> dict[str, Any]:
    return {
        EXTPROC_FILTER: _typed(
            "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute", disabled=True
        )
    }


def _json_reply(error: GatewayError) -> dict[str, Any]:
    return {"status": error.status, "body": {"inline_string": error.json().decode()}}


def _direct_route(name: str, match: dict[str, Any], error: GatewayError) -> dict[str, Any]:
    return {
        "name": name,
        "match": match,
        "direct_response": _json_reply(error),
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": "application/json"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "typed_per_filter_config": _extproc_disabled(),
    }


def _provider_route(settings: Settings, provider: Provider) -> dict[str, Any]:
    return _retried(settings, {
        "name": f"upstream_{provider.id}",
        "match": {
            "prefix": "/",
            "headers": [{"name": UPSTREAM_HEADER, "string_match": {"exact": provider.cluster}}],
        },
        "route": {
            "cluster": provider.cluster,
            "host_rewrite_literal": provider.authority,
            # Contract 2.15: a generation may take up to 10 minutes; never Envoy's 15 s default.
            "timeout": _seconds(settings.upstream_timeout_seconds),
            "idle_timeout": _seconds(settings.stream_idle_timeout_seconds),
        },
        "request_headers_to_remove": [UPSTREAM_HEADER, *ENVOY_REQUEST_HEADERS],
    })


def _custom_llm_routes(settings: Settings) -> list[dict[str, Any]]:
    """Custom LLMs live at any host: Envoy connects to the address the ext_proc put in its
    dynamic metadata (CUSTOM_ADDRESS_KEY, the address its SSRF check passed; Envoy resolves
    nothing) and sends the name the ext_proc put in CUSTOM_HOST_HEADER as Host (and SNI)."""
    return [
        _retried(
            settings,
            {
                "name": f"upstream_{cluster}",
                "match": {"prefix": "/", "headers": [{"name": UPSTREAM_HEADER, "string_match": {"exact": cluster}}]},
                "route": {
                    "cluster": cluster,
                    "host_rewrite_header": CUSTOM_HOST_HEADER,
                    "timeout": _seconds(settings.upstream_timeout_seconds),
                    "idle_timeout": _seconds(settings.stream_idle_timeout_seconds),
                },
                # CUSTOM_HOST_HEADER goes in the cluster's own filter: the router removes these
                # before it rewrites the Host from it.
                "request_headers_to_remove": [UPSTREAM_HEADER, *ENVOY_REQUEST_HEADERS],
            },
        )
        for cluster in (CUSTOM_HTTPS_CLUSTER, CUSTOM_HTTP_CLUSTER)
    ]


def _chat_route(settings: Settings, path: str) -> dict[str, Any]:
    # Only reached before the ext_proc has chosen an upstream. The ext_proc always either
    # answers or re-routes; if it somehow did neither, the client gets the catalogue's 500.
    route = _direct_route(
        f"chat{path.replace('/', '_')}",
        {"path": path, "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]},
        errors.INTERNAL_ERROR,
    )
    del route["typed_per_filter_config"]
    return route


def _routes(settings: Settings) -> list[dict[str, Any]]:
    routes = [_provider_route(settings, p) for p in settings.routable_providers.values()]
    routes += _custom_llm_routes(settings)
    routes += [_chat_route(settings, path) for path in CHAT_PATHS]
    routes += [
        _direct_route(f"invalid_path{i}", {"prefix": prefix}, errors.INVALID_PATH)
        for i, prefix in enumerate(GATEWAY_PREFIXES)
    ]
    routes.append(_direct_route("not_found", {"prefix": "/"}, errors.NOT_FOUND))
    return routes


def _extproc_filter(settings: Settings) -> dict[str, Any]:
    return {
        "name": EXTPROC_FILTER,
        "typed_config": _typed(
            "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            # No grpc_service timeout: the side stream lives as long as the generation.
            grpc_service={"envoy_grpc": {"cluster_name": EXTPROC_CLUSTER}},
            processing_mode=PROCESSING_MODE,
            allow_mode_override=True,
            message_timeout=f"{settings.extproc_message_timeout_ms / 1000:g}s",
            max_message_timeout="30s",
            failure_mode_allow=False,
            # Envoy ignores an ext_proc's changes to `x-envoy-*` headers by default, so a
            # client's own `x-envoy-...` header would reach the provider although the ext_proc
            # removes it (contract 2.15: only the gateway's headers go upstream).
            mutation_rules={"allow_envoy": True},
            # The client address as Envoy derived it with the trusted hops (contract 11.2).
            # Every client header reaches the ext_proc, which removes all of them from the
            # upstream request: a header it never saw would go upstream untouched.
            request_attributes=["source.address"],
            metadata_options={"receiving_namespaces": {"untyped": [LOG_NAMESPACE]}},
        ),
    }


def _json_stdout_log(fields: dict[str, str]) -> list[dict[str, Any]]:
    """An access log writing one JSON object of `fields` per entry to Envoy's stdout."""
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": _typed(
                "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                log_format={"json_format": fields},
            ),
        }
    ]


def _access_log() -> list[dict[str, Any]]:
    fields = {
        "time": "%START_TIME%",
        # The ext_proc's `request_id` (the x-request-id Envoy generated), handed back as dynamic
        # metadata: the header itself is removed on the way to the provider, before this line
        # is written. Requests the ext_proc never sees (Envoy's own 400/404/413) have none.
        "request_id": f"%DYNAMIC_METADATA({LOG_NAMESPACE}:request_id)%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "status": "%RESPONSE_CODE%",
        "details": "%RESPONSE_CODE_DETAILS%",
        "flags": "%RESPONSE_FLAGS%",
        "upstream_cluster": "%UPSTREAM_CLUSTER%",
        "upstream_attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
        "bytes_received": "%BYTES_RECEIVED%",
        "bytes_sent": "%BYTES_SENT%",
        "duration_ms": "%DURATION%",
        "upstream_ms": "%RESPONSE_DURATION%",
    }
    return _json_stdout_log(fields)


def _upstream_log() -> list[dict[str, Any]]:
    """Issue 25: one line per upstream attempt (the access log has one per client request, with
    its `upstream_attempts`), so a retried or failed attempt is visible with its status and why
    it ended. Envoy gives an attempt's log neither the request id nor the dynamic metadata."""
    fields = {
        "time": "%START_TIME%",
        "log": "upstream_attempt",
        "upstream_cluster": "%UPSTREAM_CLUSTER%",
        "upstream_host": "%UPSTREAM_HOST%",
        "status": "%RESPONSE_CODE%",
        "flags": "%RESPONSE_FLAGS%",
        "failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
        "upstream_ms": "%DURATION%",
    }
    return _json_stdout_log(fields)


# What the ext_proc is sent: request headers, the whole request body, response headers and the
# response body streamed (the ext_proc may override the mode for one response).
PROCESSING_MODE = {
    "request_header_mode": "SEND",
    "request_body_mode": "BUFFERED",
    "request_trailer_mode": "SKIP",
    "response_header_mode": "SEND",
    "response_body_mode": "STREAMED",
    "response_trailer_mode": "SKIP",
}


def _local_reply_mapper(error: GatewayError, status: int | None = None) -> dict[str, Any]:
    """Envoy's own local reply with this status (`status`, else the error's) becomes the
    catalogue's error. The ext_proc's immediate responses are local replies too; their details
    start with IMMEDIATE_DETAILS and their bodies are already the contract's, so they are left
    alone."""
    status = status or error.status
    return {
        "filter": {
            "and_filter": {
                "filters": [
                    {
                        "status_code_filter": {
                            "comparison": {
                                "op": "EQ",
                                "value": {
                                    "default_value": status,
                                    "runtime_key": f"gateway.local_reply_{status}",
                                },
                            }
                        }
                    },
                    {
                        "extension_filter": {
                            "name": "envoy.access_loggers.extension_filters.cel",
                            "typed_config": _typed(
                                "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                                expression=f"!response.code_details.startsWith('{IMMEDIATE_DETAILS}')",
                            ),
                        }
                    },
                ]
            }
        },
        "status_code": error.status,
        "body": {"inline_string": error.json().decode()},
        "body_format_override": {
            "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
            "content_type": "application/json",
        },
    }


def _http_connection_manager(settings: Settings) -> dict[str, Any]:
    return _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="gateway",
        codec_type="AUTO",
        # Contract 6.1: the client sees only whitelisted headers, so no `server: envoy` either.
        server_header_transformation="PASS_THROUGH",
        use_remote_address=True,
        xff_num_trusted_hops=settings.trusted_proxy_hops,
        generate_request_id=True,
        stream_idle_timeout=_seconds(settings.stream_idle_timeout_seconds),
        request_timeout="0s",
        # Runs before route selection: a client can never pick a cluster by sending the
        # routing header itself; only the ext_proc's mutation (after this) sets it.
        early_header_mutation_extensions=[
            {
                "name": "strip_routing_header",
                "typed_config": _typed(
                    "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
                    mutations=[
                        {"remove": UPSTREAM_HEADER},
                        {"remove": CUSTOM_HOST_HEADER},
                    ],
                ),
            }
        ],
        # Envoy's own error replies (body too large, ext_proc unreachable, failing or too slow,
        # upstream unreachable) carry the catalogue's JSON bodies instead of Envoy's plain text.
        local_reply_config={
            "mappers": [
                *(
                    _local_reply_mapper(error)
                    for error in (
                        errors.PAYLOAD_TOO_LARGE,
                        errors.INTERNAL_ERROR,
                        errors.SERVICE_UNAVAILABLE,
                        errors.GATEWAY_TIMEOUT,
                    )
                ),
                # A provider that drops the connection before its response's headers got through
                # (a reset, a cut chunked body) gets Envoy's 502 in plain text otherwise: answer
                # it as a provider Envoy cannot connect to.
                _local_reply_mapper(errors.SERVICE_UNAVAILABLE, status=502),
            ]
        },
        access_log=_access_log(),
        route_config={
            "name": "gateway",
            "virtual_hosts": [{"name": "gateway", "domains": ["*"], "routes": _routes(settings)}],
        },
        http_filters=[
            # Holds the whole request body (beyond the buffer: 413), so the ext_proc's BUFFERED
            # body phase sees the complete JSON document. The buffer also bounds the body the
            # ext_proc sends back, hence the shaping headroom above the client's limit.
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": _typed(
                    "envoy.extensions.filters.http.buffer.v3.Buffer",
                    max_request_bytes=settings.envoy_request_buffer_bytes,
                ),
            },
            _extproc_filter(settings),
            {
                "name": "envoy.filters.http.router",
                "typed_config": _typed(
                    "envoy.extensions.filters.http.router.v3.Router",
                    suppress_envoy_headers=True,
                    upstream_log=_upstream_log(),
                ),
            },
        ],
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _provider_cluster(settings: Settings, provider: Provider) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": provider.cluster,
        "type": "STATIC" if _is_ip(provider.host) else "LOGICAL_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "5s",
        "circuit_breakers": _PROVIDER_LIMITS,
        "upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 60}},
        "load_assignment": {
            "cluster_name": provider.cluster,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _address(provider.host, provider.port)}}]}
            ],
        },
    }
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    if provider.tls:
        cluster["transport_socket"] = _upstream_tls(
            {
                "alpn_protocols": ["h2", "http/1.1"],
                "validation_context": {
                    "trusted_ca": {"filename": settings.ca_bundle},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": provider.host}}],
                },
            },
            sni=provider.host,
        )
        protocol: dict[str, Any] = {"auto_config": {"http2_protocol_options": {}, "http_protocol_options": {}}}
    else:
        protocol = {"explicit_http_config": {"http_protocol_options": {}}}
    cluster["typed_extension_protocol_options"] = {options: _typed(options, **protocol)}
    return cluster


def _custom_llm_clusters(settings: Settings) -> list[dict[str, Any]]:
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    clusters = []
    for name, tls in ((CUSTOM_HTTPS_CLUSTER, True), (CUSTOM_HTTP_CLUSTER, False)):
        cluster: dict[str, Any] = {
            "name": name,
            "connect_timeout": "5s",
            # The destination is the address in the request's metadata: no DNS here.
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "original_dst_lb_config": {
                "metadata_key": {"key": LOG_NAMESPACE, "path": [{"key": CUSTOM_ADDRESS_KEY}]}
            },
            "circuit_breakers": _PROVIDER_LIMITS,
            "typed_extension_protocol_options": {
                options: _typed(
                    options,
                    explicit_http_config={"http_protocol_options": {}},
                    # SNI and certificate name both come from the Host (the custom LLM's name).
                    upstream_http_protocol_options={"auto_sni": True, "auto_san_validation": True},
                    # After the Host was rewritten from it (once per request; a retry keeps it).
                    http_filters=[
                        {
                            "name": "strip_custom_host",
                            "typed_config": _typed(
                                "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                                mutations={"request_mutations": [{"remove": CUSTOM_HOST_HEADER}]},
                            ),
                        },
                        {
                            "name": "envoy.filters.http.upstream_codec",
                            "typed_config": _typed("envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"),
                        },
                    ],
                )
            },
        }
        if tls:
            cluster["transport_socket"] = _upstream_tls(
                {"validation_context": {"trusted_ca": {"filename": settings.ca_bundle}}}
            )
        clusters.append(cluster)
    return clusters


def _upstream_tls(common_tls_context: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A cluster's TLS transport socket (`fields`: the UpstreamTlsContext's own, e.g. `sni`)."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": _typed(
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            **fields,
            common_tls_context=common_tls_context,
        ),
    }


def _extproc_cluster(settings: Settings) -> dict[str, Any]:
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    host = settings.extproc_connect_host or settings.extproc_host
    return {
        "name": EXTPROC_CLUSTER,
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "circuit_breakers": _HIGH_LIMITS,
        # A replica that died (and is being restarted) refuses connections: it leaves the
        # rotation at the first refusal, instead of failing every other request with a 500
        # until it listens again. It is tried again after 2 s, then after longer each time.
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 1,
            "base_ejection_time": "2s",
            # Envoy's default (10 %) ejects no replica out of fewer than ten.
            "max_ejection_percent": 50,
        },
        "load_assignment": {
            "cluster_name": EXTPROC_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _address(host, settings.extproc_port + worker)}}
                        for worker in range(settings.extproc_workers)
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": {
            options: _typed(
                options,
                explicit_http_config={
                    "http2_protocol_options": {
                        # Every in-flight chat request holds one stream on this connection.
                        "max_concurrent_streams": 100_000,
                        "connection_keepalive": {"interval": "30s", "timeout": "5s"},
                    }
                },
            )
        },
    }


# Envoy ends each ext_proc side stream with a reset unless this guard is on (off by default in
# 1.40; Envoy PR 38661): the ext_proc's final status then goes out on a cancelled call, whose
# failed batch grpc.aio never frees (grpc/grpc#43360), about 50-115 bytes of native memory per
# request. With it, Envoy half-closes the stream and waits for the status, up to the timeout
# (Envoy's default, 1 s) before resetting it.
GRACEFUL_CLOSE_GUARD = "envoy.reloadable_features.ext_proc_graceful_grpc_close"
REMOTE_CLOSE_TIMEOUT_KEY = "envoy.filters.http.ext_proc.remote_close_timeout_milliseconds"
SIDE_STREAM_RUNTIME = {GRACEFUL_CLOSE_GUARD: True, REMOTE_CLOSE_TIMEOUT_KEY: 1000}


def layered_runtime() -> dict[str, Any]:
    return {"layers": [{"name": "llm_gateway", "static_layer": SIDE_STREAM_RUNTIME}]}


# OpenTelemetry: Envoy's own tracer, from the same OTEL_* variables as the ext_proc's
# (extproc/otel_settings.py), so the proxy's spans and ours form one trace in one collector.
COLLECTOR_CLUSTER = "opentelemetry_collector"


def _tracing(trace: otel_settings.TraceSettings) -> dict[str, Any]:
    return {
        # New traces at the configured ratio; a request with a sampled `traceparent` keeps it.
        "random_sampling": {"value": trace.envoy_sampling_percent},
        # One span per upstream attempt (retries, fallback), beside the request's own.
        "spawn_upstream_span": True,
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": _typed(
                "envoy.config.trace.v3.OpenTelemetryConfig",
                http_service={
                    "http_uri": {"uri": trace.traces_url, "cluster": COLLECTOR_CLUSTER, "timeout": "2s"}
                },
                service_name=trace.service_name,
            ),
        },
    }


def _collector_cluster(settings: Settings, trace_url: str) -> dict[str, Any]:
    collector = otel_settings.collector(trace_url)
    cluster: dict[str, Any] = {
        "name": COLLECTOR_CLUSTER,
        "type": "STATIC" if _is_ip(collector.host) else "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": COLLECTOR_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(collector.host, collector.port)}}]}],
        },
    }
    if collector.tls:
        cluster["transport_socket"] = _upstream_tls(
            {"validation_context": {"trusted_ca": {"filename": settings.ca_bundle}}}, sni=collector.host
        )
    return cluster


def render_bootstrap(settings: Settings) -> dict[str, Any]:
    bootstrap = _render_bootstrap(settings)
    trace = otel_settings.read()
    if trace.traces_url is not None:
        resources = bootstrap["static_resources"]
        resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["tracing"] = _tracing(trace)
        resources["clusters"].append(_collector_cluster(settings, trace.traces_url))
    return bootstrap


def _render_bootstrap(settings: Settings) -> dict[str, Any]:
    return {
        "admin": {"address": _address("127.0.0.1", settings.envoy_admin_port)},
        "layered_runtime": layered_runtime(),
        "static_resources": {
            "listeners": [
                {
                    "name": "gateway_http",
                    "address": _address(settings.listen_host, settings.listen_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": _http_connection_manager(settings),
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [_extproc_cluster(settings)]
            + [_provider_cluster(settings, p) for p in settings.routable_providers.values()]
            + _custom_llm_clusters(settings),
        },
    }


def render_bootstrap_yaml(settings: Settings) -> str:
    return yaml.safe_dump(render_bootstrap(settings), sort_keys=False)
