"""Window quality figures: realised against scikit-learn, estimated against outcomes drawn
from the scores themselves (what calibrated scores promise)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, brier_score_loss, f1_score, roc_auc_score

from driftline.core.quality import estimated_quality, realised_quality


def _window(seed: int, n: int, *, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.beta(2, 5, n)
    if ties:
        scores = np.round(scores, 1)  # many equal scores: the tie rules matter
    labels = (rng.random(n) < scores).astype(np.int64)
    return scores, labels


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_realised_figures_equal_scikit_learn(seed: int, ties: bool) -> None:
    scores, labels = _window(seed, 2_000, ties=ties)
    q = realised_quality(scores, labels, threshold=0.3)
    assert q.roc_auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert q.pr_auc == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert q.brier == pytest.approx(brier_score_loss(labels, scores), abs=1e-12)
    assert q.f1 == pytest.approx(f1_score(labels, scores >= 0.3), abs=1e-12)
    assert q.prevalence == pytest.approx(labels.mean())
    assert q.predicted_positive_rate == pytest.approx(np.mean(scores >= 0.3))
    assert q.n == 2_000


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]), st.integers(0, 1)),
        min_size=2,
        max_size=40,
    )
)
def test_realised_auc_and_average_precision_equal_scikit_learn_on_any_small_window(
    pairs: list[tuple[float, int]],
) -> None:
    scores = np.array([p[0] for p in pairs])
    labels = np.array([p[1] for p in pairs])
    q = realised_quality(scores, labels)
    if 0 < labels.sum() < labels.size:
        assert q.roc_auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    else:
        assert math.isnan(q.roc_auc)  # one class: undefined, never a made-up 0.5
    if labels.sum() > 0:
        assert q.pr_auc == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_calibration_error_is_small_for_calibrated_scores_and_large_for_shifted_ones() -> None:
    scores, labels = _window(7, 20_000, ties=False)
    calibrated = realised_quality(scores, labels).calibration_error
    shifted = realised_quality(np.clip(scores + 0.2, 0, 1), labels).calibration_error
    assert calibrated < 0.02
    assert shifted > 0.15


def test_the_estimate_from_calibrated_scores_matches_the_outcomes_they_promise() -> None:
    """Outcomes drawn with the scores' own probabilities: the estimate must be the mean
    of the realised figures over many such draws (unbiased for the sums, close for the
    curves)."""
    rng = np.random.default_rng(11)
    scores = rng.beta(2, 5, 3_000)
    estimate = estimated_quality(scores, threshold=0.35)
    draws = [
        realised_quality(scores, (rng.random(scores.size) < scores).astype(int), threshold=0.35)
        for _ in range(200)
    ]
    for name, tolerance in [
        ("brier", 0.002),
        ("prevalence", 0.002),
        ("precision", 0.005),
        ("recall", 0.005),
        ("f1", 0.005),
        ("roc_auc", 0.005),
        ("pr_auc", 0.01),
    ]:
        realised = float(np.mean([getattr(d, name) for d in draws]))
        assert getattr(estimate, name) == pytest.approx(realised, abs=tolerance), name
    assert estimate.predicted_positive_rate == pytest.approx(np.mean(scores >= 0.35))
    assert math.isnan(estimate.calibration_error)


def test_the_estimate_is_blind_to_a_model_that_went_wrong_which_labels_reveal() -> None:
    """Why realised figures replace the estimate: scores that stopped meaning anything
    (outcomes independent of them) still estimate a good AUC."""
    rng = np.random.default_rng(3)
    scores = rng.beta(2, 5, 5_000)
    labels = (rng.random(scores.size) < scores.mean()).astype(int)
    assert estimated_quality(scores).roc_auc > 0.65
    assert realised_quality(scores, labels).roc_auc == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.2, 1.3], [0, 1], "probabilities"),
        ([0.2, float("nan")], [0, 1], "probabilities"),
        ([0.2, 0.3], [0, 2], "0 or 1"),
        ([0.2, 0.3], [0], "1 labels for 2 scores"),
        ([], [], "no predictions"),
    ],
)
def test_bad_windows_are_refused_with_a_reason(
    scores: list[float], labels: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        realised_quality(scores, labels)


def test_calibration_error_is_the_equal_width_definition_training_reports_too() -> None:
    from driftline.model.evaluation import expected_calibration_error

    scores, labels = _window(5, 5_000, ties=False)
    index = np.minimum((scores * 10).astype(int), 9)
    oracle = (
        sum(
            abs(labels[index == b].mean() - scores[index == b].mean()) * np.sum(index == b)
            for b in range(10)
            if np.any(index == b)
        )
        / scores.size
    )
    assert realised_quality(scores, labels).calibration_error == pytest.approx(oracle, abs=1e-12)
    assert expected_calibration_error(labels, scores) == pytest.approx(oracle, abs=1e-12)
