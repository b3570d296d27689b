"""The names Envoy and the ext_proc must agree on: headers, clusters, filter and metadata names.

Both the bootstrap renderer (`envoy_config.py`) and the runtime import them from here, so the
runtime does not load the renderer (and yaml) for a few strings. envoy/CONTRACT.md lists them
for an Envoy the operator keeps.
"""

from __future__ import annotations

# The routing header: the provider cluster the ext_proc chose (stripped before routing, so only
# the ext_proc can set it).
UPSTREAM_HEADER = "x-gateway-upstream"
# The authority of a custom LLM, for Host and SNI (set by the ext_proc only).
CUSTOM_HOST_HEADER = "x-gateway-custom-host"
# The address ("ip:port") Envoy connects to for a custom LLM: the one the ext_proc's SSRF check
# passed, so Envoy never resolves the host itself. Dynamic metadata under LOG_NAMESPACE, which
# only the ext_proc can write (a header would be the client's to send, and upstream filters
# cannot remove it without losing it for a retry).
CUSTOM_ADDRESS_KEY = "custom_address"
CHAT_PATHS = ("/api/gateway/chat/completions", "/api/openrouter/chat/completions")
EXTPROC_FILTER = "envoy.filters.http.ext_proc"
# The `details` of every ext_proc immediate response (see protocol.immediate).
IMMEDIATE_DETAILS = "gateway_"
# The dynamic-metadata namespace the ext_proc writes for Envoy's access log.
LOG_NAMESPACE = "llm_gateway"
CUSTOM_HTTPS_CLUSTER = "custom_https"
CUSTOM_HTTP_CLUSTER = "custom_http"
# Headers the HCM adds or keeps for itself; they stay during routing (Envoy's route lookup
# needs x-forwarded-proto) and are removed on the way to a provider, which sees none of them.
ENVOY_REQUEST_HEADERS = (
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
    "x-envoy-external-address",
    "x-envoy-internal",
)
