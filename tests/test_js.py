"""extproc/js.py: JavaScript's `if (x)` and JSON, which three modules used to copy (issue 15)."""

from __future__ import annotations

import math

import pytest

from extproc import js


@pytest.mark.parametrize("value", [None, False, 0, 0.0, -0.0, math.nan, ""])
def test_the_javascript_falsy_values(value: object) -> None:
    assert not js.truthy(value)


@pytest.mark.parametrize("value", [True, 1, -1, 0.5, math.inf, "0", "false", " ", [], {}, [0]])
def test_everything_else_is_true_even_empty_arrays_and_objects(value: object) -> None:
    assert js.truthy(value)


def test_json_parse_takes_what_javascript_takes() -> None:
    assert js.loads(b'{"a":"\\ud83d"}') == {"a": "\ud83d"}  # an escaped lone surrogate
    assert js.loads(b"[1e400]") == [math.inf]  # beyond double range
    with pytest.raises(ValueError):
        js.loads(b"[NaN]")  # JSON.parse throws


def test_json_stringify_writes_what_orjson_cannot() -> None:
    assert js.dumps({"a": "\ud83d"}) == b'{"a":"\\ud83d"}'
    assert js.dumps([2**70]) == b"[1180591620717411303424]"
