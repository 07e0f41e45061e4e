"""Honest evaluation in ``driftline train`` (issue #16, item 4): each rule on its own.

No customer on both sides of the split; the latest cutoff held out as an out-of-time test;
the threshold chosen on validation scores only (and carried by the registry to the
worker); calibration that lowers the Brier score of a miscalibrated model; a recency
baseline reported beside the model; constant and missing features left out of the model
and of the drift reference, while the model still serves and still starts drift
monitoring; the importance printout readable.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftline.commands.train import recency_days, register, train_on_events
from driftline.core.offline import history_features
from driftline.core.spec import DAY_MS, load_default_spec
from driftline.engine.kafka.drift_sidecar import build_monitor
from driftline.model.calibration import CalibratedPipeline, fit_calibrator
from driftline.model.evaluation import choose_threshold, importance_lines
from driftline.model.registry import ModelRegistry
from driftline.model.runtimes import serving_scorer
from driftline.model.splits import customers_overlap, honest_split
from driftline.model.training import train_model
from driftline.processor import RawBatch, ScoringProcessor
from driftline.replay import encode_events

START_MS = 1_767_225_600_000  # 2026-01-01
FAST = {"n_estimators": 30, "cv_folds": 3, "progress": False}


def panel(n_customers: int = 300, cutoffs: int = 3, seed: int = 5) -> tuple[pd.DataFrame, ...]:
    """Rows of customers at several cutoffs: churn driven by ``signal``, plus noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_customers):
        habit = rng.normal()
        for k in range(cutoffs):
            signal = habit + rng.normal(scale=0.5)
            churned = int(rng.random() < 1 / (1 + np.exp(-2 * signal)))
            rows.append((f"c{c:03d}", k * 90 * DAY_MS, signal, rng.normal(), churned))
    frame = pd.DataFrame(rows, columns=["customer_id", "cutoff_ms", "signal", "noise", "y"])
    X = frame[["signal", "noise"]]
    return X, frame["y"], frame["customer_id"], frame["cutoff_ms"]


# ------------------------------------------------------------------------ the split
def test_no_customer_is_in_both_training_and_test_rows() -> None:
    X, y, groups, times = panel()
    split = honest_split(y, groups, times, test_size=0.2, seed=1)
    assert customers_overlap(groups, split.train, split.test) == set()
    assert len(split.test) > 0.1 * len(y)

    result = train_model(X, y, ["signal", "noise"], [], groups=groups, times=times, **FAST)
    train_customers = set(groups.iloc[result.train_rows])
    assert train_customers.isdisjoint(set(groups.iloc[result.X_test.index]))
    assert result.metrics["cv"]["grouping"] == "grouped by customer"


def test_the_out_of_time_set_is_every_row_of_the_latest_cutoff() -> None:
    X, y, groups, times = panel()
    latest = int(times.max())
    split = honest_split(y, groups, times, test_size=0.2, seed=1)
    assert split.oot_cutoff == latest
    assert set(split.oot) == set(np.flatnonzero(times.to_numpy() == latest))
    assert not np.isin(np.concatenate([split.train, split.test]), split.oot).any()

    result = train_model(X, y, ["signal", "noise"], [], groups=groups, times=times, **FAST)
    assert result.metrics["n_out_of_time"] == int((times == latest).sum())
    assert (times.iloc[result.train_rows] < latest).all()
    oot = result.metrics["out_of_time"]
    assert oot["n"] == result.metrics["n_out_of_time"]
    assert sum(oot["confusion_matrix"].values()) == oot["n"]
    assert "Out-of-time: the latest cutoff" in result.report


def test_one_cutoff_has_no_out_of_time_set_and_says_so() -> None:
    X, y, groups, times = panel(cutoffs=1)
    result = train_model(X, y, ["signal", "noise"], [], groups=groups, times=times, **FAST)
    assert result.metrics["out_of_time"] is None and result.metrics["n_out_of_time"] == 0
    assert "Out-of-time: the latest cutoff: none (fewer than two cutoffs" in result.report


# ------------------------------------------------------------ threshold and calibration
def test_the_threshold_comes_from_validation_rows_only(tmp_path: Path) -> None:
    """Relabelling held-out rows changes the test figures, never the threshold.

    Out-of-time rows are flipped outright; a test customer's rows are all made positive
    when any was (the customer split is stratified by "any positive row", which this
    keeps, so the same customers are held out)."""
    X, y, groups, times = panel()
    first = train_model(X, y, ["signal", "noise"], [], groups=groups, times=times, **FAST)
    relabelled = y.copy()
    oot = times.to_numpy() == times.max()
    relabelled[oot] = 1 - relabelled[oot]
    test_rows = first.X_test.index.to_numpy()
    positive_customers = set(groups.iloc[test_rows][y.iloc[test_rows] == 1])
    relabelled.iloc[test_rows] = groups.iloc[test_rows].isin(positive_customers).astype(int)
    second = train_model(X, relabelled, ["signal", "noise"], [], groups=groups, times=times, **FAST)
    assert np.array_equal(second.train_rows, first.train_rows)
    assert second.threshold == first.threshold != 0.5
    assert second.metrics["test"]["f1"] != first.metrics["test"]["f1"]
    assert second.metrics["out_of_time"]["f1"] != first.metrics["out_of_time"]["f1"]
    assert first.metrics["threshold"]["objective"] == "f1"
    assert "out-of-fold" in first.metrics["threshold"]["method"]

    f2 = train_model(
        X, y, ["signal", "noise"], [], groups=groups, times=times, threshold_objective="f2", **FAST
    )
    assert f2.threshold <= first.threshold  # recall weighs more: a lower cut-off

    # The registry hands the chosen threshold to the worker's scorer.
    spec_free = ModelRegistry(tmp_path)
    version = spec_free.save(
        "m",
        first.pipeline,
        feature_names=first.feature_names,
        feature_types=first.feature_types,
        spec_digest=None,
        metrics=first.metrics,
        data_hash=first.data_hash,
        reference_profile=first.reference_profile,
        threshold=first.threshold,
    )
    loaded = spec_free.load("m", version.version)
    assert loaded.threshold == first.threshold
    assert serving_scorer(loaded, "sklearn", compiled_tolerance=0, onnx_tolerance=0).threshold == (
        first.threshold
    )


def test_choose_threshold_maximizes_the_objective() -> None:
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.7, 0.65, 0.9])
    t = choose_threshold(y, scores, "f1")
    best = max(
        (2 * ((scores >= c) & (y == 1)).sum() / (((scores >= c).sum()) + y.sum()), c)
        for c in scores
    )
    assert t == best[1]
    # Scores that are not probabilities (days) keep their scale: no clipping to [0, 1].
    assert choose_threshold(y, scores * 100, "f1") == pytest.approx(best[1] * 100)


def test_calibration_lowers_the_brier_score_of_a_miscalibrated_model() -> None:
    """Balanced class weights on a 10 % positive rate push every score up."""
    rng = np.random.default_rng(3)
    n = 4000
    X = pd.DataFrame({"signal": rng.normal(size=n), "noise": rng.normal(size=n)})
    y = pd.Series((rng.random(n) < 1 / (1 + np.exp(-(2 * X["signal"] - 3)))).astype(int))
    kwargs = {"class_weight_balanced": True, **FAST}
    raw = train_model(X, y, ["signal", "noise"], [], calibration="none", **kwargs)
    calibrated = train_model(X, y, ["signal", "noise"], [], calibration="auto", **kwargs)
    assert calibrated.metrics["calibration"]["method"] == "isotonic"
    brier_raw, brier_cal = raw.metrics["test"]["brier"], calibrated.metrics["test"]["brier"]
    assert brier_cal < brier_raw - 0.005, (brier_raw, brier_cal)
    ece_raw = raw.metrics["test"]["calibration_error"]
    assert calibrated.metrics["test"]["calibration_error"] < ece_raw
    assert calibrated.metrics["test"]["brier_uncalibrated"] == pytest.approx(brier_raw)
    assert isinstance(calibrated.pipeline, CalibratedPipeline)
    assert calibrated.pipeline.calibrator_ is not None


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_a_fitted_calibrator_repairs_squashed_scores(method: str) -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20_000)
    y = (rng.random(p.size) < p).astype(int)
    squashed = 0.25 + p / 2  # ranks right, probabilities wrong
    calibrator = fit_calibrator(y[:10_000], squashed[:10_000], method)
    before = np.mean((squashed[10_000:] - y[10_000:]) ** 2)
    after = np.mean((calibrator(squashed[10_000:]) - y[10_000:]) ** 2)
    assert after < before - 0.005


# ------------------------------------------------------------------------ baselines
def test_recency_baseline_is_reported_and_said_to_win_when_it_does() -> None:
    X, y, groups, times = panel()
    noise_only = X[["noise"]]
    recency = pd.Series(np.where(y == 1, 60.0, 5.0) + np.arange(len(y)) % 3)
    result = train_model(
        noise_only, y, ["noise"], [], groups=groups, times=times, recency=recency, **FAST
    )
    base = result.metrics["baselines"]["test"]["recency"]
    assert base["roc_auc"] == 1.0 and base["f1"] == 1.0
    assert base["threshold"] > 5.0  # chosen on the training part, in days
    assert any(
        "recency baseline beats the model on ROC AUC" in v for v in result.metrics["verdicts"]
    )
    assert "the recency baseline beats the model" in result.report


def test_recency_days_is_the_silence_at_the_cutoff() -> None:
    events = pd.DataFrame(
        {
            "customer_id": ["a", "a", "b", "c"],
            "event_time": [START_MS, START_MS + 10 * DAY_MS, START_MS + 2 * DAY_MS, START_MS],
            "event_type": ["purchase", "purchase", "login", "purchase"],
        }
    )
    keys = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "a"],
            "cutoff_ms": [START_MS + 30 * DAY_MS] * 3 + [START_MS + 5 * DAY_MS],
        }
    )
    days = recency_days(events, keys, "purchase")
    assert days.iloc[0] == 20 and np.isnan(days.iloc[1]) and days.iloc[2] == 30
    assert days.iloc[3] == 5  # the purchase after that cutoff is not seen


# ------------------------------------------------------------ features that cannot inform
def test_constant_and_missing_features_are_named_and_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    X, y, groups, _ = panel()
    X = X.assign(zeros=0.0, nothing=np.nan, plan=None)
    with caplog.at_level(logging.WARNING):
        result = train_model(
            X, y, ["signal", "noise", "zeros", "nothing"], ["plan"], groups=groups, **FAST
        )
    assert result.dropped_features == ["zeros", "nothing", "plan"]
    assert "zeros (constant 0.0)" in caplog.text and "nothing (entirely missing)" in caplog.text
    encoded = list(result.pipeline[:-1].get_feature_names_out())
    assert not any(
        name.split("__", 1)[1].startswith(("zeros", "nothing", "plan")) for name in encoded
    )
    profile = result.reference_profile
    assert set(profile["numeric"]) == {"signal", "noise"} and profile["categorical"] == {}
    assert result.feature_names == list(X.columns)  # still the model's input columns
    assert len(result.pipeline.predict_proba(X.head(5))) == 5
    assert "not used: nothing (entirely missing" in result.report


def purchase_only_history(n_customers: int = 240, days: int = 300, seed: int = 4) -> pd.DataFrame:
    """Purchases only, no profile fields: logins, tickets, ages... never observed."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_customers):
        stop = rng.uniform(30, days) if rng.random() < 0.5 else days
        t = rng.uniform(0, 10)
        while t < stop:
            rows.append((f"p{c:04d}", START_MS + int(t * DAY_MS), "purchase", rng.gamma(2, 20)))
            t += rng.exponential(12)
    frame = pd.DataFrame(rows, columns=["customer_id", "event_time", "event_type", "amount"])
    frame["event_id"] = [f"e{i}" for i in range(len(frame))]
    return frame.sort_values("event_time", kind="stable").reset_index(drop=True)


def test_a_model_without_some_features_serves_and_starts_drift_monitoring(
    tmp_path: Path,
) -> None:
    spec = load_default_spec()
    history = purchase_only_history()
    result = train_on_events(history, spec, n_cutoffs=2, horizon_days=60, **FAST)
    dropped = set(result.dropped_features)
    assert {"logins_7d", "age", "plan_type", "region"} <= dropped
    version = register(result, tmp_path, "churn", spec)
    loaded = ModelRegistry(tmp_path).load(
        "churn", expected_features=spec.feature_names, expected_spec_digest=spec.digest
    )
    assert loaded.metadata["extra"]["dropped_features"] == result.dropped_features
    assert dropped.isdisjoint(loaded.metadata["reference_profile"]["numeric"])
    assert dropped.isdisjoint(loaded.metadata["reference_profile"]["categorical"])

    monitor = build_monitor(loaded, spec)  # what the worker's DriftSidecar.monitor_for runs
    assert dropped.isdisjoint(monitor.features)
    assert monitor.decision_threshold == loaded.threshold

    # The worker's path: decoded events -> state -> every runtime's score -> drift update.
    tail = history.tail(400)
    for runtime in ("sklearn", "compiled"):
        scorer = serving_scorer(loaded, runtime, compiled_tolerance=1e-12, onnx_tolerance=1e-5)
        processor = ScoringProcessor(spec, scorer, changelog=False, drift=monitor)
        processor.assign([0])
        raw = RawBatch(
            topic="events",
            values=encode_events(tail),
            keys=[c.encode() for c in tail["customer_id"]],
            partitions=np.zeros(len(tail), dtype=np.int32),
            offsets=np.arange(len(tail), dtype=np.int64),
        )
        batch = processor.process(raw)
        assert not batch.rejected and len(batch.prediction_keys) == len(tail), runtime
        assert batch.drift is not None
    features, _ = history_features(tail, spec)
    assert version.version == "v0001" and len(features) == len(tail)


# ------------------------------------------------------------------------- the report
def test_importance_lines_never_run_a_name_into_its_value() -> None:
    long = "num__missingindicator_avg_order_value_90d"  # 41 characters
    lines = importance_lines(
        [{"feature": long, "importance": 0.0}, {"feature": "x", "importance": 0.5}]
    )
    assert lines[0].split() == [long, "0.0000"]
    assert lines[1].split() == ["x", "0.5000"]
    assert len({line.rindex(" ") for line in lines}) == 1  # values in one column


def test_the_trained_report_lists_every_importance_as_name_and_value() -> None:
    X, y, groups, _ = panel()
    name = "a_feature_name_well_over_forty_characters_long"
    X = X.rename(columns={"signal": name})
    result = train_model(X, y, [name, "noise"], [], groups=groups, **FAST)
    block = result.report.split("Top features (impurity importance):\n", 1)[1].splitlines()
    assert block and all(re.fullmatch(r"\s+\S+\s+\d\.\d{4}", line) for line in block), block
    assert f"num__{name}" in {line.split()[0] for line in block}
