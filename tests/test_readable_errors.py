"""Readable upstream errors (contract 6.2, 6.3): the texts verbatim and the order of checks."""

from __future__ import annotations

import orjson
import pytest

from extproc.errors import GatewayError
from extproc.response.readable_errors import (
    estimate_token_count,
    js_string_length,
    make_error_readable,
    requested_max_tokens,
    upstream_402_replacement,
)
from tests.contract_models import catalogue

CATALOGUE = catalogue()

BYOK_TEXTS = {
    401: "[BYOK] Your API key is invalid or has been revoked. Please check your API key configuration.",
    402: "[BYOK] Your API account has insufficient funds. Please check your billing details with your API provider.",
    403: "[BYOK] Your API key does not have permission to access this resource. Please check your API key permissions.",
    429: "[BYOK] Your API key has hit its rate limit. Please try again later or check your rate limit settings with your API provider.",
}

KIMI = "moonshotai/kimi-k2.5:free"  # context 262 144, not stealth
GIGA = "giga-potato"  # context 256 000, stealth
PAID = "anthropic/claude-sonnet-4.5"


def readable(
    status: int,
    model: str = PAID,
    *,
    byok: bool = False,
    length: int = 1000,
    max_tokens: int | float | None = None,
) -> GatewayError | None:
    return make_error_readable(
        status,
        is_byok=byok,
        model_lower=model,
        catalogue=CATALOGUE,
        request_body_json_length=length,
        max_tokens=max_tokens,
    )


def body(error: GatewayError | None) -> bytes:
    assert error is not None
    return error.json()


@pytest.mark.parametrize("status", sorted(BYOK_TEXTS))
def test_byok_texts(status: int) -> None:
    error = readable(status, byok=True)
    assert error is not None and error.status == status
    text = BYOK_TEXTS[status]
    assert body(error) == orjson.dumps({"error": text, "message": text})


@pytest.mark.parametrize("status", [400, 404, 408, 500, 502, 503])
def test_byok_other_statuses_have_no_byok_text(status: int) -> None:
    assert readable(status, byok=True) is None


@pytest.mark.parametrize("status", sorted(BYOK_TEXTS))
def test_byok_texts_need_byok(status: int) -> None:
    assert readable(status, byok=False) is None


def test_context_length_text() -> None:
    error = readable(400, KIMI, length=1_048_576, max_tokens=0)  # 262 144 tokens exactly
    assert error is not None and error.status == 400
    assert body(error) == (
        b'{"error":"The maximum context length is 262144 tokens. However, about 262144 tokens were requested.",'
        b'"message":"The maximum context length is 262144 tokens. However, about 262144 tokens were requested."}'
    )


def test_context_length_boundary_and_max_tokens() -> None:
    # 1 000 000 / 4 + 12 143 = 262 143: one short of the context.
    assert readable(500, KIMI, length=1_000_000, max_tokens=12_143) is None
    error = readable(500, KIMI, length=1_000_000, max_tokens=12_144)
    assert error is not None and error.status == 500
    assert error.body["message"] == (
        "The maximum context length is 262144 tokens. However, about 262144 tokens were requested."
    )
    assert readable(500, KIMI, length=1_000_000, max_tokens=None) is None


def test_context_length_uses_the_whole_list_disabled_entries_too() -> None:
    # z-ai/glm-5:free is disabled (context 202 800); the reference looks in the full list.
    error = readable(400, "z-ai/glm-5:free", length=811_200)
    assert error is not None
    assert error.body["error"] == (
        "The maximum context length is 202800 tokens. However, about 202800 tokens were requested."
    )


def test_context_length_only_for_kilo_free_models() -> None:
    assert readable(400, "openai/gpt-oss-20b:free", length=10_000_000) is None
    assert readable(400, PAID, length=10_000_000) is None


def test_stealth_text() -> None:
    error = readable(503, GIGA)
    assert error is not None and error.status == 503
    assert body(error) == (
        b'{"error":"Stealth model unable to process request","message":"Stealth model unable to process request"}'
    )
    # A disabled stealth entry still masks its errors.
    assert readable(500, "x-ai/grok-code-fast-1:optimized:free") == GatewayError(500, error.body)


def test_order_byok_first() -> None:
    # BYOK, over the context and stealth at once: the BYOK text wins.
    error = readable(429, GIGA, byok=True, length=2_000_000)
    assert error is not None and error.body["error"] == BYOK_TEXTS[429]


def test_order_byok_without_text_falls_through() -> None:
    error = readable(500, GIGA, byok=True, length=2_000_000)
    assert error is not None and error.body["error"].startswith("The maximum context length is 256000 tokens.")
    error = readable(500, GIGA, byok=True)
    assert error is not None and error.body["error"] == "Stealth model unable to process request"


def test_order_context_before_stealth() -> None:
    error = readable(400, GIGA, length=1_024_000)
    assert error is not None
    assert error.body["error"] == "The maximum context length is 256000 tokens. However, about 256000 tokens were requested."
    error = readable(400, GIGA, length=1_023_996)
    assert error is not None and error.body["error"] == "Stealth model unable to process request"


@pytest.mark.parametrize("status", [100, 200, 204, 302, 399])
def test_non_error_statuses_give_none(status: int) -> None:
    assert readable(status, GIGA, byok=True, length=10_000_000) is None
    assert readable(status, KIMI, length=10_000_000) is None


def test_estimate_rounds_halves_up_like_math_round() -> None:
    assert estimate_token_count(2, None) == 1  # 0.5 -> 1 (Python's round() gives 0)
    assert estimate_token_count(10, 0) == 3  # 2.5 -> 3 (round() gives 2)
    assert estimate_token_count(5, 0) == 1  # 1.25 -> 1
    assert estimate_token_count(7, 0) == 2  # 1.75 -> 2
    assert estimate_token_count(6, 100) == 102  # 101.5 -> 102
    assert estimate_token_count(0, 0.5) == 1


@pytest.mark.parametrize(
    ("request_body", "expected"),
    [
        ({"max_completion_tokens": 10, "max_tokens": 20}, 10),  # max_completion_tokens first
        ({"max_completion_tokens": None, "max_tokens": 20}, 20),
        ({"max_tokens": 20}, 20),
        ({"max_completion_tokens": 0, "max_tokens": 20}, 0),  # `??`, not `||`
        ({}, None),
        ({"max_tokens": "20"}, None),
        ({"max_tokens": True}, None),
        ({"max_tokens": 1.5}, 1.5),
    ],
)
def test_requested_max_tokens(request_body: dict[str, object], expected: int | float | None) -> None:
    assert requested_max_tokens(request_body) == expected


def test_js_string_length_counts_utf16_units() -> None:
    assert js_string_length(b'{"a":"b"}') == 9
    assert js_string_length("é✓".encode()) == 2
    assert js_string_length("\U0001f44b".encode()) == 2  # outside the BMP: a surrogate pair
    assert js_string_length(b"\xff") == 1


def test_upstream_402_replacement() -> None:
    replaced = upstream_402_replacement(402, is_byok=False)
    assert replaced is not None and replaced.status == 503
    assert replaced.json() == (
        b'{"error":"Service Unavailable","message":"The service is temporarily unavailable. Please try again later."}'
    )
    assert upstream_402_replacement(402, is_byok=True) is None
    for status in (200, 400, 401, 403, 429, 500, 503):
        assert upstream_402_replacement(status, is_byok=False) is None


def test_byok_402_gets_the_byok_text_instead() -> None:
    assert upstream_402_replacement(402, is_byok=True) is None
    error = readable(402, KIMI, byok=True)
    assert error is not None and error.status == 402 and error.body["message"] == BYOK_TEXTS[402]
