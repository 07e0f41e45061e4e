"""Judging a trained model on held-out rows, and the report ``driftline train`` prints.

Apart from :mod:`driftline.model.training` because it is the part a reader checks the
numbers against: which metrics are computed at which threshold, what the baselines are,
and how the report lays them out.  Training calls it; it trains nothing itself.

Every figure is on rows the model was not fitted on (the test sets of
:mod:`driftline.model.splits`), and every threshold (the model's and the baselines') is
chosen on the training part's validation scores, never on a test set.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.pipeline import Pipeline

from driftline.core.quality.realised import calibration_error

#: Class names in the classification report.
TARGET_NAMES = ["negative", "positive"]
#: What the decision threshold maximizes on validation scores: F1, F2 (recall weighs
#: twice: missing a churner costs more than a needless offer) or Youden's J (TPR - FPR).
THRESHOLD_OBJECTIVES = ("f1", "f2", "youden")
#: Equal-width bins of the expected calibration error.
ECE_BINS = 10
_OBJECTIVE_TEXT = {"f1": "max F1", "f2": "max F2", "youden": "max Youden's J (TPR - FPR)"}


def objective_text(objective: str) -> str:
    return _OBJECTIVE_TEXT[objective]


def choose_threshold(y: np.ndarray, scores: np.ndarray, objective: str = "f1") -> float:
    """The score threshold (``score >= t`` is positive) best for ``objective`` on ``y``.

    Candidates are the observed scores, so the threshold is one the scores actually take;
    ties go to the highest threshold (fewer alerts for the same value).
    """
    if objective not in THRESHOLD_OBJECTIVES:
        raise ValueError(f"threshold objective must be one of {THRESHOLD_OBJECTIVES}")
    y, scores = np.asarray(y), np.asarray(scores, dtype=np.float64)
    if objective == "youden":
        fpr, tpr, thresholds = roc_curve(y, scores)
        j = tpr - fpr
        best = int(np.flatnonzero(j == j.max())[0])  # roc thresholds decrease
        return float(min(thresholds[best], scores.max()))  # roc_curve's first is +inf
    beta2 = 1.0 if objective == "f1" else 4.0
    precision, recall, thresholds = precision_recall_curve(y, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    with np.errstate(divide="ignore", invalid="ignore"):
        denominator = beta2 * precision + recall
        value = np.where(denominator > 0, (1 + beta2) * precision * recall / denominator, 0.0)
    best = int(np.flatnonzero(value == value.max())[-1])
    return float(thresholds[best])


def best_f1_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    """:func:`choose_threshold` for F1 (kept for callers of the earlier name)."""
    return choose_threshold(y, scores, "f1")


def expected_calibration_error(y: np.ndarray, scores: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Mean |observed positive rate - mean score| over equal-width score bins, weighted by
    the bin's share of rows (0 = calibrated): core's definition, the one the live quality
    windows use, so training and serving figures compare."""
    y = np.asarray(y, dtype=np.float64)
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    return calibration_error(scores, y, n_bins)


def confusion(y: np.ndarray, predicted: np.ndarray) -> dict[str, int]:
    """``{"tn", "fp", "fn", "tp"}`` (positive = churned)."""
    tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    return {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}


def evaluate(
    y: pd.Series | np.ndarray,
    scores: np.ndarray,
    threshold: float,
    *,
    probabilities: bool = True,
) -> tuple[dict[str, Any], str]:
    """Threshold-free (ROC AUC, PR AUC) and thresholded metrics with the confusion matrix,
    Brier score and calibration error (``probabilities``: scores that claim to be
    probabilities; a recency score does not), plus the classification report text."""
    y = np.asarray(y)
    scores = np.asarray(scores, dtype=np.float64)
    predicted = (scores >= threshold).astype(np.int64)
    kwargs: dict[str, Any] = {"labels": [0, 1], "target_names": TARGET_NAMES, "zero_division": 0}
    two_classes = len(np.unique(y)) == 2
    metrics = {
        "n": len(y),
        "positive_rate": float(np.mean(y)) if len(y) else None,
        "roc_auc": float(roc_auc_score(y, scores)) if two_classes else None,
        "pr_auc": float(average_precision_score(y, scores)) if two_classes else None,
        "threshold": threshold,
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "confusion_matrix": confusion(y, predicted),
        "brier": float(brier_score_loss(y, np.clip(scores, 0, 1))) if probabilities else None,
        "calibration_error": expected_calibration_error(y, scores) if probabilities else None,
        "classification_report": classification_report(y, predicted, output_dict=True, **kwargs),
    }
    return metrics, str(classification_report(y, predicted, digits=3, **kwargs))


def top_importances(pipeline: Pipeline, k: int) -> list[dict[str, Any]]:
    names = pipeline[:-1].get_feature_names_out()
    importances = pipeline[-1].feature_importances_
    order = np.argsort(-importances, kind="stable")[:k]
    return [{"feature": str(names[i]), "importance": float(importances[i])} for i in order]


def importance_lines(importances: list[dict[str, Any]]) -> list[str]:
    """One line per feature: the name padded to the longest name, two spaces, the value.

    (A fixed 40-character column ran a long name into its value:
    ``num__missingindicator_avg_order_value_90d0.0000``.)
    """
    if not importances:
        return []
    width = max(len(str(item["feature"])) for item in importances)
    return [f"  {item['feature']!s:<{width}}  {item['importance']:.4f}" for item in importances]


def baseline_verdicts(
    part: str, model: dict[str, Any], baselines: dict[str, dict[str, Any] | None]
) -> list[str]:
    """Plain sentences for every metric where a baseline scores at least the model."""
    verdicts = []
    for name, base in baselines.items():
        if base is None:
            continue
        for key, label in (("roc_auc", "ROC AUC"), ("pr_auc", "PR AUC"), ("f1", "F1")):
            ours, theirs = model.get(key), base.get(key)
            if ours is None or theirs is None or (name == "majority" and key != "f1"):
                continue  # a constant score has no ranking to compare
            if theirs >= ours:
                verdicts.append(
                    f"{part}: the {name} baseline beats the model on {label} "
                    f"({theirs:.3f} vs {ours:.3f})"
                )
    return verdicts


def report_text(metrics: dict[str, Any], model_text: str, importances: list[dict[str, Any]]) -> str:
    params, cv, split = metrics["params"], metrics["cv"], metrics["split"]
    lines = [
        f"RandomForest: {params['n_estimators']} trees, class_weight={params['class_weight']}, "
        f"max_depth={params['max_depth']}, min_samples_leaf={params['min_samples_leaf']}, "
        f"seed={params['seed']}",
        f"Data: {metrics['n_rows']} rows: {metrics['n_train']} train / {metrics['n_test']} "
        f"test / {metrics['n_out_of_time']} out-of-time; {metrics['n_features_used']} of "
        f"{metrics['n_features']} features used",
        f"Split: {split['method']}",
    ]
    for item in metrics["dropped_features"]:
        lines.append(f"  not used: {item['feature']} ({item['reason']} in the training part)")
    lines.append(
        f"Cross-validation on train ({cv['folds']}-fold, {cv['grouping']}): ROC AUC "
        f"{_num(cv['roc_auc_mean'])} ± {_num(cv['roc_auc_std'])}"
    )
    if metrics["grid_search"]:
        lines.append(f"Grid search best: {metrics['grid_search']['best_params']}")
    calibration = metrics["calibration"]
    lines.append(f"Calibration: {calibration['method']} ({calibration['fitted_on']})")
    threshold = metrics["threshold"]["value"]
    lines.append(f"Decision threshold: {threshold:.3f} ({metrics['threshold']['method']})")
    for part, title in (
        ("test", "Test: customers never trained on"),
        ("out_of_time", "Out-of-time: the latest cutoff"),
    ):
        model = metrics[part]
        if model is None:
            lines += ["", f"{title}: none (fewer than two cutoffs; for an event log: --cutoffs 2)"]
            continue
        base = metrics["baselines"][part]
        lines += ["", *_table(f"{title} ({model['n']} rows)", model, base)]
    lines += ["", *metrics["verdicts"]] if metrics["verdicts"] else []
    lines += [
        "",
        f"Classification report (model, test, threshold {threshold:.2f}):",
        model_text.rstrip(),
        "",
        "Top features (impurity importance):",
        *importance_lines(importances),
    ]
    return "\n".join(lines)


def _table(title: str, model: dict[str, Any], base: dict[str, Any | None]) -> list[str]:
    recency, majority = base.get("recency"), base["majority"]
    columns = [("model", model), ("recency", recency), ("majority", majority)]
    rows = [
        ("ROC AUC", "roc_auc"),
        ("PR AUC (avg precision)", "pr_auc"),
        ("threshold", "threshold"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("F1 at its threshold", "f1"),
        ("Brier score", "brier"),
        ("calibration error (ECE)", "calibration_error"),
    ]
    cm = model["confusion_matrix"]
    lines = [
        f"{title:<30}" + "".join(f"{name:>10}" for name, _ in columns),
        *(
            f"  {label:<28}"
            + "".join(f"{_num(None if m is None else m.get(key)):>10}" for _, m in columns)
            for label, key in rows
        ),
        f"  Brier before calibration {_num(model.get('brier_uncalibrated'))}; predicting the "
        f"training positive rate scores {_num(base.get('prior_brier'))}",
        f"  Confusion (model): TN {cm['tn']}  FP {cm['fp']}  FN {cm['fn']}  TP {cm['tp']}",
    ]
    if recency is None:
        lines.append("  (no recency baseline: no recency score for these rows)")
    lines.append(
        "  (majority = always the majority class; recency = days since the last target "
        "event, its threshold chosen on the training part)"
    )
    return lines


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
