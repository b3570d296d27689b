"""Spend holds at admission (issue 23): one atomic Redis script per paid request (admit.lua).

The script reserves the request's cost bound in every scope it spends from, or in none, and
says which scope bound it. The balance each scope starts from is the one the directory read
from Postgres, with the ledger version that read saw (`ScopeRead`), so the script also
subtracts the charges committed after that read (see settle.py and docs/ARCHITECTURE.md,
"Spend holds").

The commands go over lean RESP connections (accounting/resp.py: a redis-py EVALSHA costs
~0.1-0.3 ms of CPU, more than the budget of the whole hold), a few of them so that concurrent
requests do not queue behind one round trip.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from extproc.accounting.resp import RespConnection, pack
from extproc.admission import scopes

_SCRIPT = (Path(__file__).parent / "admit.lua").read_bytes()
_SHA = hashlib.sha1(_SCRIPT).hexdigest().encode()  # noqa: S324 (Redis names scripts by SHA-1)


@dataclass(frozen=True, slots=True)
class ScopeRead:
    """A scope's balance as read from Postgres, and the ledger version that read saw: the
    scope's running total of charges (`microdollars_used`, the day's usage), which every
    committed charge raises."""

    scope: str
    balance: int
    version: int


@dataclass(frozen=True, slots=True)
class Hold:
    held: int  # microdollars reserved in every scope; 0: refused, nothing written
    binding: str | None  # the scope with the least available
    available: int  # microdollars that scope had for this request, before its hold

    @property
    def admitted(self) -> bool:
        return self.held > 0


class SpendHolds:
    def __init__(self, redis: Redis, retention_ms: int, timeout_seconds: float = 1.0, connections: int = 4) -> None:
        self.retention_ms = retention_ms
        self.timeout = timeout_seconds
        self._connections = itertools.cycle([RespConnection(redis) for _ in range(connections)])

    async def admit(
        self, usage_id: str, reads: Sequence[ScopeRead], bound: int, floor: int, before: Sequence[bytes] = ()
    ) -> Hold:
        """Reserve `bound` in every scope, or what is left if that is at least `floor`, or
        nothing. `before`: commands sent ahead of the script in the same round trip (the
        replica's index of its holds). Raises redis-py's errors (or TimeoutError) when Redis
        does not answer in time: the caller's degraded mode."""
        keys: list[bytes] = []
        args = [usage_id.encode(), b"%d" % bound, b"%d" % min(floor, bound), b"%d" % self.retention_ms]
        for read in reads:
            keys += scopes.keys(read.scope)
            args += [b"%d" % read.balance, b"%d" % read.version]
        count = b"%d" % len(keys)
        connection = next(self._connections)
        async with asyncio.timeout(self.timeout):
            try:
                replies = await connection.execute([*before, pack(b"EVALSHA", _SHA, count, *keys, *args)])
            except ResponseError as exc:
                if "NOSCRIPT" not in str(exc):
                    raise
                # After a restart or a failover: EVAL loads it again (and `before` is idempotent).
                replies = await connection.execute([*before, pack(b"EVAL", _SCRIPT, count, *keys, *args)])
        held, binding, available = (int(value) for value in replies[-1])
        return Hold(held, reads[binding - 1].scope if binding > 0 else None, available)
