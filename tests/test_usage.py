from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from extproc.money import usd_to_microdollars
from extproc.response_usage import (
    ReportedUsage,
    ResponseSummary,
    StreamTap,
    summarize_json_body,
    suspicious_no_usage,
    usage_from_summary,
)


def data(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chunk(
    delta: dict[str, Any] | None, finish_reason: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "id": "gen-1",
        "provider": "OpenAI",
        "model": "openai/gpt-4o-mini",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        **extra,
    }


def tap(*chunks: bytes, status: int = 200, aborted: bool = False) -> ResponseSummary:
    stream_tap = StreamTap(status)
    for piece in chunks:
        stream_tap.feed(piece)
    return stream_tap.finish(aborted=aborted)


USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 5,
    "total_tokens": 17,
    "cost": 0.0000145,
    "is_byok": False,
    "prompt_tokens_details": {"cached_tokens": 3},
    "cost_details": {"upstream_inference_cost": None},
}
OPENROUTER_STREAM = b"".join(
    [
        b": OPENROUTER PROCESSING\n\n",
        data(chunk({"role": "assistant", "content": ""})),
        b": OPENROUTER PROCESSING\n\n",
        data(chunk({"role": "assistant", "content": "h\u00e9llo \U0001f30d"})),
        data(chunk({"role": "assistant", "content": "!"})),
        data(chunk({"role": "assistant", "content": ""}, finish_reason="stop")),
        data({"id": "gen-1", "model": "openai/gpt-4o-mini", "choices": [], "usage": USAGE}),
        b"data: [DONE]\n\n",
    ]
)
EXPECTED = ResponseSummary(
    status=200,
    streamed=True,
    message_id="gen-1",
    model="openai/gpt-4o-mini",
    inference_provider="OpenAI",
    finish_reason="stop",
    usage=USAGE,
)


# --- streaming --------------------------------------------------------------------------


def test_realistic_stream(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        summary = tap(OPENROUTER_STREAM)
    assert summary == EXPECTED
    assert usage_from_summary(summary) == ReportedUsage(
        input_tokens=12,
        output_tokens=5,
        cache_hit_tokens=3,
        cache_write_tokens=0,
        cost_microdollars=15,
        is_byok=False,
    )
    assert not suspicious_no_usage(summary)
    assert caplog.records == []


def test_realistic_stream_at_every_split_offset() -> None:
    for stream in (OPENROUTER_STREAM, OPENROUTER_STREAM.replace(b"\n", b"\r\n")):
        for offset in range(len(stream) + 1):
            assert tap(stream[:offset], stream[offset:]) == EXPECTED, offset


def test_stream_cut_before_final_blank_line_still_yields_usage() -> None:
    stream = OPENROUTER_STREAM.removesuffix(b"data: [DONE]\n\n").removesuffix(b"\n\n")
    assert tap(stream) == EXPECTED


def test_status_and_abort_set_has_error() -> None:
    assert tap(OPENROUTER_STREAM, status=500).has_error
    assert tap(OPENROUTER_STREAM, aborted=True).has_error
    assert not tap(OPENROUTER_STREAM).has_error


def test_error_event_sets_has_error() -> None:
    summary = tap(
        data(chunk({"content": "partial"})),
        data({"error": {"code": 502, "message": "Provider returned error"}}),
        b"data: [DONE]\n\n",
    )
    assert summary.has_error
    assert summary.model == "openai/gpt-4o-mini"
    assert summary.usage is None
    assert not suspicious_no_usage(summary)


def test_no_usage_and_no_error_is_suspicious() -> None:
    summary = tap(data(chunk({"content": "hi"}, finish_reason="stop")), b"data: [DONE]\n\n")
    assert suspicious_no_usage(summary)
    assert usage_from_summary(summary) == ReportedUsage(0, 0, 0, 0, 0, None)


def test_last_non_null_values_win() -> None:
    second_usage = {**USAGE, "completion_tokens": 9}
    summary = tap(
        data(chunk({"content": "a"}, usage=USAGE)),
        data(chunk({"content": "b"}, usage=second_usage, id="gen-2", model="m2", provider="P2")),
        data({"id": None, "model": None, "provider": None, "usage": None, "choices": []}),
        data({"choices": [{"delta": {}, "finish_reason": "length"}]}),
        data({"choices": [{"delta": {}, "finish_reason": None}]}),
    )
    assert summary.usage == second_usage
    assert (summary.message_id, summary.model, summary.inference_provider) == ("gen-2", "m2", "P2")
    assert summary.finish_reason == "length"


def test_vercel_final_provider() -> None:
    routed = {"provider_metadata": {"gateway": {"routing": {"finalProvider": "bedrock"}}}}
    summary = tap(
        data({"id": "v1", "model": "anthropic/claude", "choices": [{"delta": {"content": "a"}}]}),
        data({"choices": [{"delta": {"content": "b", **routed}}]}),
        data({"choices": [{"delta": {"content": "c"}}]}),  # no provider: keep the previous one
    )
    assert summary.inference_provider == "bedrock"
    # The top-level `provider` field wins over the Vercel routing metadata.
    summary = tap(data({"provider": "Anthropic", "choices": [{"delta": routed}]}))
    assert summary.inference_provider == "Anthropic"


def test_malformed_events_are_tolerated(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="extproc.response_usage"):
        summary = tap(
            b"data: {not json\n\n",
            data(chunk({"content": "a"})),
            b"data: [1, 2]\n\n",
            b'data: "text"\n\n',
            b"data: \xff\xfe\n\n",
            b"data: \n\n",
            OPENROUTER_STREAM,
        )
    assert summary == ResponseSummary(**{**_fields(EXPECTED), "malformed_events": 5})
    assert "5 data events" in caplog.text


FINAL_7 = {"finalProvider": 7}


@pytest.mark.parametrize(
    "obj",
    [
        {"choices": None},
        {"choices": []},
        {"choices": "x"},
        {"choices": {"0": {}}},
        {"choices": [None]},
        {"choices": [{"delta": None, "finish_reason": 3}]},
        {"choices": [{"delta": {"provider_metadata": None}}]},
        {"choices": [{"delta": {"provider_metadata": {"gateway": {"routing": []}}}}]},
        {"choices": [{"delta": {"provider_metadata": {"gateway": {"routing": {"x": 7}}}}}]},
        {"choices": [{"delta": {"provider_metadata": {"gateway": {"routing": 7}}}}]},
        {"choices": [{"delta": {"provider_metadata": {"gateway": {"routing": FINAL_7}}}}]},
        {"model": 5, "id": ["x"], "provider": {}, "usage": "lots"},
    ],
)
def test_odd_shapes_are_ignored(obj: dict[str, Any]) -> None:
    # After a complete stream, so any wrongly accepted value would show in the summary.
    assert tap(OPENROUTER_STREAM, data(obj)) == EXPECTED


def test_done_is_not_parsed_or_counted() -> None:
    summary = tap(b"data: [DONE]\n\n")
    assert summary == ResponseSummary(status=200, streamed=True)


# --- non-streaming ----------------------------------------------------------------------


def completion(**overrides: Any) -> dict[str, Any]:
    body = {
        "id": "gen-9",
        "provider": "Together",
        "model": "meta/llama",
        "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": USAGE,
    }
    body.update(overrides)
    return body


def test_json_body_valid() -> None:
    summary = summarize_json_body(orjson.dumps(completion()), 200)
    assert summary == ResponseSummary(
        status=200,
        streamed=False,
        message_id="gen-9",
        model="meta/llama",
        inference_provider="Together",
        finish_reason="stop",
        usage=USAGE,
    )
    assert usage_from_summary(summary).cost_microdollars == 15


def test_json_body_vercel_provider() -> None:
    routed = {"provider_metadata": {"gateway": {"routing": {"finalProvider": "vertex"}}}}
    body = completion(provider=None, choices=[{"message": {"content": "x", **routed}}])
    assert summarize_json_body(orjson.dumps(body), 200).inference_provider == "vertex"


def test_json_body_invalid(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="extproc.response_usage"):
        summary = summarize_json_body(b"<html>bad gateway</html>", 200)
    assert summary == ResponseSummary(
        status=200, streamed=False, has_error=True, malformed_events=1
    )
    assert "not a JSON object" in caplog.text
    assert summarize_json_body(b"[1]", 200).malformed_events == 1


def test_json_body_error_status_and_missing_model() -> None:
    assert summarize_json_body(orjson.dumps(completion()), 400).has_error
    assert summarize_json_body(orjson.dumps(completion(model=None)), 200).has_error
    assert summarize_json_body(orjson.dumps(completion(model="")), 200).has_error
    error_body = {"error": {"message": "No endpoints found", "code": 404}}
    summary = summarize_json_body(orjson.dumps(error_body), 404)
    assert summary.has_error and summary.model is None and summary.malformed_events == 0


# --- costs from usage -------------------------------------------------------------------


def usage_of(usage: dict[str, Any] | None) -> ReportedUsage:
    return usage_from_summary(ResponseSummary(status=200, streamed=True, usage=usage))


def test_byok_cost_comes_from_upstream_inference_cost(caplog: pytest.LogCaptureFixture) -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "cost": 0.0001,
        "is_byok": True,
        "cost_details": {"upstream_inference_cost": 0.002},
    }
    with caplog.at_level(logging.WARNING, logger="extproc.response_usage"):
        assert usage_of(usage) == ReportedUsage(100, 20, 0, 0, 2000, True)
    assert caplog.records == []


def test_byok_cost_mismatch_warns(caplog: pytest.LogCaptureFixture) -> None:
    usage = {"cost": 0.0001, "is_byok": True, "cost_details": {"upstream_inference_cost": 0.003}}
    with caplog.at_level(logging.WARNING, logger="extproc.response_usage"):
        assert usage_of(usage).cost_microdollars == 3000
    assert "not 5%" in caplog.text


def test_byok_promo_zero_cost_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    usage = {"cost": 0, "is_byok": True, "cost_details": {"upstream_inference_cost": 0.003}}
    with caplog.at_level(logging.WARNING, logger="extproc.response_usage"):
        assert usage_of(usage).cost_microdollars == 3000
    assert caplog.records == []


def test_byok_without_upstream_cost_is_zero() -> None:
    assert usage_of({"cost": 0.01, "is_byok": True}).cost_microdollars == 0


def test_unknown_byok_with_cost_warns_and_uses_cost(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="extproc.response_usage"):
        result = usage_of({"cost": 0.5, "is_byok": None})
    assert result.cost_microdollars == 500_000 and result.is_byok is None
    assert "is_byok is null" in caplog.text


def test_missing_and_odd_usage_fields_default_to_zero() -> None:
    assert usage_of(None) == ReportedUsage(0, 0, 0, 0, 0, None)
    assert usage_of({}) == ReportedUsage(0, 0, 0, 0, 0, None)
    odd = {
        "prompt_tokens": "12",
        "completion_tokens": True,
        "prompt_tokens_details": None,
        "cost": "free",
        "is_byok": "yes",
    }
    assert usage_of(odd) == ReportedUsage(0, 0, 0, 0, 0, None)
    assert usage_of({"prompt_tokens": 12.0, "completion_tokens": 1.5}).input_tokens == 12


# --- money ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0000145, 15),  # float math gives 14.499999...
        (1e-06, 1),
        (0, 0),
        (0.0, 0),
        (None, 0),
        ("0.5", 500_000),
        (" 0.5 ", 500_000),
        (1.2345675, 1_234_568),
        (5e-07, 1),  # half up
        (4.99e-07, 0),
        (-0.0000145, -15),  # half away from zero keeps the sign symmetric
        (-5e-07, -1),
        (3, 3_000_000),
        (True, 0),
        (False, 0),
        (float("nan"), 0),
        (float("inf"), 0),
        (float("-inf"), 0),
        ("nan", 0),
        ("abc", 0),
        ("", 0),
        ([0.5], 0),
        ({"usd": 1}, 0),
        (9_223_372_036_854, 9_223_372_036_854_000_000),
        (1e13, 0),  # would overflow the ledger's bigint
        ("1e999999999", 0),
    ],
)
def test_usd_to_microdollars(value: object, expected: int) -> None:
    assert usd_to_microdollars(value) == expected


def _fields(summary: ResponseSummary) -> dict[str, Any]:
    return {name: getattr(summary, name) for name in ResponseSummary.__dataclass_fields__}


def test_usage_record_survives_the_outbox_round_trip() -> None:
    from extproc.accounting.record import PromptInfo, UsageRecord

    record = UsageRecord(
        usage_id="u-1", created_at=1764230400.25, kilo_user_id="user-1", organization_id=None, provider="openrouter",
        requested_model="openai/gpt-4o", auto_model=None, status_code=200, streamed=True, aborted=False,
        free_model=False, stealth_model=False, user_byok=False, promotion=False, message_id="gen-1",
        model="openai/gpt-4o", inference_provider="OpenAI", finish_reason="stop", has_error=False,
        input_tokens=12, output_tokens=8, cache_hit_tokens=2, cost_microdollars=123, is_byok=None,
        prompt=PromptInfo("You are", 120, "Hello"), max_tokens=50000, request_log={"request": {"a": [1, "é"]}},
        abuse_request_id=7,
    )
    assert UsageRecord.from_json(record.to_json()) == record
    # A record written by a newer replica, with a field this version does not know: read without it.
    newer = orjson.dumps({**orjson.loads(record.to_json()), "field_of_a_newer_version": [1]})
    assert UsageRecord.from_json(newer) == record
