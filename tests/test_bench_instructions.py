"""bench/instructions.py: its requests are served and accounted (it refuses to count otherwise),
and it reads callgrind's dump totals."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from bench.instructions import _totals

ROOT = Path(__file__).resolve().parent.parent


def test_it_drives_both_kinds_of_request_through_the_processor() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.instructions", "--cpu-time", "--requests", "3", "--warmup", "1", "--chunks", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["json", "stream"]
    assert all(float(re.search(r"([\d,.]+) us CPU", line)[1].replace(",", "")) > 0 for line in lines)  # type: ignore[index]


def test_the_count_is_callgrinds_totals_line(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.1"
    # The head of a dump as callgrind writes it: `summary` precedes the data and is 0 for a dump
    # taken with instrumentation off; `totals` closes it.
    dump.write_text("version: 1\ncmd: python\npart: 1\nevents: Ir\nsummary: 0\nfn=(1) main\n3 7\ntotals: 25199215\n")
    assert _totals(dump) == 25199215
