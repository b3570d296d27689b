"""`make bench`: the gateway side by side with Envoy alone and LiteLLM's proxy, in one run.

Starts the upstream (bench/systems.py), then each system in turn, and drives it from a separate
load-generator process (bench/load.py) at several concurrencies, for JSON responses and for
streams. Every figure of a system is compared with Envoy alone measured in the same run. The
gateway's ext_proc CPU and memory are read from /proc (psutil), and after its runs the ledger
must hold exactly one row per request it served. Results: bench/results/results.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench import report
from bench.systems import (
    MODEL,
    Ledger,
    System,
    litellm_available,
    start_envoy_alone,
    start_extproc_floor,
    start_gateway,
    start_litellm,
    start_upstream,
)
from extproc.local.stack import envoy_binary

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PROMPT = [{"role": "user", "content": "Say hello to the benchmark."}]


def load(system: System, work: Path, *, concurrency: int, duration: float, warmup: float, stream: bool,
         requests: int | None = None, query: str = "") -> dict[str, Any]:
    """One load-generator run, in its own process so that it does not share our GIL."""
    body = {"model": system.stream_model if stream else MODEL, "messages": PROMPT, "stream": stream}
    body_file = work / f"body-{system.name}-{int(stream)}.json"
    body_file.write_text(json.dumps(body))
    url = system.url + (system.stream_query + query if stream else "")
    argv = [sys.executable, "-m", "bench.load", "--url", url, "--concurrency", str(concurrency),
            "--duration", str(duration), "--warmup", str(warmup), "--body-file", str(body_file)]
    for name, value in system.headers.items():
        argv += ["--header", f"{name}: {value}"]
    if stream:
        argv.append("--stream")
    if requests is not None:
        argv += ["--requests", str(requests)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + warmup + 300, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"load generator failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout))


class ProcessWatch:
    """CPU seconds and peak resident memory of a system's measured processes over a run."""

    def __init__(self, system: System) -> None:
        self.processes = {role: [psutil.Process(pid) for pid in pids] for role, pids in system.measured.items()}
        self.peak_rss: dict[str, int] = {role: 0 for role in self.processes}
        self._cpu_start = self._cpu()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _cpu(self) -> dict[str, float]:
        out = {}
        for role, processes in self.processes.items():
            times = [p.cpu_times() for p in processes]
            out[role] = sum(t.user + t.system for t in times)
        return out

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for role, processes in self.processes.items():
                try:
                    rss = sum(p.memory_info().rss for p in processes)
                except psutil.NoSuchProcess:
                    continue
                self.peak_rss[role] = max(self.peak_rss[role], rss)

    def finish(self) -> dict[str, dict[str, float]]:
        self._stop.set()
        self._thread.join()
        end = self._cpu()
        return {
            role: {"cpu_seconds": round(end[role] - self._cpu_start[role], 3),
                   "peak_rss_mb": round(self.peak_rss[role] / 2**20, 1)}
            for role in self.processes
        }


@contextmanager
def watched(system: System) -> Iterator[dict[str, Any]]:
    result: dict[str, Any] = {}
    watch = ProcessWatch(system) if system.measured else None
    yield result
    if watch is not None:
        result["processes"] = watch.finish()


def run_system(system: System, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {"json": {}, "stream": {}}
    for kind, concurrencies in (("json", args.concurrency), ("stream", args.stream_concurrency)):
        for concurrency in concurrencies:
            with watched(system) as extra:
                outcome = load(system, work, concurrency=concurrency, duration=args.duration, warmup=args.warmup,
                               stream=kind == "stream")
            figures[kind][str(concurrency)] = {**outcome, **extra}
            timing = (f"ttft p50 {outcome['ttft_ms']['p50']} ms, gap p50 {outcome['chunk_gap_ms']['p50']} ms"
                      if kind == "stream" else f"{outcome['rps']:.0f} req/s, p50 {outcome['latency_ms']['p50']} ms")
            print(f"  {system.name} {kind} c={concurrency}: {timing}, errors {outcome['errors']}", flush=True)
    if system.stream_query and args.held_streams:
        # Many streams open at once, each slow (10 chunks, 1 s apart): what holding them costs.
        with watched(system) as extra:
            outcome = load(system, work, concurrency=args.held_streams, duration=120, warmup=0, stream=True,
                           requests=args.held_streams, query="&chunks=10&interval_ms=1000")
        figures["held_streams"] = {**outcome, **extra}
        print(f"  {system.name} {args.held_streams} held streams: {outcome['requests']} done, "
              f"errors {outcome['errors']}, {extra.get('processes', '')}", flush=True)
    return figures


def ledger_check(ledger: Ledger, figures: dict[str, Any]) -> dict[str, Any]:
    """Every request the gateway answered has exactly one usage row: no row lost, none twice."""
    runs = [*figures["json"].values(), *figures["stream"].values()]
    if "held_streams" in figures:
        runs.append(figures["held_streams"])
    served = sum(run["completed"] for run in runs)
    refused = sum(sum(run["errors"].values()) for run in runs)

    async def count() -> int:
        connection = await asyncpg.connect(ledger.database_url)
        try:
            return int(await connection.fetchval(
                "SELECT count(*) FROM microdollar_usage WHERE kilo_user_id = $1", ledger.user_id
            ))
        finally:
            await connection.close()

    deadline = time.monotonic() + 180
    rows = asyncio.run(count())
    while rows < served and time.monotonic() < deadline:
        time.sleep(1)
        rows = asyncio.run(count())
    time.sleep(2)  # a duplicate would show up after the count reached `served`
    rows = asyncio.run(count())
    return {"served": served, "errors": refused, "ledger_rows": rows, "ok": rows == served and refused == 0}


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    envoy = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        # "<commit>/1.40.0/Clean/RELEASE/BoringSSL": the release is the second field.
        "envoy": envoy.split("version:", 1)[-1].strip().split(" ")[0].split("/")[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=_ints, default=[1, 16, 64, 256])
    parser.add_argument("--stream-concurrency", type=_ints, default=[1, 64])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--held-streams", type=int, default=1000, help="streams held open at once (0: skip)")
    # One: on two cores a second ext_proc process measured slower (it competes with Envoy, the
    # writer and the load generator for the same cores). LiteLLM gets as many workers.
    parser.add_argument("--workers", type=int, default=1, help="ext_proc processes (and LiteLLM workers)")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--interval-ms", type=int, default=25, help="time between chunks")
    parser.add_argument("--systems", type=lambda v: v.split(","), default=["envoy-alone", "ext_proc-floor", "gateway", "litellm"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true", help="rewrite results.md from results.json")
    args = parser.parse_args()
    if args.report_only:
        stored = json.loads((args.out / "results.json").read_text())
        (args.out / "results.md").write_text(report.markdown(stored))
        return

    results: dict[str, Any] = {"machine": machine(), "settings": {
        "concurrency": args.concurrency, "stream_concurrency": args.stream_concurrency, "duration_s": args.duration,
        "warmup_s": args.warmup, "held_streams": args.held_streams, "ext_proc_workers": args.workers,
        "chunks": args.chunks, "chunk_interval_ms": args.interval_ms,
        "load_generator": "bench/load.py (asyncio + uvloop, one process)",
    }, "systems": {}}
    starters = {
        "envoy-alone": lambda work, upstream: start_envoy_alone(work, upstream),
        "ext_proc-floor": lambda work, upstream: start_extproc_floor(work, upstream, args.workers),
        "gateway": lambda work, upstream: start_gateway(work, upstream, args.workers),
        "litellm": lambda work, upstream: start_litellm(work, upstream, args.workers),
    }
    with tempfile.TemporaryDirectory(prefix="llm-gateway-bench-") as tmp:
        work = Path(tmp)
        upstream, upstream_children = start_upstream(work, args.chunks, args.interval_ms)
        try:
            for name in args.systems:
                if name == "litellm" and not litellm_available():
                    print("LiteLLM is not installed: skipped (pip install -e '.[bench-peers]' to include it)")
                    results["systems"]["litellm"] = {"skipped": "not installed (extra bench-peers)"}
                    continue
                print(f"{name}:", flush=True)
                system = starters[name](work, upstream)
                try:
                    figures = run_system(system, work, args)
                    if system.ledger is not None:
                        figures["ledger"] = ledger_check(system.ledger, figures)
                        print(f"  ledger: {figures['ledger']}", flush=True)
                finally:
                    system.stop()
                results["systems"][name] = figures
        finally:
            for child in reversed(upstream_children):
                child.stop()

    args.out.mkdir(parents=True, exist_ok=True)
    results["targets"] = report.targets(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = report.markdown(results)
    (args.out / "results.md").write_text(markdown)
    print(markdown)
    # Missed targets are reported; lost or doubled usage rows fail the run.
    if not results["systems"].get("gateway", {}).get("ledger", {}).get("ok", True):
        sys.exit("the ledger does not hold exactly one row per request served")


def _ints(value: str) -> list[int]:
    return [int(part) for part in value.split(",") if part]


if __name__ == "__main__":
    main()
