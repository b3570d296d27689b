"""`make bench`: the gateway beside Envoy alone, two ext_proc floors and LiteLLM's proxy, in one run.

Starts the upstream (bench/systems.py), then each system in turn, and drives it from a separate
load-generator process at several concurrencies: JSON responses with bench/load.py and with wrk
(bench/wrk.py), streams with bench/load.py. Every figure of a system is compared with Envoy alone
and the minimal floor measured in the same run. The CPU and memory of every process involved are
read by role (ProcessWatch), and after the gateway's runs the ledger must hold one row per
request served (report.ledger_verdict). Results: bench/results/results.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import resource
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

from bench import report, wrk
from bench.systems import (
    MODEL,
    Ledger,
    System,
    litellm_available,
    start_envoy_alone,
    start_extproc_floor,
    start_gateway,
    start_litellm,
    start_minimal_floor,
    start_traced_gateway,
    start_upstream,
)
from extproc.local.stack import envoy_binary

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PROMPT = [{"role": "user", "content": "Say hello to the benchmark."}]


def body_file(system: System, work: Path, stream: bool) -> Path:
    body = {"model": system.stream_model if stream else MODEL, "messages": PROMPT, "stream": stream}
    path = work / f"body-{system.name}-{int(stream)}.json"
    path.write_text(json.dumps(body))
    return path


def load(system: System, work: Path, *, concurrency: int, duration: float, warmup: float, stream: bool,
         requests: int | None = None, query: str = "") -> dict[str, Any]:
    """One load-generator run, in its own process so that it does not share our GIL."""
    url = system.url + (system.stream_query + query if stream else "")
    argv = [sys.executable, "-m", "bench.load", "--url", url, "--concurrency", str(concurrency),
            "--duration", str(duration), "--warmup", str(warmup), "--body-file", str(body_file(system, work, stream))]
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


def load_wrk(system: System, work: Path, *, concurrency: int, duration: float, warmup: float) -> dict[str, Any]:
    """JSON responses driven by wrk (bench/wrk.py), the warm-up a wrk run of its own."""
    try:
        return wrk.run(system.url, system.headers, body_file(system, work, False), concurrency=concurrency,
                       duration=duration, warmup=warmup, work=work)
    except RuntimeError as error:
        raise SystemExit(str(error)) from error


def _children_cpu() -> float:
    """CPU seconds of every child this process has waited for: the load generators' own."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_tree(roots: list[psutil.Process], other_roots: set[int]) -> list[psutil.Process]:
    """`roots` and their descendants, except those in `other_roots` (roles of their own) and theirs."""
    out, todo = [], list(roots)
    while todo:
        process = todo.pop()
        out.append(process)
        try:
            todo += [child for child in process.children() if child.pid not in other_roots]
        except psutil.NoSuchProcess:
            continue
    return out


class ProcessWatch:
    """CPU seconds and peak resident memory of each measured process over a run, by role.

    A role's figure covers the process, the descendants it spawned (Postgres' backends,
    LiteLLM's workers) and those it has already reaped, except descendants that are roles of
    their own (the gateway's supervisor is the parent of all its services).
    """

    def __init__(self, roles: dict[str, list[int]]) -> None:
        self.roots = {role: [psutil.Process(pid) for pid in pids] for role, pids in roles.items()}
        self.root_pids = {pid for pids in roles.values() for pid in pids}
        self.peak_rss: dict[str, int] = {role: 0 for role in self.roots}
        self._cpu_start = {role: self._cpu(role) for role in self.roots}
        self._load_start = _children_cpu()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _tree(self, role: str) -> list[psutil.Process]:
        return process_tree(self.roots[role], self.root_pids)

    def _cpu(self, role: str) -> float:
        total = 0.0
        for process in self._tree(role):
            try:
                t = process.cpu_times()
            except psutil.NoSuchProcess:
                continue  # its time is in its parent's children_* once reaped
            total += t.user + t.system + t.children_user + t.children_system
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for role in self.roots:
                rss = 0
                for process in self._tree(role):
                    try:
                        rss += process.memory_info().rss
                    except psutil.NoSuchProcess:
                        continue
                self.peak_rss[role] = max(self.peak_rss[role], rss)

    def finish(self) -> dict[str, dict[str, float]]:
        self._stop.set()
        self._thread.join()
        out = {
            role: {"cpu_seconds": round(self._cpu(role) - self._cpu_start[role], 3),
                   "peak_rss_mb": round(self.peak_rss[role] / 2**20, 1)}
            for role in self.roots
        }
        out["load_generator"] = {"cpu_seconds": round(_children_cpu() - self._load_start, 3)}
        return out


@contextmanager
def watched(system: System, upstream: dict[str, list[int]]) -> Iterator[dict[str, Any]]:
    result: dict[str, Any] = {}
    watch = ProcessWatch({**system.measured, **upstream})
    yield result
    result["processes"] = watch.finish()


def run_system(system: System, work: Path, args: argparse.Namespace, upstream: dict[str, list[int]]) -> dict[str, Any]:
    figures: dict[str, Any] = {"json": {}, "stream": {}}
    runs: list[tuple[str, int]] = [("json", c) for c in args.concurrency]
    if args.wrk:
        figures["json_wrk"] = {}
        runs += [("json_wrk", c) for c in args.concurrency]
    runs += [("stream", c) for c in args.stream_concurrency]
    for kind, concurrency in runs:
        with watched(system, upstream) as extra:
            if kind == "json_wrk":
                outcome = load_wrk(system, work, concurrency=concurrency, duration=args.duration, warmup=args.warmup)
            else:
                outcome = load(system, work, concurrency=concurrency, duration=args.duration, warmup=args.warmup,
                               stream=kind == "stream")
        run = figures[kind][str(concurrency)] = {**outcome, **extra}
        run["cpu_ms_per_request"] = report.cpu_per_request(run)
        timing = (f"ttft p50 {outcome['ttft_ms']['p50']} ms, gap p50 {outcome['chunk_gap_ms']['p50']} ms"
                  if kind == "stream" else f"{outcome['rps']:.0f} req/s, p50 {outcome['latency_ms']['p50']} ms")
        print(f"  {system.name} {kind} c={concurrency}: {timing}, errors {outcome['errors']}", flush=True)
    if system.stream_query and args.held_streams:
        # Many streams open at once, each slow (10 chunks, 1 s apart): what holding them costs.
        with watched(system, upstream) as extra:
            outcome = load(system, work, concurrency=args.held_streams, duration=120, warmup=0, stream=True,
                           requests=args.held_streams, query="&chunks=10&interval_ms=1000")
        figures["held_streams"] = {**outcome, **extra}
        figures["held_streams"]["cpu_ms_per_request"] = report.cpu_per_request(figures["held_streams"])
        print(f"  {system.name} {args.held_streams} held streams: {outcome['requests']} done, "
              f"errors {outcome['errors']}", flush=True)
    return figures


def ledger_check(ledger: Ledger, figures: dict[str, Any]) -> dict[str, Any]:
    """Every request the gateway answered has one usage row: none lost, none twice (report.ledger_verdict)."""
    runs = [*figures["json"].values(), *figures.get("json_wrk", {}).values(), *figures["stream"].values()]
    if "held_streams" in figures:
        runs.append(figures["held_streams"])
    served = sum(run["completed"] for run in runs)

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
    time.sleep(2)  # a duplicate (or a cut request's row) would show up after the count reached `served`
    return report.ledger_verdict(runs, asyncio.run(count()))


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
    parser.add_argument("--systems", type=lambda v: v.split(","),
                        default=["envoy-alone", "minimal-floor", "ext_proc-floor", "gateway", "gateway-traced",
                                 "gateway-holds-off", "litellm"])
    parser.add_argument("--generators", type=lambda v: v.split(","), default=["python", "wrk"],
                        help="JSON load generators: python (bench/load.py, exact counts) and wrk")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true", help="rewrite results.md from results.json")
    args = parser.parse_args()
    args.wrk = "wrk" in args.generators and wrk.wrk_binary() is not None
    if "wrk" in args.generators and not args.wrk:
        print("wrk is not installed: the wrk runs are skipped (make bench-tools installs it from Debian as root)")
    if args.report_only:
        stored = json.loads((args.out / "results.json").read_text())
        stored["targets"] = report.targets(stored)  # as the current targets read it
        (args.out / "results.md").write_text(report.markdown(stored))
        return

    results: dict[str, Any] = {"machine": machine(), "settings": {
        "concurrency": args.concurrency, "stream_concurrency": args.stream_concurrency, "duration_s": args.duration,
        "warmup_s": args.warmup, "held_streams": args.held_streams, "ext_proc_workers": args.workers,
        "chunks": args.chunks, "chunk_interval_ms": args.interval_ms,
        "load_generator": "bench/load.py (asyncio + uvloop, one process)",
        "wrk": "wrk, 1 thread (JSON runs)" if args.wrk else None,
    }, "systems": {}}
    starters = {
        "envoy-alone": lambda work, upstream: start_envoy_alone(work, upstream),
        "minimal-floor": lambda work, upstream: start_minimal_floor(work, upstream, args.workers),
        "ext_proc-floor": lambda work, upstream: start_extproc_floor(work, upstream, args.workers),
        "gateway": lambda work, upstream: start_gateway(work, upstream, args.workers),
        "gateway-traced": lambda work, upstream: start_traced_gateway(work, upstream, args.workers),
        "gateway-holds-off": lambda work, upstream: start_gateway(
            work, upstream, args.workers, "gateway-holds-off", {"SPEND_HOLDS": "off"}
        ),
        "litellm": lambda work, upstream: start_litellm(work, upstream, args.workers),
    }
    with tempfile.TemporaryDirectory(prefix="llm-gateway-bench-") as tmp:
        work = Path(tmp)
        upstream, upstream_children = start_upstream(work, args.chunks, args.interval_ms)
        upstream_roles = {child.name.replace("-", "_"): [child.process.pid] for child in upstream_children}
        try:
            for name in args.systems:
                if name == "litellm" and not litellm_available():
                    print("LiteLLM is not installed: skipped (pip install -e '.[bench-peers]' to include it)")
                    results["systems"]["litellm"] = {"skipped": "not installed (extra bench-peers)"}
                    continue
                print(f"{name}:", flush=True)
                system = starters[name](work, upstream)
                try:
                    figures = run_system(system, work, args, upstream_roles)
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
        sys.exit("the ledger does not hold one row per request served")


def _ints(value: str) -> list[int]:
    return [int(part) for part in value.split(",") if part]


if __name__ == "__main__":
    main()
