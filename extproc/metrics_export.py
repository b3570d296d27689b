"""A process's metrics as one snapshot, for the local stack's supervisor to merge at scrape time.

Under `llm-gateway run` each ext_proc worker and the ledger writer keep their metrics in
process, as a process started on its own does (an increment is a locked add in memory; in
Prometheus' multiprocess mode it was a locked mmap write, 12.5 % of a JSON request's
instructions), and answer each connection on a loopback port (`METRICS_EXPORT_PORT`, given by
the supervisor) with their registry as JSON. The supervisor asks every child at each scrape and
merges what they answer (extproc/local/metrics_gather.py), so a scrape sees every observation
made before it.

Hand-written: prometheus_client merges processes only through its multiprocess files. The
wire format is the registry's own samples, with each gauge's `multiprocess_mode`, which says
how the supervisor merges it.
"""

from __future__ import annotations

import json
import os
import socketserver
import threading
import time
from collections.abc import Callable
from typing import Any, TypedDict

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

# Set by the supervisor in each child's environment: the loopback port to answer on.
METRICS_EXPORT_PORT = "LLM_GATEWAY_METRICS_EXPORT_PORT"
_WITH_CREATED = frozenset(("counter", "histogram", "summary"))
_STARTED = time.time()


class Family(TypedDict):
    name: str
    type: str
    help: str
    unit: str
    mode: str | None  # a gauge's multiprocess_mode, else None
    samples: list[tuple[str, dict[str, str], float]]


class Snapshot(TypedDict):
    pid: int
    started: float  # the process's start (wall clock): the newest wins a `mostrecent` gauge
    families: list[Family]


def snapshot(registry: CollectorRegistry = REGISTRY) -> Snapshot:
    """The registry's metrics (the Counter, Gauge, Histogram, ... objects: not the process and
    platform collectors, which describe one process, as in multiprocess mode), without the
    `_created` samples, which do not add up across processes."""
    # prometheus_client has no public way to the collectors behind the families, and the
    # gauges' modes are on the collectors.
    with registry._lock:
        collectors = list(registry._collector_to_names)
    families: list[Family] = []
    for collector in collectors:
        if not isinstance(collector, MetricWrapperBase):
            continue
        mode = getattr(collector, "_multiprocess_mode", None)
        for family in collector.collect():
            created = family.name + "_created" if family.type in _WITH_CREATED else None
            samples = [(s.name, s.labels, s.value) for s in family.samples if s.name != created]
            families.append(
                Family(
                    name=family.name, type=family.type, help=family.documentation, unit=family.unit, mode=mode,
                    samples=samples,
                )
            )  # fmt: skip
    return Snapshot(pid=os.getpid(), started=_STARTED, families=families)


def encode(value: Snapshot) -> bytes:
    # The standard library's json: it writes NaN and infinities (a gauge may hold them).
    return json.dumps(value, separators=(",", ":")).encode()


def decode(data: bytes) -> Snapshot:
    decoded: Any = json.loads(data)
    result: Snapshot = decoded
    return result


class _Answer(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.request.sendall(encode(snapshot(self.server.registry)))


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    registry: CollectorRegistry


def serve(port: int, registry: CollectorRegistry = REGISTRY) -> Callable[[], None]:
    """Answers connections on 127.0.0.1:`port` with a snapshot of `registry` (this process's),
    on a thread; returns the function that stops it."""
    server = _Server(("127.0.0.1", port), _Answer)
    server.registry = registry
    thread = threading.Thread(target=server.serve_forever, name="metrics-export", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
