"""The benchmark's own parts: the load generator against the streaming mock, and the verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import report, wrk
from bench.run import ProcessWatch
from bench.systems import System, start_minimal_floor, start_upstream
from extproc.local.processes import Child, free_port, port_open, wait_until

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

    # Bounds that hold on a busy machine, which only ever adds time: the runs are compared
    # with each other and with the upstream's intervals, with generous margins.
    ttft_short, gap_short = run(20)
    ttft_long, gap_long = run(300)
    # The upstream waits at least its interval between chunks.
    assert gap_short >= 0.8 * 20 and gap_long >= 0.8 * 300
    # The gaps follow the interval (15 times longer), not the machine's speed.
    assert gap_long >= 3 * gap_short
    # The first chunk leaves at once: the time to it grows by much less than the gaps did
    # (timed from a later chunk, it would grow by all of it).
    assert ttft_long - ttft_short < (gap_long - gap_short) / 2


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
                                 "processes": {"ext_proc_0": {"peak_rss_mb": 120.0}}},
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


@pytest.fixture(scope="module")
def minimal_floor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, dict[str, list[int]]]]:
    """The bench upstream with the minimal-configuration floor in front: Envoy, the no-op ext_proc."""
    work = tmp_path_factory.mktemp("bench")
    upstream, upstream_children = start_upstream(work, chunks=2, interval_ms=5)
    try:
        system = start_minimal_floor(work, upstream, workers=1)
        try:
            yield system, {child.name.replace("-", "_"): [child.process.pid] for child in upstream_children}
        finally:
            system.stop()
    finally:
        for child in reversed(upstream_children):
            child.stop()


def test_the_minimal_floor_routes_through_the_noop_ext_proc_and_every_process_is_charged(
    minimal_floor: tuple[System, dict[str, list[int]]], tmp_path: Path
) -> None:
    system, upstream = minimal_floor
    body = tmp_path / "body.json"
    body.write_text('{"model": "openai/gpt-4o-mini", "messages": []}')
    watch = ProcessWatch({**system.measured, **upstream})
    result = _load("--url", system.url, "--concurrency", "4", "--requests", "200", "--warmup", "0",
                   "--body-file", str(body))
    processes = watch.finish()
    # The route names no cluster: only the no-op's routing header, set on the buffered body, gets
    # a request to the upstream's direct response.
    assert result["completed"] == 200
    assert result["errors"] == {}
    assert set(processes) == {"envoy", "ext_proc_0", "sse_upstream", "upstream_envoy", "load_generator"}
    for role in ("envoy", "ext_proc_0", "upstream_envoy", "load_generator"):
        assert processes[role]["cpu_seconds"] > 0, role
    assert processes["ext_proc_0"]["peak_rss_mb"] > 10


@pytest.mark.skipif(wrk.wrk_binary() is None, reason="wrk is not installed (make bench-tools)")
def test_wrk_drives_the_json_runs_and_bounds_what_it_cuts(
    minimal_floor: tuple[System, dict[str, list[int]]], tmp_path: Path
) -> None:
    system, _ = minimal_floor
    body = tmp_path / "body.json"
    body.write_text('{"model": "openai/gpt-4o-mini", "messages": []}')
    result = wrk.run(system.url, system.headers, body, concurrency=8, duration=1, warmup=1, work=tmp_path)
    assert result["errors"] == {} and result["warmup_errors"] == {}
    assert result["requests"] > 0 and result["completed"] > result["requests"]  # the warm-up's count too
    assert result["cut_bound"] == 2 * 8  # each of the two wrk runs may leave 8 in flight
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]


def test_the_ledger_may_hold_what_wrk_cut_and_nothing_more() -> None:
    python_run = {"completed": 100, "errors": {}}
    wrk_run = {"completed": 500, "errors": {}, "cut_bound": 16, "warmup_errors": {}}
    assert report.ledger_verdict([python_run], 100)["ok"] is True
    assert report.ledger_verdict([python_run], 101)["ok"] is False  # counted twice
    assert report.ledger_verdict([python_run], 99)["ok"] is False  # lost
    assert report.ledger_verdict([python_run, wrk_run], 600)["ok"] is True
    assert report.ledger_verdict([python_run, wrk_run], 616)["ok"] is True
    assert report.ledger_verdict([python_run, wrk_run], 617)["ok"] is False
    assert report.ledger_verdict([python_run, wrk_run], 599)["ok"] is False
    refused = {**wrk_run, "warmup_errors": {"status": 1}}
    assert report.ledger_verdict([python_run, refused], 600)["ok"] is False


def test_cpu_per_request_is_charged_by_process_with_the_sums_the_targets_read() -> None:
    run = {"completed": 2000, "processes": {
        "envoy": {"cpu_seconds": 0.5}, "ext_proc_0": {"cpu_seconds": 1.0}, "ext_proc_1": {"cpu_seconds": 0.6},
        "ledger_writer": {"cpu_seconds": 0.2}, "postgres": {"cpu_seconds": 0.3}, "redis": {"cpu_seconds": 0.1},
    }}
    cpu = report.cpu_per_request(run)
    assert cpu["envoy"] == 0.25
    assert cpu["ext_proc"] == 0.8
    assert cpu["accounting"] == 0.3


def test_issue_16_targets_read_the_wrk_runs_against_the_minimal_floor_and_litellm() -> None:
    def run(rps: float, p50: float, ext_proc_cpu: float) -> dict[str, object]:
        return {"rps": rps, "completed": 1000, "latency_ms": {"p50": p50, "p99": p50 * 2},
                "processes": {"ext_proc_0": {"cpu_seconds": ext_proc_cpu}, "ledger_writer": {"cpu_seconds": 0.1},
                              "postgres": {"cpu_seconds": 0.2}, "redis": {"cpu_seconds": 0.05}}}

    results = {"systems": {
        "envoy-alone": {"json_wrk": {"1": run(3000, 0.3, 0), "64": run(6000, 10, 0)}},
        "minimal-floor": {"json_wrk": {"1": run(900, 1.2, 0.1), "64": run(3000, 20, 0.3)}},
        "gateway": {"json": {"64": run(100, 50, 1)},
                    "json_wrk": {"1": run(450, 1.7, 0.2), "64": run(1900, 30, 0.4)}},
        "litellm": {"json_wrk": {"1": run(60, 13, 0), "64": run(180, 300, 0)}},
    }}
    verdicts = {t["target"]: t for t in report.targets(results)}
    assert verdicts["throughput at c=64, share of the minimal floor"]["value"] == 0.633
    assert verdicts["throughput at c=64, share of the minimal floor"]["met"] is True
    assert verdicts["c=1 JSON p50 over the minimal floor"]["value"] == 0.5
    assert verdicts["ext_proc CPU per request at c=64, times the no-op's"]["value"] == 1.333
    assert verdicts["accounting CPU per request at c=64"]["value"] == 0.35
    assert verdicts["throughput vs LiteLLM at c=1"]["value"] == 7.5
    assert verdicts["throughput vs LiteLLM at c=1"]["met"] is True  # 6x at c=1
    assert verdicts["throughput vs LiteLLM at c=64"]["value"] == 10.556
    assert verdicts["throughput vs LiteLLM at c=64"]["met"] is True  # 10x at c=64


# bench/profile.py: py-spy's raw samples split by step, perf's report by layer. The stacks are
# py-spy's format (outermost first, paths below their sys.path entry), cut to what matters.
_ENTRY = "_run_module_as_main (<frozen runpy>:198);<module> (extproc/cli.py:113);Runner.run (asyncio/runners.py:118)"
_PROCESS = f"{_ENTRY};Processor.Process (extproc/processor.py:85)"


def test_profile_labels_a_sample_by_its_phase_and_step() -> None:
    from bench.profile import MACHINERY, METRICS, PARTIAL, STREAM_LOOP, THREADS, split_samples

    lines = [
        f"{_PROCESS};ChatExchange.on_request_body (extproc/exchange.py:75);"
        "send_upstream (extproc/phases/request_body.py:123);forward (extproc/pipeline/upstream.py:117) 7",
        f"{_PROCESS};ChatExchange.on_request_body (extproc/exchange.py:72);identify_caller "
        "(extproc/phases/request_body.py:66) 2",
        f"{_PROCESS};ChatExchange.on_request_body (extproc/exchange.py:75);send_upstream "
        "(extproc/phases/request_body.py:118) 1",
        # A metric's write counts as metrics, wherever it was recorded.
        f"{_PROCESS};ChatExchange.finish (extproc/exchange.py:134);finish_request (extproc/phases/finish.py:59);"
        "Histogram.observe (prometheus_client/metrics.py:681) 3",
        f"{_PROCESS} 5",  # only the stream's loop: reading the next message, dispatching it
        f"{_ENTRY};Noop.Process (bench/noop_extproc.py:44) 2",  # the no-op's alike
        f"{_ENTRY} 4",
        "Thread._bootstrap (threading.py:995);Thread.run (threading.py:975) 6",
        "send_upstream (extproc/phases/request_body.py:123);forward (extproc/pipeline/upstream.py:117) 1",
        "",
    ]
    assert split_samples(lines) == {
        "ChatExchange.on_request_body › send_upstream": 8,
        "ChatExchange.on_request_body › identify_caller": 2,
        METRICS: 3,
        STREAM_LOOP: 7,
        MACHINERY: 4,
        THREADS: 6,
        PARTIAL: 1,
    }


def test_profile_splits_perf_samples_by_layer() -> None:
    from bench.profile import split_layers

    perf_report = """# Samples: 4K of event 'cpu-clock:ppp'
#
# Overhead  Shared Object
# ........  ..........................
#
    46.22%  libpython3.11.so.1.0
    19.63%  [kernel.kallsyms]
    17.98%  cygrpc.cpython-311-x86_64-linux-gnu.so
     6.28%  libc.so.6
     0.10%  libm.so.6
     0.05%  libmvec.so.1
"""
    assert split_layers(perf_report) == pytest.approx({
        "Python interpreter": 0.4622,
        "kernel (syscalls, wake-ups)": 0.1963,
        "gRPC core and its Cython layer": 0.1798,
        "C library (malloc, ...)": 0.0628,
        "other": 0.0015,
    })
