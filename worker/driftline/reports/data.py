"""What the reports show, as plain arrays: curves, calibration bins, histograms.

Apart from the drawing (:mod:`driftline.reports.render`) so that the numbers can be checked
on their own: the ROC and PR curves are scikit-learn's, the calibration bins are the
equal-width bins of the expected calibration error the training report prints, and every
numeric histogram is drawn on the reference profile's frozen bins with the profile's own
binning rule (``core.drift.bins.assign_bins``), so a bar in a report is the share the drift
monitor compares, not a re-binned look-alike.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve

from driftline.core.drift.bins import OTHER, assign_bins
from driftline.core.drift.divergence import psi
from driftline.model.evaluation import ECE_BINS
from driftline.model.profile import categorical_profile, numeric_profile

MISSING_LABEL = "(missing)"


@dataclass(frozen=True)
class Curve:
    """One line of a ROC (x = FPR, y = TPR) or PR (x = recall, y = precision) plot."""

    label: str
    x: np.ndarray
    y: np.ndarray
    #: ROC AUC or average precision; None for a curve without a ranking (a constant).
    area: float | None


def roc_curve(label: str, y: np.ndarray, scores: np.ndarray) -> Curve:
    """scikit-learn's ROC curve and AUC of ``scores`` on labels ``y``."""
    fpr, tpr, _ = sklearn_roc_curve(y, scores)
    return Curve(label, np.asarray(fpr), np.asarray(tpr), float(roc_auc_score(y, scores)))


def pr_curve(label: str, y: np.ndarray, scores: np.ndarray) -> Curve:
    """scikit-learn's precision-recall curve and average precision."""
    precision, recall, _ = precision_recall_curve(y, scores)
    return Curve(
        label, np.asarray(recall), np.asarray(precision), float(average_precision_score(y, scores))
    )


def majority_curves(y: np.ndarray) -> tuple[Curve, Curve]:
    """The majority-class baseline: a constant score, so the ROC diagonal and the PR line
    at the positive rate (what "no ranking at all" scores)."""
    rate = float(np.mean(y))
    return (
        Curve("majority class", np.array([0.0, 1.0]), np.array([0.0, 1.0]), 0.5),
        Curve("majority class", np.array([0.0, 1.0]), np.array([rate, rate]), rate),
    )


@dataclass(frozen=True)
class CalibrationBins:
    """Equal-width score bins: mean score, observed positive rate and rows of each bin that
    has rows (the bins of the expected calibration error)."""

    mean_score: np.ndarray
    positive_rate: np.ndarray
    count: np.ndarray


def calibration_bins(y: np.ndarray, scores: np.ndarray, n_bins: int = ECE_BINS) -> CalibrationBins:
    """The bins of the calibration error the metrics table shows (``[k/n, (k+1)/n)``, 1.0
    in the last), so the plot explains that number; scikit-learn's
    ``calibration_curve(strategy="uniform")`` has the same bins but closed on the right,
    so the two differ only for scores exactly on an edge."""
    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    y = np.asarray(y, dtype=np.float64)
    index = np.minimum((s * n_bins).astype(np.intp), n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    total = np.bincount(index, weights=s, minlength=n_bins)
    positive = np.bincount(index, weights=y, minlength=n_bins)
    kept = count > 0
    return CalibrationBins(
        mean_score=total[kept] / count[kept],
        positive_rate=positive[kept] / count[kept],
        count=count[kept],
    )


@dataclass
class Histogram:
    """Shares per bin of one feature (or the score) for two or more named samples.

    ``labels`` name the bins; ``shares[name]`` are over the sample's observed values and sum
    to 1 (empty when none was observed); ``missing[name]`` is the missing share of all rows.
    """

    feature: str
    kind: str  # "numeric" | "categorical"
    labels: list[str]
    shares: dict[str, np.ndarray] = field(default_factory=dict)
    missing: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    #: Population stability index of the second sample against the first (natural log).
    psi: float | None = None


def edge_labels(edges: Sequence[float]) -> list[str]:
    """Right-closed bin names: ``<= e1``, ``(e1, e2]``, ..., ``> ek``."""
    if not edges:
        return ["all"]
    text = [_short(e) for e in edges]
    middle = [f"({a}, {b}]" for a, b in itertools.pairwise(text)]
    return [f"≤ {text[0]}", *middle, f"> {text[-1]}"]


def numeric_counts(values: np.ndarray, edges: Sequence[float]) -> tuple[np.ndarray, int, int]:
    """Counts per profile bin of the observed values, and (observed, missing) row counts."""
    array = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    array = np.where(np.isinf(array), np.nan, array)
    observed = array[~np.isnan(array)]
    counts = np.bincount(assign_bins(observed, edges), minlength=len(edges) + 1)
    return counts.astype(np.float64), int(observed.size), int(array.size - observed.size)


def categorical_counts(
    values: Sequence[Any] | np.ndarray, missing: np.ndarray | None, categories: Sequence[str]
) -> tuple[np.ndarray, int, int]:
    """Counts per category (anything outside ``categories`` counts as ``__other__``, which
    is the last of them), and (observed, missing) row counts."""
    series = pd.Series(list(values), dtype=object)
    gone = series.isna().to_numpy() if missing is None else np.asarray(missing, dtype=bool)
    observed = series[~gone].map(str)
    known = [c for c in categories if c != OTHER]
    position = {c: i for i, c in enumerate(known)}
    index = observed.map(lambda v: position.get(v, len(known))).to_numpy(dtype=np.int64)
    counts = np.bincount(index, minlength=len(known) + 1)
    return counts.astype(np.float64), int(observed.size), int(gone.sum())


def compare(
    feature: str,
    kind: str,
    reference: Mapping[str, Any],
    samples: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
    *,
    reference_name: str | None = None,
) -> Histogram:
    """Histogram of ``samples`` (name -> (values, categorical missing mask or None)) on the
    bins of ``reference`` (a profile entry: numeric ``edges`` or categorical ``shares``).

    With ``reference_name``, the reference's own shares are the first series (the drift
    report); without, every series comes from a sample (the model report's train/test).
    The PSI is of the last series against the first.
    """
    if kind == "numeric":
        edges = [float(e) for e in reference.get("edges", [])]
        labels = edge_labels(edges)
    else:
        categories = [c for c in reference.get("shares", {}) if c != OTHER] + [OTHER]
        labels = [*categories[:-1], "other"]
    histogram = Histogram(feature, kind, labels)
    counts_of: dict[str, np.ndarray] = {}
    if reference_name is not None:
        shares = reference.get("shares", [])
        values = list(shares.values()) if isinstance(shares, dict) else list(shares)
        if isinstance(shares, dict):  # profile order, with __other__ last
            values = [float(shares[c]) for c in categories[:-1]] + [float(shares.get(OTHER, 0))]
        histogram.shares[reference_name] = np.asarray(values, dtype=np.float64)
        histogram.missing[reference_name] = float(reference.get("missing_rate", 0.0))
    for name, (values_in, mask) in samples.items():
        if kind == "numeric":
            counts, observed, missing = numeric_counts(values_in, edges)
        else:
            counts, observed, missing = categorical_counts(values_in, mask, categories)
        counts_of[name] = counts
        histogram.shares[name] = counts / observed if observed else np.zeros(0)
        histogram.missing[name] = missing / (observed + missing) if observed + missing else 0.0
        histogram.rows[name] = observed + missing
    names = list(histogram.shares)
    first, last = histogram.shares[names[0]], names[-1]
    if len(names) >= 2 and first.size and last in counts_of and counts_of[last].sum() > 0:
        value = psi(first, counts_of[last])
        histogram.psi = None if np.isnan(value) else float(value)
    return histogram


def reference_entry(
    feature: str, kind: str, profile: Mapping[str, Any] | None, fallback: np.ndarray
) -> dict[str, Any]:
    """The feature's profile entry (its frozen bins), or bins made from ``fallback`` values
    the way the profile makes them, for a feature the profile does not cover."""
    section = (profile or {}).get(kind, {})
    if feature in section:
        return dict(section[feature])
    if kind == "numeric":
        return numeric_profile(fallback)
    return categorical_profile(pd.Series(fallback, dtype=object))


def _short(value: float) -> str:
    """An edge as a label: 3 significant digits, no exponent for everyday magnitudes."""
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"
