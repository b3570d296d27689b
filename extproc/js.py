"""JavaScript's semantics where the contract follows the reference's TypeScript: truthiness,
and JSON as `JSON.parse` and `JSON.stringify` read and write it. One home for each, so the
copies cannot drift apart."""

from __future__ import annotations

import json
from typing import Any

import orjson


def truthy(value: Any) -> bool:
    """`if (value)`: unlike Python's truthiness, an empty array or object is true; NaN is false."""
    if value is None or value is False:
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value == value and value != 0  # NaN and 0 are falsy
    if isinstance(value, str):
        return value != ""
    return True


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def loads(data: str | bytes) -> Any:
    """Parse like `JSON.parse` (ValueError when it would throw). orjson refuses two things JS
    accepts: escaped lone surrogates (a provider can split an escaped surrogate pair across
    chunks) and numbers beyond double range (Infinity, which `dumps` writes as `null`, as
    `JSON.stringify` does). The standard library parses those, kept strict about NaN."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except RecursionError as error:
        raise ValueError("JSON nested too deeply") from error


def dumps(obj: Any) -> bytes:
    """Serialize compactly like `JSON.stringify` (orjson's float text may differ: `1.0` for
    JS `1`). What orjson cannot encode (lone surrogates, integers beyond 64 bits, both only
    from the standard-library parse) is written ASCII-escaped, which parsers read the same."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        pass
    try:
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode()
    except (ValueError, RecursionError) as error:  # Infinity next to a lone surrogate
        raise ValueError("not representable as JSON") from error
