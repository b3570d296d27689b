"""The one sanitising step between what clients and upstreams send and what we store or pass on.

Postgres' `text` refuses NUL (U+0000) and `jsonb` refuses the escape `\\u0000` too; asyncpg
cannot encode a lone surrogate. Any of them in a prompt, a header or an upstream field used to
make a usage record unwritable, so the request was served and never charged. Every text value
bound for the ledger, the employee request log or a side service goes through `text` (or
`json_value` for a document), where such a character becomes U+FFFD.

U+FFFD rather than removal: the stored text keeps a visible mark that the client sent
something the store cannot hold ("hello\\x00world" does not become a different, plausible
"helloworld"), and lengths in characters stay what was measured (the 100-character prompt
prefixes, `system_prompt_length`).

Numbers have one rule here: a descriptive number outside its column's range (e.g. a client's
`max_tokens` of 2**64-1) is not storable and becomes NULL. Money and token columns never pass
through `number`: they are charged exactly as billed (their parsers already refuse amounts
beyond bigint, see `extproc/money.py` and `extproc/response_usage.py`).
"""

from __future__ import annotations

import math
import re
from typing import Any

REPLACEMENT = "\ufffd"
# NUL, and the surrogate code points (only reachable as lone surrogates in a Python str).
_REFUSED = re.compile("[\x00\ud800-\udfff]")
_INTEGER_BITS = {"smallint": 16, "integer": 32, "bigint": 64}
_REAL_MAX = 3.4028234663852886e38  # float4's largest finite value


def text(value: str) -> str:
    """`value` with every character Postgres or JSON consumers refuse replaced by U+FFFD."""
    if value.isascii():  # the common case: only NUL can be refused
        return value.replace("\x00", REPLACEMENT) if "\x00" in value else value
    return _REFUSED.sub(REPLACEMENT, value)


def optional_text(value: str | None) -> str | None:
    return None if value is None else text(value)


def json_value(value: Any) -> Any:
    """A JSON-able value with `text` applied to every string in it, keys included."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {text(key) if isinstance(key, str) else key: json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_value(item) for item in value]
    return value


def number(kind: str, value: int | float | None) -> int | float | None:
    """A descriptive number for a column of type `kind`, or None when the column cannot hold it."""
    if value is None or isinstance(value, bool):
        return value
    bits = _INTEGER_BITS.get(kind)
    if bits is not None:
        limit = 1 << (bits - 1)
        return value if isinstance(value, int) and -limit <= value < limit else None
    if kind == "real" and math.isfinite(value) and abs(value) > _REAL_MAX:
        return None
    return value
