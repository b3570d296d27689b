"""extproc/metrics.py's `observe` and `observe_all` (a batch of observations written at once)
must expose exactly what prometheus_client's own `observe` does (buckets, count and sum), in
Prometheus' text format."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from extproc import metrics

BUCKETS = (0.001, 0.01, 0.1, 1.0)
# Below the first bound, exactly on bounds (`le` is inclusive), between them, beyond the last.
AMOUNTS = [0.0005, 0.001, 0.001, 0.005, 0.01, 0.5, 1.0, 7.0, 0.05]


def exposition(observe: str, amounts: list[float]) -> str:
    registry = CollectorRegistry()
    histogram = Histogram("phase_seconds", "Time per phase.", ["phase"], buckets=BUCKETS, registry=registry)
    child = histogram.labels("response_body")
    if observe == "prometheus_client":
        for amount in amounts:
            child.observe(amount)
    elif observe == "observe":
        for amount in amounts:
            metrics.observe(child, amount)
    else:
        metrics.observe_all(child, amounts)
    # Without the `_created` sample: the two histograms were created at different times.
    return "\n".join(line for line in generate_latest(registry).decode().splitlines() if "_created" not in line)


@pytest.mark.parametrize("amounts", [AMOUNTS, AMOUNTS[:1], []])
def test_observing_all_at_once_exposes_what_observing_each_does(amounts: list[float]) -> None:
    assert exposition("all", amounts) == exposition("prometheus_client", amounts)


def test_observing_one_at_a_time_exposes_what_prometheus_client_does() -> None:
    assert exposition("observe", AMOUNTS) == exposition("prometheus_client", AMOUNTS)


def test_the_buckets_are_those_of_the_contract_of_le() -> None:
    text = exposition("all", AMOUNTS)
    # Written out: cumulative counts, an amount equal to a bound counted in that bucket.
    for le, count in (("0.001", 3), ("0.01", 5), ("0.1", 6), ("1.0", 8), ("+Inf", 9)):
        assert f'phase_seconds_bucket{{le="{le}",phase="response_body"}} {count}.0' in text
    assert 'phase_seconds_count{phase="response_body"} 9.0' in text
