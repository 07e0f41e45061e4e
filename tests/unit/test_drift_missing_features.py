"""Drift monitoring of features a model's reference never observed, and of constant ones.

A purchase-only log (CDNOW) has no age, income, tenure, plan or region: ``driftline train``
records them as missing in every reference row.  The monitor must start on such a model
(it used to raise ``reference shares are empty``), must never alarm while they stay missing
(their missing-rate CUSUM used to run at ``p0 = 0.99`` against a rate of 1, so every event
was evidence), and must do it without a ``RuntimeWarning`` (JS divided 0 by 0).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftline.commands.train import read_event_file, read_table, train_on_events
from driftline.core.drift.checkpoint_check import mismatches
from driftline.core.drift.divergence import jensen_shannon, psi
from driftline.core.drift.goodness_of_fit import CategoricalWindowTest
from driftline.core.drift.monitor import DRIFT, DriftMonitor, DriftUpdate, MonitorBudget
from driftline.core.offline import history_features
from driftline.core.spec import load_default_spec
from driftline.model.profile import build_reference_profile, profiled_features
from driftline.model.tables import infer_column_types, train_from_table
from driftline.model.training import positive_scores

NUMERIC = ["x", "age", "income", "rare", "constant"]
CATEGORICAL = ["plan", "region", "flag"]
ABSENT = ["age", "income", "plan", "region"]  # missing in every row, reference and stream
BATCH = 2000


def sample(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    """One informative feature, four missing throughout, one 99.5 % missing, constants."""
    frame = pd.DataFrame(
        {
            "x": rng.normal(0.0, 1.0, n),
            "age": np.full(n, np.nan),
            "income": np.full(n, np.nan),
            "rare": np.where(rng.random(n) < 0.995, np.nan, rng.normal(5.0, 1.0, n)),
            "constant": np.ones(n),
            "plan": pd.Series([None] * n, dtype=object),
            "region": pd.Series([None] * n, dtype=object),
            "flag": pd.Series(["on"] * n, dtype=object),
        }
    )
    return frame, rng.beta(2.0, 5.0, n)


@pytest.fixture(scope="module")
def profile() -> dict:
    frame, scores = sample(np.random.default_rng(3), 20_000)
    return build_reference_profile(frame, scores, NUMERIC, CATEGORICAL)


def feed(
    monitor: DriftMonitor,
    seed: int,
    n_batches: int,
    change: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> list[DriftUpdate]:
    """``n_batches`` stationary batches (optionally changed), warnings raised as errors."""
    rng = np.random.default_rng(seed)
    updates = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for b in range(n_batches):
            frame, scores = sample(rng, BATCH)
            if change is not None:
                frame = change(frame)
            times = 1_700_000_000_000 + (b * BATCH + np.arange(BATCH)) * 50
            updates.append(monitor.update(frame, scores, times))
    return updates


def test_an_inert_window_test_counts_windows_never_alarms_and_checkpoints() -> None:
    # Shares of a categorical the reference never observed: {} (profile) or all zeros.
    for shares in ({}, {"__other__": 0.0}):
        test = CategoricalWindowTest(shares, window_size=50, alpha=0.01)
        assert not test.has_reference and test.threshold == np.inf
        results = test.update(["gold"] * 60 + [None] * 10 + ["silver"] * 40)
        assert [r.alarm for r in results] == [False, False]
        state = json.loads(json.dumps(test.state_dict(), allow_nan=False))
        restored = CategoricalWindowTest.from_state_dict(state)
        assert not restored.has_reference and restored._filled == test._filled == 0
        assert [r.alarm for r in restored.update(["gold"] * 50)] == [False]


def test_divergences_of_a_feature_the_reference_never_observed_are_nan_silently() -> None:
    reference = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    counts = np.array([[3, 1, 0], [2, 2, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        js = jensen_shannon(reference, counts)
        index = psi(reference, counts)
    assert np.isnan(js[0]) and js[1] == pytest.approx(0.0)
    assert np.isnan(index[0]) and index[1] == pytest.approx(0.0)


def test_the_monitor_starts_on_features_missing_and_constant_in_the_reference(
    profile: dict,
) -> None:
    assert profile["categorical"]["plan"] == {"missing_rate": 1.0, "shares": {}}
    assert profile["numeric"]["age"]["shares"] == []
    monitor = DriftMonitor(profile, NUMERIC, CATEGORICAL, MonitorBudget(events_per_day=100_000))
    assert {("age", "mean"), ("age", "missing"), ("plan", "category_mix")} <= monitor.inactive
    assert {("plan", "missing"), ("rare", "missing")} <= monitor.inactive
    assert ("plan", "unseen") not in monitor.inactive  # values appearing are still news
    assert ("x", "missing") not in monitor.inactive
    restored = DriftMonitor.from_state_dict(
        json.loads(json.dumps(monitor.state_dict(), allow_nan=False))
    )
    assert restored.inactive == monitor.inactive
    feed(monitor, seed=4, n_batches=1)  # an open window, a closed category window
    restored = DriftMonitor.from_state_dict(
        json.loads(json.dumps(monitor.state_dict(), allow_nan=False))
    )
    assert mismatches(monitor, restored) == []  # what the worker checks before restoring
    assert restored.state_dict() == monitor.state_dict()


def test_features_missing_in_reference_and_stream_never_alarm(profile: dict) -> None:
    monitor = DriftMonitor(profile, NUMERIC, CATEGORICAL, MonitorBudget(events_per_day=100_000))
    # 200 000 events: at p0 = 0.99 a missing value added log(0.995 / 0.99) each, so the
    # missing-rate CUSUMs of age, income, plan and region crossed every ~10 000 events.
    updates = feed(monitor, seed=5, n_batches=100)
    alarms = [a for u in updates for a in u.alarms]
    assert not alarms, alarms[:5]
    assert all(not u.drifted for u in updates)
    last = updates[-1]
    for feature in ABSENT:
        assert "missing" not in last.statistics[feature]
        assert "missing" not in last.thresholds[feature]
    assert set(last.statistics["plan"]) == {"unseen"}
    assert set(last.statistics["x"]) == {"mean", "variance", "missing"}
    assert last.missing_ratio["age"] == 1.0 and np.isnan(last.js["age"])


def test_a_categorical_missing_in_the_reference_that_appears_live_is_unseen_drift(
    profile: dict,
) -> None:
    monitor = DriftMonitor(profile, NUMERIC, CATEGORICAL, MonitorBudget(events_per_day=100_000))

    def plans_appear(frame: pd.DataFrame) -> pd.DataFrame:
        frame["plan"] = "gold"
        return frame

    updates = feed(monitor, seed=6, n_batches=3, change=plans_appear)
    alarmed = {(a.feature, a.detector) for u in updates for a in u.alarms}
    assert alarmed == {("plan", "unseen")}
    assert updates[-1].states["plan"] == DRIFT


def test_a_constant_feature_that_changes_value_drifts(profile: dict) -> None:
    monitor = DriftMonitor(profile, NUMERIC, CATEGORICAL, MonitorBudget(events_per_day=100_000))

    def constants_move(frame: pd.DataFrame) -> pd.DataFrame:
        frame["constant"] = 2.0
        frame["flag"] = "off"
        return frame

    updates = feed(monitor, seed=7, n_batches=3, change=constants_move)
    drifted = {a.feature for u in updates for a in u.alarms}
    assert drifted == {"constant", "flag"}


def test_cdnow_model_trained_as_the_readme_says_gets_a_working_monitor(
    require_shared: Callable[..., Path],
) -> None:
    """`driftline train --events cdnow_master.csv --mapping cdnow --cutoffs 3`, fewer trees."""
    events, _ = read_event_file(require_shared("data", "cdnow", "cdnow_master.csv"), "cdnow")
    spec = load_default_spec()
    result = train_on_events(events, spec, n_cutoffs=3, n_estimators=10, cv_folds=2, progress=False)
    profile = result.reference_profile
    absent = ["age", "income", "tenure_months", "plan_type", "region"]
    # Entirely missing in training: left out of the model and of the reference.
    assert set(absent) <= set(result.dropped_features)
    assert not set(absent) & (set(profile["numeric"]) | set(profile["categorical"]))
    monitor = DriftMonitor(  # as the worker builds it (drift_sidecar.build_monitor)
        profile,
        *profiled_features(profile, spec.numeric_features, spec.categorical_features),
        MonitorBudget(events_per_day=float(profile["events_per_day"])),
    )
    # Every event from the reference period on, scored by the model.
    ordered = events.sort_values("event_time", kind="stable").reset_index(drop=True)
    features, _ = history_features(ordered, spec)
    times = ordered["event_time"].to_numpy(dtype=np.int64)
    rows = np.flatnonzero(times > profile["window_ms"][0])
    frame = features.iloc[rows][spec.feature_names].reset_index(drop=True)
    scores = positive_scores(result.pipeline, frame)
    keys = ordered["customer_id"].to_numpy()[rows]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        updates = [
            monitor.update(
                frame.iloc[i : i + 500].reset_index(drop=True),
                scores[i : i + 500],
                times[rows][i : i + 500],
                keys[i : i + 500],
            )
            for i in range(0, len(rows), 500)
        ]
    assert updates[-1].events_seen == len(rows) > 1000
    assert np.isfinite(updates[-1].prediction.mean_score)
    alarmed = {a.feature for u in updates for a in u.alarms}
    assert not alarmed & set(absent), alarmed


def test_telco_table_model_profile_gets_a_working_monitor(
    require_shared: Callable[..., Path],
) -> None:
    """`driftline train --table telco_customer_churn.csv --label-column Churn` registers a
    model the worker cannot serve (no feature spec), but its reference profile must still
    give a monitor that runs: 11 blank TotalCharges, categorical Yes/No columns, a 0/1
    numeric column."""
    table = read_table(require_shared("data", "telco", "telco_customer_churn.csv"))
    result = train_from_table(table, "Churn", "Yes", n_estimators=10, cv_folds=2, progress=False)
    frame, numeric, categorical = infer_column_types(table.drop(columns=["Churn", "customerID"]))
    assert "TotalCharges" in numeric and "Contract" in categorical
    assert set(numeric + categorical) == set(result.feature_names)
    monitor = DriftMonitor(
        result.reference_profile, numeric, categorical, MonitorBudget(events_per_day=7043)
    )
    scores = positive_scores(result.pipeline, frame[result.feature_names])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        update = monitor.update(frame, scores, np.arange(len(frame), dtype=np.int64) * 1000)
    assert update.events_seen == len(table) == 7043
    first_window = frame["TotalCharges"].iloc[: monitor.window_events]
    assert update.missing_ratio["TotalCharges"] == pytest.approx(first_window.isna().mean())
    assert np.isfinite(update.prediction.mean_score)
