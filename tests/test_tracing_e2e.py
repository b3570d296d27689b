"""OpenTelemetry tracing through real Envoy (issue 28): one trace from Envoy's ingress span
through the ext_proc's request span to the ledger write, received by an OTLP/HTTP receiver on
OpenTelemetry's own protocol definitions (tests/otlp_receiver.py).

Expected values come from the ledger row and from what the test sent, never from the code
under test.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from extproc.local.stack import mock_api_key
from tests.conftest import SESSION_STACK, Gateway, fresh_ip, running_stack
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

MODEL = "openai/gpt-4o-mini"
SERVER, CLIENT = 2, 3  # OTLP span kinds
ERROR = 2  # OTLP status code
TRACED = {"OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_SERVICE_NAME": "gateway-under-test"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as received:
        yield received


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver) -> Iterator[Gateway]:
    with running_stack(
        tmp_path_factory.mktemp("traced"), **SESSION_STACK, **TRACED, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint
    ) as gateway:
        yield gateway


def _trace_of(spans: list[ReceivedSpan], usage_id: str) -> list[ReceivedSpan]:
    request = [s for s in spans if s.attributes.get("llm_gateway.usage_id") == usage_id and s.kind == SERVER]
    return [s for s in spans if request and s.trace_id == request[0].trace_id]


def _complete(trace: list[ReceivedSpan]) -> bool:
    names = {s.name for s in trace}
    return "ingress" in names and "ledger.write" in names and "gateway.response" in names


def _usage_id_of(gateway: Gateway, tag: str) -> str:
    """The usage id of the one request the mock upstream answered with this tag."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = gateway.sql("SELECT id::text FROM microdollar_usage_metadata WHERE session_id = $1", tag)
        if rows:
            return str(rows[0]["id"])
        time.sleep(0.1)
    raise AssertionError(f"no ledger row for {tag}")


def _chat(gateway: Gateway, token: str, prompt: str, tag: str, **body: Any) -> httpx.Response:
    return httpx.post(
        gateway.chat_url,
        json={"model": MODEL, "messages": [{"role": "user", "content": prompt}], **body},
        headers={"authorization": f"Bearer {token}", "x-forwarded-for": fresh_ip(), "x-kilocode-taskid": tag},
        timeout=30,
    )


def test_one_trace_from_envoy_through_the_extproc_to_the_ledger(traced: Gateway, receiver: OtlpReceiver) -> None:
    user = traced.new_user(credits_usd="10")
    prompt = f"the secret prompt {uuid.uuid4().hex}"
    tag = f"trace-{uuid.uuid4().hex[:12]}"
    response = _chat(traced, user["token"], prompt, tag, stream=True, max_tokens=77, mock={"chunks": 5})
    assert response.status_code == 200
    usage_id = _usage_id_of(traced, tag)
    spans = receiver.wait_for(lambda spans: _complete(_trace_of(spans, usage_id)))
    trace = _trace_of(spans, usage_id)
    by_id = {s.span_id: s for s in trace}
    by_name = {s.name: s for s in trace}

    # One trace: Envoy's ingress span is its root; the ext_proc's request span is a child of
    # Envoy's span of the ext_proc stream, itself a child of the ingress span.
    ingress = by_name["ingress"]
    assert ingress.parent_span_id == ""
    request = next(s for s in trace if s.kind == SERVER and s.service == "gateway-under-test" and s.name.startswith("chat"))
    extproc_stream = by_id[request.parent_span_id]
    assert "ExternalProcessor.Process" in extproc_stream.name
    assert extproc_stream.parent_span_id == ingress.span_id
    # Envoy's upstream attempt (one here), a child of the ingress span.
    attempts = [s for s in trace if s.kind == CLIENT and s.attributes.get("upstream_cluster") == "provider_openrouter"]
    assert len(attempts) == 1 and attempts[0].parent_span_id == ingress.span_id
    for name in ("gateway.admission", "gateway.auth_and_limits", "gateway.routing", "gateway.balance_and_shaping",
                 "gateway.upstream", "gateway.first_token", "gateway.response", "ledger.write"):
        assert by_name[name].parent_span_id == request.span_id, name
    assert by_name["gateway.routing"].attributes["gen_ai.provider.name"] == "openrouter"
    # The stream's span ends when the stream did: after the response's span began.
    assert request.start_ns <= by_name["gateway.response"].start_ns <= request.end_ns

    # GenAI attributes equal the ledger's row.
    row = traced.sql("SELECT cost, input_tokens, output_tokens, model FROM microdollar_usage WHERE id = $1::uuid", usage_id)[0]
    attributes = request.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openrouter"
    assert attributes["gen_ai.request.model"] == MODEL
    assert attributes["gen_ai.response.model"] == row["model"]
    assert attributes["gen_ai.request.max_tokens"] == 77
    assert attributes["gen_ai.request.stream"] is True
    assert attributes["gen_ai.usage.input_tokens"] == row["input_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] == row["output_tokens"] > 0
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes["llm_gateway.cost_microdollars"] == row["cost"] > 0
    ledger = by_name["ledger.write"].attributes
    assert ledger["llm_gateway.cost_microdollars"] == row["cost"]
    assert ledger["gen_ai.usage.input_tokens"] == row["input_tokens"]

    # Nothing secret or private in any byte that reached the collector.
    sent = b"".join(receiver.bodies)
    for secret in (prompt, user["token"], mock_api_key("openrouter"), user["token"].split(".")[1]):
        assert secret.encode() not in sent


def test_a_cut_stream_span_ends_with_the_cut(traced: Gateway, receiver: OtlpReceiver) -> None:
    user = traced.new_user(credits_usd="10")
    tag = f"cut-{uuid.uuid4().hex[:12]}"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "a long answer"}],
        "stream": True,
        "mock": {"chunks": 100, "chunk_delay_ms": 100},  # 10 s if read to the end
    }
    headers = {"authorization": f"Bearer {user['token']}", "x-forwarded-for": fresh_ip(), "x-kilocode-taskid": tag}
    with httpx.stream("POST", traced.chat_url, json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break
    cut_ns = time.time_ns()
    usage_id = _usage_id_of(traced, tag)
    spans = receiver.wait_for(lambda spans: any(s.name == "gateway.response" for s in _trace_of(spans, usage_id)))
    request = next(s for s in _trace_of(spans, usage_id) if s.kind == SERVER and s.name.startswith("chat"))
    assert request.attributes["llm_gateway.aborted"] is True
    assert request.status_code == ERROR and "cut" in request.status_message
    # Ended at the cut (within Envoy's notice of it), not when the upstream would have finished.
    assert request.end_ns - cut_ns < 2_000_000_000
    response_span = next(s for s in _trace_of(spans, usage_id) if s.name == "gateway.response")
    assert response_span.status_code == ERROR and response_span.end_ns == request.end_ns


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _dropped(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith('llm_gateway_trace_spans_dropped_total{reason="export_failed"}'):
            return float(line.split()[-1])
    raise AssertionError("no llm_gateway_trace_spans_dropped_total{reason=export_failed}")


def test_an_unreachable_collector_loses_spans_never_requests(tmp_path: Any) -> None:
    with running_stack(
        tmp_path, **SESSION_STACK, **TRACED, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{_closed_port()}"
    ) as gateway:
        user = gateway.new_user(credits_usd="10")
        assert _dropped(gateway.metrics()) == 0
        for stream in (False, True, False, True):
            response = _chat(gateway, user["token"], "hello", f"down-{uuid.uuid4().hex[:8]}", stream=stream)
            assert response.status_code == 200 and "choices" in response.text
        deadline = time.monotonic() + 60
        while _dropped(gateway.metrics()) == 0:
            assert time.monotonic() < deadline, "the lost spans never showed in the metric"
            time.sleep(0.5)
