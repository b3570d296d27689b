"""The request core without Envoy (issue 15, part 2): one `ChatExchange` fed Envoy's messages,
its collaborators in-memory fakes. No process, socket or database; milliseconds per test.

Expected statuses and bodies are the contract's text (behaviour.md Appendix A, 3.1, 3.2, 6.2,
6.3, 7.1), written out here, never read from extproc.errors. Appendix A rows 1 and 2 (paths)
are answered by Envoy's routes, not by the ext_proc: tests/test_envoy_config.py and the e2e
suite hold them.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)
from google.protobuf.struct_pb2 import Struct, Value
from pydantic import SecretStr

from extproc.accounting.record import UsageRecord
from extproc.auth.tokens import mint_token
from extproc.byok import ByokDecryptionError
from extproc.catalogue import DEFAULT_FREE_MODELS, FreeModel
from extproc.collaborators import Collaborators
from extproc.custom_llm import CustomLlm, PinnedUpstream, UnsafeCustomLlmUrl
from extproc.directory import OrganizationAccount, User
from extproc.envoy_names import EXTPROC_FILTER
from extproc.exchange import ChatExchange
from extproc.limits import Admission
from extproc.pipeline.routing import Router
from extproc.response_usage import ResponseSummary
from extproc.settings import DEFAULT_PROVIDERS, Provider, Settings, load_settings
from extproc.shaping.provider_rules import ByokKey
from extproc.side.api_metrics import AnsweredRequest

SECRET = "unit-test-nextauth-secret-of-enough-length"
BYOK_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
IP = "203.0.113.9"
PATH = "/api/gateway/chat/completions"
ORG = "4f6a1c7e-0b1d-4c55-9d7e-2a3b4c5d6e7f"
PAID = "z-ai/glm-5"  # a paid model in the Vercel A/B's preferred list (3.5)
NOT_AB = "anthropic/claude-sonnet-4.6"  # paid, never sent to Vercel by the A/B (3.5)
KILO_FREE = "corethink:free"  # an enabled Kilo free model served by its own gateway (4.2)

# Appendix A, verbatim.
INVALID_JSON = {
    "error": "Invalid request",
    "message": "Could not parse request body. Please ensure it is valid JSON.",
}
MODEL_NOT_FOUND = {"error": "Model not found", "message": "The requested model could not be found."}
FREE_LIMIT = {
    "error": "Rate limit exceeded",
    "message": "Free model usage limit reached. Please try again later or upgrade to a paid model.",
}
AUTH_REQUIRED = {"error": {"code": "PAID_MODEL_AUTH_REQUIRED", "message": "You need to sign in to use this model."}}
PROMOTION_LIMIT = {
    "error": {
        "code": "PROMOTION_MODEL_LIMIT_REACHED",
        "message": "Sign up for free to continue and explore 500 other models. Takes 2 minutes, no credit card "
        "required. Or come back later.",
    }
}
UNAVAILABLE = {
    "error": "Service Unavailable",
    "message": "The service is temporarily unavailable. Please try again later.",
}
ALPHA_ENDED = {
    "error": "The alpha period for this model has ended.",
    "message": "The alpha period for this model has ended.",
}
NOT_ALLOWED = {"error": "Model not allowed for your team.", "message": "The requested model is not allowed for your team."}
_DATA_COLLECTION = (
    "Data collection is required for this model. Please enable data collection to use this model or choose "
    "another model."
)
DATA_COLLECTION = {"error": _DATA_COLLECTION, "message": _DATA_COLLECTION}
INTERNAL = {"error": "Internal server error"}


def readable(message: str) -> dict[str, str]:
    return {"error": message, "message": message}


# --- fakes -------------------------------------------------------------------------------------


def user(user_id: str = "user-1", *, balance_usd: int = 10) -> User:
    return User(user_id, f"{user_id}@example.com", None, None, 0, balance_usd * 1_000_000)


@dataclass
class FakeAccounts:
    users: dict[str, User] = field(default_factory=dict)
    members: set[tuple[str, str]] = field(default_factory=set)
    organizations: dict[str, OrganizationAccount] = field(default_factory=dict)
    returning: set[str] = field(default_factory=set)
    failure: Exception | None = None

    async def user(self, user_id: str) -> User | None:
        if self.failure is not None:
            raise self.failure
        return self.users.get(user_id)

    async def is_member(self, organization_id: str, user_id: str) -> bool:
        return (organization_id, user_id) in self.members

    async def organization_account(self, organization_id: str, user_id: str) -> OrganizationAccount | None:
        return self.organizations.get(organization_id)

    async def is_returning_customer(self, user_id: str) -> bool:
        return user_id in self.returning


@dataclass
class FakeLimiter:
    answer: Admission = Admission.ADMITTED
    calls: list[tuple[str, bool, bool]] = field(default_factory=list)

    async def admit(self, ip: str, *, kilo_free: bool, anonymous: bool, request_id: str) -> Admission:
        self.calls.append((ip, kilo_free, anonymous))
        return self.answer


@dataclass
class FakeFreeUsage:
    rows: list[tuple[str, str, str | None]] = field(default_factory=list)

    async def record(self, ip: str, model_lower: str, user_id: str | None) -> None:
        self.rows.append((ip, model_lower, user_id))


@dataclass
class FakeByok:
    providers: list[str] = field(default_factory=list)
    stored: list[ByokKey] = field(default_factory=list)
    unreadable: bool = False

    async def providers_for_model(self, model_lower: str, vercel_model_id: str) -> list[str]:
        return self.providers

    async def keys(
        self, provider_ids: Sequence[str], *, user_id: str, organization_id: str | None, encryption_key: bytes
    ) -> list[ByokKey]:
        if self.unreadable:
            raise ByokDecryptionError("tag mismatch")
        return [key for key in self.stored if key.provider_id in provider_ids]


CHECKED_ADDRESS = "203.0.113.7"  # what the fake SSRF check resolved the custom host to


@dataclass
class FakeCustomLlms:
    rows: dict[str, CustomLlm] = field(default_factory=dict)
    unsafe: bool = False

    async def get(self, public_id: str) -> CustomLlm | None:
        return self.rows.get(public_id)

    async def upstream(self, llm: CustomLlm) -> PinnedUpstream:
        if self.unsafe:
            raise UnsafeCustomLlmUrl("10.0.0.7 is private")
        provider = Provider(id="custom", api_url=llm.base_url, api_key=SecretStr(llm.api_key))
        return PinnedUpstream(provider, f"{CHECKED_ADDRESS}:{provider.port}")


@dataclass
class FakeErrorRates:
    rates: tuple[float, float] = (0.0, 0.0)

    async def get(self) -> tuple[float, float]:
        return self.rates


@dataclass
class FakeCooldowns:
    cooling: frozenset[str] = frozenset()
    observed: list[tuple[str, str, int, str | None]] = field(default_factory=list)

    async def cooled(self, providers: Any, model: str) -> frozenset[str]:
        return self.cooling & frozenset(providers)

    def observe(self, provider: str, model: str, status: int, retry_after: str | None) -> None:
        self.observed.append((provider, model, status, retry_after))


@dataclass
class FakeSubmitter:
    records: list[UsageRecord] = field(default_factory=list)
    written_ahead: list[UsageRecord] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)

    def submit(self, record: UsageRecord, abuse_request_id: Any = None) -> None:
        self.records.append(record)

    def write_ahead(self, record: UsageRecord) -> None:
        # The record as it is now, as the real submitter serialises it at once.
        self.written_ahead.append(replace(record))

    def forget(self, usage_id: str) -> None:
        self.forgotten.append(usage_id)


@dataclass
class FakeAbuse:
    def classify(self, *args: Any, **kwargs: Any) -> None:
        return None  # the service is off


@dataclass
class FakeApiMetrics:
    reports: list[tuple[AnsweredRequest, ResponseSummary | None]] = field(default_factory=list)
    enabled: bool = True

    def report(self, request: AnsweredRequest, summary: ResponseSummary | None) -> None:
        self.reports.append((request, summary))


def no_phase_memory(user_id: str, task_id: str | None) -> Any:
    raise AssertionError("only a custom LLM at OpenAI's own endpoint remembers phases")


@dataclass
class World:
    settings: Settings
    accounts: FakeAccounts = field(default_factory=FakeAccounts)
    limiter: FakeLimiter = field(default_factory=FakeLimiter)
    free_usage: FakeFreeUsage = field(default_factory=FakeFreeUsage)
    byok: FakeByok = field(default_factory=FakeByok)
    custom_llms: FakeCustomLlms = field(default_factory=FakeCustomLlms)
    error_rates: FakeErrorRates = field(default_factory=FakeErrorRates)
    cooldowns: FakeCooldowns = field(default_factory=FakeCooldowns)
    submitter: FakeSubmitter = field(default_factory=FakeSubmitter)
    api_metrics: FakeApiMetrics = field(default_factory=FakeApiMetrics)

    def core(self) -> Collaborators:
        router = Router(
            settings=self.settings,
            byok=self.byok,
            byok_key=b"\x00" * 32,
            custom_llms=self.custom_llms,
            error_rates=self.error_rates,
            cooldowns=self.cooldowns,
        )
        return Collaborators(
            settings=self.settings,
            router=router,
            accounts=self.accounts,
            limiter=self.limiter,
            free_usage=self.free_usage,
            phase_memories=no_phase_memory,
            submitter=self.submitter,
            abuse=FakeAbuse(),
            api_metrics=self.api_metrics,
            cooldowns=self.cooldowns,
        )


def make_settings(**overrides: Any) -> Settings:
    return load_settings(nextauth_secret=SECRET, byok_encryption_key=BYOK_KEY, **overrides)


@pytest.fixture
def world() -> World:
    return World(make_settings())


def signed_in(world: World, account: User | None = None, *, organization: str | None = None) -> dict[str, str]:
    account = account or user()
    world.accounts.users[account.id] = account
    headers = {"authorization": f"Bearer {mint_token(account.id, SECRET)}"}
    if organization is not None:
        world.accounts.members.add((organization, account.id))
        headers["x-kilocode-organizationid"] = organization
    return headers


# --- Envoy's messages ----------------------------------------------------------------------------


def _header_map(headers: dict[str, str]) -> HeaderMap:
    return HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()])


def request_headers(headers: dict[str, str], *, ip: str | None = IP, end_of_stream: bool = False) -> ProcessingRequest:
    all_headers = {":method": "POST", ":path": PATH, "x-request-id": "req-1", **headers}
    message = ProcessingRequest(request_headers=HttpHeaders(headers=_header_map(all_headers), end_of_stream=end_of_stream))
    if ip is not None:
        message.attributes[EXTPROC_FILTER].CopyFrom(
            Struct(fields={"source.address": Value(string_value=f"{ip}:51234")})
        )
    return message


def request_body(body: dict[str, Any] | bytes) -> ProcessingRequest:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return ProcessingRequest(request_body=HttpBody(body=raw, end_of_stream=True))


def response_headers(status: int, content_type: str) -> ProcessingRequest:
    headers = {":status": str(status), "content-type": content_type}
    return ProcessingRequest(response_headers=HttpHeaders(headers=_header_map(headers)))


def response_chunk(body: bytes, *, end_of_stream: bool) -> ProcessingRequest:
    return ProcessingRequest(response_body=HttpBody(body=body, end_of_stream=end_of_stream))


def chat(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}


async def send(
    world: World, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None, *, ip: str | None = IP
) -> tuple[ChatExchange, ProcessingResponse]:
    exchange = ChatExchange(world.core())
    reply = await exchange.on_request_headers(request_headers(headers or {}, ip=ip))
    assert not reply.HasField("immediate_response")
    return exchange, await exchange.on_request_body(request_body(body))


def refusal(reply: ProcessingResponse) -> tuple[int, Any]:
    assert reply.HasField("immediate_response"), reply
    return reply.immediate_response.status.code, orjson.loads(reply.immediate_response.body)


def upstream(reply: ProcessingResponse) -> tuple[dict[str, str], dict[str, Any]]:
    """The headers set on the upstream request, and the body sent."""
    assert reply.HasField("request_body"), reply
    common = reply.request_body.response
    headers = {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}
    return headers, orjson.loads(common.body_mutation.body)


def completion(model: str, *, stream: bool) -> bytes:
    usage = {"prompt_tokens": 10, "completion_tokens": 2, "cost": 0.001}
    if not stream:
        return orjson.dumps({"id": "gen-1", "model": model, "choices": [{"message": {"content": "ok"}}], "usage": usage})
    first = orjson.dumps({"id": "gen-1", "model": model, "choices": [{"delta": {"content": "ok"}}]})
    last = orjson.dumps({"id": "gen-1", "model": model, "choices": [], "usage": usage})
    return b"data: " + first + b"\n\ndata: " + last + b"\n\ndata: [DONE]\n\n"


async def respond(exchange: ChatExchange, status: int, body: bytes, content_type: str) -> ProcessingResponse:
    """The upstream's response in one chunk; returns the reply to that chunk."""
    await exchange.on_response_headers(response_headers(status, content_type))
    message = response_chunk(body, end_of_stream=True)
    reply = await exchange.on_response_body(message)
    exchange.tap_response_body(message)
    exchange.finish(aborted=False)
    return reply


def replaced(reply: ProcessingResponse) -> tuple[int, Any]:
    """A response body the gateway replaced: (the status it set, the JSON body)."""
    common = reply.response_body.response
    assert common.HasField("body_mutation"), reply
    status = {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}[":status"]
    return int(status), orjson.loads(common.body_mutation.body)


# --- Appendix A, one row at a time -----------------------------------------------------------------


async def test_row_3_unparseable_body(world: World) -> None:
    _, reply = await send(world, b"{not json")
    assert refusal(reply) == (400, INVALID_JSON)


async def test_row_3_no_body_at_all(world: World) -> None:
    exchange = ChatExchange(world.core())
    reply = await exchange.on_request_headers(request_headers({}, end_of_stream=True))
    assert refusal(reply) == (400, INVALID_JSON)


@pytest.mark.parametrize("body", [{"messages": []}, {"model": "   "}, {"model": 7}])
async def test_row_4_model_missing_blank_or_not_a_string(world: World, body: dict[str, Any]) -> None:
    _, reply = await send(world, body)
    assert refusal(reply) == (404, MODEL_NOT_FOUND)


async def test_row_5_no_client_ip_verbatim(world: World) -> None:
    _, reply = await send(world, chat(KILO_FREE), ip=None)
    assert reply.immediate_response.status.code == 400
    assert reply.immediate_response.body == b'{"error":"Unable to determine client IP"}'


async def test_row_6_free_model_ip_limit(world: World) -> None:
    world.limiter.answer = Admission.FREE_MODEL_LIMIT
    _, reply = await send(world, chat(KILO_FREE))
    assert refusal(reply) == (429, FREE_LIMIT)
    assert world.free_usage.rows == []  # 2.8 logs only what was admitted


async def test_row_7_anonymous_paid_model(world: World) -> None:
    _, reply = await send(world, chat(PAID))
    assert refusal(reply) == (401, AUTH_REQUIRED)
    assert world.limiter.calls == []  # a paid model is not rate limited by IP


async def test_row_7_a_failed_authentication_is_anonymous(world: World) -> None:
    """Appendix A note: a bad token has no response of its own."""
    _, reply = await send(world, chat(PAID), {"authorization": "Bearer not-a-token"})
    assert refusal(reply) == (401, AUTH_REQUIRED)


async def test_row_8_anonymous_promotion_limit(world: World) -> None:
    world.limiter.answer = Admission.PROMOTION_LIMIT
    _, reply = await send(world, chat(KILO_FREE))
    assert refusal(reply) == (401, PROMOTION_LIMIT)


async def test_row_9_max_tokens_cap(world: World) -> None:
    _, reply = await send(world, chat(PAID, max_tokens=100_000_000_000), signed_in(world))
    assert refusal(reply) == (503, UNAVAILABLE)
    _, reply = await send(world, chat(PAID, max_tokens=99_999_999_999), signed_in(world))
    assert not reply.HasField("immediate_response")


async def test_row_10_disabled_kilo_free_model(world: World) -> None:
    _, reply = await send(world, chat("z-ai/glm-5:free"))
    assert refusal(reply) == (404, ALPHA_ENDED)


async def test_row_11_rate_limited_to_death_model(world: World) -> None:
    _, reply = await send(world, chat("deepseek/deepseek-r1-0528:free"))
    assert refusal(reply) == (404, MODEL_NOT_FOUND)


async def test_row_12_no_balance_first_time_and_returning(world: World) -> None:
    broke = user(balance_usd=0)
    _, reply = await send(world, chat(PAID), signed_in(world, broke))
    assert refusal(reply) == (
        402,
        {
            "error": {
                "title": "Paid Model - Credits Required",
                "message": "This is a paid model. To use paid models, you need to add credits. Get $20 free on your "
                "first topup!",
                "balance": 0,
                "buyCreditsUrl": "https://app.kilo.ai/profile",
            }
        },
    )
    world.accounts.returning.add(broke.id)
    _, reply = await send(world, chat(PAID), signed_in(world, broke))
    status, body = refusal(reply)
    assert (status, body["error"]["title"], body["error"]["message"]) == (
        402,
        "Low Credit Warning!",
        "Add credits to continue, or switch to a free model",
    )


async def test_row_12_organisation_balance(world: World) -> None:
    _, reply = await send(world, chat(PAID), signed_in(world, organization=ORG))  # no account row: balance 0
    assert refusal(reply)[0] == 402
    world.accounts.organizations[ORG] = OrganizationAccount(5_000_000, 0, "teams", None, False, None, 0)
    _, reply = await send(world, chat(PAID), signed_in(world, organization=ORG))
    assert not reply.HasField("immediate_response")


def enterprise(allowed: list[str], **settings: Any) -> OrganizationAccount:
    return OrganizationAccount(5_000_000, 0, "enterprise", {"model_allow_list": allowed, **settings}, False, None, 0)


async def test_row_13_enterprise_allow_list(world: World) -> None:
    world.accounts.organizations[ORG] = enterprise(["openai/*"])
    _, reply = await send(world, chat(PAID), signed_in(world, organization=ORG))
    assert refusal(reply) == (404, NOT_ALLOWED)
    world.accounts.organizations[ORG] = enterprise(["z-ai/*"])
    _, reply = await send(world, chat(PAID), signed_in(world, organization=ORG))
    assert not reply.HasField("immediate_response")


@pytest.mark.parametrize("provider", [{"data_collection": "deny"}, {"zdr": True}])
async def test_row_14_data_collection_gate(world: World, provider: dict[str, Any]) -> None:
    _, reply = await send(world, chat(KILO_FREE, provider=provider))
    assert refusal(reply) == (400, DATA_COLLECTION)


async def test_row_15_upstream_402_on_kilos_key_is_503(world: World) -> None:
    exchange, _ = await send(world, chat(NOT_AB), signed_in(world))
    reply = await respond(exchange, 402, b'{"error":{"message":"insufficient credits"}}', "application/json")
    assert replaced(reply) == (503, UNAVAILABLE)


def byok_world(world: World) -> None:
    world.byok.providers = ["anthropic"]
    world.byok.stored = [ByokKey("anthropic", "sk-ant-customer", None)]


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "[BYOK] Your API key is invalid or has been revoked. Please check your API key configuration."),
        (402, "[BYOK] Your API account has insufficient funds. Please check your billing details with your API provider."),
        (403, "[BYOK] Your API key does not have permission to access this resource. Please check your API key permissions."),
        (429, "[BYOK] Your API key has hit its rate limit. Please try again later or check your rate limit settings with your API provider."),  # noqa: E501
    ],
)
async def test_row_16_byok_upstream_errors_are_readable(world: World, status: int, message: str) -> None:
    byok_world(world)
    exchange, _ = await send(world, chat(NOT_AB), signed_in(world))
    reply = await respond(exchange, status, b'{"error":"upstream"}', "application/json")
    assert replaced(reply) == (status, readable(message))


async def test_row_17_free_model_context_estimate(world: World) -> None:
    exchange, request = await send(world, chat(KILO_FREE, max_tokens=78_000))
    sent = request.request_body.response.body_mutation.body
    estimate = int(len(sent) / 4 + 78_000 + 0.5)  # 6.3: round(len(final body JSON) / 4 + max_tokens)
    reply = await respond(exchange, 400, b'{"error":"too long"}', "application/json")
    message = f"The maximum context length is 78000 tokens. However, about {estimate} tokens were requested."
    assert replaced(reply) == (400, readable(message))


async def test_row_18_stealth_model_error() -> None:
    providers = {**DEFAULT_PROVIDERS, "gigapotato": {"api_url": "https://giga.example/v1"}}
    world = World(make_settings(providers=providers))
    exchange, _ = await send(world, chat("giga-potato"))
    reply = await respond(exchange, 500, b'{"error":"boom"}', "application/json")
    assert replaced(reply) == (500, readable("Stealth model unable to process request"))


async def test_row_19_other_upstream_errors_pass_through(world: World) -> None:
    exchange, _ = await send(world, chat(NOT_AB), signed_in(world))
    reply = await respond(exchange, 500, b'{"error":"upstream body"}', "application/json")
    assert not reply.response_body.response.HasField("body_mutation")


async def test_row_20_our_own_failure_is_a_500(world: World) -> None:
    world.accounts.failure = RuntimeError("a bug")
    _, reply = await send(world, chat(PAID), signed_in(world))
    assert refusal(reply) == (500, INTERNAL)


# --- Appendix A: the order when two rows apply ------------------------------------------------------


async def test_unparseable_body_before_missing_ip(world: World) -> None:  # 3 before 5
    _, reply = await send(world, b"[", ip=None)
    assert refusal(reply) == (400, INVALID_JSON)


async def test_missing_model_before_missing_ip(world: World) -> None:  # 4 before 5
    _, reply = await send(world, {"messages": []}, ip=None)
    assert refusal(reply) == (404, MODEL_NOT_FOUND)


async def test_missing_ip_before_authentication(world: World) -> None:  # 5 before 7
    _, reply = await send(world, chat(PAID), ip=None)
    assert refusal(reply)[0] == 400


async def test_free_model_limit_before_data_collection_gate(world: World) -> None:  # 6 before 14
    world.limiter.answer = Admission.FREE_MODEL_LIMIT
    _, reply = await send(world, chat(KILO_FREE, provider={"data_collection": "deny"}))
    assert refusal(reply) == (429, FREE_LIMIT)


async def test_promotion_limit_before_data_collection_gate(world: World) -> None:  # 8 before 14
    world.limiter.answer = Admission.PROMOTION_LIMIT
    _, reply = await send(world, chat(KILO_FREE, provider={"zdr": True}))
    assert refusal(reply) == (401, PROMOTION_LIMIT)


async def test_authentication_before_max_tokens_cap(world: World) -> None:  # 7 before 9
    _, reply = await send(world, chat(PAID, max_tokens=100_000_000_000))
    assert refusal(reply) == (401, AUTH_REQUIRED)


async def test_max_tokens_cap_before_balance(world: World) -> None:  # 9 before 12
    _, reply = await send(world, chat(PAID, max_tokens=100_000_000_000), signed_in(world, user(balance_usd=0)))
    assert refusal(reply) == (503, UNAVAILABLE)


async def test_dead_free_model_before_data_collection_gate(world: World) -> None:  # 10 before 14
    disabled_free = "minimax/minimax-m2.1:free"
    _, reply = await send(world, chat(disabled_free, provider={"data_collection": "deny"}))
    assert refusal(reply) == (404, ALPHA_ENDED)


async def test_balance_before_organisation_allow_list(world: World) -> None:  # 12 before 13
    world.accounts.organizations[ORG] = OrganizationAccount(0, 0, "enterprise", {"model_allow_list": ["openai/*"]}, False, None, 0)
    _, reply = await send(world, chat(PAID), signed_in(world, organization=ORG))
    assert refusal(reply)[0] == 402


async def test_organisation_allow_list_before_data_collection_gate(world: World) -> None:  # 13 before 14
    world.accounts.organizations[ORG] = enterprise(["openai/*"], data_collection="deny")
    _, reply = await send(world, chat(KILO_FREE), signed_in(world, organization=ORG))
    assert refusal(reply) == (404, NOT_ALLOWED)


async def test_organisation_data_collection_feeds_the_gate(world: World) -> None:  # 2.12 then 2.13
    world.accounts.organizations[ORG] = OrganizationAccount(5_000_000, 0, "teams", {"data_collection": "deny"}, False, None, 0)
    _, reply = await send(world, chat(KILO_FREE), signed_in(world, organization=ORG))
    assert refusal(reply) == (400, DATA_COLLECTION)


# --- 3.2 routing, branch by branch --------------------------------------------------------------------
# Where a request goes is seen in the upstream path: `<provider base URL path>/chat/completions`
# (2.15) with the base URLs of 3.1.

OPENROUTER_PATH = "/api/v1/chat/completions"
VERCEL_PATH = "/v1/chat/completions"


async def test_byok_goes_to_vercel_with_the_customers_key(world: World) -> None:
    byok_world(world)
    _, reply = await send(world, chat(NOT_AB), signed_in(world))
    headers, body = upstream(reply)
    assert headers[":path"] == VERCEL_PATH
    assert body["providerOptions"]["gateway"]["byok"] == {"anthropic": [{"apiKey": "sk-ant-customer"}]}


async def test_byok_providers_without_a_key_fall_through(world: World) -> None:
    world.byok.providers = ["anthropic"]
    _, reply = await send(world, chat(NOT_AB), signed_in(world))
    assert upstream(reply)[0][":path"] == OPENROUTER_PATH


async def test_byok_skips_the_balance_check(world: World) -> None:
    byok_world(world)
    _, reply = await send(world, chat(NOT_AB), signed_in(world, user(balance_usd=0)))
    assert upstream(reply)[0][":path"] == VERCEL_PATH


async def test_byok_key_that_cannot_be_decrypted(world: World) -> None:
    byok_world(world)
    world.byok.unreadable = True
    _, reply = await send(world, chat(NOT_AB), signed_in(world))
    # Not in the contract (R fails the request too): the gateway's own readable 500.
    message = "[BYOK] Your stored API key could not be decrypted. Please enter it again in your BYOK settings."
    assert refusal(reply) == (500, readable(message))


def custom_llm(kind: str = "openai-compatible", organizations: tuple[str, ...] = (ORG,)) -> CustomLlm:
    return CustomLlm(
        public_id="kilo-internal/acme-coder",
        internal_id="acme-coder-v2",
        kind=kind,
        base_url="https://llm.acme.example/v2",
        api_key="acme-secret",
        organization_ids=organizations,
        extra_body={"top_k": 4},
        max_completion_tokens=4096,
        force_reasoning=False,
    )


async def test_custom_llm_of_the_callers_organisation(world: World) -> None:
    world.custom_llms.rows["kilo-internal/acme-coder"] = custom_llm()
    # A custom LLM of the caller's organisation skips the balance check (2.12).
    _, reply = await send(world, chat("kilo-internal/acme-coder"), signed_in(world, user(balance_usd=0), organization=ORG))
    headers, body = upstream(reply)
    assert headers[":path"] == "/v2/chat/completions"
    assert headers["authorization"] == "Bearer acme-secret"
    assert (body["model"], body["top_k"]) == ("acme-coder-v2", 4)
    # Envoy connects to the address the SSRF check passed (issue 25), the name goes in Host.
    metadata = reply.dynamic_metadata.fields["llm_gateway"].struct_value.fields
    assert metadata["custom_address"].string_value == f"{CHECKED_ADDRESS}:443"
    assert headers["x-gateway-custom-host"] == "llm.acme.example"


async def test_custom_llm_of_another_organisation_is_not_used(world: World) -> None:
    world.custom_llms.rows["kilo-internal/acme-coder"] = custom_llm(organizations=("another-org",))
    world.accounts.organizations[ORG] = OrganizationAccount(5_000_000, 0, "teams", None, False, None, 0)
    _, reply = await send(world, chat("kilo-internal/acme-coder"), signed_in(world, organization=ORG))
    headers, body = upstream(reply)
    assert headers[":path"] == OPENROUTER_PATH
    assert body["model"] == "kilo-internal/acme-coder"


async def test_custom_llm_of_an_unknown_kind(world: World) -> None:
    world.custom_llms.rows["kilo-internal/acme-coder"] = custom_llm(kind="cohere")
    _, reply = await send(world, chat("kilo-internal/acme-coder"), signed_in(world, organization=ORG))
    assert refusal(reply) == (503, UNAVAILABLE)


async def test_custom_llm_at_an_address_not_allowed(world: World) -> None:
    world.custom_llms.rows["kilo-internal/acme-coder"] = custom_llm()
    world.custom_llms.unsafe = True
    _, reply = await send(world, chat("kilo-internal/acme-coder"), signed_in(world, organization=ORG))
    # Not in the contract: the gateway refuses to reach private networks (its own 502).
    message = "The custom model's endpoint is not reachable from this gateway (its address is not allowed)."
    assert refusal(reply) == (502, readable(message))


def bucket(seed: str) -> int:
    """3.5: the first 4 bytes (big-endian) of SHA-256("vercel_routing_" + seed), mod 100."""
    return int.from_bytes(hashlib.sha256(f"vercel_routing_{seed}".encode()).digest()[:4], "big") % 100


def task_in_buckets(low: int, high: int) -> str:
    return next(t for t in (f"task-{i}" for i in itertools.count()) if low <= bucket(t) < high)


@pytest.mark.parametrize(
    ("task", "rates", "path"),
    [
        (task_in_buckets(0, 10), (0.0, 0.0), VERCEL_PATH),  # inside the default 10 %
        (task_in_buckets(90, 100), (0.0, 0.0), OPENROUTER_PATH),
        (task_in_buckets(10, 90), (0.0, 0.0), OPENROUTER_PATH),
        (task_in_buckets(10, 90), (0.6, 0.1), VERCEL_PATH),  # OpenRouter failing: 90 %
        (task_in_buckets(10, 90), (0.6, 0.6), OPENROUTER_PATH),  # both failing: 10 %
        (task_in_buckets(90, 100), (0.6, 0.1), OPENROUTER_PATH),
    ],
)
async def test_vercel_ab(world: World, task: str, rates: tuple[float, float], path: str) -> None:
    world.error_rates.rates = rates
    _, reply = await send(world, chat(PAID), {**signed_in(world), "x-kilocode-taskid": task})
    assert upstream(reply)[0][":path"] == path


async def test_free_model_on_its_own_gateway(world: World) -> None:
    _, reply = await send(world, chat(KILO_FREE))
    assert upstream(reply)[0][":path"] == "/v1/code/chat/completions"
    assert world.free_usage.rows == [(IP, KILO_FREE, None)]  # 2.8


async def test_free_model_gateway_without_a_url(world: World) -> None:
    _, reply = await send(world, chat("giga-potato"))
    assert refusal(reply) == (503, UNAVAILABLE)


async def test_martian_free_model_is_a_synthetic_custom_llm() -> None:
    models = [{**m, "is_enabled": True} if m["gateway"] == "martian" else m for m in DEFAULT_FREE_MODELS]
    world = World(make_settings(free_models=tuple(FreeModel.model_validate(m) for m in models)))
    exchange, reply = await send(world, chat("x-ai/grok-code-fast-1:optimized:free"))
    headers, body = upstream(reply)
    # 3.4: Martian's base URL, OpenAI's Responses API, reported as provider `custom`.
    assert headers[":path"] == "/v1/responses"
    assert body["model"] == "x-ai/grok-code-fast-1:optimized"
    stream = (
        b'data: {"type":"response.completed","response":{"id":"resp_1","usage":{"input_tokens":3,'
        b'"output_tokens":1}}}\n\n'
    )
    await respond(exchange, 200, stream, "text/event-stream")
    assert [r.provider for r in world.submitter.records] == ["custom"]


async def test_openrouter_by_default(world: World) -> None:
    _, reply = await send(world, chat(NOT_AB), signed_in(world))
    assert upstream(reply)[0][":path"] == OPENROUTER_PATH


# --- the end of the request: what is accounted --------------------------------------------------------


async def test_a_completed_stream_is_accounted_once(world: World) -> None:
    exchange, _ = await send(world, chat(NOT_AB, stream=True), signed_in(world))
    await respond(exchange, 200, completion(NOT_AB, stream=True), "text/event-stream")
    [record] = world.submitter.records
    assert (record.kilo_user_id, record.provider, record.status_code, record.aborted) == ("user-1", "openrouter", 200, False)
    assert (record.input_tokens, record.output_tokens, record.cost_microdollars) == (10, 2, 1000)
    [(answered, _)] = world.api_metrics.reports
    assert (answered.status, answered.provider_id) == (200, "openrouter")


async def test_402_on_kilos_key_is_reported_but_not_accounted(world: World) -> None:
    exchange, _ = await send(world, chat(NOT_AB), signed_in(world))
    await respond(exchange, 402, b'{"error":"pay"}', "application/json")
    assert world.submitter.records == []  # 6.2
    assert world.submitter.forgotten == [world.submitter.written_ahead[0].usage_id]  # and no row after all
    assert [a.status for a, _ in world.api_metrics.reports] == [402]  # 6.2: metrics still emitted


async def test_402_on_a_byok_key_is_accounted(world: World) -> None:
    byok_world(world)
    exchange, _ = await send(world, chat(NOT_AB), signed_in(world))
    await respond(exchange, 402, b'{"error":"pay"}', "application/json")
    [record] = world.submitter.records
    assert (record.status_code, record.user_byok, record.provider) == (402, True, "vercel")


async def test_an_aborted_stream_is_summarised(world: World) -> None:
    exchange, _ = await send(world, chat(NOT_AB, stream=True), signed_in(world))
    await exchange.on_response_headers(response_headers(200, "text/event-stream"))
    chunk = response_chunk(completion(NOT_AB, stream=True).split(b"data: [DONE]")[0], end_of_stream=False)
    await exchange.on_response_body(chunk)
    exchange.tap_response_body(chunk)
    exchange.finish(aborted=True)  # Envoy reset the stream: the client went away
    [record] = world.submitter.records
    assert (record.aborted, record.input_tokens, record.output_tokens) == (True, 10, 2)


async def test_a_refused_request_is_not_accounted(world: World) -> None:
    exchange, reply = await send(world, chat(PAID))
    assert refusal(reply)[0] == 401
    exchange.finish(aborted=False)
    assert world.submitter.records == [] and world.api_metrics.reports == []
    assert world.submitter.written_ahead == []  # nothing went upstream


# --- write-ahead: the record a request gets if its replica dies (accounting/inflight.py) ----------


async def test_an_admitted_request_is_written_ahead_as_cut_and_unanswered(world: World) -> None:
    exchange, reply = await send(world, chat(NOT_AB), signed_in(world))
    assert reply.HasField("request_body")
    [ahead] = world.submitter.written_ahead
    # No response yet: no status, cut, an error, charged nothing; the final record's usage id.
    assert (ahead.kilo_user_id, ahead.provider, ahead.status_code, ahead.aborted, ahead.has_error) == (
        "user-1", "openrouter", 0, True, True,
    )
    assert (ahead.message_id, ahead.cost_microdollars, ahead.input_tokens) == (None, 0, 0)
    await respond(exchange, 200, completion(NOT_AB, stream=False), "application/json")
    [record] = world.submitter.records
    assert record.usage_id == ahead.usage_id and record.status_code == 200
    assert len(world.submitter.written_ahead) == 1  # a JSON body ends the request at once


async def test_a_streams_message_id_is_written_ahead_once(world: World) -> None:
    """So that the ledger writer can look the bill up (7.3) if the replica dies mid-stream."""
    exchange, _ = await send(world, chat(NOT_AB, stream=True), signed_in(world))
    await exchange.on_response_headers(response_headers(200, "text/event-stream"))
    first, rest = completion(NOT_AB, stream=True).split(b"\n\n", 1)
    for body in (first + b"\n\n", rest):
        chunk = response_chunk(body, end_of_stream=False)
        await exchange.on_response_body(chunk)
        exchange.tap_response_body(chunk)
    admitted, updated = world.submitter.written_ahead
    assert (updated.usage_id, updated.message_id, updated.status_code) == (admitted.usage_id, "gen-1", 200)
    assert updated.cost_microdollars == 0 and updated.aborted  # still what a crash leaves


async def test_a_request_cut_before_its_response_is_accounted_unanswered(world: World) -> None:
    """Envoy reset the stream before the response's headers reached us (the upstream dropped
    the connection): one row, an error charged nothing, under the written-ahead usage id."""
    exchange, _ = await send(world, chat(NOT_AB, stream=True), signed_in(world))
    exchange.finish(aborted=True)
    [ahead] = world.submitter.written_ahead
    [record] = world.submitter.records
    assert (record.usage_id, record.status_code, record.aborted, record.has_error) == (ahead.usage_id, 0, True, True)
    assert (record.cost_microdollars, record.kilo_user_id, record.streamed) == (0, "user-1", True)


async def test_without_the_api_metrics_service_nothing_is_reported_and_the_row_stays(world: World) -> None:
    world.api_metrics.enabled = False
    exchange, _ = await send(world, chat(NOT_AB), signed_in(world))
    await respond(exchange, 200, completion(NOT_AB, stream=False), "application/json")
    assert world.api_metrics.reports == []
    assert [r.status_code for r in world.submitter.records] == [200]


async def test_every_upstream_response_is_reported_to_the_api_metrics(world: World) -> None:
    for status in (200, 500):
        exchange, _ = await send(world, chat(NOT_AB), signed_in(world))
        await respond(exchange, status, completion(NOT_AB, stream=False), "application/json")
    assert [a.status for a, _ in world.api_metrics.reports] == [200, 500]
    assert [r.status_code for r in world.submitter.records] == [200, 500]


class Exploding:
    def feed(self, chunk: bytes) -> bytes:
        raise RuntimeError("a bug in the rewriter")


async def test_a_bug_in_the_response_phase_never_cuts_the_response(world: World) -> None:
    exchange, _ = await send(world, chat(KILO_FREE, stream=True))
    await exchange.on_response_headers(response_headers(200, "text/event-stream"))
    assert exchange.response is not None and exchange.response.rewriter is not None  # a free model's stream
    exchange.response.rewriter = Exploding()  # type: ignore[assignment]
    chunk = response_chunk(completion(KILO_FREE, stream=True), end_of_stream=True)
    reply = await exchange.on_response_body(chunk)
    assert reply.HasField("response_body") and not reply.response_body.response.HasField("body_mutation")
    exchange.tap_response_body(chunk)
    exchange.finish(aborted=False)
    assert [r.output_tokens for r in world.submitter.records] == [2]  # and it is still accounted


async def test_a_failing_summary_is_logged_and_never_raised(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """`finish` runs in the gRPC stream's `finally`: an error there must not escape into gRPC."""

    def broken_submit(record: UsageRecord, abuse_request_id: Any = None) -> None:
        raise RuntimeError("outbox bug")

    world.submitter.submit = broken_submit  # type: ignore[method-assign]
    exchange, _ = await send(world, chat(NOT_AB), signed_in(world))
    await respond(exchange, 200, completion(NOT_AB, stream=False), "application/json")
    assert "usage record not submitted" in caplog.text


# --- 6.1: the response header whitelist --------------------------------------------------------------


async def test_only_the_whitelisted_upstream_headers_reach_the_client(world: World) -> None:
    exchange, _ = await send(world, chat(NOT_AB), signed_in(world))
    upstream_headers = {
        ":status": "200", "date": "Mon, 30 Nov 2026 10:00:00 GMT", "content-type": "application/json",
        "request-id": "r-1", "set-cookie": "a=b", "x-openrouter-id": "or-1", "content-encoding": "gzip",
    }  # fmt: skip
    message = ProcessingRequest(response_headers=HttpHeaders(headers=_header_map(upstream_headers)))
    reply = await exchange.on_response_headers(message)
    mutation = reply.response_headers.response.header_mutation
    assert {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers} == {"content-encoding": "identity"}
    # Removed: every upstream header but date, content-type and request-id (and the status).
    assert sorted(mutation.remove_headers) == ["content-encoding", "set-cookie", "x-openrouter-id"]
