"""A reference that does not describe the stream is reported once, not as a wall of DRIFT
and a retrain request (``core/drift/reference_check.py``)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from driftline.core.drift.monitor import DRIFT, DriftMonitor, MonitorBudget
from driftline.core.drift.trigger import RetrainPolicy, RetrainTrigger
from driftline.model.profile import build_reference_profile
from driftline.observability.drift_metrics import DriftMetrics

NUMERIC = ["a", "b", "c", "d"]
CATEGORICAL = ["plan"]


def rows(rng: np.random.Generator, n: int, shift: float, plans: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(
        {name: rng.normal(shift * (i + 1), 1.0, n) for i, name in enumerate(NUMERIC)}
    )
    frame["plan"] = rng.choice(np.array(plans, dtype=object), n)
    return frame


@pytest.fixture(scope="module")
def profile() -> dict:
    rng = np.random.default_rng(0)
    frame = rows(rng, 20_000, 0.0, ["basic", "plus", "pro"])
    return build_reference_profile(frame, rng.beta(2, 5, 20_000), NUMERIC, CATEGORICAL)


def serve(profile: dict, frame: pd.DataFrame, scores: np.ndarray) -> tuple[list, list]:
    monitor = DriftMonitor(
        profile,
        NUMERIC,
        CATEGORICAL,
        MonitorBudget(events_per_day=50_000),
        window_test_resamples=2000,
    )
    trigger = RetrainTrigger(RetrainPolicy(persistence_s=10.0), "churn", "1", "w1")
    times = 1_700_000_000_000 + np.arange(len(frame), dtype=np.int64) * 200
    keys = np.array([f"c{i % 3000}" for i in range(len(frame))], dtype=object)
    updates, requests = [], []
    for lo in range(0, len(frame), 1000):
        hi = lo + 1000
        update = monitor.update(
            frame.iloc[lo:hi].reset_index(drop=True), scores[lo:hi], times[lo:hi], keys[lo:hi]
        )
        updates.append(update)
        if (request := trigger.observe(update)) is not None:
            requests.append(request)
    return updates, requests


def test_a_stream_shaped_unlike_the_reference_is_a_mismatch_not_a_retrain(profile: dict) -> None:
    rng = np.random.default_rng(1)
    frame = rows(rng, 20_000, 1.5, ["gold", "silver"])
    updates, requests = serve(profile, frame, rng.beta(5, 2, 20_000))
    assert updates[0].reference_mismatch is None  # 1000 events: not decided yet
    assert all(u.reference_mismatch is True for u in updates[1:])
    assert set(updates[-1].reference_off) >= {"a", "b", "c", "d", "plan"}
    # The monitor still says what it sees; only the retrain request is held back.
    assert len(updates[-1].drifted) == 5 and updates[-1].prediction.state == DRIFT
    assert requests == []


def test_a_stream_like_the_reference_fits_and_a_later_drift_asks_for_a_retrain(
    profile: dict,
) -> None:
    rng = np.random.default_rng(2)
    frame = pd.concat(
        [rows(rng, 6_000, 0.0, ["basic", "plus", "pro"]), rows(rng, 14_000, 1.5, ["gold"])],
        ignore_index=True,
    )
    updates, requests = serve(profile, frame, rng.beta(2, 5, 20_000))
    assert all(u.reference_mismatch is False for u in updates[2:])
    assert updates[-1].reference_off == {}
    assert len(requests) == 1


def test_the_verdict_is_exported_and_logged_once(
    profile: dict, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(3)
    updates, _ = serve(profile, rows(rng, 4_000, 1.5, ["gold"]), rng.beta(5, 2, 4_000))
    metrics = DriftMetrics(CollectorRegistry())
    metrics.set_reference("churn", "1", 20_000)
    gauge = metrics.reference_mismatch.labels("churn", "1")
    assert np.isnan(gauge._value.get())
    with caplog.at_level(logging.INFO, logger="driftline.observability.drift_metrics"):
        for update in updates:
            metrics.publish(update, "churn", "1", np.zeros(0))
    assert gauge._value.get() == 1
    lines = [r.getMessage() for r in caplog.records if "does not describe" in r.getMessage()]
    assert len(lines) == 1 and "PSI" in lines[0]


def test_a_monitor_starts_on_any_budget() -> None:
    """Seen with the demo: a large budget (here 2 * 10^8 events a day) made the rate
    threshold's lattice give up (``arl0 too large``) for a field missing 90 % of the time,
    and a worker with drift on would not start."""
    rng = np.random.default_rng(4)
    frame = rows(rng, 20_000, 0.0, ["basic", "plus", "pro"])
    frame["d"] = np.where(rng.random(20_000) < 0.9, np.nan, frame["d"])
    profile = build_reference_profile(frame, rng.beta(2, 5, 20_000), NUMERIC, CATEGORICAL)
    for per_day in (2e8, 9.8e8, 1e9, 2e9, 5e9):
        monitor = DriftMonitor(
            profile,
            NUMERIC,
            CATEGORICAL,
            MonitorBudget(events_per_day=per_day),
            window_test_resamples=2000,
        )
        assert monitor.bernoulli is not None
        assert np.all(np.isfinite(monitor.bernoulli.h)) and np.all(monitor.bernoulli.h > 0)


def test_the_rate_threshold_past_the_lattice_is_the_likelihood_ratio_bound() -> None:
    """ARL0 5 * 10^11 at p0 = 0.904: the lattice search gives up; ``log(arl0)`` is used
    (a likelihood-ratio CUSUM's in-control ARL is at least ``exp(h)``)."""
    from driftline.core.drift.cusum import default_shift
    from driftline.core.drift.monitor.thresholds import bernoulli_h as _bernoulli_h

    p0 = 0.9040812809984159
    p1 = float(default_shift(np.array([p0]))[0])
    assert _bernoulli_h(5e11, p0, p1) == pytest.approx(np.log(5e11))
