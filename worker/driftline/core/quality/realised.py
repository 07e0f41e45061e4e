"""Realised quality: a window of scored predictions whose outcomes are known.

Exact figures, vectorised (one sort per window), with ties treated as scikit-learn treats
them, which the tests use as the oracle: ROC AUC as the Mann-Whitney statistic with
average ranks, PR AUC as average precision over distinct thresholds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

#: Equal-width bins of the calibration error (scikit-learn's ``calibration_curve`` default).
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Quality:
    """One window's quality figures; ``nan`` where a figure is undefined (one class only).

    ``prevalence`` is the share of positives (realised) or the mean score (estimated);
    ``predicted_positive_rate`` the share at or above the decision threshold.
    """

    n: int
    roc_auc: float
    pr_auc: float
    brier: float
    calibration_error: float
    prevalence: float
    predicted_positive_rate: float
    precision: float
    recall: float
    f1: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def _as_arrays(
    scores: npt.ArrayLike, labels: npt.ArrayLike | None = None
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64] | None]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not np.all(np.isfinite(s)) or np.any((s < 0) | (s > 1)):
        raise ValueError("scores must be probabilities in [0, 1]")
    if labels is None:
        return s, None
    y = np.asarray(labels, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    return s, y


def roc_auc(scores: npt.NDArray[np.float64], weights: npt.NDArray[np.float64]) -> float:
    """Area under the ROC curve where each prediction is ``weights`` positive (0/1 for
    realised labels, the score itself for the estimate): the probability that a positive
    outranks a negative, ties counting a half."""
    positives = float(weights.sum())
    negatives = float((1.0 - weights).sum())
    if positives <= 0 or negatives <= 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, w = scores[order], weights[order]
    # Group ties: each distinct score is one step of the curve.
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.cumsum(w)[last]
    fp = np.cumsum(1.0 - w)[last]
    tpr = np.r_[0.0, tp / positives]
    fpr = np.r_[0.0, fp / negatives]
    return float(np.trapezoid(tpr, fpr))


def average_precision(scores: npt.NDArray[np.float64], weights: npt.NDArray[np.float64]) -> float:
    """Area under the precision-recall curve as average precision: the precision at each
    distinct threshold, weighted by the recall it adds (no interpolation)."""
    positives = float(weights.sum())
    if positives <= 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, w = scores[order], weights[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.cumsum(w)[last]
    predicted = (last + 1).astype(np.float64)
    recall = tp / positives
    precision = tp / predicted
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def calibration_error(
    scores: npt.NDArray[np.float64], outcomes: npt.NDArray[np.float64], bins: int
) -> float:
    """Expected calibration error over ``bins`` equal-width score bins: the mean, weighted
    by each bin's share of predictions, of |mean outcome - mean score| (0 = calibrated).
    One definition for the training report and the live windows, so the two compare."""
    if scores.size == 0:
        return float("nan")
    index = np.minimum((scores * bins).astype(np.intp), bins - 1)
    observed = np.bincount(index, weights=outcomes, minlength=bins)
    predicted = np.bincount(index, weights=scores, minlength=bins)
    return float(np.sum(np.abs(observed - predicted)) / scores.size)


def rates_at(
    scores: npt.NDArray[np.float64], weights: npt.NDArray[np.float64], threshold: float
) -> tuple[float, float, float, float]:
    """Predicted positive rate, precision, recall and F1 at ``threshold`` (score >= it)."""
    flagged = scores >= threshold
    tp = float(weights[flagged].sum())
    predicted = float(flagged.sum())
    actual = float(weights.sum())
    precision = tp / predicted if predicted else float("nan")
    recall = tp / actual if actual else float("nan")
    f1 = 2 * tp / (predicted + actual) if predicted + actual else float("nan")
    return predicted / scores.size, precision, recall, f1


def quality_of(
    scores: npt.NDArray[np.float64],
    weights: npt.NDArray[np.float64],
    threshold: float,
    *,
    calibration: float,
) -> Quality:
    rate, precision, recall, f1 = rates_at(scores, weights, threshold)
    # E[(s - y)^2] when y is 1 with probability w: (s - w)^2 + w (1 - w); exact for 0/1.
    brier = float(np.mean((scores - weights) ** 2 + weights * (1.0 - weights)))
    return Quality(
        n=int(scores.size),
        roc_auc=roc_auc(scores, weights),
        pr_auc=average_precision(scores, weights),
        brier=brier,
        calibration_error=calibration,
        prevalence=float(weights.mean()),
        predicted_positive_rate=rate,
        precision=precision,
        recall=recall,
        f1=f1,
    )


def realised_quality(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    threshold: float = 0.5,
    *,
    bins: int = CALIBRATION_BINS,
) -> Quality:
    """The quality of a window of predictions (``scores``) whose outcomes (``labels``, 0/1)
    are known, at the model's decision ``threshold``."""
    s, y = _as_arrays(scores, labels)
    assert y is not None
    if s.size == 0:
        raise ValueError("no predictions in the window")
    return quality_of(s, y, threshold, calibration=calibration_error(s, y, bins))
