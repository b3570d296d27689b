"""The optional side services (behaviour.md 8.1, 8.3, 7.5 PostHog; decisions 4 and 22).

One local aiohttp server stands in for the abuse service, the o11y ingest and PostHog. Unit
tests drive `extproc.side` directly; the writer tests use the real ledger of a stack started
with every side service pointing at the stand-in; the end-to-end tests send real requests
through that stack's Envoy.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from extproc.accounting import ledger
from extproc.accounting.cost import Charge
from extproc.accounting.record import UsageRecord, request_facts
from extproc.accounting.writer import LedgerWriter
from extproc.directory import User
from extproc.local.processes import free_port
from extproc.pipeline.client_headers import extract_client_info
from extproc.pipeline.identity import Identity
from extproc.pipeline.parse import ChatRequest
from extproc.pipeline.routing import Route
from extproc.response_usage import ReportedUsage, ResponseSummary
from extproc.settings import Provider, Settings, load_settings
from extproc.shaping.transform import TransformResult
from extproc.side import SideServices
from extproc.side.abuse import classification_payload
from extproc.side.api_metrics import AnsweredRequest, api_metrics_params
from extproc.state import AdmittedRequest, Caller, ClientRequest
from tests.conftest import Gateway, fresh_ip, start_stack, stop_stack

CLASSIFY, COST, METRICS, CAPTURE = "/api/classify", "/api/usage/cost", "/ingest/api-metrics", "/capture"
VERDICT = {
    "verdict": "ALLOW",
    "risk_score": 0.12,
    "signals": ["new_user"],
    "action_metadata": {"challenge_type": None, "model_override": None, "retry_after_seconds": None},
    "context": {"identity_key": "user:x", "current_spend_1h": 0, "is_new_user": True, "requests_per_second": 0.1},
    "request_id": 4242,
}
DEFAULTS: dict[str, tuple[int, Any]] = {
    CLASSIFY: (200, VERDICT),
    COST: (200, {"success": True, "identity_key": "user:x"}),
    METRICS: (204, None),
    CAPTURE: (200, {"status": 1}),
}
O11Y_SECRET = "o11y-secret"
POSTHOG_KEY = "phc_test"
MODEL = "openai/gpt-4o-mini"


class StandIn:
    """The three services on one real port, served from a thread (the stack's ext_proc, a
    subprocess, reaches it too). Records every request; answers per path as configured."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.behaviour: dict[str, dict[str, Any]] = {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())

    def start(self) -> StandIn:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.requests.append(
            {"path": request.path, "headers": dict(request.headers), "json": orjson.loads(raw) if raw else None}
        )
        status, body = DEFAULTS.get(request.path, (404, None))
        behaviour = self.behaviour.get(request.path, {})
        if behaviour.get("delay"):
            await asyncio.sleep(behaviour["delay"])
        status = behaviour.get("status", status)
        body = behaviour.get("json", body)
        if body is None:
            return web.Response(status=status)
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")

    def set(self, path: str, **behaviour: Any) -> None:
        self.behaviour[path] = behaviour

    def reset(self) -> None:
        self.requests.clear()
        self.behaviour.clear()

    def received(self, path: str) -> list[dict[str, Any]]:
        return [r for r in list(self.requests) if r["path"] == path]

    def wait_for(self, path: str, predicate: Any = lambda r: True, count: int = 1, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.received(path) if predicate(r)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@pytest.fixture(scope="module")
def stand_in_server() -> Iterator[StandIn]:
    server = StandIn().start()
    yield server
    server.stop()


@pytest.fixture
def stand_in(stand_in_server: StandIn) -> StandIn:
    stand_in_server.reset()
    return stand_in_server


def errors(service: str) -> float:
    return REGISTRY.get_sample_value("llm_gateway_side_service_errors_total", {"service": service}) or 0.0


def side_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "abuse_service_url": url,
        "abuse_cf_access_client_id": "cf-id",
        "abuse_cf_access_client_secret": "cf-secret",
        "o11y_service_url": url,
        "o11y_kilo_gateway_client_secret": O11Y_SECRET,
        "posthog_api_key": POSTHOG_KEY,
        "posthog_url": url,
    }
    return load_settings(**(values | overrides))


def unconfigured_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in (
        "ABUSE_SERVICE_URL",
        "ABUSE_CF_ACCESS_CLIENT_ID",
        "ABUSE_CF_ACCESS_CLIENT_SECRET",
        "O11Y_SERVICE_URL",
        "O11Y_KILO_GATEWAY_CLIENT_SECRET",
        "POSTHOG_API_KEY",
        "LLM_GATEWAY_POSTHOG_URL",
        "LLM_GATEWAY_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)
    return load_settings()


# --- request fixtures ------------------------------------------------------------------------

BODY: dict[str, Any] = {
    "model": MODEL,
    "stream": True,
    "max_tokens": 300,
    "transforms": ["middle-out"],
    "tools": [{"type": "function", "function": {"name": "read_file"}}],
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Prefer Python."}, {"type": "image_url"}]},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "x" * 500}]},
    ],
}
HEADERS = {
    "user-agent": "Kilo-Code/4.1.0",
    "x-forwarded-for": "203.0.113.9, 10.0.0.1",
    "x-kilocode-editorname": "vscode",
    "x-kilocode-projectid": "https://github.com/acme/widgets.git",
    "x-kilocode-mode": "code",
}


def chat(body: dict[str, Any] = BODY) -> ChatRequest:
    model = body["model"]
    return ChatRequest(orjson.loads(orjson.dumps(body)), model, model.lower(), body.get("stream") is True)


def user_identity(user_id: str = "user-1", organization_id: str | None = None, used: int = 0) -> Identity:
    user = User(user_id, f"{user_id}@example.com", None, None, used, 10_000_000)
    return Identity(user_id, user, organization_id, None, None)


def test_classification_payload_is_the_contracts_from_the_body_as_sent() -> None:
    request = chat()
    client = extract_client_info(HEADERS, "/api/gateway/chat/completions")
    payload = classification_payload(
        request, user_identity(organization_id="org-1"), client, request_facts(request.body), "openrouter", False
    )
    assert payload == {
        "kilo_user_id": "user-1",
        "organization_id": "org-1",
        "project_id": "widgets",
        "ip_address": "203.0.113.9, 10.0.0.1",  # the raw header
        "geo_city": None,
        "geo_country": None,
        "geo_latitude": None,
        "geo_longitude": None,
        "ja4_digest": None,
        "user_agent": "Kilo-Code/4.1.0",
        "provider": "openrouter",
        "requested_model": MODEL,
        "user_prompt": "second\n" + "x" * 500,  # the whole last user message, not a prefix
        "system_prompt": "You are terse.\nPrefer Python.",
        "max_tokens": 300,
        "has_middle_out_transform": True,
        "has_tools": True,
        "streamed": True,
        "is_user_byok": False,
        "editor_name": "vscode",
    }
    # Built eagerly: shaping the body afterwards does not change what is sent.
    request.body["messages"][-1]["content"][0]["text"] = "shaped"
    request.body["max_tokens"] = 1
    assert payload["user_prompt"].startswith("second\n") and payload["max_tokens"] == 300

    bare_request = chat({"model": "A/B", "messages": [{"role": "user", "content": "hi"}]})
    bare = classification_payload(
        bare_request,
        Identity("anon:198.51.100.1", None, None, None, None),
        extract_client_info({}, "/api/openrouter/chat/completions"),
        request_facts(bare_request.body),
        "openrouter",
        True,
    )
    assert bare["system_prompt"] is None and bare["user_prompt"] == "hi" and bare["requested_model"] == "a/b"
    assert bare["max_tokens"] is None and bare["has_tools"] is False and bare["streamed"] is False
    assert bare["ip_address"] is None and bare["is_user_byok"] is True and bare["kilo_user_id"] == "anon:198.51.100.1"


# --- abuse classification --------------------------------------------------------------------


def _classify(side: SideServices, body: dict[str, Any] = BODY) -> Any:
    client = extract_client_info(HEADERS, "/api/gateway/chat/completions")
    request = chat(body)
    facts = request_facts(request.body)
    return side.abuse.classify(request, user_identity(), client, facts, "openrouter", False, request_id="req-1")


async def test_classification_posts_the_payload_with_cf_access_headers_and_yields_its_request_id(
    stand_in: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    side = SideServices.build(side_settings(stand_in.url))
    caplog.set_level("INFO", logger="extproc.side.abuse")
    classification = _classify(side)
    assert classification is not None
    assert await classification.request_id(time.monotonic()) == 4242
    await side.close(5)

    [sent] = stand_in.received(CLASSIFY)
    assert sent["headers"]["CF-Access-Client-Id"] == "cf-id"
    assert sent["headers"]["CF-Access-Client-Secret"] == "cf-secret"
    assert sent["headers"]["Content-Type"] == "application/json"
    assert sent["json"]["user_prompt"] == "second\n" + "x" * 500 and sent["json"]["kilo_user_id"] == "user-1"
    [logged] = [r for r in caplog.records if r.getMessage() == "abuse classification"]
    logged_verdict = (logged.verdict, logged.risk_score, logged.abuse_request_id)  # type: ignore[attr-defined]
    assert logged_verdict == ("ALLOW", 0.12, 4242)


async def test_cf_access_headers_only_when_both_are_configured(stand_in: StandIn) -> None:
    side = SideServices.build(side_settings(stand_in.url, abuse_cf_access_client_secret=None))
    assert await _classify(side).request_id(time.monotonic()) == 4242
    await side.close(5)
    [sent] = stand_in.received(CLASSIFY)
    assert "CF-Access-Client-Id" not in sent["headers"] and "CF-Access-Client-Secret" not in sent["headers"]


@pytest.mark.parametrize("failure", ["http_500", "closed_port", "not_json"])
async def test_classification_fails_open(stand_in: StandIn, failure: str) -> None:
    url = stand_in.url
    if failure == "http_500":
        stand_in.set(CLASSIFY, status=500, json={"error": "boom"})
    elif failure == "closed_port":
        url = f"http://127.0.0.1:{free_port()}"
    else:
        stand_in.set(CLASSIFY, json=["not", "an", "object"])
    before = errors("abuse_classify")
    side = SideServices.build(side_settings(url))
    assert await _classify(side).request_id(time.monotonic()) == 0
    await side.close(5)
    assert errors("abuse_classify") == before + 1


async def test_classification_is_abandoned_when_slower_than_its_budget(stand_in: StandIn) -> None:
    # The answer (request id 4242) would come after 30 s: getting 0 shows it was not awaited.
    stand_in.set(CLASSIFY, delay=30.0)
    side = SideServices.build(side_settings(stand_in.url, abuse_classify_budget_seconds=0.3))
    before = errors("abuse_classify")
    classification = _classify(side)
    responded_at = time.monotonic()
    started = time.monotonic()
    assert await classification.request_id(responded_at) == 0
    assert time.monotonic() - started >= 0.29  # the budget was given in full (timers never fire early)
    assert errors("abuse_classify") == before + 1  # counted once: the call was abandoned
    await side.close(5)
    assert errors("abuse_classify") == before + 1


async def test_the_budget_runs_from_the_upstream_response_and_defaults_to_two_seconds(stand_in: StandIn) -> None:
    stand_in.set(CLASSIFY, delay=30.0)  # never in time: each call ends with its budget
    side = SideServices.build(side_settings(stand_in.url))
    assert side.abuse.budget == 2.0
    # It answered just now: up to 2 s more.
    started = time.monotonic()
    assert await _classify(side).request_id(time.monotonic()) == 0
    full = time.monotonic() - started
    assert full >= 1.99
    # The upstream answered 2 s ago: no more waiting, measured against the full budget above.
    started = time.monotonic()
    assert await _classify(side).request_id(time.monotonic() - 2.0) == 0
    assert time.monotonic() - started < full / 4
    await side.close(1)


# --- abuse cost report -----------------------------------------------------------------------


def record(**overrides: Any) -> UsageRecord:
    values: dict[str, Any] = dict(
        usage_id=str(uuid.uuid4()),
        created_at=time.time(),
        kilo_user_id="user-1",
        organization_id=None,
        provider="mistral",  # no generation endpoint: the writer prices the record as it is
        requested_model=MODEL,
        auto_model=None,
        status_code=200,
        streamed=True,
        aborted=False,
        free_model=False,
        stealth_model=False,
        user_byok=False,
        promotion=False,
        message_id=f"gen-{uuid.uuid4().hex}",
        model=MODEL,
        inference_provider="MockProvider",
        finish_reason="stop",
        has_error=False,
        input_tokens=100,
        output_tokens=20,
        cache_hit_tokens=10,
        cost_microdollars=1234,
        is_byok=False,
        user_agent="Kilo-Code/4.1.0",
        forwarded_for="203.0.113.9",
        abuse_request_id=4242,
    )
    return UsageRecord(**(values | overrides))


async def test_cost_report_carries_the_market_cost_and_tokens(stand_in: StandIn) -> None:
    side = SideServices.build(side_settings(stand_in.url))
    written = record(free_model=True)  # charged 0, reported at its market cost
    side.abuse.report_cost(written, ReportedUsage(100, 20, 10, 0, 1234, False))
    side.abuse.report_cost(record(abuse_request_id=0), ReportedUsage(1, 1, 0, 0, 1, False))  # unclassified
    side.abuse.report_cost(record(message_id=None), ReportedUsage(1, 1, 0, 0, 1, False))  # no message id
    await side.close(5)
    [sent] = stand_in.received(COST)
    assert sent["headers"]["CF-Access-Client-Id"] == "cf-id"
    assert sent["json"] == {
        "kilo_user_id": "user-1",
        "ip_address": "203.0.113.9",
        "ja4_digest": None,
        "user_agent": "Kilo-Code/4.1.0",
        "request_id": 4242,
        "message_id": written.message_id,
        "cost": 1234,
        "requested_model": MODEL,
        "input_tokens": 100,
        "output_tokens": 20,
        "cache_write_tokens": 0,
        "cache_hit_tokens": 10,
    }


@pytest.mark.parametrize("answer", [{"status": 503}, {"json": {"success": False, "error": "unknown request"}}])
async def test_cost_report_fails_open(stand_in: StandIn, answer: dict[str, Any]) -> None:
    stand_in.set(COST, **answer)
    before = errors("abuse_cost")
    side = SideServices.build(side_settings(stand_in.url))
    side.abuse.report_cost(record(), ReportedUsage(1, 1, 0, 0, 1, False))
    await side.close(5)
    assert errors("abuse_cost") == before + 1


# --- API metrics -----------------------------------------------------------------------------


def finished_state(
    *, status: int = 200, auto_model: str | None = None, organization_id: str | None = None
) -> AnsweredRequest:
    answered = admitted_request(auto_model=auto_model, organization_id=organization_id).answered(status, 100.25)
    assert answered is not None
    return answered


def admitted_request(*, auto_model: str | None, organization_id: str | None) -> AdmittedRequest:
    request = ClientRequest("req-1", "POST", "/api/gateway/chat/completions", HEADERS, "203.0.113.9", started=100.0)
    body = chat({**BODY, "model": "Anthropic/Claude-Sonnet-4:exacto"})
    client = extract_client_info(HEADERS, "/api/gateway/chat/completions")
    caller = Caller(body, client, user_identity(organization_id=organization_id), "203.0.113.9", auto_model, False)
    provider = Provider(id="openrouter", api_url="https://openrouter.ai/api/v1")
    return AdmittedRequest(
        request=request,
        caller=caller,
        route=Route(provider=provider, cluster="openrouter"),
        facts=request_facts(body.body),
        abuse=None,
        promotion=False,
        tools=TransformResult(["function:read_file"], ["function:read_file", "custom:unknown"]),
        upstream_body=b"{}",
        translator=None,
    )


def summary(provider: str | None = "Anthropic") -> ResponseSummary:
    return ResponseSummary(status=200, streamed=True, inference_provider=provider)


def test_api_metrics_params() -> None:
    params = api_metrics_params(finished_state(auto_model="kilo/auto", organization_id="org-1"), summary(), 101.5)
    assert params == {
        "kiloUserId": "user-1",
        "organizationId": "org-1",
        "isAnonymous": False,
        "isStreaming": True,
        "userByok": False,
        "mode": "code",
        "provider": "openrouter",
        "inferenceProvider": "Anthropic",
        "requestedModel": "kilo/auto",  # what the client asked for
        "resolvedModel": "anthropic/claude-sonnet-4",  # normalised
        "toolsAvailable": ["function:read_file"],
        "toolsUsed": ["function:read_file", "custom:unknown"],
        "ttfbMs": 250,
        "completeRequestMs": 1500,
        "statusCode": 200,
    }
    plain = api_metrics_params(finished_state(status=402), summary(None), 100.5)
    assert plain is not None
    assert "organizationId" not in plain and plain["inferenceProvider"] == ""
    assert plain["requestedModel"] == "anthropic/claude-sonnet-4:exacto" and plain["statusCode"] == 402
    # No HTTP status (an upstream reset): not an API response to report.
    assert admitted_request(auto_model=None, organization_id=None).answered(0, 100.25) is None


async def test_api_metrics_are_posted_with_the_admin_token(stand_in: StandIn) -> None:
    side = SideServices.build(side_settings(stand_in.url))
    side.api_metrics.report(finished_state(status=402), summary())
    await side.close(5)
    [sent] = stand_in.received(METRICS)
    assert sent["headers"]["X-O11Y-ADMIN-TOKEN"] == O11Y_SECRET
    assert sent["json"]["clientSecret"] == O11Y_SECRET and sent["json"]["statusCode"] == 402
    assert sent["json"]["completeRequestMs"] >= sent["json"]["ttfbMs"] == 250


@pytest.mark.parametrize("missing", ["o11y_service_url", "o11y_kilo_gateway_client_secret"])
async def test_api_metrics_are_off_without_url_or_secret(stand_in: StandIn, missing: str) -> None:
    side = SideServices.build(side_settings(stand_in.url, **{missing: None}))
    assert not side.api_metrics.enabled
    side.api_metrics.report(finished_state(), summary())
    await side.close(5)
    assert stand_in.received(METRICS) == []


@pytest.mark.parametrize("failure", ["http_500", "closed_port", "slow"])
async def test_api_metrics_fail_open(stand_in: StandIn, failure: str) -> None:
    url = stand_in.url
    if failure == "http_500":
        stand_in.set(METRICS, status=500)
    elif failure == "closed_port":
        url = f"http://127.0.0.1:{free_port()}"
    else:
        stand_in.set(METRICS, delay=3)
    side = SideServices.build(side_settings(url, side_service_timeout_seconds=0.5))
    before = errors("api_metrics")
    side.api_metrics.report(finished_state(), summary())
    # report() is synchronous: had it made the call itself, the failure would be counted by now.
    assert errors("api_metrics") == before
    await side.close(5)
    assert errors("api_metrics") == before + 1


async def test_nothing_is_sent_when_unconfigured(stand_in: StandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    side = SideServices.build(unconfigured_settings(monkeypatch))
    assert not side.abuse.enabled and not side.api_metrics.enabled and not side.analytics.enabled
    assert _classify(side) is None
    side.api_metrics.report(finished_state(), summary())
    side.abuse.report_cost(record(), ReportedUsage(1, 1, 0, 0, 1, False))
    side.analytics.usage_written(
        None,  # type: ignore[arg-type]
        record(posthog_distinct_id="a@b.c"),
        model=MODEL,
        cost=1,
        first_usage=True,
        microdollars_used=1,
    )
    assert not side.analytics.check_first_usage(record(posthog_distinct_id="a@b.c", prior_microdollar_usage=0))
    await side.close(1)
    assert side.client._session is None  # never even created
    assert stand_in.requests == []


async def test_shutdown_cancels_calls_still_running_past_the_grace(stand_in: StandIn) -> None:
    stand_in.set(METRICS, delay=30)
    side = SideServices.build(side_settings(stand_in.url))
    side.api_metrics.report(finished_state(), summary())
    started = time.monotonic()
    await side.close(0.3)
    assert time.monotonic() - started < 15  # cancelled past the grace, long before the 30 s answer
    side.api_metrics.report(finished_state(), summary())  # after close: dropped, not started
    assert not side.client._tasks


async def test_calls_past_the_pending_limit_are_dropped(stand_in: StandIn) -> None:
    stand_in.set(METRICS, delay=0.5)
    side = SideServices.build(side_settings(stand_in.url))
    side.client.max_pending = 2
    before = errors("api_metrics")
    for _ in range(3):
        side.api_metrics.report(finished_state(), summary())
    assert errors("api_metrics") == before + 1
    await side.close(5)
    assert len(stand_in.received(METRICS)) == 2


# --- a stack with every side service configured -------------------------------------------------


@pytest.fixture(scope="module")
def side_gateway(stand_in_server: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_stack(
        tmp_path_factory.mktemp("side-stack"),
        LLM_GATEWAY_TRUSTED_PROXY_HOPS="1",
        ABUSE_SERVICE_URL=stand_in_server.url,
        ABUSE_CF_ACCESS_CLIENT_ID="cf-id",
        ABUSE_CF_ACCESS_CLIENT_SECRET="cf-secret",
        O11Y_SERVICE_URL=stand_in_server.url,
        O11Y_KILO_GATEWAY_CLIENT_SECRET=O11Y_SECRET,
        POSTHOG_API_KEY=POSTHOG_KEY,
        LLM_GATEWAY_POSTHOG_URL=stand_in_server.url,
    )
    try:
        yield gateway
    finally:
        stop_stack(gateway)


# --- PostHog rules, against the real ledger ----------------------------------------------------


async def _new_user(connection: asyncpg.Connection, used: int = 0) -> str:
    user_id = f"side-{uuid.uuid4().hex[:12]}"
    await connection.execute(
        "INSERT INTO kilocode_users (id, google_user_email, microdollars_used, total_microdollars_acquired) "
        "VALUES ($1, $2, $3, 100000000)",
        user_id,
        f"{user_id}@example.com",
        used,
    )
    return user_id


def _events(stand_in: StandIn, email: str) -> list[dict[str, Any]]:
    return [r["json"] for r in stand_in.received(CAPTURE) if r["json"]["distinct_id"] == email]


async def test_posthog_first_usage_and_first_microdollar_usage(stand_in: StandIn, side_gateway: Gateway) -> None:
    settings = side_settings(stand_in.url)
    side = SideServices.build(settings)
    pool = await asyncpg.create_pool(side_gateway.database_url, min_size=1, max_size=4)
    try:
        accounting = LedgerWriter(settings, pool, None, side)  # type: ignore[arg-type]  # write needs no outbox
        async with pool.acquire() as connection:
            user = await _new_user(connection)
            paying = await _new_user(connection)
            await connection.execute("INSERT INTO payment_methods (user_id) VALUES ($1)", paying)
        email = f"{user}@example.com"

        def user_record(**overrides: Any) -> UsageRecord:
            return record(kilo_user_id=user, posthog_distinct_id=email, prior_microdollar_usage=0, **overrides)

        # 1. A free request (charged 0): the first usage row, no microdollar yet.
        assert await accounting.write(user_record(free_model=True))
        # The same record again (a replayed outbox entry) is a duplicate: nothing is sent.
        duplicate = user_record(free_model=True)
        assert await accounting.write(duplicate) and await accounting.write(duplicate)
        # 2. Its first paid request; the cached usage still said 0 but a row exists now.
        assert await accounting.write(user_record(cost_microdollars=500))
        # 3. Later requests: nothing.
        assert await accounting.write(user_record(cost_microdollars=300))
        # 4. A paying user's first request is paid: both events, with the payment method.
        assert await accounting.write(
            record(kilo_user_id=paying, posthog_distinct_id=f"{paying}@example.com", prior_microdollar_usage=0)
        )
        await side.close(5)
    finally:
        await pool.close()

    events = _events(stand_in, email)
    assert [e["event"] for e in events] == ["first_usage", "first_microdollar_usage"]
    first, crossed = events
    assert first == {
        "api_key": POSTHOG_KEY,
        "distinct_id": email,
        "event": "first_usage",
        "properties": {"model": MODEL, "cost_mUsd": 0, "has_payment_method": False},
    }
    assert crossed["properties"] == {
        "model": MODEL,
        "cost_mUsd": 500,
        "has_payment_method": False,
        "has_prior_free_usage": True,
    }
    paid = _events(stand_in, f"{paying}@example.com")
    assert [e["event"] for e in paid] == ["first_usage", "first_microdollar_usage"]
    assert paid[0]["properties"] == {"model": MODEL, "cost_mUsd": 1234, "has_payment_method": True}
    assert paid[1]["properties"]["has_prior_free_usage"] is False


async def test_posthog_rules_exclusions(stand_in: StandIn, side_gateway: Gateway) -> None:
    pool = await asyncpg.create_pool(side_gateway.database_url, min_size=1, max_size=4)
    try:
        async with pool.acquire() as connection:
            had_usage = await _new_user(connection, used=5)
            org_member = await _new_user(connection)
            anonymous_like = await _new_user(connection)
            off = await _new_user(connection)
            org = await connection.fetchval(
                "INSERT INTO organizations (name, total_microdollars_acquired) VALUES ('side', 100000000) RETURNING id"
            )
        settings = side_settings(stand_in.url)
        side = SideServices.build(settings)
        accounting = LedgerWriter(settings, pool, None, side)  # type: ignore[arg-type]
        # Usage before this request (and so a microdollar already): neither event.
        assert await accounting.write(
            record(kilo_user_id=had_usage, posthog_distinct_id=f"{had_usage}@example.com", prior_microdollar_usage=5)
        )
        # An organisation request: no first_usage, and the user's usage does not move.
        assert await accounting.write(
            record(
                kilo_user_id=org_member,
                organization_id=str(org),
                posthog_distinct_id=f"{org_member}@example.com",
                prior_microdollar_usage=0,
            )
        )
        # No e-mail (anonymous callers): nothing.
        assert await accounting.write(record(kilo_user_id=anonymous_like, prior_microdollar_usage=0))
        # Analytics off: nothing.
        settings_off = side_settings(stand_in.url, posthog_api_key=None)
        side_off = SideServices.build(settings_off)
        assert await LedgerWriter(settings_off, pool, None, side_off).write(  # type: ignore[arg-type]
            record(kilo_user_id=off, posthog_distinct_id=f"{off}@example.com", prior_microdollar_usage=0)
        )
        await side.close(5)
        await side_off.close(5)
    finally:
        await pool.close()
    sent_to = {r["json"]["distinct_id"] for r in stand_in.received(CAPTURE)}
    assert not sent_to & {f"{u}@example.com" for u in (had_usage, org_member, anonymous_like, off)}


async def test_posthog_fails_open(stand_in: StandIn, side_gateway: Gateway) -> None:
    stand_in.set(CAPTURE, status=500)
    settings = side_settings(stand_in.url)
    side = SideServices.build(settings)
    pool = await asyncpg.create_pool(side_gateway.database_url, min_size=1, max_size=2)
    before = errors("posthog")
    try:
        async with pool.acquire() as connection:
            user = await _new_user(connection)
        written = record(kilo_user_id=user, posthog_distinct_id=f"{user}@example.com", prior_microdollar_usage=0)
        assert await LedgerWriter(settings, pool, None, side).write(written)  # type: ignore[arg-type]
        await side.close(5)
        async with pool.acquire() as connection:
            assert await connection.fetchval("SELECT microdollars_used FROM kilocode_users WHERE id = $1", user) == 1234
    finally:
        await pool.close()
    assert errors("posthog") == before + 2  # both events failed; the row is written regardless


# --- end to end through Envoy ----------------------------------------------------------------


def _rows(gateway: Gateway, message_id: str, timeout: float = 60) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(gateway.database_url)
        try:
            return await connection.fetch(
                "SELECT u.*, m.market_cost FROM microdollar_usage u JOIN microdollar_usage_metadata m ON m.id = u.id "
                "WHERE m.message_id = $1",
                message_id,
            )
        finally:
            await connection.close()

    deadline = time.monotonic() + timeout
    while True:
        rows = asyncio.run(fetch())
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def _message_id(response: httpx.Response) -> str:
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            return orjson.loads(line[6:])["id"]
    return response.json()["id"]


E2E_BODY = {
    "model": MODEL,
    "stream": True,
    "max_tokens": 200,
    "tools": [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}],
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello to the side services"},
    ],
}


def test_a_request_through_the_stack_reaches_every_side_service(side_gateway: Gateway, stand_in: StandIn) -> None:
    user = side_gateway.new_user(credits_usd="5")
    ip = fresh_ip()
    headers = {"authorization": f"Bearer {user['token']}", "x-forwarded-for": ip, "x-kilocode-mode": "code"}
    response = httpx.post(side_gateway.chat_url, json=E2E_BODY, headers=headers, timeout=30)
    assert response.status_code == 200
    message_id = _message_id(response)
    [row] = _rows(side_gateway, message_id)
    assert row["abuse_classification"] == 0 and row["cost"] > 0

    [classify] = stand_in.wait_for(CLASSIFY, lambda r: r["json"]["kilo_user_id"] == user["id"])
    assert classify["headers"]["CF-Access-Client-Id"] == "cf-id"
    sent = classify["json"]
    assert sent["user_prompt"] == "Say hello to the side services" and sent["system_prompt"] == "You are terse."
    assert sent["requested_model"] == MODEL and sent["provider"] == "openrouter" and sent["streamed"] is True
    assert sent["max_tokens"] == 200 and sent["has_tools"] is True and sent["ip_address"].startswith(ip)

    [cost] = stand_in.wait_for(COST, lambda r: r["json"]["message_id"] == message_id)
    assert cost["json"]["request_id"] == 4242 and cost["json"]["cost"] == row["market_cost"] == row["cost"]
    assert (cost["json"]["input_tokens"], cost["json"]["output_tokens"]) == (row["input_tokens"], row["output_tokens"])

    [metrics] = stand_in.wait_for(METRICS, lambda r: r["json"]["kiloUserId"] == user["id"])
    assert metrics["headers"]["X-O11Y-ADMIN-TOKEN"] == O11Y_SECRET
    assert metrics["json"]["statusCode"] == 200 and metrics["json"]["mode"] == "code"
    assert metrics["json"]["toolsAvailable"] == ["function:read_file"] and metrics["json"]["inferenceProvider"]
    assert 0 <= metrics["json"]["ttfbMs"] <= metrics["json"]["completeRequestMs"]

    events = stand_in.wait_for(CAPTURE, lambda r: r["json"]["distinct_id"] == user["email"], count=2)
    assert sorted(e["json"]["event"] for e in events) == ["first_microdollar_usage", "first_usage"]

    # A second request: no more analytics events.
    again = httpx.post(side_gateway.chat_url, json=E2E_BODY, headers=headers, timeout=30)
    assert _rows(side_gateway, _message_id(again))
    _writer_barrier(side_gateway, stand_in)
    assert len([r for r in stand_in.received(CAPTURE) if r["json"]["distinct_id"] == user["email"]]) == 2


def _writer_barrier(gateway: Gateway, stand_in: StandIn) -> None:
    """Returns once everything the ledger writer started for the rows already written has had
    its turn: the writer sends a row's side calls (cost report, analytics) when it commits the
    row, so a later request's cost report, once it has arrived, was started after all of them.
    The stand-in's answers are restored to the defaults first."""
    stand_in.behaviour.clear()
    user = gateway.new_user(credits_usd="5")
    headers = {"authorization": f"Bearer {user['token']}", "x-forwarded-for": fresh_ip()}
    response = httpx.post(gateway.chat_url, json=E2E_BODY, headers=headers, timeout=30)
    assert response.status_code == 200
    message_id = _message_id(response)
    assert stand_in.wait_for(COST, lambda r: r["json"]["message_id"] == message_id), "the barrier's cost report never came"


def _timed_request(gateway: Gateway) -> tuple[float, httpx.Response, str]:
    """A new user's request: how long it took, the response, and the user's id."""
    user = gateway.new_user(credits_usd="5")
    headers = {"authorization": f"Bearer {user['token']}", "x-forwarded-for": fresh_ip()}
    started = time.monotonic()
    response = httpx.post(gateway.chat_url, json=E2E_BODY, headers=headers, timeout=30)
    return time.monotonic() - started, response, user["id"]


def test_slow_or_failing_side_services_never_delay_or_fail_a_request(side_gateway: Gateway, stand_in: StandIn) -> None:
    # The same requests with every side service answering at once, in the same run: the
    # baseline that absorbs how fast this machine is at the moment.
    baseline = [_timed_request(side_gateway)[0] for _ in range(3)]
    stand_in.set(CLASSIFY, delay=6)  # past the 2 s budget
    stand_in.set(METRICS, status=500)
    stand_in.set(CAPTURE, status=503)
    timed = [_timed_request(side_gateway) for _ in range(3)]
    assert [response.status_code for _, response, _ in timed] == [200] * 3
    # A request that waited for the classification would take its whole 2 s budget more:
    # the medians may differ by half of that at most.
    elapsed = [seconds for seconds, _, _ in timed]
    assert statistics.median(elapsed) < statistics.median(baseline) + 1.0, (elapsed, baseline)
    message_ids = [_message_id(response) for _, response, _ in timed]
    for message_id in message_ids:
        [row] = _rows(side_gateway, message_id)  # written once the 2 s budget ran out
        assert row["cost"] > 0
    for _, _, user_id in timed:  # each was classified, too late
        assert stand_in.wait_for(CLASSIFY, lambda r, user_id=user_id: r["json"]["kilo_user_id"] == user_id)
    _writer_barrier(side_gateway, stand_in)
    # Unclassified (the answer came too late): no id, no cost report.
    assert not [r for r in stand_in.received(COST) if r["json"]["message_id"] in message_ids]
    metrics = httpx.get(side_gateway.metrics_url).text
    assert 'llm_gateway_side_service_errors_total{service="abuse_classify"}' in metrics
    assert 'llm_gateway_side_service_errors_total{service="api_metrics"}' in metrics


def test_api_metrics_cover_the_upstream_402(side_gateway: Gateway, stand_in: StandIn) -> None:
    user = side_gateway.new_user(credits_usd="5")
    headers = {"authorization": f"Bearer {user['token']}", "x-forwarded-for": fresh_ip()}
    body = {**E2E_BODY, "stream": False, "mock": {"status": 402}}
    response = httpx.post(side_gateway.chat_url, json=body, headers=headers, timeout=30)
    assert response.status_code == 503  # contract 6.2
    [metrics] = stand_in.wait_for(METRICS, lambda r: r["json"]["kiloUserId"] == user["id"])
    assert metrics["json"]["statusCode"] == 402 and metrics["json"]["isStreaming"] is False


# --- the ledger's batch form, against the real ledger ------------------------------------------


async def test_a_batch_is_written_once_per_usage_id_and_charges_each_user_the_sum(side_gateway: Gateway) -> None:
    pool = await asyncpg.create_pool(side_gateway.database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as connection:
            alice, bob = await _new_user(connection, used=1_000), await _new_user(connection)
            editor = f"batch-editor-{uuid.uuid4().hex[:8]}"
            records = [
                record(kilo_user_id=alice, cost_microdollars=100),
                record(kilo_user_id=alice, cost_microdollars=250),
                record(kilo_user_id=bob, cost_microdollars=40, editor_name=editor),
                record(kilo_user_id=bob, cost_microdollars=0, free_model=True, editor_name=editor),
            ]
            items = [
                (r, Charge(r.stream_usage(), None, r.inference_provider, finish_reason=r.finish_reason), r.cost_microdollars, None)
                for r in records
            ]
            # The first record is already in the ledger (a replayed entry); the second comes twice.
            assert (await ledger.write(connection, *items[0])).inserted
            written = await ledger.write_many(connection, [*items, items[1]])
            assert [w.inserted for w in written] == [False, True, True, True, False]
            used = dict(await connection.fetch(
                "SELECT id, microdollars_used FROM kilocode_users WHERE id = ANY($1::text[])", [alice, bob]
            ))
            assert used == {alice: 1_000 + 100 + 250, bob: 40}
            rows = await connection.fetch(
                "SELECT u.cost, e.editor_name, m.message_id FROM microdollar_usage u"
                " JOIN microdollar_usage_metadata m USING (id) LEFT JOIN editor_name e USING (editor_name_id)"
                " WHERE u.id = ANY($1::uuid[]) ORDER BY u.cost",
                [r.usage_id for r in records],
            )
            assert [(row["cost"], row["editor_name"], row["message_id"]) for row in rows] == [
                (0, editor, records[3].message_id),
                (40, editor, records[2].message_id),
                (100, None, records[0].message_id),
                (250, None, records[1].message_id),
            ]
            assert await connection.fetchval("SELECT count(*) FROM editor_name WHERE editor_name = $1", editor) == 1
    finally:
        await pool.close()
