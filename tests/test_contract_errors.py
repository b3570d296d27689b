"""Contract bodies (behaviour.md section 1, 2.1, Appendix A rows 1-4) and the body size limit
through real Envoy."""

from __future__ import annotations

import httpx
import pytest

from tests.bodies import APPENDIX_A, GATEWAY_REPLIES
from tests.conftest import Gateway

INVALID_PATH = APPENDIX_A["INVALID_PATH"].body
NOT_FOUND = APPENDIX_A["NOT_FOUND"].body
INVALID_JSON = APPENDIX_A["INVALID_JSON"].body
MODEL_NOT_FOUND = APPENDIX_A["MODEL_NOT_FOUND"].body
# README, configuration: LLM_GATEWAY_MAX_REQUEST_BODY_BYTES, "8 MiB; beyond it a JSON 413".
BODY_LIMIT = 8 * 1024 * 1024
# README: Envoy buffers the limit plus 1 MiB of headroom for the shaped body.
ENVOY_BUFFER = BODY_LIMIT + 1024 * 1024


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


def _body_of(size: int, model: str, content: str = "ok") -> tuple[bytes, str]:
    """A chat request of exactly `size` bytes, and the user message that pads it to that size;
    the mock answers `content`."""
    head = (
        b'{"model":"' + model.encode() + b'","mock":{"content":"' + content.encode()
        + b'"},"messages":[{"role":"user","content":"'
    )
    tail = b'"}]}'
    padding = "y" * (size - len(head) - len(tail))
    return head + padding.encode() + tail, padding


def _post(gateway: Gateway, body: bytes, framing: str) -> httpx.Response:
    """`framing`: with a content-length, or chunked in 64 KiB pieces (no length known up front)."""
    content = body if framing == "content-length" else (body[i : i + 65536] for i in range(0, len(body), 65536))
    return httpx.post(gateway.chat_url, content=content, headers={"content-type": "application/json"}, timeout=60)


FRAMINGS = ["content-length", "chunked"]


@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_body_of_exactly_the_limit_is_parsed_and_one_byte_more_gets_a_clean_413(
    upstream: Gateway, framing: str
) -> None:
    # A blank model: the contract's 404 is the gateway's own answer, so the body got past
    # Envoy's buffer and was parsed whole.
    body, _ = _body_of(BODY_LIMIT, "")
    assert len(body) == BODY_LIMIT
    _assert_json(_post(upstream, body, framing), 404, MODEL_NOT_FOUND)
    too_large = GATEWAY_REPLIES["PAYLOAD_TOO_LARGE"]
    # One byte more: within Envoy's buffer (which keeps room for the shaped body), refused by
    # the gateway; and beyond Envoy's buffer, refused by Envoy. The client sees one answer.
    for size in (BODY_LIMIT + 1, ENVOY_BUFFER + 1):
        over, _ = _body_of(size, "")
        _assert_json(_post(upstream, over, framing), too_large.status, too_large.body)
    assert upstream.upstream_requests() == []


def test_a_body_within_the_limit_is_forwarded_whole(upstream: Gateway) -> None:
    body, padding = _body_of(6 * 1024 * 1024, "a/b:free")
    response = _post(upstream, body, "content-length")
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "ok"
    [received] = upstream.upstream_requests()
    assert received["body"]["messages"][0]["content"] == padding


def test_a_body_of_exactly_the_limit_is_forwarded(upstream: Gateway) -> None:
    # Shaping makes the forwarded body larger than the client's; it must still fit.
    body, padding = _body_of(BODY_LIMIT, "a/b:free")
    response = _post(upstream, body, "content-length")
    assert response.status_code == 200, response.text[:300]
    [received] = upstream.upstream_requests()
    assert received["body"]["messages"][0]["content"] == padding
