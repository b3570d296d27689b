"""Pure rules of the request path: parsing (contract 2.1), upstream headers (2.15), client IP."""

from __future__ import annotations

import pytest
from google.protobuf.struct_pb2 import Struct, Value

from extproc import errors
from extproc.phases.request_headers import client_ip
from extproc.pipeline.parse import parse_chat_request
from extproc.pipeline.rejection import Rejection
from extproc.pipeline.routing import Route
from extproc.pipeline.upstream import upstream_headers
from extproc.settings import load_settings


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", errors.INVALID_JSON),
        (b"{", errors.INVALID_JSON),
        (b"null", errors.INVALID_JSON),
        (b"1.5", errors.INVALID_JSON),
        (b'"s"', errors.INVALID_JSON),
        (b"false", errors.INVALID_JSON),
        (b"[]", errors.MODEL_NOT_FOUND),
        (b"{}", errors.MODEL_NOT_FOUND),
        (b'{"model": "  \\t"}', errors.MODEL_NOT_FOUND),
        (b'{"model": ["a"]}', errors.MODEL_NOT_FOUND),
    ],
)
def test_rejections(raw: bytes, error: errors.GatewayError) -> None:
    with pytest.raises(Rejection) as caught:
        parse_chat_request(raw)
    assert caught.value.error is error


def test_usage_is_forced_models_dropped_and_model_kept_as_sent() -> None:
    chat = parse_chat_request(
        b'{"model": " OpenAI/GPT-4o ", "models": ["x"], "stream": true, "stream_options": {"a": 1, "include_usage": false}}'
    )
    assert chat.body == {"model": " OpenAI/GPT-4o ", "stream": True, "stream_options": {"a": 1, "include_usage": True}}
    assert chat.model == " OpenAI/GPT-4o "
    assert chat.model_lower == "openai/gpt-4o"
    assert chat.stream is True


@pytest.mark.parametrize(("stream", "expected"), [("true", True), ('"true"', False), ("1", False), ("false", False)])
def test_stream_means_the_json_true_only(stream: str, expected: bool) -> None:
    assert parse_chat_request(f'{{"model": "m", "stream": {stream}}}'.encode()).stream is expected


def test_non_object_stream_options_are_replaced() -> None:
    assert parse_chat_request(b'{"model": "m", "stream_options": "x"}').body["stream_options"] == {"include_usage": True}


def test_upstream_headers_carry_the_provider_key_path_and_query() -> None:
    settings = load_settings(providers={"openrouter": {"api_url": "https://openrouter.ai/api/v1", "api_key": "sk-or-1"}})
    provider = settings.providers["openrouter"]
    route = Route(provider=provider, cluster=provider.cluster)
    headers = upstream_headers(settings, route, "?a=1&b=%20", 42, {"anthropic-beta": "x"})
    assert headers == {
        "x-gateway-upstream": "provider_openrouter",
        ":path": "/api/v1/chat/completions?a=1&b=%20",
        "http-referer": "https://kilocode.ai",
        "x-title": "Kilo Code",
        "content-type": "application/json",
        "content-length": "42",
        "authorization": "Bearer sk-or-1",
        "anthropic-beta": "x",
    }


def _attributes(address: str) -> Struct:
    return Struct(fields={"source.address": Value(string_value=address)})


@pytest.mark.parametrize(
    ("address", "ip"),
    [("203.0.113.7:51234", "203.0.113.7"), ("[2001:db8::1]:443", "2001:db8::1"), ("198.51.100.2", "198.51.100.2")],
)
def test_client_ip_comes_from_envoys_source_address(address: str, ip: str) -> None:
    assert client_ip(_attributes(address)) == ip


def test_no_source_address_means_no_client_ip() -> None:
    assert client_ip(None) is None
    assert client_ip(Struct()) is None
