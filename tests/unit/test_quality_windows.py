"""Windowed live quality: scikit-learn as the oracle on the same (deduplicated) records, the
same figures whatever the batching, the minimum-sample rules, label coverage, late records,
retirement and the memory cap."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    roc_auc_score,
)

from driftline.core.predictions import Prediction
from driftline.core.quality import (
    PredictionOutcome,
    QualitySettings,
    WindowedQuality,
    WindowFigures,
    decode_outcomes,
    decode_predictions,
    estimated_quality,
    outcome_columns,
    prediction_columns,
)
from driftline.core.spec import DAY_MS

T0 = 1_767_571_200_000  # 2026-01-05 00:00 UTC, a Monday
WEEK = 7 * DAY_MS


def prediction(customer: str, event: str, t: int, score: float, version: str = "v0001") -> Any:
    return Prediction(
        event_id=event,
        customer_id=customer,
        score=score,
        decision=score >= 0.5,
        threshold=0.5,
        model_name="churn",
        model_version=version,
        event_time=t,
        processed_at=t,
        source_partition=0,
        source_offset=0,
    )


def outcome(p: Prediction, label: int, resolved_at: int) -> PredictionOutcome:
    return PredictionOutcome(
        event_id=p.event_id,
        customer_id=p.customer_id,
        prediction_time=p.event_time,
        score=p.score,
        threshold=p.threshold,
        model_name=p.model_name,
        model_version=p.model_version,
        label=label,  # type: ignore[arg-type]  # 0/1 from numpy ints in tests
        resolved_at=resolved_at,
        horizon_ms=90 * DAY_MS,
    )


def stream(seed: int, n: int, *, weeks: int = 3, duplicate_share: float = 0.1) -> list[Any]:
    """Predictions over ``weeks`` weeks, two versions (v0001 calibrated, v0002 labels at
    random), each resolved 90 days later; some records delivered twice."""
    rng = np.random.default_rng(seed)
    records: list[Any] = []
    for i in range(n):
        version = "v0001" if i % 2 else "v0002"
        t = T0 + int(rng.integers(0, weeks * WEEK))
        score = float(np.round(rng.beta(2, 5), 3))  # rounded: ties in the curves
        p = prediction(f"c{i % (n // 3 + 1)}", f"e{i}", t, score, version)
        chance = score if version == "v0001" else 0.3
        label = int(rng.random() < chance)
        records.append(p)
        records.append(outcome(p, label, t + 90 * DAY_MS))
    order = rng.permutation(len(records))
    shuffled = [records[i] for i in order]
    repeats = rng.choice(len(shuffled), int(duplicate_share * len(shuffled)), replace=False)
    for i in sorted(repeats, reverse=True):
        shuffled.insert(int(i) + int(rng.integers(1, 50)), shuffled[i])
    return shuffled


def feed(
    quality: WindowedQuality, records: list[Any], cuts: list[int], *, read: bool = False
) -> WindowedQuality:
    """Feed ``records`` cut at ``cuts``, each batch split into runs of one kind as the
    service splits a poll by topic; ``read``: the figures after every batch, as the
    service refreshes them (their cache must follow)."""
    bounds = [0, *sorted(set(cuts)), len(records)]
    for lo, hi in itertools.pairwise(bounds):
        batch = records[lo:hi]
        run: list[Any] = []
        for record in [*batch, None]:
            if run and (record is None or type(record) is not type(run[0])):
                if isinstance(run[0], Prediction):
                    quality.add_predictions(prediction_columns(run))
                else:
                    quality.add_outcomes(outcome_columns(run))
                run = []
            if record is not None:
                run.append(record)
        if read:
            quality.figures()
    return quality


def first_copies(records: list[Any], kind: type) -> list[Any]:
    seen: set[tuple[str, str]] = set()
    out = []
    for r in records:
        if isinstance(r, kind) and (r.customer_id, r.event_id) not in seen:
            seen.add((r.customer_id, r.event_id))
            out.append(r)
    return out


def comparable(figures: list[WindowFigures]) -> list[dict[str, Any]]:
    """Figures as dicts with NaN replaced, so equal runs compare equal."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return "nan"
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    return [clean(asdict(f)) for f in figures]


# --- oracle -----------------------------------------------------------------------------------


def test_window_figures_equal_scikit_learn_on_the_deduplicated_records() -> None:
    records = stream(1, 6_000)
    quality = feed(WindowedQuality(), records, [])
    figures = quality.figures()
    outcomes = first_copies(records, PredictionOutcome)
    predictions = first_copies(records, Prediction)
    assert len(figures) == 2 * 3  # two versions, three weekly windows (Monday-aligned)
    for f in figures:
        assert (f.window_start_ms - T0) % WEEK == 0
        mine = [
            o
            for o in outcomes
            if o.model_version == f.model_version
            and f.window_start_ms <= o.prediction_time < f.window_end_ms
        ]
        y = np.array([o.label for o in mine])
        s = np.array([o.score for o in mine])
        assert f.labels == len(mine)
        assert f.realised is not None
        assert f.realised.roc_auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert f.realised.pr_auc == pytest.approx(average_precision_score(y, s), abs=1e-12)
        assert f.realised.brier == pytest.approx(brier_score_loss(y, s), abs=1e-12)
        assert f.realised.prevalence == pytest.approx(y.mean(), abs=1e-12)
        scored = np.array(
            [
                p.score
                for p in predictions
                if p.model_version == f.model_version
                and f.window_start_ms <= p.event_time < f.window_end_ms
            ]
        )
        assert f.predictions == scored.size
        assert f.estimated is not None
        oracle = estimated_quality(scored, 0.5).as_dict()
        for name, value in f.estimated.as_dict().items():
            assert value == pytest.approx(oracle[name], abs=1e-12, nan_ok=True), name
        # Every prediction is resolved and its horizon elapsed: full coverage.
        assert f.due == f.predictions and f.label_coverage == 1.0
    calibrated = [f for f in figures if f.model_version == "v0001"]
    random = [f for f in figures if f.model_version == "v0002"]
    assert all(f.realised and f.realised.roc_auc > 0.65 for f in calibrated)
    assert all(f.realised and abs(f.realised.roc_auc - 0.5) < 0.1 for f in random)


# --- batching ---------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    cuts=st.lists(st.integers(0, 700), max_size=30),
    cap=st.sampled_from([50, 10_000]),
    retention_weeks=st.sampled_from([1, 52]),
)
def test_the_same_records_give_the_same_figures_whatever_the_batching(
    seed: int, cuts: list[int], cap: int, retention_weeks: int
) -> None:
    """Cut anywhere, with windows capped to a sample or not, retired or not."""
    records = stream(seed, 300, weeks=20)
    # Outcomes resolved soon after, so the watermark crosses retention mid-stream.
    records = [
        msgspec.structs.replace(r, resolved_at=r.prediction_time + DAY_MS)
        if isinstance(r, PredictionOutcome)
        else r
        for r in records
    ]
    config = QualitySettings(
        min_labels=10, max_records=cap, retention_ms=retention_weeks * WEEK, horizon_ms=DAY_MS
    )
    whole = feed(WindowedQuality(config), records, [])
    cut = feed(WindowedQuality(config), records, cuts, read=True)
    assert comparable(cut.figures()) == comparable(whole.figures())
    assert cut.watermark_ms == whole.watermark_ms
    assert cut.counts.late == whole.counts.late
    assert cut.counts.accepted == whole.counts.accepted


def test_one_record_per_batch_equals_one_batch() -> None:
    records = stream(4, 400)
    one_by_one = feed(WindowedQuality(), records, list(range(len(records))))
    whole = feed(WindowedQuality(), records, [])
    assert comparable(one_by_one.figures()) == comparable(whole.figures())


# --- minimum sample, coverage, clock ----------------------------------------------------------


def test_realised_figures_wait_for_the_minimum_number_of_labels() -> None:
    config = QualitySettings(min_labels=200)
    rng = np.random.default_rng(2)
    preds = [prediction(f"c{i}", "e", T0 + i, float(rng.random())) for i in range(200)]
    outs = [outcome(p, i % 2, T0 + 90 * DAY_MS) for i, p in enumerate(preds)]
    quality = WindowedQuality(config)
    quality.add_outcomes(outcome_columns(outs[:199]))
    (f,) = quality.figures()
    assert f.labels == 199 and f.realised is None
    quality.add_outcomes(outcome_columns(outs[199:]))
    (f,) = quality.figures()
    assert f.labels == 200 and f.realised is not None and not math.isnan(f.realised.roc_auc)
    # One class only: enough labels, but no AUC (never a made-up 0.5).
    one_class = WindowedQuality(config)
    one_class.add_outcomes(outcome_columns([outcome(p, 0, T0 + 90 * DAY_MS) for p in preds]))
    (f,) = one_class.figures()
    assert f.realised is not None and math.isnan(f.realised.roc_auc)
    assert not math.isnan(f.realised.brier)


def test_label_coverage_counts_only_predictions_whose_horizon_has_elapsed() -> None:
    config = QualitySettings(horizon_ms=10 * DAY_MS, min_labels=2)
    quality = WindowedQuality(config)
    preds = [prediction(f"c{i}", "e", T0 + i * DAY_MS, 0.3) for i in range(6)]
    quality.add_predictions(prediction_columns(preds))
    (f,) = quality.figures()
    assert f.due == 0 and math.isnan(f.label_coverage)
    # The clock reaches day 13: predictions of days 0-3 are due; two of them resolved.
    quality.add_outcomes(outcome_columns([outcome(preds[0], 1, T0 + 10 * DAY_MS)]))
    quality.add_outcomes(outcome_columns([outcome(preds[2], 0, T0 + 13 * DAY_MS)]))
    # An early resolution (a label known before the horizon) is not "due" yet.
    quality.add_outcomes(outcome_columns([outcome(preds[5], 0, T0 + 13 * DAY_MS)]))
    (f,) = quality.figures()
    assert (f.due, f.resolved_due, f.labels) == (4, 2, 3)
    assert f.label_coverage == 0.5


def test_windows_past_retention_are_retired_and_their_late_records_dropped() -> None:
    config = QualitySettings(retention_ms=2 * WEEK, min_labels=2)
    quality = WindowedQuality(config)
    quality.add_predictions(prediction_columns([prediction("a", "1", T0, 0.2)]))
    quality.add_predictions(prediction_columns([prediction("b", "1", T0 + 2 * WEEK, 0.2)]))
    assert len(quality.windows()) == 2
    # Window 0 ends at T0 + WEEK: retired once the clock reaches T0 + 3 weeks.
    quality.add_predictions(prediction_columns([prediction("c", "1", T0 + 3 * WEEK, 0.2)]))
    assert [w[2] for w in quality.windows()] == [T0 + 2 * WEEK, T0 + 3 * WEEK]
    assert quality.counts.windows_retired == 1
    late = prediction("d", "1", T0 + DAY_MS, 0.9)
    quality.add_outcomes(outcome_columns([outcome(late, 1, T0 + 3 * WEEK)]))
    assert quality.counts.late["outcomes"] == 1
    assert [w[2] for w in quality.windows()] == [T0 + 2 * WEEK, T0 + 3 * WEEK]


def test_memory_is_capped_by_a_uniform_sample_with_close_figures() -> None:
    rng = np.random.default_rng(8)
    scores = rng.beta(2, 5, 20_000)
    preds = [prediction(f"c{i}", "e", T0 + i, float(s)) for i, s in enumerate(scores)]
    outs = [outcome(p, int(rng.random() < p.score), T0 + 91 * DAY_MS) for p in preds]
    capped = WindowedQuality(QualitySettings(max_records=5_000))
    exact = WindowedQuality(QualitySettings())
    for quality in (capped, exact):
        for lo in range(0, 20_000, 1_000):
            quality.add_predictions(prediction_columns(preds[lo : lo + 1_000]))
            quality.add_outcomes(outcome_columns(outs[lo : lo + 1_000]))
    (c,), (e,) = capped.figures(), exact.figures()
    assert (c.predictions, c.labels, c.sampled) == (5_000, 5_000, True)
    assert (e.predictions, e.labels, e.sampled) == (20_000, 20_000, False)
    assert c.realised is not None and e.realised is not None
    # A uniform 25 % sample: AUC within ~4 standard errors (about 0.008 each).
    assert c.realised.roc_auc == pytest.approx(e.realised.roc_auc, abs=0.03)
    assert c.realised.prevalence == pytest.approx(e.realised.prevalence, abs=0.03)
    # Coordinated samples: the coverage join still finds every resolved prediction.
    assert c.label_coverage == 1.0


def test_duplicates_are_counted_once_the_first_copy_winning() -> None:
    quality = WindowedQuality(QualitySettings(min_labels=2))
    first = prediction("a", "tick-1", T0, 0.2)
    again = prediction("a", "tick-1", T0, 0.9)  # same key: a redelivery
    other = prediction("b", "tick-1", T0, 0.4)  # a tick's event_id is shared: not a duplicate
    quality.add_predictions(prediction_columns([first, other]))
    quality.add_predictions(prediction_columns([again]))
    (f,) = quality.figures()
    assert f.predictions == 2
    assert f.estimated is not None
    assert f.estimated.prevalence == pytest.approx((0.2 + 0.4) / 2)


def test_records_that_do_not_decode_come_back_with_their_reason() -> None:
    good = msgspec.json.encode(prediction("a", "1", T0, 0.2))
    predictions, bad = decode_predictions([good, b"{", b'{"event_id": 3}'])
    assert len(predictions) == 1 and len(bad) == 2
    assert all(reason for reason in bad)
    outcome_bytes = msgspec.json.encode(outcome(predictions[0], 1, T0))
    outcomes, bad = decode_outcomes(
        [outcome_bytes, outcome_bytes.replace(b'"label":1', b'"label":2')]
    )
    assert len(outcomes) == 1 and "label" in bad[0]


@pytest.mark.parametrize("field", ["window_ms", "horizon_ms", "retention_ms", "max_records"])
def test_settings_refuse_non_positive_values(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        QualitySettings(**{field: 0})
