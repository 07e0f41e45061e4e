"""Calibrated churn probabilities: a score map fitted on validation scores, served with the model.

Why: a random forest's ``predict_proba`` ranks well but is not a probability (its scores
crowd towards the middle, and a balanced class weight shifts them all).  The decision
threshold, the Brier score, the drift monitor's positive rate and any label-free estimate
of live performance (confidence-based performance estimation reads a score of 0.8 as "80 %
chance") need scores that mean what they say.

How: :func:`fit_calibrator` fits a monotone map from raw to calibrated score on
*validation* scores: the out-of-fold cross-validation scores of the training part, each
from a fold model that did not see the row (scikit-learn's ``CalibratedClassifierCV`` with
``ensemble=False`` does the same, at the cost of its own extra fits; here the folds are
already there).  The map is applied to the final model, fitted on the whole training part.

The map lives in the model itself (:class:`CalibratedPipeline`), so every consumer of
``predict_proba`` (the worker's scorer, the reference profile, the tests) sees calibrated
scores, and the faster runtimes apply the very same :meth:`ScoreCalibrator.__call__` to
their forest output.  It is plain numpy parameters (no scikit-learn object), so it pickles
small and evaluates the same everywhere.  Its import path is part of the saved-model format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

#: ``method="auto"``: isotonic from this many validation rows on, sigmoid below (isotonic
#: regression overfits small samples; Platt scaling has two parameters).
ISOTONIC_MIN_ROWS = 1000
METHODS = ("auto", "isotonic", "sigmoid", "none")


@dataclass(frozen=True)
class ScoreCalibrator:
    """A fitted monotone map of positive-class scores onto probabilities.

    ``isotonic``: piecewise linear through ``(x, y)`` (``x`` increasing), flat beyond the
    ends (what ``IsotonicRegression(out_of_bounds="clip")`` predicts).  ``sigmoid``: Platt
    scaling, ``1 / (1 + exp(-(a * s + b)))``.
    """

    method: str
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    a: float = 1.0
    b: float = 0.0

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        s = np.asarray(scores, dtype=np.float64)
        if self.method == "isotonic":
            out: np.ndarray = np.interp(s, np.asarray(self.x), np.asarray(self.y))
            return out
        if self.method == "sigmoid":
            out = 1.0 / (1.0 + np.exp(-(self.a * s + self.b)))
            return out
        raise ValueError(f"unknown calibration method {self.method!r}")

    def describe(self) -> dict[str, Any]:
        """JSON for the model's metadata."""
        if self.method == "isotonic":
            return {"method": "isotonic", "n_knots": len(self.x)}
        return {"method": "sigmoid", "a": self.a, "b": self.b}


def resolve_method(method: str, n_rows: int) -> str:
    """``auto`` -> isotonic or sigmoid by the size of the validation sample."""
    if method not in METHODS:
        raise ValueError(f"calibration must be one of {METHODS}, got {method!r}")
    if method == "auto":
        return "isotonic" if n_rows >= ISOTONIC_MIN_ROWS else "sigmoid"
    return method


def fit_calibrator(y: np.ndarray, scores: np.ndarray, method: str) -> ScoreCalibrator:
    """Fit ``method`` (isotonic or sigmoid) on validation labels and raw scores."""
    y = np.asarray(y, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(scores, y)
        return ScoreCalibrator(
            "isotonic",
            x=tuple(float(v) for v in iso.X_thresholds_),
            y=tuple(float(v) for v in iso.y_thresholds_),
        )
    if method == "sigmoid":
        platt = LogisticRegression(C=1e6).fit(scores.reshape(-1, 1), y.astype(np.int64))
        return ScoreCalibrator("sigmoid", a=float(platt.coef_[0, 0]), b=float(platt.intercept_[0]))
    raise ValueError(f"cannot fit calibration method {method!r}")


class CalibratedPipeline(Pipeline):  # type: ignore[misc, unused-ignore]  # sklearn is untyped
    """A scikit-learn ``Pipeline`` whose ``predict_proba`` is calibrated by ``calibrator_``.

    Without a calibrator (``None``, the state after ``fit`` and after ``clone``) it is a
    plain Pipeline, so cross-validation and grid search treat it as one.  ``pipeline[-1]``
    stays the raw forest: the compiled and ONNX runtimes evaluate it, then apply
    :func:`calibration_of` themselves.
    """

    calibrator_: ScoreCalibrator | None = None

    def predict_proba(self, X: Any, **params: Any) -> np.ndarray:
        raw = np.asarray(super().predict_proba(X, **params), dtype=np.float64)
        return apply_calibration(self.calibrator_, raw, list(self.classes_))

    def predict(self, X: Any, **params: Any) -> np.ndarray:
        """The most probable class by the calibrated probabilities."""
        probabilities = self.predict_proba(X)
        labels: np.ndarray = np.asarray(self.classes_)[np.argmax(probabilities, axis=1)]
        return labels


def apply_calibration(
    calibrator: ScoreCalibrator | None, probabilities: np.ndarray, classes: list[Any]
) -> np.ndarray:
    """Binary ``predict_proba`` output with the positive column calibrated (and the other
    its complement); unchanged without a calibrator."""
    if calibrator is None:
        return probabilities
    positive = classes.index(1)
    out = np.empty_like(probabilities)
    out[:, positive] = calibrator(probabilities[:, positive])
    out[:, 1 - positive] = 1.0 - out[:, positive]
    return out


def calibration_of(model: Any) -> ScoreCalibrator | None:
    """The calibrator a model's scores go through, or None (a plain pipeline)."""
    return getattr(model, "calibrator_", None)
