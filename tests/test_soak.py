"""bench/soak.py's arithmetic: growth per request is the slope after warm-up (issue 27)."""

from __future__ import annotations

import pytest

from bench.soak import Sample, growth_per_request, summarise


def test_growth_is_the_least_squares_slope_of_memory_against_requests() -> None:
    # 3 bytes per request, and noise on the first two samples that a line through the end
    # points would read as 2.96 B/request (least squares: it has no slope of its own).
    noise = {0: 40_000, 1: -50_000}
    points = [(r, 50_000_000 + 3 * r + noise.get(i, 0)) for i, r in enumerate(range(0, 1_000_001, 100_000))]
    assert growth_per_request(points, warmup_requests=0) == pytest.approx(3.0, abs=0.01)


def test_the_warm_up_is_left_out() -> None:
    # Pools filling: 40 MB in the first 100,000 requests, then flat.
    points = [(0, 10_000_000), (50_000, 30_000_000), (100_000, 50_000_000),
              (200_000, 50_000_000), (300_000, 50_000_000), (400_000, 50_000_000)]
    assert growth_per_request(points, warmup_requests=0) > 50
    assert growth_per_request(points, warmup_requests=100_000) == 0


def test_too_few_points_after_warm_up_give_no_figure() -> None:
    assert growth_per_request([(0, 1), (10, 2), (20, 3)], warmup_requests=15) is None
    assert growth_per_request([(5, 1), (5, 2), (5, 3)], warmup_requests=0) is None


def test_each_process_is_judged_against_5_bytes_per_request() -> None:
    samples = [Sample(float(i), i * 100_000, {"flat": 60 << 20, "leaky": (60 << 20) + 53 * i * 100_000})
               for i in range(11)]
    summary = summarise(samples, warmup_fraction=0.2)
    assert summary["requests"] == 1_000_000
    assert summary["warmup_requests"] == 200_000
    assert summary["samples_after_warmup"] == 9
    assert summary["processes"]["flat"]["bytes_per_request"] == 0
    assert summary["processes"]["flat"]["within_target"] is True
    assert summary["processes"]["leaky"]["bytes_per_request"] == pytest.approx(53)
    assert summary["processes"]["leaky"]["within_target"] is False
