"""`python -m bench.soak`: does any process's memory grow with the requests it serves? (issue 27)

Steady JSON load from wrk (one thread) against the gateway (`llm-gateway run`) and against the
no-op floor (bench/noop_extproc.py behind the gateway's own rendered Envoy configuration, so
with the same Envoy runtime), one after the other, on the same upstream. Every `--interval`
seconds it reads each process's anonymous resident memory (RssAnon in /proc/<pid>/status: the
heap, native allocations included; a role sums its process tree as bench/run.py does) and the
requests the system's Envoy has answered with a 2xx (its admin stats). A process's growth is
the least-squares slope of its memory against the requests served, after the warm-up (the
first `--warmup-fraction` of the requests: caches, pools and allocator arenas filling), in
bytes per request. Target: under 5 bytes a request for every process, over at least 500,000
requests. Results: bench/results/soak.json and soak.md.

    python -m bench.soak --requests 500000 --max-seconds 900
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench import wrk
from bench.run import RESULTS, body_file, machine, process_tree
from bench.systems import System, start_extproc_floor, start_gateway, start_upstream

TARGET_BYTES_PER_REQUEST = 5.0
TARGET_REQUESTS = 500_000


@dataclass(frozen=True)
class Sample:
    seconds: float
    requests: int  # answered with a 2xx so far
    anon_bytes: dict[str, int]  # by role


def growth_per_request(points: Sequence[tuple[int, int]], warmup_requests: int) -> float | None:
    """Bytes per request: the least-squares slope of (requests, bytes) over the points at or
    after `warmup_requests`; None with fewer than three such points or no spread in requests."""
    after = [(requests, size) for requests, size in points if requests >= warmup_requests]
    if len(after) < 3 or len({requests for requests, _ in after}) < 2:
        return None
    return statistics.linear_regression([float(r) for r, _ in after], [float(s) for _, s in after]).slope


def summarise(samples: Sequence[Sample], warmup_fraction: float) -> dict[str, Any]:
    """Each role's memory after warm-up and at the end, and its growth per request."""
    warmup_requests = round(samples[-1].requests * warmup_fraction)
    steady = [sample for sample in samples if sample.requests >= warmup_requests]
    roles: dict[str, Any] = {}
    for role in samples[-1].anon_bytes:
        points = [(sample.requests, sample.anon_bytes[role]) for sample in samples if role in sample.anon_bytes]
        slope = growth_per_request(points, warmup_requests)
        roles[role] = {
            "anon_mb_after_warmup": round(steady[0].anon_bytes.get(role, 0) / 2**20, 1),
            "anon_mb_end": round(samples[-1].anon_bytes[role] / 2**20, 1),
            "bytes_per_request": None if slope is None else round(slope, 2),
            "within_target": slope is not None and slope < TARGET_BYTES_PER_REQUEST,
        }
    return {
        "requests": samples[-1].requests,
        "seconds": round(samples[-1].seconds, 1),
        "warmup_requests": warmup_requests,
        "samples_after_warmup": len(steady),
        "processes": roles,
    }


def _anon_bytes(process: psutil.Process) -> int:
    try:
        status = Path(f"/proc/{process.pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0  # exited between listing and reading
    line = next((line for line in status.splitlines() if line.startswith("RssAnon:")), "RssAnon: 0 kB")
    return int(line.split()[1]) * 1024


def _memory(roots: dict[str, list[psutil.Process]]) -> dict[str, int]:
    root_pids = {process.pid for processes in roots.values() for process in processes}
    return {role: sum(_anon_bytes(p) for p in process_tree(processes, root_pids)) for role, processes in roots.items()}


def _served(admin_url: str) -> int:
    """2xx responses the listener (stat prefix `gateway`, envoy_config.py) has sent."""
    query = urllib.parse.urlencode({"filter": r"^http\.gateway\.downstream_rq_2xx$"})
    with urllib.request.urlopen(f"{admin_url}/stats?{query}", timeout=5) as reply:
        text = reply.read().decode()
    return int(text.split(":")[1]) if ":" in text else 0


def soak(system: System, work: Path, *, concurrency: int, requests: int, max_seconds: float,
         interval: float) -> tuple[list[Sample], dict[str, Any]]:
    """wrk until the system has served `requests` (or `max_seconds` passed), sampling memory."""
    assert system.admin_url is not None
    roots = {role: [psutil.Process(pid) for pid in pids] for role, pids in system.measured.items()}
    argv = wrk.command(system.url, system.headers, body_file(system, work, False), concurrency=concurrency,
                       seconds=max_seconds, work=work)
    start_count = _served(system.admin_url)
    load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    samples: list[Sample] = []
    try:
        while load.poll() is None:
            served = _served(system.admin_url) - start_count
            samples.append(Sample(time.monotonic() - started, served, _memory(roots)))
            print(f"  {system.name}: {served} requests, " + ", ".join(
                f"{role} {size / 2**20:.1f} MB" for role, size in samples[-1].anon_bytes.items()), flush=True)
            if served >= requests:
                load.send_signal(signal.SIGINT)  # wrk stops and prints its summary
                break
            time.sleep(interval)
        output, errors = load.communicate(timeout=120)
    finally:
        if load.poll() is None:
            load.kill()
    samples.append(Sample(time.monotonic() - started, _served(system.admin_url) - start_count, _memory(roots)))
    summary = wrk.parse(output)
    return samples, {"wrk_requests": summary["requests"], "wrk_errors": {k: summary[k] for k in (
        "connect", "read", "write", "status", "timeout") if summary[k]}, "wrk_stderr": errors[-2000:]}


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    settings = results["settings"]
    lines = [
        "# Soak: memory growth per request (bench/soak.py)",
        "",
        f"{m['date']} · {m['cpu']} · {m['cores']} cores · Python {m['python']} · Envoy {m['envoy']} · "
        f"wrk, 1 thread, {settings['concurrency']} connections, JSON · warm-up: the first "
        f"{settings['warmup_fraction']:.0%} of each system's requests · memory: RssAnon of each process tree, "
        f"every {settings['interval_s']:g} s · target: < {TARGET_BYTES_PER_REQUEST:g} B/request for every "
        f"process over >= {TARGET_REQUESTS:,} requests.",
        "",
        "| system | process | requests | MB after warm-up | MB at end | bytes/request | within target |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, figures in results["systems"].items():
        for role, process in figures["processes"].items():
            lines.append(
                f"| {name} | {role} | {figures['requests']:,} | {process['anon_mb_after_warmup']} | "
                f"{process['anon_mb_end']} | {process['bytes_per_request']} | "
                f"{'yes' if process['within_target'] else 'NO'} |"
            )
    lines += ["", "wrk: " + "; ".join(
        f"{name} {figures['wrk_requests']:,} requests in {figures['seconds']} s, errors {figures['wrk_errors'] or 'none'}"
        for name, figures in results["systems"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=TARGET_REQUESTS, help="requests per system")
    parser.add_argument("--max-seconds", type=float, default=900, help="per system, if the requests take longer")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--warmup-fraction", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=1, help="ext_proc processes")
    parser.add_argument("--systems", type=lambda v: v.split(","), default=["gateway", "ext_proc-floor"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if wrk.wrk_binary() is None:
        sys.exit("wrk is not installed (make bench-tools)")
    starters: dict[str, Callable[[Path, str], System]] = {
        "gateway": lambda work, upstream: start_gateway(work, upstream, args.workers),
        "ext_proc-floor": lambda work, upstream: start_extproc_floor(work, upstream, args.workers),
    }
    results: dict[str, Any] = {"machine": machine(), "settings": {
        "requests": args.requests, "max_seconds": args.max_seconds, "concurrency": args.concurrency,
        "interval_s": args.interval, "warmup_fraction": args.warmup_fraction, "ext_proc_workers": args.workers,
    }, "systems": {}}
    with tempfile.TemporaryDirectory(prefix="llm-gateway-soak-") as tmp:
        work = Path(tmp)
        upstream, upstream_children = start_upstream(work, chunks=20, interval_ms=25)
        try:
            for name in args.systems:
                print(f"{name}:", flush=True)
                system = starters[name](work, upstream)
                try:
                    samples, load = soak(system, work, concurrency=args.concurrency, requests=args.requests,
                                         max_seconds=args.max_seconds, interval=args.interval)
                finally:
                    system.stop()
                results["systems"][name] = {**summarise(samples, args.warmup_fraction), **load,
                                            "samples": [[s.seconds, s.requests, s.anon_bytes] for s in samples]}
        finally:
            for child in reversed(upstream_children):
                child.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    (args.out / "soak.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
