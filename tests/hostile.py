"""Hostile requests for the fuzz suite (issue 14 part 2): hypothesis strategies and a corpus.

A case is the raw bytes of a body, the extra headers a client sends, and who the caller
claims to be. Bodies are encoded with the standard library's `json` (orjson refuses integers
beyond 64 bits, which the suite must send) or built as text by hand (duplicate keys, cut
documents, invalid UTF-8).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

# NUL is drawn like any other character: text Postgres cannot store is stored with U+FFFD in its
# place and charged (issue 10), so it must never cost a row.
_ALPHABET = list("abcXYZ09 _-./:@*") + ["\"", "\\", "\n", "\t", "\x00", "\x01", "\x1f", "\x7f", "é", "ß", "\u2028", "\u202e",
                                          "\ufeff", "\ufffd", "\U0001f600", "\u4e2d", "%", "{", "[", "<"]
_TEXT = st.text(st.sampled_from(_ALPHABET), max_size=24)
_HEADER_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60)

MODELS = (
    "openai/gpt-4o-mini",
    " OpenAI/GPT-4o-mini ",
    "anthropic/claude-sonnet-4.6",
    "minimax/minimax-m2.5:free",
    "giga-potato",
    "kilo/auto",
    "kilo/auto-free",
    "kilo/auto-small",
    "z-ai/glm-5:free",  # disabled free model: 404 (contract 2.11)
    "qwen/qwen3-coder:free",  # rate-limited to death: 404
    "openrouter/free",
    "openrouter/some-model-alpha",
    "google/gemini-3.1-pro-preview",
)


@dataclass(frozen=True)
class Caller:
    """Who the case claims to be; the harness turns the kind into an Authorization value."""

    kind: str  # none, paid, broke, org, or a malformed/forged JWT kind
    extra: str = ""


@dataclass
class Case:
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    caller: Caller = Caller("paid")
    label: str = ""


# JSON values of every type, numbers beyond 64 bits included.
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**70),
    st.integers(min_value=-(2**70), max_value=-(2**63) + 2),
    st.floats(allow_nan=False, allow_infinity=False),
    _TEXT,
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=4)),
    max_leaves=5,
)

STREAM_FLAGS = st.one_of(
    st.sampled_from([True, False, None, "yes", "true", "false", 1, 0, [], [1], {}, {"a": 1}, 1.5, "", -1]),
    JSON_VALUES,
)

_ROLES = st.sampled_from(["user", "assistant", "system", "tool", "developer", "function", "", "USER"])
_CONTENT_PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": _TEXT}),
    st.fixed_dictionaries(
        {"type": st.just("text"), "text": _TEXT}, optional={"cache_control": JSON_VALUES}
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["image_url", "file", "weird"]), "image_url": JSON_VALUES}),
    JSON_VALUES,
)
_CONTENT = st.one_of(_TEXT, st.lists(_CONTENT_PART, max_size=4), JSON_VALUES)
_TOOL_CALL = st.one_of(
    st.fixed_dictionaries(
        {
            "id": st.one_of(_TEXT, st.sampled_from(["call.1", "call_1", "toolu_01.x"]), JSON_VALUES),
            "type": st.sampled_from(["function", "custom", ""]),
            "function": st.one_of(
                st.fixed_dictionaries({"name": st.one_of(_TEXT, JSON_VALUES), "arguments": st.one_of(_TEXT, JSON_VALUES)}),
                JSON_VALUES,
            ),
        }
    ),
    JSON_VALUES,
)
_REASONING_DETAIL = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["reasoning.text", "reasoning.encrypted", "reasoning.summary", "x"])},
        optional={"text": st.one_of(_TEXT, JSON_VALUES), "data": st.one_of(_TEXT, JSON_VALUES), "signature": JSON_VALUES},
    ),
    JSON_VALUES,
)
MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": _ROLES},
        optional={
            "content": _CONTENT,
            "tool_calls": st.one_of(st.lists(_TOOL_CALL, max_size=4), JSON_VALUES),
            "tool_call_id": st.one_of(_TEXT, st.sampled_from(["call.1", "call_1"]), JSON_VALUES),
            "reasoning_details": st.one_of(st.lists(_REASONING_DETAIL, max_size=4), JSON_VALUES),
            "cache_control": JSON_VALUES,
        },
    ),
    JSON_VALUES,
)
MESSAGES = st.one_of(st.lists(MESSAGE, max_size=6), JSON_VALUES)
TOOL = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["function", "custom", ""]),
            "function": st.one_of(
                st.fixed_dictionaries(
                    {"name": st.one_of(st.sampled_from(["attempt_completion", "read_file"]), _TEXT, JSON_VALUES)},
                    optional={"parameters": JSON_VALUES, "strict": JSON_VALUES, "description": JSON_VALUES},
                ),
                JSON_VALUES,
            ),
        }
    ),
    JSON_VALUES,
)

# Every field the pipeline reads, each with values of the right and of every wrong type.
OPTIONAL_FIELDS: dict[str, Any] = {
    "stream": STREAM_FLAGS,
    "stream_options": JSON_VALUES,
    "max_tokens": st.one_of(st.integers(min_value=0, max_value=2**70), JSON_VALUES),
    "max_completion_tokens": st.one_of(st.integers(min_value=0, max_value=2**70), JSON_VALUES),
    "tools": st.one_of(st.lists(TOOL, max_size=4), JSON_VALUES),
    "tool_choice": JSON_VALUES,
    "provider": st.one_of(
        st.fixed_dictionaries(
            {}, optional={"data_collection": st.one_of(st.sampled_from(["deny", "allow"]), JSON_VALUES),
                          "zdr": JSON_VALUES, "order": JSON_VALUES, "only": JSON_VALUES}
        ),
        JSON_VALUES,
    ),
    "reasoning": st.one_of(
        st.fixed_dictionaries({}, optional={"enabled": JSON_VALUES, "effort": JSON_VALUES, "max_tokens": JSON_VALUES}),
        JSON_VALUES,
    ),
    "verbosity": JSON_VALUES,
    "models": JSON_VALUES,
    "transforms": JSON_VALUES,
    "prompt_cache_key": JSON_VALUES,
    "user": JSON_VALUES,
    "safety_identifier": JSON_VALUES,
    "temperature": JSON_VALUES,
    "providerOptions": JSON_VALUES,
}

REQUEST = st.fixed_dictionaries(
    {"model": st.one_of(st.sampled_from(MODELS), st.sampled_from(MODELS), JSON_VALUES), "messages": MESSAGES},
    optional=OPTIONAL_FIELDS,
)


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


@st.composite
def _request_body(draw: st.DrawFn) -> bytes:
    return encode(draw(REQUEST))


@st.composite
def _truthy_stream_body(draw: st.DrawFn) -> bytes:
    """A valid request whose `stream` is truthy but not `true`, against an upstream that
    streams for any truthy value (the measured finding of issue 14)."""
    return encode(
        {
            "model": draw(st.sampled_from(["openai/gpt-4o-mini", "minimax/minimax-m2.5:free"])),
            "messages": [{"role": "user", "content": draw(_TEXT)}],
            "stream": draw(st.sampled_from(["yes", 1, [1], {"a": 1}, 2.5, "false"])),
            "mock": {"truthy_stream": True},
        }
    )


@st.composite
def _duplicate_keys(draw: st.DrawFn) -> bytes:
    first, second = draw(st.sampled_from(MODELS)), draw(JSON_VALUES)
    stream = draw(STREAM_FLAGS)
    return (
        '{"model":%s,"messages":[{"role":"user","content":"dup"}],"stream":%s,"model":%s,"stream":%s}'
        % (json.dumps(first), json.dumps(stream), json.dumps(second), json.dumps(not stream))
    ).encode()


@st.composite
def _cut_document(draw: st.DrawFn) -> bytes:
    whole = encode(draw(REQUEST))
    return whole[: draw(st.integers(min_value=0, max_value=max(0, len(whole) - 1)))]


@st.composite
def _nested(draw: st.DrawFn) -> bytes:
    depth = draw(st.sampled_from([10, 100, 1_000, 10_000, 100_000]))
    where = draw(st.sampled_from(["top", "messages", "content", "tools"]))
    deep = "[" * depth + "]" * depth
    if where == "top":
        return deep.encode()
    if where == "messages":
        return ('{"model":"openai/gpt-4o-mini","messages":%s}' % deep).encode()
    if where == "content":
        return ('{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":%s}]}' % deep).encode()
    return ('{"model":"openai/gpt-4o-mini","messages":[],"tools":[{"type":"function","function":%s}]}' % deep).encode()


@st.composite
def _huge_array(draw: st.DrawFn) -> bytes:
    n = draw(st.sampled_from([1_000, 10_000, 100_000]))
    item = draw(st.sampled_from(['{"role":"user","content":"x"}', "0", '""', "null", '{"role":"tool","tool_call_id":"a"}']))
    return ('{"model":"openai/gpt-4o-mini","messages":[%s]}' % ",".join([item] * n)).encode()


@st.composite
def _big_number(draw: st.DrawFn) -> bytes:
    number = draw(st.sampled_from(["1e400", "-1e400", "18446744073709551616", "9" * 400, "1E309", "-0", "1.0e-400",
                                   "99999999999", "100000000000", "99999999999.5"]))
    target = draw(st.sampled_from(["max_tokens", "max_completion_tokens", "temperature", "stream", "model"]))
    return ('{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"n"}],"%s":%s}' % (target, number)).encode()


_RAW = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=50).map(lambda b: b'{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"' + b + b'"}]}'),
    st.sampled_from(
        [b"", b"null", b"0", b"[]", b"\"s\"", b"true", b"{}", b"\x00", b'{"model":null}', b'{"model":""}',
         b'{"model":"   "}', b'{"model":"openai/gpt-4o-mini"}',
         b"\xef\xbb\xbf{\"model\":\"openai/gpt-4o-mini\",\"messages\":[]}", b'{"model":"\xff\xfe"}',
         b'{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"\\ud800"}]}']
    ),
    JSON_VALUES.map(encode),
)

BODIES = st.one_of(
    _request_body(), _truthy_stream_body(), _request_body(), _duplicate_keys(), _request_body(), _cut_document(),
    _request_body(), _big_number(), _RAW, st.one_of(_nested(), _huge_array()),
)

_JWT_KINDS = st.sampled_from(
    ["paid", "none", "paid", "broke", "org", "garbage", "empty-bearer", "basic", "alg-none", "alg-hs512",
     "alg-rs256", "wrong-secret", "expired", "exp-overflow", "exp-string", "exp-float", "huge-payload",
     "version-2", "version-string", "no-user", "user-int", "two-dots", "bad-base64", "header-json-array",
     "bearer-lowercase", "many-spaces"]
)
CALLERS = st.builds(Caller, _JWT_KINDS, _HEADER_TEXT)

_OVERSIZED = st.sampled_from([1_000, 8_000, 40_000, 70_000, 100_000])
HEADERS = st.lists(
    st.one_of(
        st.tuples(st.just("authorization"), st.one_of(_HEADER_TEXT.map(lambda t: "Bearer " + t), _HEADER_TEXT)),
        st.tuples(st.just("x-kilocode-organizationid"),
                  st.one_of(st.uuids().map(str), _HEADER_TEXT, st.just("00000000-0000-0000-0000-000000000000"))),
        st.tuples(st.sampled_from(["x-kilocode-mode", "x-kilocode-editorname", "x-kilocode-machineid",
                                   "x-kilocode-projectid", "x-kilocode-version", "x-kilocode-feature",
                                   "user-agent", "x-gateway-upstream", "x-forwarded-for"]),
                  st.one_of(_HEADER_TEXT, st.sampled_from(["opencode-kilo-provider/1.0", "Kilo-Code/4.0",
                                                            "git@github.com:a/b.git", "https://x/y/z.git",
                                                            "1.2.3-prerelease", "openrouter", "vercel"]))),
        st.tuples(st.sampled_from(["x-kilocode-editorname", "user-agent", "x-anything"]),
                  st.sampled_from(["a\\r\\nx-injected: 1", "%0d%0aSet-Cookie: a=b", "a\\u000d\\u000ab", "\\x00"])),
        st.tuples(st.sampled_from(["x-kilocode-mode", "user-agent", "authorization"]), _OVERSIZED.map(lambda n: "a" * n)),
    ),
    max_size=4,
)

CASES = st.builds(Case, body=BODIES, headers=HEADERS, caller=CALLERS)


def corpus() -> list[Case]:
    """Fixed cases every run sends, whatever hypothesis draws: the limits exactly."""
    valid = b'{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"corpus"}]}'
    limit = 8 * 1024 * 1024
    padded = b'{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"x"}],"pad":"'
    tail = b'"}'
    under = padded + b"p" * (limit - 1024 - len(padded) - len(tail)) + tail
    over = padded + b"p" * (limit + 1 - len(padded) - len(tail)) + tail
    return [
        Case(under, label="8 MiB minus 1 KiB"),
        Case(over, label="8 MiB plus one byte"),
        Case(valid, [("authorization", "Bearer a"), ("authorization", "Bearer b")], label="two authorization headers"),
        Case(valid, [("x-kilocode-organizationid", "x"), ("x-kilocode-organizationid", "y")], label="two org headers"),
        Case(valid, caller=Caller("huge-payload"), label="40 KiB JWT"),
        # orjson reads 1024 levels but writes 254: the levels around both limits.
        *(
            Case(('{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"x","n":%s}]}'
                  % ("[" * depth + "]" * depth)).encode(), label=f"nested {depth} deep")
            for depth in (250, 251, 252, 253, 300, 1020, 1021, 1022, 1023, 1024, 1025)
        ),
    ]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: Any, secret: bytes, algorithm: str = "sha256") -> str:
    """A JWT built by hand, so that shapes PyJWT refuses to sign can be sent."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), getattr(hashlib, algorithm)).digest()
    return f"{signing_input}.{_b64(signature)}"


def authorization(caller: Caller, tokens: dict[str, str], secret: bytes, user_id: str) -> str | None:
    """The Authorization header for a caller kind; tokens holds the real tokens by kind."""
    if caller.kind == "none":
        return None
    if caller.kind in tokens:
        return f"Bearer {tokens[caller.kind]}"
    claims: dict[str, Any] = {"kiloUserId": user_id, "version": 3, "apiTokenPepper": None, "exp": int(time.time()) + 3600}
    hs256 = {"alg": "HS256", "typ": "JWT"}
    kinds: dict[str, str] = {
        "garbage": f"Bearer {caller.extra}",
        "empty-bearer": "Bearer",
        "basic": "Basic " + base64.b64encode(b"user:pass").decode(),
        "alg-none": f"Bearer {_b64(json.dumps({'alg': 'none'}).encode())}.{_b64(json.dumps(claims).encode())}.",
        "alg-hs512": "Bearer " + forge({"alg": "HS512", "typ": "JWT"}, claims, secret, "sha512"),
        "alg-rs256": "Bearer " + forge({"alg": "RS256", "typ": "JWT"}, claims, secret),
        "wrong-secret": "Bearer " + forge(hs256, claims, b"not-the-secret"),
        "expired": "Bearer " + forge(hs256, {**claims, "exp": 1}, secret),
        "exp-overflow": "Bearer " + forge(hs256, {**claims, "exp": 2**64 + 1}, secret),
        "exp-string": "Bearer " + forge(hs256, {**claims, "exp": "9" * 30}, secret),
        "exp-float": "Bearer " + forge(hs256, {**claims, "exp": 1e300}, secret),
        "huge-payload": "Bearer " + forge(hs256, {**claims, "pad": "p" * 30_000}, secret),
        "version-2": "Bearer " + forge(hs256, {**claims, "version": 2}, secret),
        "version-string": "Bearer " + forge(hs256, {**claims, "version": "3"}, secret),
        "no-user": "Bearer " + forge(hs256, {k: v for k, v in claims.items() if k != "kiloUserId"}, secret),
        "user-int": "Bearer " + forge(hs256, {**claims, "kiloUserId": 7}, secret),
        "two-dots": "Bearer a..b",
        "bad-base64": "Bearer !!!.@@@.###",
        "header-json-array": "Bearer " + forge([1, 2], claims, secret),  # type: ignore[arg-type]
        "bearer-lowercase": f"bearer {tokens['paid']}",
        "many-spaces": f"Bearer    {tokens['paid']}",
    }
    return kinds[caller.kind]
