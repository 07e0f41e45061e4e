"""WARN has a budget of its own: about one onset a day over all detectors on a stream
that does not change (``warn_fraction_for``), instead of a fixed half of each threshold.

The fixed half showed WARN again and again on the demo's stationary stream (an offline
replica of ``driftline demo``, 1.2M live events, 2,000 customers: 10 WARN onsets, none
with the budgeted level); that replica takes minutes, these checks hold the rule."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from driftline.core.drift.monitor import OK, WARN, DriftMonitor, MonitorBudget
from driftline.core.drift.monitor.thresholds import warn_fraction_for
from driftline.model.profile import build_reference_profile

NUMERIC = ["level", "count", "spend"]
CATEGORICAL = ["plan"]
PLANS = np.array(["basic", "plus", "pro"], dtype=object)
EVENTS_PER_DAY = 20_000
DAYS = 6
#: A budget counted in a large day (the demo counts 10^7 events a day): the run is a
#: hundredth of a day, so WARN's budget allows no onset at all.
BIG_DAY = 10_000_000


def _rows(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.DataFrame(
        {
            "level": rng.normal(0, 1, n),
            "count": rng.poisson(2.0, n).astype(float),
            "spend": np.where(rng.random(n) < 0.05, np.nan, rng.lognormal(3, 0.5, n)),
            "plan": PLANS[rng.choice(3, n, p=[0.5, 0.3, 0.2])],
        }
    )
    return frame, 1 / (1 + np.exp(-frame["level"].to_numpy()))


def _monitor(
    seed: int, warn_fraction: float | None = None, events_per_day: float = EVENTS_PER_DAY
) -> DriftMonitor:
    frame, scores = _rows(np.random.default_rng(seed), 40_000)
    profile = build_reference_profile(frame, scores, NUMERIC, CATEGORICAL)
    return DriftMonitor(
        profile,
        NUMERIC,
        CATEGORICAL,
        MonitorBudget(events_per_day=events_per_day, period_days=30),
        warn_fraction=warn_fraction,
        window_test_resamples=2000,
    )


def _warn_onsets(monitor: DriftMonitor, seed: int) -> int:
    rng = np.random.default_rng(seed)
    onsets, before = 0, dict.fromkeys(monitor.features, OK)
    for day in range(DAYS):
        for _ in range(EVENTS_PER_DAY // 2000):
            frame, scores = _rows(rng, 2000)
            keys = np.array([f"c{i}" for i in rng.integers(0, 10**6, 2000)], dtype=object)
            times = 1_700_000_000_000 + day * 86_400_000 + np.arange(2000, dtype=np.int64)
            monitor.update(frame, scores, times, keys)
            now = dict(monitor.states)
            onsets += sum(1 for f, s in now.items() if s == WARN and before[f] == OK)
            before = now
    return onsets


@pytest.mark.parametrize("seed", [1, 2])
def test_a_stationary_stream_warns_about_once_a_day_at_most(seed: int) -> None:
    monitor = _monitor(seed)
    assert monitor.warn_fraction > 0.5
    onsets = _warn_onsets(monitor, seed + 100)
    # The budget: ~1 onset a day over all detectors, an approximation (exact for the
    # block CUSUMs); twice that, plus slack for a short run, fails.
    assert onsets <= 2 * DAYS + 2, f"{onsets} WARN onsets in {DAYS} days"


def test_a_budget_counted_in_a_large_day_leaves_no_room_for_a_warn() -> None:
    """The demo's case: 10^7 events a day, a run of a hundredth of a day."""
    monitor = _monitor(1, events_per_day=BIG_DAY)
    assert monitor.warn_fraction > 0.75
    assert _warn_onsets(monitor, 101) <= 1


def test_the_warn_level_follows_the_budget_and_survives_a_checkpoint() -> None:
    arl0 = 14 * 30 * EVENTS_PER_DAY
    assert warn_fraction_for(arl0, 30, 100) > warn_fraction_for(arl0 / 1000, 30, 100)
    assert warn_fraction_for(arl0, 1, 100) == 0.5  # a budget of a day: WARN at half
    monitor = _monitor(3)
    restored = DriftMonitor.from_state_dict(json.loads(json.dumps(monitor.state_dict())))
    assert restored.warn_fraction == monitor.warn_fraction
    assert _monitor(3, warn_fraction=0.7).warn_fraction == 0.7
