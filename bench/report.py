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
            "higher_is_better": higher_is_better, "met": met}


FLOORS = ("minimal-floor", "ext_proc-floor")
GENERATORS = {"json": "bench/load.py (Python)", "json_wrk": "wrk (C, one thread)"}
# Accounting's processes (the generation lookup runs inside the ext_proc and is not apart).
ACCOUNTING = ("ledger_writer", "postgres", "redis")


def json_kind(results: dict[str, Any]) -> str:
    """The JSON runs the targets are read from: wrk's when the run has them (its own CPU skews
    the systems less), else the Python generator's."""
    return "json_wrk" if _get(results, "gateway", "json_wrk") else "json"


def _difference(results: dict[str, Any], system: str, other: str, kind: str, concurrency: str, figure: str,
                percentile: str) -> float | None:
    ours = _get(results, system, kind, concurrency, figure, percentile)
    base = _get(results, other, kind, concurrency, figure, percentile)
    return None if ours is None or base is None else ours - base


def _ratio(results: dict[str, Any], system: str, other: str, concurrency: str, kind: str = "json") -> float | None:
    ours = _get(results, system, kind, concurrency, "rps")
    theirs = _get(results, other, kind, concurrency, "rps")
    return None if not ours or not theirs else ours / theirs


def cpu_per_request(run: dict[str, Any]) -> dict[str, float]:
    """CPU milliseconds per request by process role over one load run (warm-up included, as is
    its CPU), with the sums `ext_proc` (all workers) and `accounting` where their parts ran."""
    completed = run.get("completed")
    processes = run.get("processes") or {}
    if not completed:
        return {}
    out = {role: figures["cpu_seconds"] * 1000 / completed for role, figures in processes.items()}
    workers = [value for role, value in out.items() if role.startswith("ext_proc_")]
    if workers:
        out["ext_proc"] = sum(workers)
    if any(role in out for role in ACCOUNTING):
        out["accounting"] = sum(out.get(role, 0.0) for role in ACCOUNTING)
    return {role: round(value, 4) for role, value in out.items()}


def ext_proc_rss(processes: dict[str, Any]) -> float | None:
    """Peak resident memory of all ext_proc workers (the sum of each one's peak)."""
    peaks = [figures["peak_rss_mb"] for role, figures in processes.items() if role.startswith("ext_proc_")]
    return round(sum(peaks), 1) if peaks else None


def _cpu_ratio(results: dict[str, Any], kind: str, concurrency: str) -> float | None:
    ours = cpu_per_request(_get(results, "gateway", kind, concurrency) or {}).get("ext_proc")
    floor = cpu_per_request(_get(results, "minimal-floor", kind, concurrency) or {}).get("ext_proc")
    return None if ours is None or not floor else ours / floor


def _holds_cpu(results: dict[str, Any], kind: str) -> float | None:
    on = cpu_per_request(_get(results, "gateway", kind, "64") or {}).get("ext_proc")
    off = cpu_per_request(_get(results, "gateway-holds-off", kind, "64") or {}).get("ext_proc")
    return None if on is None or off is None else round(on - off, 4)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """DESIGN.md's budget and issues 6 and 16's targets, each with the value this run measured.
    Throughput and JSON latency are read from `json_kind`'s runs."""
    kind = json_kind(results)
    held = _get(results, "gateway", "held_streams") or {}
    held_errors = sum(held.get("errors", {}).values()) if held else None
    held_rss = ext_proc_rss(held.get("processes") or {}) if held else None
    out = [
        _target("throughput at c=64, share of Envoy alone", _ratio(results, "gateway", BASELINE, "64", kind), 0.5, True,
                "x"),
        _target("throughput at c=64, share of the minimal floor", _ratio(results, "gateway", "minimal-floor", "64", kind),
                0.6, True, "x"),
        _target("added latency c=1 JSON, p50",
                _difference(results, "gateway", BASELINE, kind, "1", "latency_ms", "p50"), 2, False, "ms"),
        _target("added latency c=1 JSON, p99",
                _difference(results, "gateway", BASELINE, kind, "1", "latency_ms", "p99"), 5, False, "ms"),
        _target("c=1 JSON p50 over the minimal floor",
                _difference(results, "gateway", "minimal-floor", kind, "1", "latency_ms", "p50"), 0.6, False, "ms"),
        _target("added time to first token c=1, p50",
                _difference(results, "gateway", BASELINE, "stream", "1", "ttft_ms", "p50"), 3, False, "ms"),
        _target("added gap between chunks c=1, p50",
                _difference(results, "gateway", BASELINE, "stream", "1", "chunk_gap_ms", "p50"), 1, False, "ms"),
        _target("ext_proc CPU per request at c=64, times the no-op's", _cpu_ratio(results, kind, "64"), 1.4, False,
                "x"),
        _target("accounting CPU per request at c=64",
                cpu_per_request(_get(results, "gateway", kind, "64") or {}).get("accounting"), 0.4, False, "ms"),
        # Issue 28: tracing on (10 % of new traces) against the same gateway without, same run.
        _target("throughput at c=64 with tracing at 10 %, share of the gateway without",
                _ratio(results, "gateway-traced", "gateway", "64", kind), 0.95, True, "x"),
        _target(f"{held.get('concurrency', 1000)} concurrent streams, errors", held_errors, 1, False, "errors"),
        _target("ext_proc memory holding them", held_rss, 300, False, "MB"),
        # Issue 23: the spend hold's cost, against the gateway with SPEND_HOLDS=off in this run.
        _target("spend holds: ext_proc CPU added per paid request at c=64", _holds_cpu(results, kind), 0.1, False, "ms"),
        _target("spend holds: throughput at c=64, share of SPEND_HOLDS=off",
                _ratio(results, "gateway", "gateway-holds-off", "64", kind), 0.95, True, "x"),
    ]
    if isinstance(_get(results, "litellm", kind), dict):
        for concurrency in results["systems"]["litellm"][kind]:
            out.append(_target(f"throughput vs LiteLLM at c={concurrency}",
                               _ratio(results, "gateway", "litellm", concurrency, kind),
                               6 if concurrency == "1" else 10, True, "x"))
            out.append(_target(f"p99 vs LiteLLM at c={concurrency} (ours minus theirs)",
                               _difference(results, "gateway", "litellm", kind, concurrency, "latency_ms", "p99"),
                               0, False, "ms"))
    return out


def ledger_verdict(runs: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    """The ledger against the load generators' counts: one row per request served. A wrk run may
    cut up to `cut_bound` requests the system served but wrk never counted; nothing else may differ."""
    served = sum(run["completed"] for run in runs)
    cut = sum(run.get("cut_bound", 0) for run in runs)
    errors = sum(sum(run["errors"].values()) + sum(run.get("warmup_errors", {}).values()) for run in runs)
    return {"served": served, "cut_bound": cut, "errors": errors, "ledger_rows": rows,
            "ok": errors == 0 and served <= rows <= served + cut}


def _cell(value: Any) -> str:
    return "–" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def markdown(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    lines = [
        "# Benchmark results",
        "",
        f"{m['date']} · {m['cpu']} · {m['cores']} cores · {m['memory_gb']} GB · Python {m['python']} · "
        f"Envoy {m['envoy']} · load generators on the same machine ({s['load_generator']}"
        f"{'; ' + s['wrk'] if s.get('wrk') else ''}) · "
        f"{s['duration_s']:g} s per run after {s['warmup_s']:g} s warm-up · ext_proc processes: "
        f"{s['ext_proc_workers']} (gateway and both floors), plus the gateway's ledger writer; LiteLLM workers: "
        f"{s['ext_proc_workers']}, master key (its virtual keys need a Prisma client generated online).",
    ]
    for kind, generator in GENERATORS.items():
        if not any(isinstance(figures.get(kind), dict) for figures in results["systems"].values()):
            continue
        lines += [
            "",
            f"## JSON responses, {generator}",
            "",
            "| system | concurrency | req/s | share of Envoy alone | share of the minimal floor | p50 ms | p90 ms "
            "| p99 ms | added p50 ms | p50 over the minimal floor ms | errors |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, figures in results["systems"].items():
            if "skipped" in figures:
                lines.append(f"| {name} | skipped: {figures['skipped']} |||||||||")
                continue
            for concurrency, run in figures.get(kind, {}).items():
                lat = run["latency_ms"]
                share = _ratio(results, name, BASELINE, concurrency, kind)
                floor_share = _ratio(results, name, "minimal-floor", concurrency, kind)
                lines.append(
                    f"| {name} | {concurrency} | {run['rps']:.0f} | {_cell(_round(share))} | {_cell(_round(floor_share))} "
                    f"| {_cell(lat['p50'])} | {_cell(lat['p90'])} | {_cell(lat['p99'])} "
                    f"| {_cell(_round(_difference(results, name, BASELINE, kind, concurrency, 'latency_ms', 'p50')))} "
                    f"| {_cell(_round(_difference(results, name, 'minimal-floor', kind, concurrency, 'latency_ms', 'p50')))} "
                    f"| {_errors(run)} |"
                )
    lines += [
        "",
        "## CPU per request, by process",
        "",
        "CPU milliseconds (user + system) each process spent per request served over the whole load run, "
        "warm-up included; `ext_proc` sums the workers, `accounting` the ledger writer, Postgres and Redis.",
        "",
        "| system | run | concurrency | total ms | by process, ms |",
        "|---|---|---|---|---|",
    ]
    for name, figures in results["systems"].items():
        for kind in (*GENERATORS, "stream"):
            for concurrency, run in figures.get(kind, {}).items():
                cpu = cpu_per_request(run)
                if not cpu:
                    continue
                parts = {role: value for role, value in cpu.items() if role not in ("ext_proc", "accounting")}
                # The sums first, then each process.
                order = sorted(cpu, key=lambda role: (role in parts, role))
                by_role = " · ".join(f"{role} {cpu[role]:.3f}" for role in order)
                lines.append(f"| {name} | {kind} | {concurrency} | {sum(parts.values()):.3f} | {by_role} |")
    lines += [
        "",
        f"## Streams ({s['chunks']} chunks, {s['chunk_interval_ms']} ms apart), bench/load.py",
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
            f"{_cell(ext_proc_rss(procs))} MB (all workers), ledger writer "
            f"{_cell(procs.get('ledger_writer', {}).get('peak_rss_mb'))} MB.",
        ]
    ledger = _get(results, "gateway", "ledger")
    if ledger:
        lines += ["", f"Ledger after the gateway's runs: {ledger['ledger_rows']} usage rows for {ledger['served']} "
                      f"requests served, of which up to {ledger.get('cut_bound', 0)} more may be cut by wrk "
                      f"({'as expected' if ledger['ok'] else 'MISMATCH'})."]
    lines += ["", f"## Targets (JSON figures from {GENERATORS[json_kind(results)]})", "",
              "| target | measured | limit | met |", "|---|---|---|---|"]
    for t in results["targets"]:
        verdict = "–" if t["met"] is None else "yes" if t["met"] else "**no**"
        lines.append(f"| {t['target']} | {_cell(t['value'])} {t['unit']} | {'≥' if t['higher_is_better'] else '<'} "
                     f"{t['limit']:g} {t['unit']} | {verdict} |")
    return "\n".join(lines) + "\n"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def _errors(run: dict[str, Any]) -> str:
    errors = run.get("errors", {})
    return ", ".join(f"{k}: {v}" for k, v in errors.items()) if errors else "0"
