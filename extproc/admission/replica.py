"""A replica's spend holds: the admission script, tied to the replica's liveness.

Each hold is written in the replica's index (accounting/inflight.py) in the admission's own
round trip, just before the script, so a hold is always findable from its replica: while the
request runs through its write-ahead record, after that through its final record in the
outbox (the ledger writer ends the hold when the row commits), and if the replica dies before
either exists, by the reaper, which releases it. A refused request held nothing: its index
entry is dropped with the next batch of the submitter.
"""

from __future__ import annotations

from collections.abc import Sequence

from extproc.accounting.inflight import InFlightLog
from extproc.accounting.submit import UsageSubmitter
from extproc.admission import counters
from extproc.admission.holds import Hold, ScopeRead, SpendHolds


class ReplicaHolds:
    def __init__(self, holds: SpendHolds, inflight: InFlightLog, submitter: UsageSubmitter) -> None:
        self.holds = holds
        self.inflight = inflight
        self.submitter = submitter

    async def hold(self, usage_id: str, reads: Sequence[ScopeRead], bound: int, floor: int) -> Hold:
        index = self.inflight.index_hold(usage_id, [read.scope for read in reads])
        hold = await self.holds.admit(usage_id, reads, bound, floor, before=[index])
        if hold.admitted:
            counters.HOLDS.inc()
            counters.HELD.inc(hold.held)
        else:
            self.submitter.release(usage_id, [])
        return hold

    def release(self, usage_id: str, scopes: list[str], microdollars: int) -> None:
        """The request ends without a ledger row: its hold goes at once (nothing will be charged)."""
        self.submitter.release(usage_id, scopes)
        counters.RELEASED_HOLDS.inc()
        counters.RELEASED.inc(microdollars)
