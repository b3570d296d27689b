"""The benchmark's own parts: the load generator against the streaming mock, and the verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import report
from extproc.processes import Child, free_port, port_open, wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sse_upstream() -> Iterator[str]:
    port = free_port()
    child = Child.start("sse-upstream", [sys.executable, "-m", "bench.sse_upstream", "--port", str(port)])
    wait_until("sse upstream", lambda: port_open("127.0.0.1", port), child)
    yield f"http://127.0.0.1:{port}/api/v1/chat/completions"
    child.stop()


def _load(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.load", *args], capture_output=True, text=True, timeout=60, cwd=ROOT, check=True
    )
    return dict(json.loads(done.stdout))


def test_every_stream_is_read_whole_and_its_chunks_are_timed(sse_upstream: str, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text('{"stream": true}')

    def run(interval_ms: int) -> tuple[float, float]:
        result = _load(
            "--url", f"{sse_upstream}?chunks=5&interval_ms={interval_ms}", "--concurrency", "8", "--requests", "24",
            "--warmup", "0", "--body-file", str(body), "--stream",
        )
        assert result["requests"] == result["completed"] == 24
        assert result["errors"] == {}
        assert result["chunks"] == 24 * 5
        ttft, gaps = result["ttft_ms"], result["chunk_gap_ms"]
        assert isinstance(ttft, dict) and isinstance(gaps, dict)
        return ttft["p50"], gaps["p50"]

    # Bounds that hold on a busy machine: a gap is never shorter than the upstream's interval,
    # and the two runs differ by the difference of intervals, not by the machine's speed.
    ttft_short, gap_short = run(20)
    ttft_long, gap_long = run(120)
    assert gap_short >= 19 and gap_long >= 119
    assert gap_long - gap_short >= 80
    # The first chunk leaves at once: its time does not grow with the interval.
    assert ttft_long < gap_long and ttft_long < ttft_short + 60


def test_a_refused_port_is_reported_as_connection_errors(tmp_path: Path) -> None:
    result = _load("--url", f"http://127.0.0.1:{free_port()}/", "--duration", "0.3", "--warmup", "0")
    assert result["completed"] == 0
    errors = result["errors"]
    assert isinstance(errors, dict) and errors.get("connection", 0) > 0


def _results(gateway_rps: float, envoy_rps: float, gateway_p50: float, held_errors: int) -> dict[str, object]:
    def run(rps: float, p50: float) -> dict[str, object]:
        return {"rps": rps, "latency_ms": {"p50": p50, "p99": p50 * 2}}

    return {
        "systems": {
            "envoy-alone": {"json": {"1": run(1000, 0.5), "64": run(envoy_rps, 10)}, "stream": {}},
            "gateway": {
                "json": {"1": run(500, gateway_p50), "64": run(gateway_rps, 20)},
                "stream": {},
                "held_streams": {"concurrency": 1000, "errors": {"timeout": held_errors} if held_errors else {},
                                 "processes": {"ext_proc": {"peak_rss_mb": 120.0}}},
            },
        }
    }


def test_targets_compare_the_gateway_with_envoy_alone_from_the_same_run() -> None:
    verdicts = {t["target"]: t for t in report.targets(_results(2100, 4000, 1.5, 0))}
    assert verdicts["throughput at c=64, share of Envoy alone"]["value"] == 0.525
    assert verdicts["throughput at c=64, share of Envoy alone"]["met"] is True
    assert verdicts["added latency c=1 JSON, p50"]["value"] == 1.0
    assert verdicts["added latency c=1 JSON, p50"]["met"] is True
    assert verdicts["1000 concurrent streams, errors"]["met"] is True
    assert verdicts["added time to first token c=1, p50"]["met"] is None  # not measured: no verdict

    missed = {t["target"]: t for t in report.targets(_results(1900, 4000, 3.0, 2))}
    assert missed["throughput at c=64, share of Envoy alone"]["met"] is False
    assert missed["added latency c=1 JSON, p50"]["met"] is False
    assert missed["1000 concurrent streams, errors"]["met"] is False
