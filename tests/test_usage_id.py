"""extproc/state.py's `new_usage_id`: the ledger row's id (a Postgres uuid column), written by
hand for speed, must be what `str(uuid.uuid4())` is: a random RFC 4122 version-4 UUID in its
canonical text form."""

from __future__ import annotations

import re
import uuid

from extproc.state import new_usage_id

CANONICAL_V4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_usage_ids_are_random_version_4_uuids_in_canonical_form() -> None:
    ids = [new_usage_id() for _ in range(2000)]
    assert all(CANONICAL_V4.fullmatch(usage_id) for usage_id in ids)
    parsed = [uuid.UUID(usage_id) for usage_id in ids]
    assert {(u.version, u.variant) for u in parsed} == {(4, uuid.RFC_4122)}
    assert [str(u) for u in parsed] == ids
    assert len(set(ids)) == len(ids)
    # Every random digit position takes more than one value: no bits stuck by the masks.
    for position in (0, 9, 15, 20, 35):
        assert len({usage_id[position] for usage_id in ids}) > 1
