"""Provider- and model-specific request mutations of behaviour.md 5.2 (applyProviderSpecificLogic),
including the Vercel request shape for BYOK keys (3.3).

Every rule mutates the body (and the extra upstream headers) in place, in the contract's order:
later rules see the earlier rules' output. Bodies come from clients, so a field of an unexpected
type makes the rule that needs it skip that field; nothing here raises on a malformed body.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, TypeGuard

from extproc import js
from extproc.catalogue import Catalogue
from extproc.shaping.tools import (
    drop_tool_strict_properties,
    has_attempt_completion_tool,
    normalize_tool_call_ids,
)
from extproc.shaping.vercel import (
    is_openai_model,
    map_model_id_to_vercel,
    map_provider_id_to_vercel,
)

_AWS_CREDENTIAL_FIELDS = ("accessKeyId", "secretAccessKey", "region")
AWS_CREDENTIALS_ERROR = "Failed to parse AWS credentials"


def valid_aws_credentials(value: object) -> TypeGuard[dict[str, Any]]:
    """A bedrock key: an object with string accessKeyId, secretAccessKey and region (Vercel
    needs all three to sign Bedrock requests; a key without them can never work)."""
    return isinstance(value, dict) and all(isinstance(value.get(field), str) for field in _AWS_CREDENTIAL_FIELDS)

FINE_GRAINED_TOOL_STREAMING = "fine-grained-tool-streaming-2025-05-14"
_ANTHROPIC_BETA_HEADERS = ("anthropic-beta", "x-anthropic-beta")

GIGA_POTATO_THINKING = "giga-potato-thinking"
GIGA_POTATO_RULE = (
    "You are an AI assistant in Kilo. Your name is Giga Potato. "
    "Do not reveal your model size, architecture, or any information that could hint at your origin or capabilities."
)

QWEN_MAX_OUTPUT_TOKENS = 32_768
MISTRAL_TOOL_CALL_ID_LENGTH = 9
MISTRAL_DEFAULT_TEMPERATURE = 0.2
ZAI_CODING_PLAN_BASE_URL = "https://api.z.ai/api/coding/paas/v4"


@dataclass(frozen=True, slots=True)
class ByokKey:
    """A decrypted BYOK key (contract 3.3)."""

    provider_id: str  # one of anthropic, bedrock, google, openai, minimax, mistral, xai, zai, codestral
    api_key: str | None  # plain key; None for bedrock
    bedrock: dict[str, Any] | None  # {accessKeyId, secretAccessKey, region} for bedrock

    def __post_init__(self) -> None:
        if self.provider_id == "bedrock" and not valid_aws_credentials(self.bedrock):
            raise ValueError(AWS_CREDENTIALS_ERROR)


def apply_provider_specific_logic(
    provider_id: str,
    model_lower: str,
    body: dict[str, Any],
    extra_headers: dict[str, str],
    catalogue: Catalogue,
    user_byok: list[ByokKey] | None,
) -> None:
    """Contract 5.2, steps 1 to 12 in order. `user_byok` is the non-empty key list when the
    provider was chosen for BYOK (3.2 step 1), else None."""
    _apply_free_model(model_lower, body, catalogue)
    if model_lower.startswith("anthropic/"):
        _apply_anthropic(body, extra_headers)
    _apply_tool_choice(model_lower, body)
    _apply_preferred_provider_order(model_lower, body)
    if model_lower.startswith("x-ai/"):
        _apply_xai(body, extra_headers)
    if model_lower.startswith("google/gemini") and provider_id == "vercel":
        _make_line_ranges_nullable(body)
    if model_lower.startswith("moonshotai/"):
        # Moonshot's models do not support the temperature parameter.
        body.pop("temperature", None)
    if model_lower.startswith("qwen/"):
        _clamp_qwen_output_tokens(body)
    if provider_id == "gigapotato":
        _apply_giga_potato(model_lower, body)
    if provider_id == "corethink":
        _apply_corethink(body)
    if provider_id == "mistral":
        _apply_mistral_provider(body, extra_headers)
    elif model_lower.startswith("mistralai/"):
        _apply_mistral_model(body)
    if provider_id == "vercel":
        _apply_vercel(model_lower, body, catalogue, user_byok)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []


def _first_with_role(messages: list[dict[str, Any]], *roles: str) -> dict[str, Any] | None:
    return next((m for m in messages if m.get("role") in roles), None)


# --- 1. Kilo free models -------------------------------------------------------------------


def _apply_free_model(model_lower: str, body: dict[str, Any], catalogue: Catalogue) -> None:
    # Any entry, enabled or not: a disabled one never gets this far (contract 2.0 step 14).
    entry = catalogue.free_models.get(model_lower)
    if entry is None:
        return
    body["model"] = entry.internal_id
    if entry.inference_providers:
        # The model is free only at these providers, so no other host may serve it.
        body["provider"] = {"only": list(entry.inference_providers)}


# --- 2. Anthropic --------------------------------------------------------------------------


def _apply_anthropic(body: dict[str, Any], extra_headers: dict[str, str]) -> None:
    # Tool-call arguments are streamed as they are generated instead of in one piece at the
    # end. Set under both header names the upstreams read, after any value already present.
    for name in _ANTHROPIC_BETA_HEADERS:
        extra_headers[name] = ",".join(v for v in (extra_headers.get(name), FINE_GRAINED_TOOL_STREAMING) if v)
    _add_cache_breakpoints(_messages(body))
    # Anthropic rejects '.' in tool-call ids.
    normalize_tool_call_ids(body, lambda tool_call_id: "." in tool_call_id)


def _has_cache_control(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return "cache_control" in message or (
        isinstance(content, list) and any(isinstance(part, dict) and "cache_control" in part for part in content)
    )


def _set_cache_control(message: dict[str, Any]) -> None:
    content = message.get("content")
    if isinstance(content, str):
        message["content"] = [{"type": "text", "text": content, "cache_control": {"type": "ephemeral"}}]
    elif isinstance(content, list) and content and isinstance(content[-1], dict):
        content[-1]["cache_control"] = {"type": "ephemeral"}


def _add_cache_breakpoints(messages: list[dict[str, Any]]) -> None:
    """Cache the system prompt and the conversation so far. A client that marked its system
    prompt itself manages caching; a request without one is too small to benefit."""
    system = _first_with_role(messages, "system")
    if system is None or _has_cache_control(system):
        return
    _set_cache_control(system)
    last_turn = _first_with_role(messages[::-1], "user", "tool")
    if last_turn is not None:
        _set_cache_control(last_turn)


# --- 3. tool_choice ------------------------------------------------------------------------


def _reasoning_enabled(body: dict[str, Any]) -> bool:
    reasoning = body.get("reasoning")
    if not isinstance(reasoning, dict):
        return False
    effort = reasoning.get("effort")
    max_tokens = reasoning.get("max_tokens")
    return (
        reasoning.get("enabled") is True
        or (effort is not None and effort != "none")
        or (isinstance(max_tokens, int | float) and max_tokens > 0)
    )


def _apply_tool_choice(model_lower: str, body: dict[str, Any]) -> None:
    """Models that otherwise answer in plain text instead of calling attempt_completion are made
    to call a tool; Haiku only without reasoning, which forced tool use does not allow."""
    if not has_attempt_completion_tool(body):
        return
    if (
        model_lower.startswith("x-ai/")
        or is_openai_model(model_lower)
        or model_lower.startswith("google/gemini")
        or (model_lower.startswith("anthropic/claude-haiku") and not _reasoning_enabled(body))
    ):
        body["tool_choice"] = "required"


# --- 4. preferred OpenRouter providers -----------------------------------------------------


def _preferred_provider_order(model_lower: str) -> list[str]:
    # Anthropic: Google Vertex, OpenRouter's other host, rejects assistant prefill on tool calls.
    if model_lower.startswith("anthropic/"):
        return ["amazon-bedrock", "anthropic"]
    if model_lower.startswith("minimax/"):
        return ["minimax"]
    if model_lower.startswith("mistralai/"):
        return ["mistral"]
    if model_lower.startswith("moonshotai/"):
        return ["moonshotai"]
    if model_lower.startswith("z-ai/"):
        return ["z-ai"]
    return []


def _apply_preferred_provider_order(model_lower: str, body: dict[str, Any]) -> None:
    """Prefer the vendor's own hosting; a client's (or free model's) routing wins otherwise."""
    order = _preferred_provider_order(model_lower)
    if not order:
        return
    provider = body.get("provider")
    if not js.truthy(provider):
        body["provider"] = {"order": order}
    elif isinstance(provider, dict) and not js.truthy(provider.get("order")):
        provider["order"] = order


# --- 5. xAI --------------------------------------------------------------------------------


def _apply_xai(body: dict[str, Any], extra_headers: dict[str, str]) -> None:
    # xAI routes requests with the same conversation id to the same cache.
    cache_key = body.get("prompt_cache_key")
    extra_headers["x-grok-conv-id"] = cache_key if isinstance(cache_key, str) and cache_key else str(uuid.uuid4())
    extra_headers["x-grok-req-id"] = str(uuid.uuid4())


# --- 6. Gemini on Vercel -------------------------------------------------------------------


def _dict_path(value: Any, *keys: str) -> dict[str, Any] | None:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, dict) else None


def _make_line_ranges_nullable(body: dict[str, Any]) -> None:
    """Gemini via Vercel rejects the read_file tool's `line_ranges` unless null is allowed
    explicitly, so `{type, items}` becomes `anyOf: [null, array of items]`."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return
    read_file = next(
        (
            tool["function"]
            for tool in tools
            if isinstance(tool, dict)
            and tool.get("type") == "function"
            and isinstance(tool.get("function"), dict)
            and tool["function"].get("name") == "read_file"
        ),
        None,
    )
    line_ranges = _dict_path(read_file, "parameters", "properties", "files", "items", "properties", "line_ranges")
    if line_ranges is None or not (js.truthy(line_ranges.get("type")) and js.truthy(line_ranges.get("items"))):
        return
    line_ranges["anyOf"] = [{"type": "null"}, {"type": "array", "items": line_ranges["items"]}]
    del line_ranges["type"], line_ranges["items"]


# --- 8. Qwen -------------------------------------------------------------------------------


def _clamp_qwen_output_tokens(body: dict[str, Any]) -> None:
    # OpenRouter lists a larger maximum output than the Qwen hosts accept.
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool) and js.truthy(value):
            body[field] = min(value, QWEN_MAX_OUTPUT_TOKENS)


# --- 9. Giga Potato ------------------------------------------------------------------------


def _apply_giga_potato(model_lower: str, body: dict[str, Any]) -> None:
    """A stealth model: it must not tell users what it really is."""
    messages = body.get("messages")
    if isinstance(messages, list):
        rule = {"type": "text", "text": GIGA_POTATO_RULE}
        system = _first_with_role(_messages(body), "system")
        if system is None:
            messages.insert(0, {"role": "system", "content": [rule]})
        elif isinstance(system.get("content"), list):
            system["content"].append(rule)
        elif js.truthy(system.get("content")):
            system["content"] = [{"type": "text", "text": system["content"]}, rule]
        else:
            system["content"] = [rule]
    # Both public models are the same endpoint; only the thinking switch tells them apart.
    body["thinking"] = {"type": "enabled" if model_lower == GIGA_POTATO_THINKING else "disabled"}


# --- 10. CoreThink -------------------------------------------------------------------------


def _apply_corethink(body: dict[str, Any]) -> None:
    # CoreThink rejects these OpenRouter/OpenCode extensions.
    for field in ("transforms", "prompt_cache_key", "safety_identifier", "description", "usage"):
        body.pop(field, None)
    for message in _messages(body):
        message.pop("reasoning", None)
        message.pop("reasoning_details", None)


# --- 11. Mistral ---------------------------------------------------------------------------


def _apply_mistral_model(body: dict[str, Any]) -> None:
    # Mistral's recommended temperature for coding.
    if "temperature" not in body:
        body["temperature"] = MISTRAL_DEFAULT_TEMPERATURE
    # Mistral accepts only 9-character tool-call ids.
    normalize_tool_call_ids(
        body, lambda tool_call_id: len(tool_call_id) != MISTRAL_TOOL_CALL_ID_LENGTH, MISTRAL_TOOL_CALL_ID_LENGTH
    )
    # Mistral's strict mode rejects the tool schemas clients send.
    drop_tool_strict_properties(body)
    if has_attempt_completion_tool(body):
        body["tool_choice"] = "required"


_MISTRAL_UNSUPPORTED_FIELDS = (
    "reasoning", "reasoning_effort", "transforms", "safety_identifier", "prompt_cache_key", "user", "provider"
)


def _apply_mistral_provider(body: dict[str, Any], extra_headers: dict[str, str]) -> None:
    # Mistral's own API: routes a conversation to the same replica so its cache is reused.
    cache_key = body.get("prompt_cache_key")
    if isinstance(cache_key, str) and cache_key:
        extra_headers["x-affinity"] = cache_key
    # The API rejects fields it does not know.
    for message in _messages(body):
        message.pop("reasoning_details", None)
    for field in _MISTRAL_UNSUPPORTED_FIELDS:
        body.pop(field, None)
    _apply_mistral_model(body)


# --- 12. Vercel AI Gateway -----------------------------------------------------------------


def _byok_configs(key: ByokKey) -> tuple[str, list[dict[str, Any]]]:
    """Vercel's provider id for the key and the credential entries it is tried with, in order."""
    # Codestral keys are Mistral keys (the id only separates the autocomplete product).
    name = "mistral" if key.provider_id == "codestral" else key.provider_id
    if name == "bedrock" and key.bedrock is not None:
        # Exactly the credentials: R's schema parse drops any other member of the stored JSON.
        return name, [{field: key.bedrock[field] for field in _AWS_CREDENTIAL_FIELDS}]
    configs: list[dict[str, Any]] = []
    if name == "zai":
        # A Z.AI key may belong to the Coding Plan, served from its own endpoint; tried first.
        configs.append({"apiKey": key.api_key, "baseURL": ZAI_CODING_PLAN_BASE_URL})
    configs.append({"apiKey": key.api_key})
    return name, configs


def _byok_gateway_options(user_byok: list[ByokKey]) -> dict[str, Any]:
    # `only` the customer's providers: a bad key fails the request instead of falling back to
    # (and billing) Kilo's own key.
    byok: dict[str, list[dict[str, Any]]] = {}
    for key in user_byok:
        name, configs = _byok_configs(key)
        byok.setdefault(name, []).extend(configs)
    return {"only": list(byok), "byok": byok}


# Members of a BYOK credential entry that are not secret.
_BYOK_PUBLIC_FIELDS = frozenset({"baseURL", "region"})
REDACTED = "[REDACTED]"


def without_byok_credentials(body: dict[str, Any]) -> dict[str, Any]:
    """The body as sent upstream with the customer's keys masked, for the request log (8.2):
    BYOK keys never leave the request to the provider (issue 14)."""
    options = body.get("providerOptions")
    gateway = options.get("gateway") if isinstance(options, dict) else None
    byok = gateway.get("byok") if isinstance(gateway, dict) else None
    if not isinstance(options, dict) or not isinstance(gateway, dict) or not isinstance(byok, dict):
        return body
    # The gateway built this map (_byok_gateway_options): lists of flat dicts.
    masked = {
        name: [{field: value if field in _BYOK_PUBLIC_FIELDS else REDACTED for field, value in entry.items()}
               for entry in entries]
        for name, entries in byok.items()
    }
    return {**body, "providerOptions": {**options, "gateway": {**gateway, "byok": masked}}}


def _gateway_options(provider: Any) -> dict[str, Any]:
    """OpenRouter's routing preferences in Vercel's terms; absent fields stay absent."""
    gateway: dict[str, Any] = {}
    if not isinstance(provider, dict):
        return gateway
    for field in ("only", "order"):
        ids = provider.get(field)
        if isinstance(ids, list):
            gateway[field] = [map_provider_id_to_vercel(p) if isinstance(p, str) else p for p in ids]
    if "zdr" in provider:
        gateway["zeroDataRetention"] = provider["zdr"]
    return gateway


def _apply_vercel(
    model_lower: str, body: dict[str, Any], catalogue: Catalogue, user_byok: list[ByokKey] | None
) -> None:
    body["model"] = map_model_id_to_vercel(model_lower, catalogue)
    gateway = _byok_gateway_options(user_byok) if user_byok else _gateway_options(body.get("provider"))
    # Set even when empty (decision 13): it replaces whatever providerOptions the client sent.
    provider_options: dict[str, Any] = {"gateway": gateway}
    verbosity = body.get("verbosity")
    if js.truthy(verbosity):
        # Vercel's Anthropic provider takes OpenAI's verbosity as its effort setting.
        provider_options["anthropic"] = {"effort": verbosity}
    body["providerOptions"] = provider_options
    # Vercel does not understand OpenRouter's provider object.
    body.pop("provider", None)
