"""JSON throughput driven by `wrk`, the C load generator (Debian's `wrk`, one thread).

The Python generator (bench/load.py) shares the two cores with the systems it measures, and
its CPU per request is several times Envoy's: the faster a system, the more the generator
takes from it. wrk costs a fraction of that, so the ratios between systems are closer to
their own. It cuts the requests in flight when its time is up, so the systems may have served
(and the gateway accounted) up to `concurrency` requests per wrk run that wrk never counted:
`cut_bound` says how many, and the ledger check allows that many rows more.

wrk writes its summary through the Lua `done` hook below, as one JSON line after a marker;
its latencies are in microseconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

MARKER = "BENCH-JSON "
# `init` runs in each wrk thread before its request is built (wrk.lua's wrk.init), so the
# body read here is in every request. The response status is checked by wrk (errors.status
# counts everything that is not 2xx or 3xx).
SCRIPT = """
wrk.method = "POST"
function init(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.body = file:read("*a")
  file:close()
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"duration_us":%d,"requests":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\\n',
    "MARKER", summary.duration, summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
""".replace("MARKER", MARKER)


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def parse(output: str) -> dict[str, int]:
    """The summary the `done` hook wrote, from wrk's whole stdout."""
    line = next((line for line in reversed(output.splitlines()) if line.startswith(MARKER)), None)
    if line is None:
        raise ValueError(f"no summary from wrk in its output:\n{output[-2000:]}")
    return dict(json.loads(line[len(MARKER):]))


def _errors(summary: dict[str, int]) -> dict[str, int]:
    return {kind: summary[kind] for kind in ("connect", "read", "write", "status", "timeout") if summary[kind]}


def figures(warmup: dict[str, int] | None, measured: dict[str, int], concurrency: int) -> dict[str, Any]:
    """One run's figures in bench/load.py's shape, from wrk's summaries of the warm-up and the run.

    `completed` counts the successful responses of both (what the gateway served and accounted);
    `cut_bound` the requests each may have left in flight when it stopped, plus those it timed out.
    """
    runs = [summary for summary in (warmup, measured) if summary is not None]
    ok = measured["requests"] - measured["status"]
    seconds = measured["duration_us"] / 1e6
    return {
        "concurrency": concurrency,
        "requests": ok,
        "completed": sum(summary["requests"] - summary["status"] for summary in runs),
        "errors": _errors(measured),
        "elapsed_seconds": round(seconds, 3),
        "rps": round(ok / seconds, 3) if seconds > 0 else None,
        "latency_ms": {name: round(measured[f"{name}_us"] / 1000, 3) for name in ("p50", "p90", "p99", "max")},
        "cut_bound": sum(concurrency + summary["timeout"] for summary in runs),
        "warmup_errors": _errors(warmup) if warmup is not None else {},
    }


def command(url: str, headers: dict[str, str], body_file: Path, *, concurrency: int, seconds: float,
            work: Path) -> list[str]:
    """The command line of one wrk run with one thread, POSTing `body_file` to `url`."""
    binary = wrk_binary()
    if binary is None:
        raise RuntimeError("wrk is not installed (make bench-tools)")
    script = work / "bench.lua"
    script.write_text(SCRIPT)
    argv = [binary, "--threads", "1", "--connections", str(concurrency), "--duration", f"{max(1, round(seconds))}s",
            "--timeout", "60s", "--script", str(script), "--header", "content-type: application/json"]
    for name, value in headers.items():
        argv += ["--header", f"{name}: {value}"]
    return [*argv, url, "--", str(body_file)]


def run(url: str, headers: dict[str, str], body_file: Path, *, concurrency: int, duration: float, warmup: float,
        work: Path) -> dict[str, Any]:
    """A warm-up run (when `warmup` > 0), then the measured run, each a wrk process with one thread."""

    def once(seconds: float) -> dict[str, int]:
        argv = command(url, headers, body_file, concurrency=concurrency, seconds=seconds, work=work)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return parse(done.stdout)

    return figures(once(warmup) if warmup > 0 else None, once(duration), concurrency)
