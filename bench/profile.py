"""Where the ext_proc's CPU per request goes: the gateway's against the no-op's, by step and by layer.

`bench.run` gives CPU per request by process; this splits the ext_proc's figure further. It
starts the bench upstream, then the minimal floor (the no-op ext_proc) and the gateway in
turn, drives each with wrk at one concurrency, and meanwhile

- samples the ext_proc worker with py-spy (Python frames, without stopping the process) and
  splits its CPU per request by the step of the contract the samples were in (`split_samples`):
  a sample's share of all samples, times the worker's CPU per request read from /proc over the
  same run;
- with `--perf` (Linux `perf` on PATH), records the worker with `perf` and splits the same
  figure by layer: the Python interpreter, gRPC's core and its Cython layer, the kernel,
  protobuf, the C library, uvloop (`perf report --sort dso`).

    .venv/bin/python -m bench.profile --concurrency 64 --duration 15 --perf

It writes `bench/results/profile.md`. Sampling costs the sampled process a few percent, and
the machine's noise applies as in `bench.run`: read the split, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench import report
from bench.run import RESULTS, load_wrk, watched
from bench.systems import System, start_gateway, start_minimal_floor, start_upstream
from bench.wrk import wrk_binary

# Labels of samples outside any function of ours (see split_samples).
# The protocol's machinery: gRPC's Cython layer reading and replying (inside the stream's loop
# or the event loop's callbacks, depending on the servicer's shape), protobuf, uvloop.
MACHINERY = "gRPC messages in and replies out, the event loop (no step of ours)"
# The servicer's own stream loop (the gateway's Processor.Process, the no-op's Noop.Process) as
# the innermost Python frame: its bytecode and what it calls in C (gRPC's Cython reading the
# next message, protobuf's accessors, the clock), apart from the machinery above.
STREAM_LOOP = "the servicer's stream loop: each message read, dispatched (Process's own frame)"
_SERVICERS = ("/extproc/processor.py", "/bench/noop_extproc.py")
THREADS = "gRPC's own threads (completion-queue poller)"
METRICS = "Prometheus metrics"
PARTIAL = "stacks py-spy read only in part (it does not stop the process): any step"
# Frames that frame every request and say nothing of the step: the process's entry points, and
# the stream's loop with its phase dispatch (a sample only there is gRPC reading or replying).
_FRAMING = ("/extproc/cli.py", "/extproc/server.py", "/extproc/event_loop.py", "/extproc/processor.py")


def _frame(frame: str) -> tuple[str, str]:
    """py-spy's raw frame `function (path:line)` as (function, "/" + path): py-spy shortens a
    path to the part below its sys.path entry (`extproc/exchange.py`), or keeps it whole."""
    function, _, where = frame.partition(" (")
    return function, "/" + where.rpartition(":")[0].lstrip("/")


def label(stack: list[str]) -> str:
    """The step a sample (py-spy's frames, outermost first) was spent in: the first two of our
    functions below the processor's loop, as `phase › step`."""
    frames = [_frame(frame) for frame in stack]
    if not frames or not frames[0][0].startswith(("_run_module_as_main", "Thread._bootstrap")):
        return PARTIAL
    if any("/prometheus_client/" in path for _, path in frames):
        return METRICS
    ours = [function for function, path in frames if "/extproc/" in path and not path.endswith(_FRAMING)]
    if ours:
        return " › ".join(ours[:2])
    if frames[0][0].startswith("Thread._bootstrap"):
        return THREADS
    if frames[-1][1].endswith(_SERVICERS):
        return STREAM_LOOP
    return MACHINERY


def split_samples(lines: Iterable[str]) -> Counter[str]:
    """Samples by step, from py-spy's raw output (`frame;frame;... count` a line)."""
    counts: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            counts[label(stack.split(";"))] += int(count)
    return counts


# Shared objects by the prefix of their file name, as perf names them.
_LAYERS = {
    "libpython": "Python interpreter",
    "cygrpc": "gRPC core and its Cython layer",
    "[kernel": "kernel (syscalls, wake-ups)",
    "_message": "protobuf (upb)",
    "libc": "C library (malloc, ...)",
    "loop.cpython": "uvloop",
    "orjson": "orjson",
}


def split_layers(perf_report: str) -> dict[str, float]:
    """Shares (0-1) of the samples by shared object, from `perf report --sort dso --stdio`."""
    shares: dict[str, float] = {}
    for line in perf_report.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].endswith("%") and not line.startswith("#"):
            layer = next((name for prefix, name in _LAYERS.items() if parts[1].startswith(prefix)), "other")
            shares[layer] = shares.get(layer, 0.0) + float(parts[0][:-1]) / 100
    return shares


@dataclass
class Profile:
    system: str
    rps: float
    ms_per_request: float  # the ext_proc worker's CPU
    steps: Counter[str]
    layers: dict[str, float]

    def step_ms(self) -> list[tuple[str, float]]:
        total = sum(self.steps.values()) or 1
        return [(step, count / total * self.ms_per_request) for step, count in self.steps.most_common()]


def profile(system: System, work: Path, args: argparse.Namespace, upstream: dict[str, list[int]]) -> Profile:
    [pid] = system.measured["ext_proc_0"]
    seconds = str(int(args.warmup + args.duration))
    samples, recorded = work / f"{system.name}.raw", work / f"{system.name}.perf"
    profilers = [subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--nonblocking", "-r", "200", "-f", "raw",
         "-p", str(pid), "-d", seconds, "-o", str(samples)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )]
    if args.perf:
        profilers.append(subprocess.Popen(["perf", "record", "-F", "499", "-p", str(pid), "-o", str(recorded), "--",
                                           "sleep", seconds], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    with watched(system, upstream) as extra:
        outcome = load_wrk(system, work, concurrency=args.concurrency, duration=args.duration, warmup=args.warmup)
    for profiler in profilers:
        profiler.wait()
    cpu = report.cpu_per_request({**outcome, **extra})
    layers = {}
    if args.perf:
        layers = split_layers(subprocess.run(["perf", "report", "-i", str(recorded), "--sort", "dso", "--stdio"],
                                             capture_output=True, text=True, check=True).stdout)
    return Profile(system.name, outcome["rps"], cpu["ext_proc"], split_samples(samples.read_text().splitlines()), layers)


def markdown(profiles: list[Profile], args: argparse.Namespace) -> str:
    floor, gateway = profiles
    lines = [
        "# Where the ext_proc's CPU per request goes",
        f"`python -m bench.profile`: wrk at c={args.concurrency}, {args.duration:g} s after {args.warmup:g} s of "
        f"warm-up per system; the ext_proc worker's CPU per request read from /proc, split by py-spy's "
        f"samples (200 a second, without stopping the process){' and by perf' if args.perf else ''}.",
        "",
        "| system | req/s | ext_proc CPU ms per request |",
        "|---|---|---|",
        *(f"| {p.system} | {p.rps:.0f} | {p.ms_per_request:.3f} |" for p in profiles),
        "",
    ]
    if args.perf:
        layers = sorted(set(floor.layers) | set(gateway.layers), key=lambda name: -gateway.layers.get(name, 0))
        lines += [
            "## By layer (perf, shared object of each sample)",
            "| layer | no-op ms | gateway ms | gateway minus no-op ms |",
            "|---|---|---|---|",
        ]
        for name in layers:
            noop_ms = floor.layers.get(name, 0) * floor.ms_per_request
            gateway_ms = gateway.layers.get(name, 0) * gateway.ms_per_request
            lines.append(f"| {name} | {noop_ms:.3f} | {gateway_ms:.3f} | {gateway_ms - noop_ms:+.3f} |")
        lines.append("")
    for p in profiles:
        lines += [f"## By step: {p.system} (py-spy)", "| step | ms per request |", "|---|---|"]
        shown = [(step, ms) for step, ms in p.step_ms() if ms >= args.min_ms]
        lines += [f"| {step} | {ms:.3f} |" for step, ms in shown]
        rest = p.ms_per_request - sum(ms for _, ms in shown)
        lines += [f"| the rest (each under {args.min_ms} ms) | {rest:.3f} |", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--perf", action="store_true", help="also split by layer with Linux perf")
    parser.add_argument("--min-ms", type=float, default=0.01, help="steps below this are summed as the rest")
    parser.add_argument("--out", type=Path, default=RESULTS / "profile.md")
    args = parser.parse_args()
    if wrk_binary() is None:
        sys.exit("wrk is missing: make bench-tools installs it")
    if args.perf and shutil.which("perf") is None:
        sys.exit("--perf needs Linux perf on PATH")
    profiles = []
    with tempfile.TemporaryDirectory(prefix="llm-gateway-profile-") as tmp:
        work = Path(tmp)
        upstream, upstream_children = start_upstream(work, 20, 25)
        roles = {child.name.replace("-", "_"): [child.process.pid] for child in upstream_children}
        try:
            for start in (start_minimal_floor, start_gateway):
                system = start(work, upstream, 1)
                try:
                    profiles.append(profile(system, work, args, roles))
                finally:
                    system.stop()
        finally:
            for child in reversed(upstream_children):
                child.stop()
    text = markdown(profiles, args)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
