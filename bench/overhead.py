"""What the gateway adds to a request and to each streamed chunk, measured in one run.

Starts the whole stack (`llm-gateway run`) on free ports with the mock upstream, creates a
user with credits, then compares, against the same mock reached directly:
  - non-streaming latency at concurrency 1 (p50, p90, p99 and their differences);
  - streaming time to first token and the gaps between chunks as the client sees them;
and reads the ext_proc's own time per Envoy message from its Prometheus histogram.
The baseline (the mock without the gateway) is measured in the same run, so the figures are
differences, not lone absolute numbers. Usage: `python bench/overhead.py [--requests N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from extproc.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "openai/gpt-4o-mini"


def start_stack(data_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_API_URL"))}
    for name in ("LISTEN_PORT", "ENVOY_ADMIN_PORT", "EXTPROC_PORT", "METRICS_PORT", "MOCK_UPSTREAM_PORT"):
        env[f"LLM_GATEWAY_{name}"] = str(free_port())
    env.update(LLM_GATEWAY_DATA_DIR=str(data_dir), LLM_GATEWAY_EMBEDDED_DURABLE="false")
    log = (data_dir / "stack.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "extproc.cli", "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    state_file = data_dir / "stack.json"
    deadline = time.monotonic() + 120
    while not state_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"stack did not start; see {data_dir / 'stack.log'}")
        time.sleep(0.1)
    return process, json.loads(state_file.read_text())


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {f"p{p}": round(percentile(values, p) * 1000, 3) for p in (50, 90, 99)}


async def latencies(url: str, headers: dict[str, str], body: dict[str, Any], n: int) -> list[float]:
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(20):  # warm connections and caches
            (await client.post(url, json=body, headers=headers)).raise_for_status()
        out = []
        for _ in range(n):
            started = time.perf_counter()
            response = await client.post(url, json=body, headers=headers)
            out.append(time.perf_counter() - started)
            response.raise_for_status()
        return out


async def stream_timings(url: str, headers: dict[str, str], streams: int, chunks: int, interval_ms: int) -> tuple[list[float], list[float]]:
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "bench"}],
            "mock": {"chunks": chunks, "chunk_delay_ms": interval_ms}}
    ttfts: list[float] = []
    gaps: list[float] = []
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(streams):
            started = time.perf_counter()
            arrivals = []
            async with client.stream("POST", url, json=body, headers=headers) as response:
                async for line in response.aiter_lines():
                    if '"content":"w' in line:
                        arrivals.append(time.perf_counter())
            ttfts.append(arrivals[0] - started)
            gaps += [b - a for a, b in zip(arrivals, arrivals[1:])]
    return ttfts, gaps


def phase_means(metrics_text: str) -> dict[str, float]:
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        for kind, target in (("_sum", sums), ("_count", counts)):
            prefix = f"llm_gateway_extproc_phase_seconds{kind}{{phase=\""
            if line.startswith(prefix):
                phase = line[len(prefix):].split('"', 1)[0]
                target[phase] = float(line.rsplit(" ", 1)[1])
    return {phase: round(sums[phase] / counts[phase] * 1e6, 1) for phase in sums if counts.get(phase)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--streams", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        process, stack = start_stack(Path(tmp))
        try:
            env = {**os.environ, "DATABASE_URL": stack["database_url"], "LLM_GATEWAY_DATA_DIR": tmp}
            user = json.loads(subprocess.run(
                [sys.executable, "-m", "extproc.cli", "user", "create", "--email", "bench@example.com", "--credits-usd", "1000"],
                env=env, check=True, capture_output=True, text=True,
            ).stdout)
            gateway = f"{stack['gateway_url']}/api/gateway/chat/completions"
            direct = f"{stack['mock_upstream_url']}/openrouter/api/v1/chat/completions"
            auth = {"authorization": f"Bearer {user['token']}"}
            body = {"model": MODEL, "messages": [{"role": "user", "content": "bench"}]}

            direct_lat = asyncio.run(latencies(direct, {}, body, args.requests))
            gateway_lat = asyncio.run(latencies(gateway, auth, body, args.requests))
            direct_ttft, direct_gaps = asyncio.run(stream_timings(direct, {}, args.streams, 50, 20))
            gateway_ttft, gateway_gaps = asyncio.run(stream_timings(gateway, auth, args.streams, 50, 20))
            phases = phase_means(httpx.get(stack["metrics_url"]).text)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)

    d, g = summary(direct_lat), summary(gateway_lat)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "non_streaming_ms": {"direct": d, "gateway": g, "added": {k: round(g[k] - d[k], 3) for k in d}},
        "streaming_ms": {
            "ttft_p50_direct": round(statistics.median(direct_ttft) * 1000, 3),
            "ttft_p50_gateway": round(statistics.median(gateway_ttft) * 1000, 3),
            "ttft_p50_added": round((statistics.median(gateway_ttft) - statistics.median(direct_ttft)) * 1000, 3),
            "chunk_gap_p50_direct": round(statistics.median(direct_gaps) * 1000, 3),
            "chunk_gap_p50_gateway": round(statistics.median(gateway_gaps) * 1000, 3),
            "chunk_gap_p50_added": round((statistics.median(gateway_gaps) - statistics.median(direct_gaps)) * 1000, 3),
        },
        "extproc_mean_us_per_message": phases,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
