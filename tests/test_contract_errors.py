"""Contract bodies (behaviour.md section 1, 2.1, Appendix A rows 1-4) through real Envoy."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Gateway

INVALID_PATH = {"error": "Invalid path", "message": "This endpoint only accepts the path `/chat/completions`."}
NOT_FOUND = {"error": "Not found"}
INVALID_JSON = {"error": "Invalid request", "message": "Could not parse request body. Please ensure it is valid JSON."}
MODEL_NOT_FOUND = {"error": "Model not found", "message": "The requested model could not be found."}


def _assert_json(response: httpx.Response, status: int, body: dict) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/gateway/chat/completions/"),
        ("POST", "/api/gateway/completions"),
        ("POST", "/api/openrouter/models"),
        ("GET", "/api/gateway/chat/completions"),
        ("GET", "/api/openrouter/chat/completions"),
        ("POST", "/api/gateway/v1/chat/completions"),
    ],
)
def test_other_paths_under_the_gateway_prefixes_get_400(gateway: Gateway, method: str, path: str) -> None:
    _assert_json(httpx.request(method, gateway.url + path, json={"model": "x"}), 400, INVALID_PATH)


@pytest.mark.parametrize("path", ["/", "/health", "/api/gateway", "/v1/chat/completions", "/api/other/chat/completions"])
def test_unknown_paths_get_404(gateway: Gateway, path: str) -> None:
    _assert_json(httpx.post(gateway.url + path, json={"model": "x"}), 404, NOT_FOUND)


@pytest.mark.parametrize("body", [b"", b"not json", b"{", b"null", b"42", b'"text"', b"true"])
def test_bodies_that_are_not_json_objects_get_400(upstream: Gateway, body: bytes) -> None:
    response = httpx.post(upstream.chat_url, content=body, headers={"content-type": "application/json"})
    _assert_json(response, 400, INVALID_JSON)
    assert upstream.upstream_requests() == []


@pytest.mark.parametrize(
    "body",
    [b"{}", b'{"model": ""}', b'{"model": "   "}', b'{"model": 5}', b'{"model": null}', b"[]"],
)
def test_missing_or_blank_model_gets_404(upstream: Gateway, body: bytes) -> None:
    response = httpx.post(upstream.chat_url, content=body)
    _assert_json(response, 404, MODEL_NOT_FOUND)
    assert upstream.upstream_requests() == []


def test_query_string_does_not_change_path_validation(gateway: Gateway) -> None:
    response = httpx.post(f"{gateway.url}/api/openrouter/chat/completions?x=1", content=b"{}")
    _assert_json(response, 404, MODEL_NOT_FOUND)


def test_a_body_over_the_limit_gets_a_clean_413(upstream: Gateway) -> None:
    big = b'{"model":"a/b","messages":[{"role":"user","content":"' + b"x" * (9 * 1024 * 1024) + b'"}]}'
    response = httpx.post(upstream.chat_url, content=big, timeout=30)
    _assert_json(
        response,
        413,
        {"error": "Payload too large", "message": "The request body exceeds the gateway's size limit."},
    )
    assert upstream.upstream_requests() == []


def test_a_large_body_within_the_limit_is_forwarded(upstream: Gateway) -> None:
    text = "y" * (6 * 1024 * 1024)
    response = httpx.post(
        upstream.chat_url,
        json={"model": "a/b:free", "messages": [{"role": "user", "content": text}], "mock": {"content": "ok"}},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "ok"
    [received] = upstream.upstream_requests()
    assert received["body"]["messages"][0]["content"] == text
