"""Pure admission rules: kilo/auto (contract 2.3), client headers (2.1, 2.9), validation (2.11),
organisation restrictions and the data-collection gate (2.12, 2.13), identity rules (2.5, 8.2)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from extproc.auth.rules import email_blacklisted, is_employee, is_uuid
from extproc.auth.tokens import mint_token, verify_token
from extproc.pipeline.auto_model import AutoModel, apply_auto_model, resolve_auto_model
from extproc.pipeline.client_headers import (
    extract_client_info,
    feature_from,
    limited_header,
    normalize_project_id,
    parse_version,
)
from extproc.pipeline.organization import apply_organization_rules, data_collection_gate
from extproc.pipeline.rejection import Rejection
from extproc.pipeline.validation import MAX_TOKENS_LIMIT, validate_request
from extproc.state import ChatRequest
from tests.bodies import APPENDIX_A, Reply
from tests.contract_models import catalogue

CATALOGUE = catalogue()
GATEWAY_PATH = "/api/gateway/chat/completions"
LEGACY_PATH = "/api/openrouter/chat/completions"
EMPLOYEE_ORG = "9d278969-5453-4ae3-a51f-a8d2274a7b56"
OPUS = "anthropic/claude-opus-4.6"
SONNET = "anthropic/claude-sonnet-4.6"


def chat_request(model: str, **fields: Any) -> ChatRequest:
    return ChatRequest(body={"model": model, **fields}, model=model, model_lower=model.strip().lower(), stream=False)


def assert_rejection(call: Any, reply: Reply | None) -> None:
    """The call passes (None), or is refused with the contract's status and body."""
    if reply is None:
        call()
        return
    with pytest.raises(Rejection) as caught:
        call()
    assert (caught.value.error.status, caught.value.error.body) == (reply.status, reply.body)


# --- 2.3 kilo/auto -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "model", "verbosity"),
    [
        ("plan", OPUS, "high"),
        ("architect", OPUS, "high"),
        ("orchestrator", OPUS, "high"),
        ("ask", OPUS, "high"),
        ("debug", OPUS, "high"),
        ("general", OPUS, "medium"),
        ("build", SONNET, "medium"),
        ("explore", SONNET, "medium"),
        ("code", SONNET, "low"),
        (None, SONNET, "low"),
        ("", SONNET, "low"),
        ("   ", SONNET, "low"),
        ("unknown", SONNET, "low"),
        ("  Plan\t", OPUS, "high"),
        ("DEBUG", OPUS, "high"),
        ("plan" + " " * 600, OPUS, "high"),  # the padding is cut off at 500, then trimmed
        (" " * 498 + "plan", SONNET, "low"),  # cut to "pl"
        ("plan" + "x" * 600, SONNET, "low"),
    ],
)
def test_kilo_auto_by_mode(mode: str | None, model: str, verbosity: str) -> None:
    assert resolve_auto_model("kilo/auto", mode) == AutoModel(
        model, {"model": model, "reasoning": {"enabled": True}, "verbosity": verbosity}
    )


@pytest.mark.parametrize(
    ("model_lower", "mode", "expected"),
    [
        ("kilo/auto-free", None, "minimax/minimax-m2.5:free"),
        ("kilo/auto-free", "plan", "minimax/minimax-m2.5:free"),
        ("kilo/auto-small", None, "openai/gpt-5-nano"),
        ("kilo/auto-small", "plan", "openai/gpt-5-nano"),
    ],
)
def test_kilo_auto_free_and_small_set_only_the_model(model_lower: str, mode: str | None, expected: str) -> None:
    assert resolve_auto_model(model_lower, mode) == AutoModel(expected, {"model": expected})


@pytest.mark.parametrize("model_lower", ["openai/gpt-4o", "kilo/auto-frontier", "kilo/automatic", "kilo-auto/free", ""])
def test_other_models_are_not_auto(model_lower: str) -> None:
    assert resolve_auto_model(model_lower, "plan") is None


def test_apply_overwrites_model_reasoning_verbosity_and_keeps_the_rest() -> None:
    chat = ChatRequest(
        body={"model": " Kilo/Auto ", "reasoning": {"effort": "low"}, "verbosity": "high", "messages": [], "stream": True},
        model=" Kilo/Auto ",
        model_lower="kilo/auto",
        stream=True,
    )
    resolved = resolve_auto_model(chat.model_lower, "code")
    assert resolved is not None
    applied = apply_auto_model(chat, resolved)
    assert applied.body == {
        "model": SONNET,
        "reasoning": {"enabled": True},
        "verbosity": "low",
        "messages": [],
        "stream": True,
    }
    assert (applied.model, applied.model_lower, applied.stream) == (SONNET, SONNET, True)
    assert chat.body["model"] == " Kilo/Auto "  # the input is not mutated


def test_apply_free_auto_leaves_client_reasoning_alone() -> None:
    chat = chat_request("kilo/auto-free", reasoning={"effort": "low"})
    resolved = resolve_auto_model(chat.model_lower, None)
    assert resolved is not None
    assert apply_auto_model(chat, resolved).body == {"model": "minimax/minimax-m2.5:free", "reasoning": {"effort": "low"}}


def test_model_lower_is_lowercased() -> None:
    applied = apply_auto_model(chat_request("kilo/auto"), AutoModel("Some/Model", {"model": "Some/Model"}))
    assert (applied.model, applied.model_lower) == ("Some/Model", "some/model")


def test_resolutions_do_not_share_mutable_fields() -> None:
    first, second = resolve_auto_model("kilo/auto", None), resolve_auto_model("kilo/auto", None)
    assert first is not None and second is not None
    first.fields["reasoning"]["enabled"] = False
    assert second.fields["reasoning"] == {"enabled": True}


# --- 2.9 headers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "limit", "expected"),
    [
        ({}, 500, None),
        ({"x-h": ""}, 500, None),
        ({"x-h": " \t "}, 500, None),
        ({"x-h": "  task-1 "}, 500, "task-1"),
        ({"x-h": "a" * 600}, 500, "a" * 500),
        ({"x-h": " " + "a" * 600}, 500, "a" * 499),  # sliced before trimming
        ({"x-h": "abcdef"}, 3, "abc"),
    ],
)
def test_limited_header(headers: dict[str, str], limit: int, expected: str | None) -> None:
    assert limited_header(headers, "x-h", limit) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("https://github.com/Kilo-Org/handbook.git", "handbook"),
        ("https://github.com/Kilo-Org/handbook", "handbook"),
        ("http://gitlab.example.com/group/sub/repo", "repo"),
        ("HTTPS://GitHub.com/Kilo-Org/Handbook.GIT", "Handbook"),
        ("git@github.com:Kilo-Org/handbook.git", "handbook"),
        ("git@github.com:handbook", "handbook"),
        ("GIT@github.com:Kilo-Org/handbook.Git", "handbook"),
        ("https://github.com/Kilo-Org/handbook.git?ref=main", "https://github.com/Kilo-Org/handbook.git?ref=main"),
        ("https://github.com/Kilo-Org/handbook#readme", "https://github.com/Kilo-Org/handbook#readme"),
        ("https://github.com/Kilo Org/handbook", "https://github.com/Kilo Org/handbook"),
        ("https://github.com/Kilo-Org/handbook\n", "https://github.com/Kilo-Org/handbook\n"),
        ("git@github.com:Kilo Org/handbook.git", "git@github.com:Kilo Org/handbook.git"),
        ("https://github.com", "https://github.com"),
        ("ssh://git@github.com/Kilo-Org/handbook.git", "ssh://git@github.com/Kilo-Org/handbook.git"),
        ("my-project", "my-project"),
        ("p" * 300, "p" * 256),
        ("https://github.com/org/" + "r" * 300, "r" * (256 - len("https://github.com/org/"))),
    ],
)
def test_normalize_project_id(value: str | None, expected: str | None) -> None:
    assert normalize_project_id(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("4.112.1", 4.112001),
        ("1.2.3-prerelease", 1.002003),
        ("1.2.3-beta.1", 1.002003),
        ("1.2.3 (darwin)", 1.002003),
        ("4", 4.0),
        ("4.5", 4.005),
        ("007.010.020", 7.01002),
        ("abc", 0.0),
        ("v1.2.3", 0.0),
        (" 1.2.3", 0.0),
        ("1.2.3x", 0.0),
        ("1.2.3.4", 0.0),
        ("1.2.3-", 0.0),
        ("", 0.0),
        (None, 0.0),
    ],
)
def test_parse_version(value: str | None, expected: float) -> None:
    assert parse_version(value) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("headers", "path", "expected"),
    [
        ({}, GATEWAY_PATH, "direct-gateway"),
        ({}, LEGACY_PATH, None),
        ({}, LEGACY_PATH + "?a=1", None),
        ({}, GATEWAY_PATH + "?next=/openrouter", "direct-gateway"),  # the query is not the pathname
        ({"x-kilocode-feature": ""}, GATEWAY_PATH, "direct-gateway"),  # empty counts as absent
        ({"x-kilocode-feature": ""}, LEGACY_PATH, None),
        ({"x-kilocode-feature": "cli"}, LEGACY_PATH, "cli"),
        ({"x-kilocode-feature": "  VSCode-Extension "}, GATEWAY_PATH, "vscode-extension"),
        ({"x-kilocode-feature": "kiloclaw"}, GATEWAY_PATH, "kiloclaw"),
        ({"x-kilocode-feature": "openclaw"}, GATEWAY_PATH, "openclaw"),
        ({"x-kilocode-feature": "direct-gateway"}, LEGACY_PATH, "direct-gateway"),
        ({"x-kilocode-feature": "kilo-claw"}, GATEWAY_PATH, None),  # W's spelling, not R's
        ({"x-kilocode-feature": "bogus"}, GATEWAY_PATH, None),  # present but invalid: no default
        ({"x-kilocode-feature": "   "}, GATEWAY_PATH, None),
    ],
)
def test_feature(headers: dict[str, str], path: str, expected: str | None) -> None:
    assert feature_from(headers, path) == expected


def test_extract_client_info() -> None:
    headers = {
        "x-kilocode-taskid": " task-1 ",
        "x-kilocode-editorname": "VS Code 1.99",
        "x-kilocode-machineid": "m" * 600,
        "x-kilocode-mode": " Code ",
        "x-kilocode-projectid": "git@github.com:Kilo-Org/handbook.git",
        "x-kilocode-version": "4.112.1",
        "x-kilocode-feature": "cli",
        "user-agent": "Kilo-Code/4.112.1",
        "x-forwarded-for": "203.0.113.7, 10.0.0.1",
    }
    info = extract_client_info(headers, GATEWAY_PATH)
    assert info.task_id == "task-1"
    assert info.editor_name == "VS Code 1.99"
    assert info.machine_id == "m" * 500
    assert info.mode == "Code"  # kept as sent; only kilo/auto resolution lowercases it
    assert info.project_id == "handbook"
    assert info.version == pytest.approx(4.112001)
    assert info.feature == "cli"
    assert info.user_agent == "Kilo-Code/4.112.1"
    assert info.forwarded_for == "203.0.113.7, 10.0.0.1"
    assert (info.is_legacy_extension, info.is_opencode) == (True, False)


def test_extract_client_info_without_headers() -> None:
    info = extract_client_info({}, LEGACY_PATH)
    assert (info.task_id, info.editor_name, info.machine_id, info.mode, info.project_id) == (None,) * 5
    assert (info.version, info.feature, info.user_agent, info.forwarded_for) == (0.0, None, None, None)
    assert (info.is_legacy_extension, info.is_opencode) == (False, False)


@pytest.mark.parametrize(
    ("user_agent", "legacy", "opencode"),
    [
        ("Kilo-Code/4.0.0", True, False),
        ("kilo-code/4.0.0", False, False),
        ("opencode-kilo-provider/7.1.0", False, True),
        ("opencode-kilo-provider", False, True),
        ("Mozilla/5.0 Kilo-Code/4.0.0", False, False),
    ],
)
def test_client_family(user_agent: str, legacy: bool, opencode: bool) -> None:
    info = extract_client_info({"user-agent": user_agent}, GATEWAY_PATH)
    assert (info.is_legacy_extension, info.is_opencode) == (legacy, opencode)


# --- 2.11 validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "fields", "error"),
    [
        ("openai/gpt-4o", {}, None),
        ("openai/gpt-4o", {"max_tokens": MAX_TOKENS_LIMIT}, None),
        ("openai/gpt-4o", {"max_tokens": MAX_TOKENS_LIMIT + 1}, APPENDIX_A["SERVICE_UNAVAILABLE"]),
        ("openai/gpt-4o", {"max_tokens": 1e12}, APPENDIX_A["SERVICE_UNAVAILABLE"]),
        ("openai/gpt-4o", {"max_completion_tokens": MAX_TOKENS_LIMIT + 1}, APPENDIX_A["SERVICE_UNAVAILABLE"]),
        ("openai/gpt-4o", {"max_tokens": None, "max_completion_tokens": MAX_TOKENS_LIMIT + 1}, APPENDIX_A["SERVICE_UNAVAILABLE"]),
        # max_tokens wins when it is a number, however small
        ("openai/gpt-4o", {"max_tokens": 100, "max_completion_tokens": MAX_TOKENS_LIMIT + 1}, None),
        ("openai/gpt-4o", {"max_tokens": MAX_TOKENS_LIMIT + 1, "max_completion_tokens": 100}, APPENDIX_A["SERVICE_UNAVAILABLE"]),
        # non-numbers are ignored
        ("openai/gpt-4o", {"max_tokens": "100000000000"}, None),
        ("openai/gpt-4o", {"max_completion_tokens": "100000000000"}, None),
        ("openai/gpt-4o", {"max_tokens": True}, None),
        ("openai/gpt-4o", {"max_tokens": "x", "max_completion_tokens": MAX_TOKENS_LIMIT + 1}, APPENDIX_A["SERVICE_UNAVAILABLE"]),
        ("minimax/minimax-m2.1:free", {}, APPENDIX_A["MODEL_ALPHA_ENDED"]),
        ("x-ai/grok-code-fast-1:optimized:free", {}, APPENDIX_A["MODEL_ALPHA_ENDED"]),
        ("z-ai/glm-5:free", {}, APPENDIX_A["MODEL_ALPHA_ENDED"]),
        ("minimax/minimax-m2.5:free", {}, None),
        ("qwen/qwen3-coder:free", {}, APPENDIX_A["MODEL_NOT_FOUND"]),
        ("Qwen/Qwen3-Coder:free", {}, APPENDIX_A["MODEL_NOT_FOUND"]),  # looked up lowercased
        ("qwen/qwen3-coder", {}, None),
        # order: the token cap first, then dead, then rate-limited-to-death
        ("minimax/minimax-m2.1:free", {"max_tokens": MAX_TOKENS_LIMIT + 1}, APPENDIX_A["SERVICE_UNAVAILABLE"]),
        ("qwen/qwen3-coder:free", {"max_completion_tokens": MAX_TOKENS_LIMIT + 1}, APPENDIX_A["SERVICE_UNAVAILABLE"]),
    ],
)
def test_validate_request(model: str, fields: dict[str, Any], error: Reply | None) -> None:
    assert_rejection(lambda: validate_request(chat_request(model, **fields), CATALOGUE), error)


# --- 2.12 organisation restrictions --------------------------------------------------------

CLIENT_PROVIDER = {"order": ["openai"], "data_collection": "allow"}


@pytest.mark.parametrize(
    ("model", "plan", "settings", "error", "provider"),
    [
        # no settings: nothing happens, the client's provider stays
        ("openai/gpt-4o", "enterprise", None, None, CLIENT_PROVIDER),
        ("openai/gpt-4o", "enterprise", {}, None, CLIENT_PROVIDER),
        ("openai/gpt-4o", "enterprise", {"model_allow_list": []}, None, CLIENT_PROVIDER),
        # enterprise model allow list: exact (normalised) id or `<provider>/*`
        ("anthropic/claude-sonnet-4.6", "enterprise", {"model_allow_list": ["anthropic/*"]}, None, CLIENT_PROVIDER),
        ("openai/gpt-4o", "enterprise", {"model_allow_list": ["anthropic/*"]}, APPENDIX_A["MODEL_NOT_ALLOWED"], None),
        ("openai/gpt-4o", "enterprise", {"model_allow_list": ["openai/gpt-4o"]}, None, CLIENT_PROVIDER),
        ("openai/gpt-4o-mini", "enterprise", {"model_allow_list": ["openai/gpt-4o"]}, APPENDIX_A["MODEL_NOT_ALLOWED"], None),
        ("moonshotai/kimi-k2.5:free", "enterprise", {"model_allow_list": ["moonshotai/kimi-k2.5"]}, None, CLIENT_PROVIDER),
        ("openai/gpt-4o:exacto", "enterprise", {"model_allow_list": ["openai/gpt-4o"]}, None, CLIENT_PROVIDER),
        ("moonshotai/kimi-k2.5:free", "enterprise", {"model_allow_list": ["moonshotai/kimi-k2.5:free"]}, APPENDIX_A["MODEL_NOT_ALLOWED"], None),
        ("giga-potato", "enterprise", {"model_allow_list": ["giga-potato/*"]}, None, CLIENT_PROVIDER),
        ("openai/gpt-4o", "enterprise", {"model_allow_list": ["openai"]}, APPENDIX_A["MODEL_NOT_ALLOWED"], None),
        # enterprise provider allow list: required providers of Kilo free models, then `only`
        ("openai/gpt-4o", "enterprise", {"provider_allow_list": ["openai"]}, None, {"only": ["openai"]}),
        ("giga-potato", "enterprise", {"provider_allow_list": ["openai"]}, APPENDIX_A["MODEL_NOT_ALLOWED"], None),
        ("giga-potato", "enterprise", {"provider_allow_list": ["openai", "stealth"]}, None, {"only": ["openai", "stealth"]}),
        # decision 12: the raw id, so the `:free` entry's providers are enforced
        ("corethink:free", "enterprise", {"provider_allow_list": ["openai"]}, APPENDIX_A["MODEL_NOT_ALLOWED"], None),
        ("corethink:free", "enterprise", {"provider_allow_list": ["corethink"]}, None, {"only": ["corethink"]}),
        # a disabled stealth model still requires its providers
        ("x-ai/grok-code-fast-1:optimized:free", "enterprise", {"provider_allow_list": ["x-ai"]}, APPENDIX_A["MODEL_NOT_ALLOWED"], None),
        # a free model without required providers passes any allow list
        ("moonshotai/kimi-k2.5:free", "enterprise", {"provider_allow_list": ["openai"]}, None, {"only": ["openai"]}),
        # both lists: the model list is checked first, then the provider list
        (
            "giga-potato",
            "enterprise",
            {"model_allow_list": ["giga-potato"], "provider_allow_list": ["stealth"], "data_collection": "deny"},
            None,
            {"only": ["stealth"], "data_collection": "deny"},
        ),
        # data_collection applies to every plan and replaces the client's provider entirely
        ("openai/gpt-4o", "enterprise", {"data_collection": "deny"}, None, {"data_collection": "deny"}),
        ("openai/gpt-4o", "teams", {"data_collection": "allow"}, None, {"data_collection": "allow"}),
        ("openai/gpt-4o", None, {"data_collection": "deny"}, None, {"data_collection": "deny"}),
        ("openai/gpt-4o", "teams", {"data_collection": "maybe"}, None, CLIENT_PROVIDER),
        # teams: allow lists are not enforced and impose nothing
        (
            "openai/gpt-4o",
            "teams",
            {"model_allow_list": ["anthropic/*"], "provider_allow_list": ["anthropic"]},
            None,
            CLIENT_PROVIDER,
        ),
        (
            "giga-potato",
            "teams",
            {"model_allow_list": ["anthropic/*"], "provider_allow_list": ["anthropic"], "data_collection": "deny"},
            None,
            {"data_collection": "deny"},
        ),
        # settings that are not arrays are no lists
        ("openai/gpt-4o", "enterprise", {"model_allow_list": "anthropic/*", "provider_allow_list": None}, None, CLIENT_PROVIDER),
    ],
)
def test_organization_rules(
    model: str,
    plan: str | None,
    settings: dict[str, Any] | None,
    error: Reply | None,
    provider: dict[str, Any] | None,
) -> None:
    body: dict[str, Any] = {"model": model, "provider": dict(CLIENT_PROVIDER)}
    assert_rejection(lambda: apply_organization_rules(body, model, plan, settings, CATALOGUE), error)
    if error is None:
        assert body["provider"] == provider


def test_organization_rules_set_provider_when_the_client_sent_none() -> None:
    body: dict[str, Any] = {"model": "openai/gpt-4o"}
    allow_list = ["openai"]
    apply_organization_rules(body, "openai/gpt-4o", "enterprise", {"provider_allow_list": allow_list}, CATALOGUE)
    assert body == {"model": "openai/gpt-4o", "provider": {"only": ["openai"]}}
    body["provider"]["only"].append("x")
    assert allow_list == ["openai"]  # the settings are not aliased into the body


# --- 2.13 data-collection gate -------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "provider", "error"),
    [
        ("giga-potato", None, None),
        ("giga-potato", {}, None),
        ("giga-potato", {"data_collection": "allow"}, None),
        ("giga-potato", {"data_collection": "deny"}, APPENDIX_A["DATA_COLLECTION_REQUIRED"]),
        ("giga-potato", {"zdr": True}, APPENDIX_A["DATA_COLLECTION_REQUIRED"]),
        ("giga-potato", {"data_collection": "allow", "zdr": True}, APPENDIX_A["DATA_COLLECTION_REQUIRED"]),
        ("giga-potato", {"zdr": False}, None),
        ("giga-potato", {"zdr": 0}, None),
        ("giga-potato", {"zdr": ""}, None),
        ("giga-potato", {"zdr": None}, None),
        ("giga-potato", {"zdr": "yes"}, APPENDIX_A["DATA_COLLECTION_REQUIRED"]),
        ("giga-potato", {"zdr": []}, APPENDIX_A["DATA_COLLECTION_REQUIRED"]),  # truthy in the reference
        ("giga-potato", {"data_collection": "DENY"}, None),
        ("giga-potato", "deny", None),
        ("giga-potato", ["deny"], None),
        ("corethink:free", {"data_collection": "deny"}, APPENDIX_A["DATA_COLLECTION_REQUIRED"]),
        ("minimax/minimax-m2.5:free", {"zdr": True}, APPENDIX_A["DATA_COLLECTION_REQUIRED"]),
        # only enabled Kilo-hosted free models
        ("minimax/minimax-m2.1:free", {"data_collection": "deny"}, None),
        ("qwen/qwen3-coder:free", {"data_collection": "deny"}, None),
        ("openai/gpt-4o", {"data_collection": "deny", "zdr": True}, None),
    ],
)
def test_data_collection_gate(model: str, provider: Any, error: Reply | None) -> None:
    body: dict[str, Any] = {"model": model} if provider is None else {"model": model, "provider": provider}
    assert_rejection(lambda: data_collection_gate(body, model, CATALOGUE), error)


@pytest.mark.parametrize(
    ("plan", "settings", "error"),
    [
        ("teams", {"data_collection": "deny"}, APPENDIX_A["DATA_COLLECTION_REQUIRED"]),
        ("teams", {"data_collection": "allow"}, None),  # the organisation's choice replaces the client's zdr
        ("enterprise", {"provider_allow_list": ["stealth"]}, None),
    ],
)
def test_gate_sees_the_organization_provider(
    plan: str, settings: dict[str, Any], error: Reply | None
) -> None:
    body: dict[str, Any] = {"model": "giga-potato", "provider": {"zdr": True}}
    apply_organization_rules(body, "giga-potato", plan, settings, CATALOGUE)
    assert_rejection(lambda: data_collection_gate(body, "giga-potato", CATALOGUE), error)


# --- 2.5 / 8.2 identity rules --------------------------------------------------------------


@pytest.mark.parametrize(
    ("email", "domains", "expected"),
    [
        ("user@spam.com", ["spam.com"], True),
        ("User@SPAM.com", ["spam.com"], True),
        ("user@mail.spam.com", ["spam.com"], True),
        ("user@notspam.com", ["spam.com"], False),
        ("user@spam.com.au", ["spam.com"], False),
        ("user@example.com", ["spam.com", "example.com"], True),
        ("user@example.com", [], False),
    ],
)
def test_email_blacklisted(email: str, domains: list[str], expected: bool) -> None:
    assert email_blacklisted(email, domains) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("9d278969-5453-4ae3-a51f-a8d2274a7b56", True),
        ("9D278969-5453-4AE3-A51F-A8D2274A7B56", True),
        ("00000000-0000-0000-0000-000000000000", True),
        ("9d278969545344ae3a51fa8d2274a7b56", False),
        ("{9d278969-5453-4ae3-a51f-a8d2274a7b56}", False),
        ("9d278969-5453-4ae3-a51f-a8d2274a7b56\n", False),
        ("9d278969-5453-4ae3-a51f-a8d2274a7b5g", False),
        ("9d278969-5453-4ae3-a51f-a8d2274a7b5", False),
        ("", False),
        ("not-a-uuid", False),
    ],
)
def test_is_uuid(value: str, expected: bool) -> None:
    assert is_uuid(value) is expected


@pytest.mark.parametrize(
    ("email", "organization_id", "expected"),
    [
        ("dev@kilo.ai", None, True),
        ("dev@kilocode.ai", None, True),
        ("dev@example.com", EMPLOYEE_ORG, True),
        (None, EMPLOYEE_ORG, True),
        ("dev@example.com", None, False),
        ("dev@example.com", "11111111-1111-1111-1111-111111111111", False),
        ("dev@notkilo.ai", None, False),
        ("dev@kilo.ai.example.com", None, False),
        (None, None, False),
    ],
)
def test_is_employee(email: str | None, organization_id: str | None, expected: bool) -> None:
    assert is_employee(email, organization_id, EMPLOYEE_ORG) is expected


# --- token verification cache --------------------------------------------------------------


def test_a_remembered_token_still_expires() -> None:
    secret = "unit-test-secret-of-a-decent-length-32"
    token = mint_token("user-1", secret, expires_in=1)
    assert verify_token(token, secret) is not None
    assert verify_token(token, secret) is not None  # from the cache
    time.sleep(2.05)
    assert verify_token(token, secret) is None


def test_a_remembered_token_is_not_valid_under_another_secret() -> None:
    token = mint_token("user-2", "first-secret-of-a-decent-length-32b")
    assert verify_token(token, "first-secret-of-a-decent-length-32b") is not None
    assert verify_token(token, "second-secret-of-a-decent-length-32") is None
