"""The local stack's metrics: each process's registry handed over as a snapshot
(extproc/metrics_export.py) and merged by the supervisor at each scrape
(extproc/local/metrics_gather.py), as Prometheus' multiprocess mode merged its files.

Each "process" here is a registry of its own; the figures expected are what the observations
add up to by hand.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from extproc import metrics_export
from extproc.local.metrics_gather import ChildMetrics, merge
from extproc.local.processes import free_port
from extproc.metrics_export import Snapshot


class Process:
    """One process's metrics, defined as the gateway's modules define them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("requests", "Requests.", ["status"], registry=self.registry)
        self.seconds = Histogram("seconds", "Seconds.", buckets=(0.1, 1.0), registry=self.registry)
        self.depth = Gauge("depth", "Depth.", multiprocess_mode="livemax", registry=self.registry)
        self.total = Gauge("total", "Total.", multiprocess_mode="sum", registry=self.registry)
        self.each = Gauge("each", "Each process's.", registry=self.registry)  # mode "all"

    def snapshot(self, pid: int) -> Snapshot:
        snap = metrics_export.snapshot(self.registry)
        snap["pid"] = pid  # two registries of one process stand for two processes
        return snap


def samples(collected: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, of the merged families as served."""
    registry = CollectorRegistry()

    class Fixed(Collector):
        def collect(self) -> Iterator[object]:  # type: ignore[override]
            yield from collected  # type: ignore[misc]

    registry.register(Fixed())
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def two_processes() -> tuple[Process, Process]:
    a, b = Process(), Process()
    a.requests.labels("200").inc(3)
    b.requests.labels("200").inc(2)
    b.requests.labels("502").inc()
    a.seconds.observe(0.05)
    a.seconds.observe(0.5)
    b.seconds.observe(0.07)
    b.seconds.observe(5)
    a.depth.set(4)
    b.depth.set(9)
    a.total.set(1)
    b.total.set(2)
    a.each.set(7)
    b.each.set(8)
    return a, b


def test_counters_and_histograms_add_up_and_gauges_follow_their_mode() -> None:
    a, b = two_processes()
    merged = samples(merge([a.snapshot(101), b.snapshot(102)]))
    assert merged == {
        ("requests_total", (("status", "200"),)): 5,
        ("requests_total", (("status", "502"),)): 1,
        ("seconds_bucket", (("le", "0.1"),)): 2,
        ("seconds_bucket", (("le", "1.0"),)): 3,
        ("seconds_bucket", (("le", "+Inf"),)): 4,
        ("seconds_count", ()): 4,
        ("seconds_sum", ()): pytest.approx(5.62),
        ("depth", ()): 9,  # livemax
        ("total", ()): 3,  # sum
        ("each", (("pid", "101"),)): 7,  # all: one series per process
        ("each", (("pid", "102"),)): 8,
    }


def test_no_created_series() -> None:
    a, _ = two_processes()
    names = {name for name, _ in samples(merge([a.snapshot(101)]))}
    assert not any(name.endswith("_created") for name in names)


def test_a_dead_process_keeps_its_counts_but_not_its_live_gauges() -> None:
    a, b = two_processes()
    stops = []
    ports = {}
    for pid, process in ((101, a), (102, b)):
        ports[pid] = free_port()
        stops.append(metrics_export.serve(ports[pid], process.registry))
    gathered = ChildMetrics()
    try:
        for pid, port in ports.items():
            gathered.add(pid, port)
        before = samples(gathered.collect())
        assert before[("requests_total", (("status", "200"),))] == 5
        assert before[("depth", ())] == 9

        # b dies (its port no longer answers); its replacement starts from zero.
        stops.pop()()
        gathered.died(102)
        replacement = Process()
        replacement.requests.labels("200").inc()
        replacement.depth.set(1)
        port = free_port()
        stops.append(metrics_export.serve(port, replacement.registry))
        gathered.add(103, port)
        after = samples(gathered.collect())
    finally:
        for stop in stops:
            stop()
    # The counter goes on from what the last scrape saw: 5 + the replacement's 1.
    assert after[("requests_total", (("status", "200"),))] == 6
    assert after[("requests_total", (("status", "502"),))] == 1
    assert after[("seconds_count", ())] == 4
    # The dead process's livemax gauge is dropped: the max of the live ones (4 and 1).
    assert after[("depth", ())] == 4


def test_a_child_that_does_not_answer_counts_with_its_last_snapshot() -> None:
    a, _ = two_processes()
    port = free_port()
    stop = metrics_export.serve(port, a.registry)
    gathered = ChildMetrics()
    gathered.add(101, port)
    first = samples(gathered.collect())
    stop()  # alive for the supervisor, but not answering
    assert samples(gathered.collect()) == first
