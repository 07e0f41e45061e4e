"""DriftMonitor on synthetic streams: silence when stationary, bounded detection delays for
mean / category / missing-rate / score shifts, the latch, and exact checkpoint round trips.

The budget makes 100 000 events one "day" and allows one false trigger per 30 days over all
32 detectors, so a 200 000-event stationary run expects ~0.07 false alarms (seeds fixed).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from driftline.core.drift.monitor import (
    DRIFT,
    OK,
    SCORE,
    DriftMonitor,
    DriftUpdate,
    MonitorBudget,
)
from driftline.model.profile import build_reference_profile

NUMERIC = [f"x{i}" for i in range(8)]
CATEGORICAL = ["plan", "region"]
PLANS = ["basic", "plus", "pro", "team", "enterprise"]
PLAN_P = [0.4, 0.25, 0.2, 0.1, 0.05]
REGIONS = [f"r{i}" for i in range(12)]
REGION_P = np.arange(12, 0, -1) / 78.0
BATCH = 2000
WINDOW = 5000
MS_PER_EVENT = 50

Mutate = Callable[[pd.DataFrame, np.ndarray, np.ndarray], tuple[pd.DataFrame, np.ndarray]]


def std_of(i: int) -> float:
    return 1.0 + 0.5 * i


def sample(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Stationary rows: normal numerics (x1 has 5% missing), two categoricals, beta scores."""
    data: dict[str, object] = {f"x{i}": rng.normal(i, std_of(i), n) for i in range(8)}
    data["x1"] = np.where(rng.random(n) < 0.05, np.nan, data["x1"])
    data["plan"] = rng.choice(PLANS, n, p=PLAN_P).astype(object)
    data["region"] = rng.choice(REGIONS, n, p=REGION_P).astype(object)
    return pd.DataFrame(data), rng.beta(2.0, 5.0, n)


@pytest.fixture(scope="module")
def profile() -> dict:
    frame, scores = sample(np.random.default_rng(1), 20_000)
    return build_reference_profile(frame, scores, NUMERIC, CATEGORICAL)


@pytest.fixture(scope="module")
def calibrated(profile: dict) -> dict:
    """Checkpoint of a fresh monitor: cloning it skips the threshold calibration (~2 s)."""
    monitor = DriftMonitor(profile, NUMERIC, CATEGORICAL, MonitorBudget(events_per_day=100_000))
    return json.loads(json.dumps(monitor.state_dict(), allow_nan=False))


@pytest.fixture
def monitor(calibrated: dict) -> DriftMonitor:
    return DriftMonitor.from_state_dict(calibrated)


def run(
    monitor: DriftMonitor,
    seed: int,
    n_batches: int,
    mutate: Mutate | None = None,
    start_event: int = 0,
) -> list[DriftUpdate]:
    """Feed ``n_batches`` batches; ``mutate(frame, scores, event_index)`` injects drift."""
    rng = np.random.default_rng(seed)
    updates = []
    for b in range(n_batches):
        index = start_event + b * BATCH + np.arange(BATCH)
        frame, scores = sample(rng, BATCH)
        if mutate is not None:
            frame, scores = mutate(frame, scores, index)
        updates.append(monitor.update(frame, scores, 1_700_000_000_000 + index * MS_PER_EVENT))
    return updates


def first_alarm(updates: list[DriftUpdate], feature: str) -> int | None:
    for update in updates:
        for alarm in update.alarms:
            if alarm.feature == feature:
                return alarm.event_index
    return None


def drifted_ever(updates: list[DriftUpdate]) -> set[str]:
    return {f for u in updates for f, s in u.states.items() if s == DRIFT}


def test_stationary_stream_never_drifts(monitor: DriftMonitor) -> None:
    updates = run(monitor, seed=2, n_batches=100)  # 200 000 events
    assert monitor.events_seen == 200_000
    assert [a for u in updates for a in u.alarms] == []
    assert drifted_ever(updates) == set()
    assert all(u.prediction.state != DRIFT and u.drifted_share == 0.0 for u in updates)
    last = updates[-1]
    # Dashboards: divergences of a stationary window are small, ratios near the reference.
    assert max(last.psi.values()) < 0.02 and max(last.js.values()) < 0.01
    assert max(last.psi_time.values()) < 0.05
    assert last.missing_ratio["x1"] == pytest.approx(0.05, abs=0.015)
    assert last.unseen_ratio["region"] == 0.0
    assert 0.25 < last.prediction.mean_score < 0.32


def test_mean_shift_alarms_only_that_feature(monitor: DriftMonitor) -> None:
    shift_at = 21_000  # mid-batch on purpose

    def mutate(frame: pd.DataFrame, scores: np.ndarray, index: np.ndarray):
        frame["x3"] = frame["x3"] + np.where(index >= shift_at, std_of(3), 0.0)
        return frame, scores

    updates = run(monitor, seed=3, n_batches=30, mutate=mutate)
    alarm = first_alarm(updates, "x3")
    assert alarm is not None
    delay = alarm - shift_at
    # Expected ~ (h + 1.166) / (1 - k) = 37 events for h = 17.2: bound generously.
    assert 0 <= delay <= 150, delay
    assert drifted_ever(updates) == {"x3"}
    assert updates[-1].drifted == ["x3"]
    assert updates[-1].drifted_share == pytest.approx(0.1)  # 1 of 10 equally weighted
    assert {a.detector for u in updates for a in u.alarms} <= {"mean", "variance"}
    assert updates[-1].psi["x3"] > 0.1  # 1 sigma moves ~ a third of the mass across deciles


def test_new_category_drifts_categorical(monitor: DriftMonitor) -> None:
    shift_at = 10_000

    def mutate(frame: pd.DataFrame, scores: np.ndarray, index: np.ndarray):
        new = (index >= shift_at) & (np.random.default_rng(int(index[0])).random(len(index)) < 0.1)
        frame["region"] = np.where(new, "r_new", frame["region"]).astype(object)
        return frame, scores

    updates = run(monitor, seed=4, n_batches=15, mutate=mutate)
    alarm = first_alarm(updates, "region")
    assert alarm is not None and 0 <= alarm - shift_at <= 300, alarm
    assert drifted_ever(updates) == {"region"}
    detectors = {a.detector for u in updates for a in u.alarms}
    assert {"unseen", "category_mix"} <= detectors
    assert updates[-1].unseen_ratio["region"] == pytest.approx(0.1, abs=0.02)


def test_missing_rate_jump_drifts(monitor: DriftMonitor) -> None:
    shift_at = 10_000

    def mutate(frame: pd.DataFrame, scores: np.ndarray, index: np.ndarray):
        hole = (index >= shift_at) & (np.random.default_rng(int(index[0])).random(len(index)) < 0.1)
        frame["x2"] = np.where(hole, np.nan, frame["x2"])
        return frame, scores

    updates = run(monitor, seed=5, n_batches=15, mutate=mutate)
    alarm = first_alarm(updates, "x2")
    assert alarm is not None and 0 <= alarm - shift_at <= 300, alarm
    assert drifted_ever(updates) == {"x2"}
    assert {a.detector for u in updates for a in u.alarms if a.feature == "x2"} == {"missing"}
    assert updates[-1].missing_ratio["x2"] == pytest.approx(0.1, abs=0.02)


def test_latched_drift_clears_after_m_clean_windows(monitor: DriftMonitor) -> None:
    begin, end = 10_000, 30_000  # both on event-window boundaries

    def mutate(frame: pd.DataFrame, scores: np.ndarray, index: np.ndarray):
        on = (index >= begin) & (index < end)
        frame["x5"] = frame["x5"] + np.where(on, std_of(5), 0.0)
        return frame, scores

    updates = run(monitor, seed=6, n_batches=40, mutate=mutate)
    state = {u.events_seen: u.states["x5"] for u in updates}
    during = [s for seen, s in state.items() if begin + 1000 <= seen <= end]
    assert during and all(s == DRIFT for s in during)  # latched through the shift
    cleared = min(seen for seen, s in state.items() if seen > end and s != DRIFT)
    # Three clean windows after the last alarm are needed; the window holding the removal
    # may still carry an alarm, so clearing lands 3 or 4 windows after ``end``.
    assert end + 3 * WINDOW <= cleared <= end + 5 * WINDOW, cleared
    assert all(s == OK for seen, s in state.items() if seen >= cleared)
    assert drifted_ever(updates) == {"x5"}


def test_score_shift_is_prediction_drift(monitor: DriftMonitor) -> None:
    shift_at = 12_000

    def mutate(frame: pd.DataFrame, scores: np.ndarray, index: np.ndarray):
        return frame, np.clip(scores + np.where(index >= shift_at, 0.16, 0.0), 0.0, 1.0)

    updates = run(monitor, seed=7, n_batches=15, mutate=mutate)
    alarm = first_alarm(updates, SCORE)
    assert alarm is not None and 0 <= alarm - shift_at <= 150, alarm
    assert updates[-1].prediction.state == DRIFT
    assert updates[-1].drifted == []  # the inputs did not move
    assert updates[-1].prediction.mean_score > updates[0].prediction.mean_score + 0.1
    assert updates[-1].prediction.positive_rate > updates[0].prediction.positive_rate
    assert any(u.prediction.adwin_change for u in updates)


def test_checkpoint_round_trip_gives_identical_outputs(monitor: DriftMonitor) -> None:
    def mutate(frame: pd.DataFrame, scores: np.ndarray, index: np.ndarray):
        frame["x0"] = frame["x0"] + np.where(index >= 15_000, 1.0, 0.0)
        return frame, scores

    run(monitor, seed=8, n_batches=9, mutate=mutate)  # 18 000 events: latched, mid-window
    assert monitor.states["x0"] == DRIFT
    text = json.dumps(monitor.state_dict(), allow_nan=False)  # strict JSON
    restored = DriftMonitor.from_state_dict(json.loads(text))
    a = run(monitor, seed=9, n_batches=12, mutate=mutate, start_event=18_000)
    b = run(restored, seed=9, n_batches=12, mutate=mutate, start_event=18_000)
    assert [json.dumps(u.to_dict()) for u in a] == [json.dumps(u.to_dict()) for u in b]
    assert json.dumps(monitor.state_dict()) == json.dumps(restored.state_dict())


def test_reference_hash_and_reset_for(monitor: DriftMonitor, profile: dict) -> None:
    def mutate(frame: pd.DataFrame, scores: np.ndarray, index: np.ndarray):
        frame["x4"] = frame["x4"] + 3.0
        return frame, scores

    run(monitor, seed=10, n_batches=3, mutate=mutate)
    assert monitor.states["x4"] == DRIFT
    old = monitor.reference_hash
    assert old == DriftMonitor.from_state_dict(monitor.state_dict()).reference_hash
    new_profile = json.loads(json.dumps(profile))
    new_profile["numeric"]["x4"]["mean"] += 3.0
    new_profile["numeric"]["x4"]["edges"] = [e + 3.0 for e in new_profile["numeric"]["x4"]["edges"]]
    monitor.reset_for(new_profile)
    assert monitor.reference_hash != old
    assert monitor.events_seen == 0 and set(monitor.states.values()) == {OK}
    updates = run(monitor, seed=11, n_batches=5, mutate=mutate)
    assert [a.feature for u in updates for a in u.alarms] == []


def test_importance_weighted_share(monitor: DriftMonitor) -> None:
    monitor.importances = {"x3": 0.5, "x0": 0.25, "plan": 0.25}
    assert monitor.drifted_share(["x3"]) == pytest.approx(0.5)
    assert monitor.drifted_share(["x7"]) == 0.0
    monitor.importances = None
    assert monitor.drifted_share(["x7", "plan"]) == pytest.approx(0.2)


def test_empty_batch_and_numeric_only(profile: dict) -> None:
    # Same per-detector ARL0 as the fixture (8 detectors x 4x the rate): cached thresholds.
    numeric_only = DriftMonitor(
        profile, ["x0", "x1"], [], MonitorBudget(events_per_day=400_000), window_events=1000
    )
    assert numeric_only.n_detectors == 8 and numeric_only.arl0 == 96_000_000
    empty = numeric_only.update(pd.DataFrame({"x0": [], "x1": []}), np.array([]), np.array([]))
    assert empty.n_events == 0 and empty.alarms == [] and empty.event_time_min_ms is None
    frame, scores = sample(np.random.default_rng(12), 2500)
    update = numeric_only.update(frame[["x0", "x1"]], scores, np.arange(2500))
    assert update.windows_closed == 2 and update.drifted == []
    assert update.missing_ratio["x1"] == pytest.approx(0.05, abs=0.03)
