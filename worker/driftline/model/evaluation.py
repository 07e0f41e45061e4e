"""Judging a trained model on held-out rows, and the report ``driftline train`` prints.

Apart from :mod:`driftline.model.training` because it is the part a reader checks the
numbers against: which metrics are computed at which threshold, what the baseline is,
and how the report lays them out.  Training calls it; it trains nothing itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline

#: Class names in the classification report.
TARGET_NAMES = ["negative", "positive"]


def best_f1_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold (``score >= t`` is positive) with the highest F1 on ``y``.

    Candidates are the observed scores, so the threshold is one the model actually emits;
    ties go to the highest threshold (fewer alerts for the same F1).
    """
    precision, recall, thresholds = precision_recall_curve(y, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(min(max(thresholds[best], 0.0), 1.0))


def evaluate(y: pd.Series, scores: np.ndarray, threshold: float) -> tuple[dict[str, Any], str]:
    """Threshold-free (ROC AUC, PR AUC) and thresholded metrics, plus the report text."""
    predicted = (scores >= threshold).astype(np.int64)
    kwargs: dict[str, Any] = {"labels": [0, 1], "target_names": TARGET_NAMES, "zero_division": 0}
    metrics = {
        "roc_auc": float(roc_auc_score(y, scores)),
        "pr_auc": float(average_precision_score(y, scores)),
        "threshold": threshold,
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "classification_report": classification_report(y, predicted, output_dict=True, **kwargs),
    }
    return metrics, str(classification_report(y, predicted, digits=3, **kwargs))


def top_importances(pipeline: Pipeline, k: int) -> list[dict[str, Any]]:
    names = pipeline[:-1].get_feature_names_out()
    importances = pipeline[-1].feature_importances_
    order = np.argsort(-importances, kind="stable")[:k]
    return [{"feature": str(names[i]), "importance": float(importances[i])} for i in order]


def report_text(metrics: dict[str, Any], model_text: str, importances: list[dict[str, Any]]) -> str:
    params, cv, test, base = metrics["params"], metrics["cv"], metrics["test"], metrics["baseline"]
    lines = [
        f"RandomForest: {params['n_estimators']} trees, class_weight={params['class_weight']}, "
        f"max_depth={params['max_depth']}, min_samples_leaf={params['min_samples_leaf']}, "
        f"seed={params['seed']}",
        f"Data: {metrics['n_rows']} rows ({metrics['n_train']} train / {metrics['n_test']} "
        f"test), {metrics['n_features']} features, positive rate "
        f"{metrics['positive_rate_test']:.1%} (test)",
        f"Cross-validation on train ({cv['folds']}-fold stratified): ROC AUC "
        f"{_num(cv['roc_auc_mean'])} ± {_num(cv['roc_auc_std'])}",
    ]
    if metrics["grid_search"]:
        lines.append(f"Grid search best: {metrics['grid_search']['best_params']}")
    threshold = test["threshold"]
    lines.append(f"Decision threshold: {threshold:.3f} ({metrics['threshold']['method']})")
    lines += [
        "",
        f"{'Test set':<28}{'model':>10}{'baseline':>10}",
        *(
            f"  {label:<26}{_num(test[key]):>10}{_num(base[key]):>10}"
            for label, key in (
                ("ROC AUC", "roc_auc"),
                ("PR AUC (avg precision)", "pr_auc"),
                (f"precision @ {threshold:.2f}", "precision"),
                (f"recall @ {threshold:.2f}", "recall"),
                (f"F1 @ {threshold:.2f}", "f1"),
            )
        ),
        "  (baseline = always predict the majority class; its PR AUC is the positive rate)",
        "",
        f"Classification report (model, threshold {threshold:.2f}):",
        model_text.rstrip(),
        "",
        "Top features (impurity importance):",
        *(f"  {item['feature']:<40}{item['importance']:.4f}" for item in importances),
    ]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
