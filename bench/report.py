"""The benchmark's verdicts against the performance budget, and its Markdown report."""

from __future__ import annotations

from typing import Any

BASELINE = "envoy-alone"


def _get(results: dict[str, Any], system: str, *path: str) -> Any:
    node: Any = results["systems"].get(system)
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _target(name: str, value: float | None, limit: float, higher_is_better: bool, unit: str) -> dict[str, Any]:
    met = None if value is None else (value >= limit if higher_is_better else value < limit)
    return {"target": name, "value": None if value is None else round(value, 3), "limit": limit, "unit": unit,
            "met": met}


def _difference(results: dict[str, Any], kind: str, concurrency: str, figure: str, percentile: str) -> float | None:
    ours = _get(results, "gateway", kind, concurrency, figure, percentile)
    base = _get(results, BASELINE, kind, concurrency, figure, percentile)
    return None if ours is None or base is None else ours - base


def _ratio(results: dict[str, Any], system: str, other: str, concurrency: str) -> float | None:
    ours = _get(results, system, "json", concurrency, "rps")
    theirs = _get(results, other, "json", concurrency, "rps")
    return None if not ours or not theirs else ours / theirs


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """DESIGN.md's budget and issue 6's targets, each with the value this run measured."""
    held = _get(results, "gateway", "held_streams") or {}
    held_errors = sum(held.get("errors", {}).values()) if held else None
    held_rss = _get(results, "gateway", "held_streams", "processes", "ext_proc", "peak_rss_mb")
    out = [
        _target("throughput at c=64, share of Envoy alone", _ratio(results, "gateway", BASELINE, "64"), 0.5, True, "x"),
        _target("added latency c=1 JSON, p50", _difference(results, "json", "1", "latency_ms", "p50"), 2, False, "ms"),
        _target("added latency c=1 JSON, p99", _difference(results, "json", "1", "latency_ms", "p99"), 5, False, "ms"),
        _target("added time to first token c=1, p50", _difference(results, "stream", "1", "ttft_ms", "p50"), 3, False,
                "ms"),
        _target("added gap between chunks c=1, p50", _difference(results, "stream", "1", "chunk_gap_ms", "p50"), 1,
                False, "ms"),
        _target(f"{held.get('concurrency', 1000)} concurrent streams, errors", held_errors, 1, False, "errors"),
        _target("ext_proc memory holding them", held_rss, 300, False, "MB"),
    ]
    if isinstance(_get(results, "litellm", "json"), dict):
        for concurrency in results["systems"]["litellm"]["json"]:
            out.append(_target(f"throughput vs LiteLLM at c={concurrency}",
                               _ratio(results, "gateway", "litellm", concurrency), 10, True, "x"))
            ours = _get(results, "gateway", "json", concurrency, "latency_ms", "p99")
            theirs = _get(results, "litellm", "json", concurrency, "latency_ms", "p99")
            out.append(_target(f"p99 vs LiteLLM at c={concurrency} (ours minus theirs)",
                               None if ours is None or theirs is None else ours - theirs, 0, False, "ms"))
    return out


def _cell(value: Any) -> str:
    return "–" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def markdown(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    lines = [
        "# Benchmark results",
        "",
        f"{m['date']} · {m['cpu']} · {m['cores']} cores · {m['memory_gb']} GB · Python {m['python']} · "
        f"Envoy {m['envoy']} · load generator on the same machine ({s['load_generator']}) · "
        f"{s['duration_s']:g} s per run after {s['warmup_s']:g} s warm-up · ext_proc processes: "
        f"{s['ext_proc_workers']} (gateway and floor), plus the gateway's ledger writer; LiteLLM workers: "
        f"{s['ext_proc_workers']}, master key (its virtual keys need a Prisma client generated online).",
        "",
        "## JSON responses",
        "",
        "| system | concurrency | req/s | share of Envoy alone | p50 ms | p90 ms | p99 ms | added p50 ms | added p99 ms "
        "| ext_proc CPU s / 1,000 req | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, figures in results["systems"].items():
        if "skipped" in figures:
            lines.append(f"| {name} | skipped: {figures['skipped']} |||||||||")
            continue
        for concurrency, run in figures["json"].items():
            base = _get(results, BASELINE, "json", concurrency) or {}
            lat, base_lat = run["latency_ms"], base.get("latency_ms", {})
            share = run["rps"] / base["rps"] if base.get("rps") else None
            cpu = run.get("processes", {}).get("ext_proc", {}).get("cpu_seconds")
            per_thousand = None if cpu is None or not run.get("completed") else round(cpu / run["completed"] * 1000, 2)
            lines.append(
                f"| {name} | {concurrency} | {run['rps']:.0f} | {_cell(None if share is None else round(share, 2))} "
                f"| {_cell(lat['p50'])} | {_cell(lat['p90'])} | {_cell(lat['p99'])} "
                f"| {_cell(_minus(lat['p50'], base_lat.get('p50')))} | {_cell(_minus(lat['p99'], base_lat.get('p99')))} "
                f"| {_cell(per_thousand)} | {_errors(run)} |"
            )
    lines += [
        "",
        f"## Streams ({s['chunks']} chunks, {s['chunk_interval_ms']} ms apart)",
        "",
        "| system | concurrency | streams/s | TTFT p50 ms | TTFT p99 ms | added TTFT p50 ms | chunk gap p50 ms "
        "| chunk gap p99 ms | added gap p50 ms | added gap p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, figures in results["systems"].items():
        for concurrency, run in figures.get("stream", {}).items():
            base = _get(results, BASELINE, "stream", concurrency) or {}
            ttft, gap = run["ttft_ms"], run["chunk_gap_ms"]
            base_ttft, base_gap = base.get("ttft_ms", {}), base.get("chunk_gap_ms", {})
            lines.append(
                f"| {name} | {concurrency} | {run['rps']:.1f} | {_cell(ttft['p50'])} | {_cell(ttft['p99'])} "
                f"| {_cell(_minus(ttft['p50'], base_ttft.get('p50')))} | {_cell(gap['p50'])} | {_cell(gap['p99'])} "
                f"| {_cell(_minus(gap['p50'], base_gap.get('p50')))} | {_cell(_minus(gap['p99'], base_gap.get('p99')))} "
                f"| {_errors(run)} |"
            )
    held = _get(results, "gateway", "held_streams")
    if held:
        procs = held.get("processes", {})
        lines += [
            "",
            f"## {held['concurrency']} streams held open at once (10 chunks, 1 s apart)",
            "",
            f"Gateway: {held['completed']} completed, errors {_errors(held)}; ext_proc peak resident memory "
            f"{_cell(procs.get('ext_proc', {}).get('peak_rss_mb'))} MB (all workers), ledger writer "
            f"{_cell(procs.get('ledger_writer', {}).get('peak_rss_mb'))} MB.",
        ]
    ledger = _get(results, "gateway", "ledger")
    if ledger:
        lines += ["", f"Ledger after the gateway's runs: {ledger['ledger_rows']} usage rows for {ledger['served']} "
                      f"requests served ({'exact' if ledger['ok'] else 'MISMATCH'})."]
    lines += ["", "## Targets", "", "| target | measured | limit | met |", "|---|---|---|---|"]
    for t in results["targets"]:
        verdict = "–" if t["met"] is None else "yes" if t["met"] else "**no**"
        lines.append(f"| {t['target']} | {_cell(t['value'])} {t['unit']} | {'≥' if t['unit'] == 'x' else '<'} "
                     f"{t['limit']:g} {t['unit']} | {verdict} |")
    return "\n".join(lines) + "\n"


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def _errors(run: dict[str, Any]) -> str:
    errors = run.get("errors", {})
    return ", ".join(f"{k}: {v}" for k, v in errors.items()) if errors else "0"
