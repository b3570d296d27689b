"""The supervisor's metrics: every Python child's, asked for at each scrape and merged.

Each ext_proc worker and the ledger writer answer a connection on their loopback export port
with a snapshot of their registry (extproc/metrics_export.py). At each scrape the supervisor
asks every live child and merges the snapshots as Prometheus' multiprocess mode merged its
files (prometheus_client's own merge, fed samples instead of files): counters, histograms and
summaries summed, each gauge by its `multiprocess_mode` (`all`/`liveall` one series per pid,
`sum`, `max`, `min`, `mostrecent`, live or not).

A child that dies: its last snapshot is kept for the series multiprocess mode kept from a dead
process's files (counters, histograms, summaries, gauges not `live*`), so a counter's sum does
not go backwards when the worker is started again; what it counted after the last scrape is
lost. A live child that does not answer in time counts with its last snapshot.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from extproc.metrics_export import Snapshot, decode

_ANSWER_SECONDS = 0.5  # within Prometheus' shortest usual scrape timeout (1 s)


def fetch(port: int, timeout: float = _ANSWER_SECONDS) -> Snapshot | None:
    """A child's snapshot, or None when it does not answer in time."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
            chunks = []
            while chunk := connection.recv(1 << 16):
                chunks.append(chunk)
        return decode(b"".join(chunks))
    except (OSError, ValueError):
        return None


def retained(snap: Snapshot) -> Snapshot:
    """What of a dead process's snapshot stays: multiprocess mode dropped the files of its
    `live*` gauges (mark_process_dead) and kept the rest."""
    families = [f for f in snap["families"] if not (f["mode"] or "").startswith("live")]
    return Snapshot(pid=snap["pid"], started=snap["started"], families=families)


def merge(snapshots: Iterable[Snapshot]) -> list[Metric]:
    """One family per metric name, merged across the snapshots."""
    metrics: dict[str, Metric] = {}
    for snap in snapshots:
        pid = (("pid", str(snap["pid"])),)
        for family in snap["families"]:
            metric = metrics.get(family["name"])
            if metric is None:
                metric = metrics[family["name"]] = Metric(
                    family["name"], family["help"], family["type"], family["unit"]
                )
                metric._multiprocess_mode = family["mode"]  # type: ignore[attr-defined]  # read by the merge below
            gauge = family["type"] == "gauge"
            for name, labels, value in family["samples"]:
                key = tuple(sorted(labels.items()))
                # The merge reads labels as pairs; a gauge's carry the pid (dropped unless `all`),
                # its timestamp the process's start (only `mostrecent` reads it).
                metric.add_sample(name, key + pid if gauge else key, value, snap["started"] if gauge else None)  # type: ignore[arg-type]
    # accumulate=False: the snapshots' buckets are cumulative already (the files' were not).
    merged: list[Metric] = list(MultiProcessCollector._accumulate_metrics(metrics, accumulate=False))  # type: ignore[no-untyped-call]
    return merged


class ChildMetrics(Collector):
    """The collector the supervisor serves: its children's metrics, merged at each scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # scrapes run on the metrics server's threads
        self._ports: dict[int, int] = {}  # live child's pid -> its export port
        self._last: dict[int, Snapshot] = {}  # live child's pid -> its last answer
        self._dead: list[Snapshot] = []

    def add(self, pid: int, port: int) -> None:
        with self._lock:
            self._ports[pid] = port

    def died(self, pid: int) -> None:
        with self._lock:
            self._ports.pop(pid, None)
            last = self._last.pop(pid, None)
            if last is not None:
                self._dead.append(retained(last))

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            ports = dict(self._ports)
        with ThreadPoolExecutor(max_workers=max(len(ports), 1)) as pool:
            answers = dict(zip(ports, pool.map(fetch, ports.values()), strict=True))
        with self._lock:
            for pid, answer in answers.items():
                if answer is not None and pid in self._ports:  # not died meanwhile
                    self._last[pid] = answer
            snapshots = [*self._dead, *(self._last[pid] for pid in self._ports if pid in self._last)]
        return merge(snapshots)
