"""Latency percentiles of the benchmark: observed values, never interpolated below."""

from __future__ import annotations

import numpy as np
import pytest

from driftline.benchmarks.latency import latency_summary


def test_percentiles_of_a_known_spread_in_milliseconds() -> None:
    latencies = np.arange(1, 1001) / 1000.0  # 1 ms .. 1000 ms
    summary = latency_summary(latencies)
    assert summary["p50"] == pytest.approx(501.0)  # 'higher': the observed value above
    assert summary["p99"] == pytest.approx(991.0)
    assert summary["p99_9"] == pytest.approx(1000.0)
    assert summary["max"] == pytest.approx(1000.0)


def test_a_single_slow_event_shows_in_p99_9_but_not_p50() -> None:
    latencies = np.full(2000, 0.004)
    latencies[17] = 0.9
    latencies[18] = 0.8
    summary = latency_summary(latencies)
    assert summary["p50"] == pytest.approx(4.0)
    assert summary["p99"] == pytest.approx(4.0)
    assert summary["p99_9"] == pytest.approx(800.0)
    assert summary["max"] == pytest.approx(900.0)


def test_percentiles_are_observed_values() -> None:
    rng = np.random.default_rng(3)
    latencies = rng.exponential(0.01, 777)
    summary = latency_summary(latencies)
    observed = set(np.round(latencies * 1000, 9))
    for name in ("p50", "p99", "p99_9", "max"):
        assert round(summary[name], 9) in observed


def test_no_data_gives_none_and_nan_is_ignored() -> None:
    assert latency_summary(np.array([])) == {"p50": None, "p99": None, "p99_9": None, "max": None}
    summary = latency_summary(np.array([np.nan, 0.002, np.nan]))
    assert summary["p50"] == pytest.approx(2.0)
