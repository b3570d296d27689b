"""Replaying the dead letters: records the ledger refused, written once the cause is fixed.

A dead letter keeps the record, the charge as it was priced (never priced again), and the
descriptive columns it was written without. Replaying one writes it whole: a record that was
charged without those columns has its rows replaced with the full ones and nobody is charged
again (`ledger.write(restore=True)`); one that could not be charged at all is written and
charged now. Either way the write is idempotent, so a replay interrupted half-way can run again.
"""

from __future__ import annotations

from typing import Any

from extproc.accounting import ledger
from extproc.accounting.cost import charge_from_dict
from extproc.accounting.outbox import DeadLetter, Outbox
from extproc.accounting.record import UsageRecord
from extproc.db import POSTGRES_ERRORS, Connection

# What fails one letter's replay without stopping the others: Postgres, or a record it refuses.
_REPLAY_ERRORS: tuple[type[Exception], ...] = (*POSTGRES_ERRORS, ValueError, TypeError, KeyError)


async def replay(connection: Connection, letter: DeadLetter) -> None:
    """Raises what Postgres raises when the cause is not fixed yet; ValueError for an entry
    that holds no record this version can read."""
    if letter.priced is None:
        raise ValueError("not a usage record: nothing to replay")
    record = UsageRecord.from_json(letter.record)
    priced = letter.priced
    await ledger.write(
        connection,
        record,
        charge_from_dict(priced["charge"]),
        priced["cost"],
        priced["discount"],
        emptied=frozenset(letter.columns),
        restore=letter.charged,
    )


async def replay_all(outbox: Outbox, connection: Connection, entry_ids: list[str] | None) -> dict[str, Any]:
    """Replays the dead letters (those of `entry_ids`, or all); each one written leaves the
    stream, each one that fails stays, with what failed."""
    letters = await outbox.dead_letters()
    if entry_ids is not None:
        unknown = set(entry_ids) - {letter.entry_id for letter in letters}
        if unknown:
            raise LookupError(f"no such dead letter: {', '.join(sorted(unknown))}")
        letters = [letter for letter in letters if letter.entry_id in entry_ids]
    replayed, failed = [], []
    for letter in letters:
        try:
            await replay(connection, letter)
        except _REPLAY_ERRORS as exc:
            failed.append({**letter.summary(), "replay_error": f"{type(exc).__name__}: {exc}"})
            continue
        await outbox.forget_dead_letter(letter.entry_id)
        replayed.append(letter.summary())
    return {"replayed": replayed, "failed": failed}
