"""The end of a hold (settle.lua), as the ledger writer, the submitter and the reaper call it.

A hold ends exactly when its request's ledger row commits (dead-lettered rows included): the
writer then moves it from the scope's live holds to its committed charges, tagged with the
ledger version the commit produced (`Settlement`), in one atomic step. A request that never
gets a row (not accounted, contract 6.2; its replica died before writing it ahead) is released
with nothing committed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from extproc.admission import scopes

SCRIPT = (Path(__file__).parent / "settle.lua").read_text()
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()  # noqa: S324 (Redis names scripts by SHA-1)
# A version no balance read reaches: the charge is subtracted by every read until pruned.
UNKNOWN_VERSION = "+inf"


@dataclass(frozen=True, slots=True)
class Settlement:
    """One scope's part: its hold goes; `charged` enters its committed charges at `version`
    (None: nothing committed in this scope)."""

    scope: str
    charged: int = 0
    version: int | str | None = None


def arguments(usage_id: str, retention_ms: int, parts: list[Settlement]) -> tuple[list[bytes], list[bytes]]:
    """KEYS and ARGV of settle.lua."""
    keys: list[bytes] = []
    args = [usage_id.encode(), b"%d" % retention_ms]
    for part in parts:
        keys += scopes.keys(part.scope)
        version = b"" if part.version is None or part.charged <= 0 else str(part.version).encode()
        args += [b"%d" % max(part.charged, 0), version]
    return keys, args


def release(held: list[str]) -> list[Settlement]:
    """A hold that ends with nothing committed."""
    return [Settlement(scope) for scope in held]


def retention_ms(cache_seconds: float, stale_seconds: float) -> int:
    """How long a committed charge stays subtracted: longer than any balance read admission may
    still use (the directory serves an entry for `cache_seconds`, and `stale_seconds` more while
    Postgres is down), plus a minute of margin for clocks and pauses."""
    return int((cache_seconds + stale_seconds + 60) * 1000)
