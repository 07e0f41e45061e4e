"""``driftline report model``: one model version's evaluation as an HTML page.

Everything on it comes from the version itself: the metrics in ``metadata.json`` (split,
calibration, threshold, baselines, importances) and the held-out arrays saved beside the
model (:mod:`driftline.model.evaluation_arrays`).  Nothing is retrained or re-split, so the
page shows the very test set the training report printed.  A version saved before the
arrays existed still gets the tables, the confusion matrices and the importances, and the
page says which plots it lacks.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from driftline.reports import render
from driftline.reports.data import (
    Histogram,
    calibration_bins,
    compare,
    majority_curves,
    pr_curve,
    reference_entry,
    roc_curve,
)

PARTS = (
    ("test", "test", "Test: customers never trained on"),
    ("oot", "out_of_time", "Out-of-time: the latest cutoff"),
)


def curves(arrays: dict[str, Any], part: str) -> tuple[list[Any], list[Any]] | None:
    """ROC and PR curves of the model and its baselines on one held-out part."""
    y_key, score_key = f"{part}_y", f"{part}_score"
    if y_key not in arrays or len(np.unique(arrays[y_key])) < 2:
        return None
    y, scores = arrays[y_key], arrays[score_key]
    roc = [roc_curve("model", y, scores)]
    pr = [pr_curve("model", y, scores)]
    if f"{part}_recency" in arrays:
        roc.append(roc_curve("recency baseline", y, arrays[f"{part}_recency"]))
        pr.append(pr_curve("recency baseline", y, arrays[f"{part}_recency"]))
    majority_roc, majority_pr = majority_curves(y)
    return [*roc, majority_roc], [*pr, majority_pr]


def feature_histograms(metadata: dict[str, Any], arrays: dict[str, Any]) -> list[Histogram]:
    """Train vs test shares of each feature the model uses, on the reference profile's bins
    (the drift monitor's), or bins made the profile's way from the training sample."""
    profile = metadata.get("reference_profile") or {}
    types = metadata.get("feature_types", {})
    out = []
    for feature in metadata.get("feature_names", []):
        if f"train__{feature}" not in arrays:
            continue  # left out of the model (constant or missing in training)
        kind = types.get(feature, "numeric")
        samples = {
            part: (arrays[f"{part}__{feature}"], arrays.get(f"missing__{part}__{feature}"))
            for part in ("train", "test")
        }
        fallback = samples["train"][0]
        if kind == "categorical" and samples["train"][1] is not None:
            fallback = np.where(samples["train"][1], None, fallback.astype(object))
        entry = reference_entry(feature, kind, profile, fallback)
        out.append(compare(feature, kind, entry, samples))
    return out


def metrics_table(metrics: dict[str, Any], part_key: str) -> str:
    model = metrics.get(part_key)
    if not model:
        return ""
    base = (metrics.get("baselines") or {}).get(part_key) or {}
    columns = [
        ("model", model),
        ("recency", base.get("recency")),
        ("majority", base.get("majority")),
    ]
    rows = []
    for label, key in (
        ("ROC AUC", "roc_auc"),
        ("PR AUC (average precision)", "pr_auc"),
        ("threshold", "threshold"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("F1", "f1"),
        ("Brier score", "brier"),
        ("calibration error (ECE)", "calibration_error"),
    ):
        rows.append([label, *((None if m is None else m.get(key)) for _, m in columns)])
    return render.table(["", *(name for name, _ in columns)], rows)


def build(name: str, version: str, metadata: dict[str, Any], arrays: dict[str, Any] | None) -> str:
    """The page's HTML."""
    metrics = metadata.get("metrics", {})
    threshold = float(metadata.get("threshold", 0.5))
    dataset = (metadata.get("extra") or {}).get("dataset") or {}
    calibration = metrics.get("calibration", {})
    rate_train, rate_test = metrics.get("positive_rate_train"), metrics.get("positive_rate_test")
    summary_rows: list[list[Any]] = [
        [
            "rows (train / test / out-of-time)",
            f"{metrics.get('n_train')} / {metrics.get('n_test')} / {metrics.get('n_out_of_time')}",
        ],
        ["split", (metrics.get("split") or {}).get("method")],
        [
            "churn rate (train / test)",
            f"{_pct(rate_train)} / {_pct(rate_test)}",
        ],
        ["cross-validated ROC AUC", _mean_std(metrics.get("cv") or {})],
        ["calibration", f"{calibration.get('method')} ({calibration.get('fitted_on', '')})"],
        [
            "decision threshold",
            f"{threshold:.3f} ({(metrics.get('threshold') or {}).get('method', '')})",
        ],
        ["features used", f"{metrics.get('n_features_used')} of {metrics.get('n_features')}"],
        ["data", dataset.get("path") or dataset.get("source")],
        ["saved", metadata.get("created_at")],
        ["model sha256", str(metadata.get("sha256", ""))[:16] + "…"],
    ]
    sections: list[tuple[str, str]] = [("Summary", render.table(["", "value"], summary_rows, "kv"))]
    verdicts = metrics.get("verdicts") or []
    if verdicts:
        sections[0] = (
            "Summary",
            sections[0][1] + "".join(f'<p class="warn">{html.escape(v)}</p>' for v in verdicts),
        )
    missing_note = (
        '<p class="note">This version was saved without its held-out arrays '
        "(trained before reports existed): retrain to get the curves and distributions.</p>"
    )
    for part, key, title in PARTS:
        if not metrics.get(key):
            continue
        body = [metrics_table(metrics, key)]
        plots = []
        drawn = None if arrays is None else curves(arrays, part)
        if drawn is not None:
            roc, pr = drawn
            plots.append(
                render.figure(
                    f"roc-{part}",
                    render.curves_plot(
                        "ROC curve", roc, "false positive rate", "true positive rate", "AUC"
                    ),
                )
            )
            plots.append(
                render.figure(
                    f"pr-{part}",
                    render.curves_plot("Precision-recall curve", pr, "recall", "precision", "AP"),
                )
            )
            y, scores = arrays[f"{part}_y"], arrays[f"{part}_score"]  # type: ignore[index]
            plots.append(
                render.figure(
                    f"calibration-{part}",
                    render.calibration_plot(
                        "Calibration (10 equal-width bins)", calibration_bins(y, scores)
                    ),
                )
            )
            n_all = int(arrays.get(f"n_rows__{part}", len(y)))  # type: ignore[union-attr]
            if n_all > len(y):
                body.append(
                    f'<p class="note">Curves drawn on a random sample of {len(y)} of the '
                    f"{n_all} rows.</p>"
                )
        elif arrays is None:
            body.append(missing_note)
        matrix = metrics[key].get("confusion_matrix")
        if matrix:
            plots.append(
                render.figure(
                    f"confusion-{part}",
                    render.confusion_plot(f"Confusion at threshold {threshold:.3f}", matrix),
                )
            )
        body.append(f'<div class="grid">{"".join(plots)}</div>')
        sections.append((f"{title} ({metrics[key].get('n')} rows)", "".join(body)))
    importances = metrics.get("top_importances") or []
    if importances:
        sections.append(
            (
                "Feature importances",
                render.figure(
                    "importances",
                    render.importance_plot("Top features (impurity importance)", importances),
                ),
            )
        )
    if arrays is not None:
        histograms = feature_histograms(metadata, arrays)
        figures = "".join(
            render.figure(f"feature-{h.feature}", render.histogram_plot(h)) for h in histograms
        )
        note = (
            '<p class="note">Shares of observed rows per bin; numeric bins are the drift '
            "reference's frozen bins (right-closed). PSI is test against train.</p>"
        )
        sections.append(
            ("Feature distributions: train vs test", note + f'<div class="grid">{figures}</div>')
        )
    elif metadata.get("feature_names"):
        sections.append(("Feature distributions: train vs test", missing_note))
    return render.page(
        f"Model report: {name} {version}",
        "Driftline: held-out evaluation of one registered model version",
        sections,
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _mean_std(cv: dict[str, Any]) -> str:
    mean, std = cv.get("roc_auc_mean"), cv.get("roc_auc_std")
    if mean is None:
        return "n/a"
    return f"{mean:.3f} ± {std or 0:.3f} ({cv.get('folds')}-fold, {cv.get('grouping')})"
