"""Prometheus metrics of ``driftline quality``: live model quality per version and window.

The figures are published as one snapshot per refresh (:meth:`QualityMetrics.publish`)
and exposed by a custom collector, so a scrape never sees half a refresh and a retired
window's series disappear with it (a labelled ``Gauge`` would keep them until removed
one by one).  Names follow Prometheus' conventions: ratios in 0..1 (``_ratio`` where the
figure is a share), timestamps in seconds, counters ending in ``_total``.

Labels: ``model`` (the model name, as in the worker's metrics), ``model_version``;
``basis`` = ``realised`` (from labels) or
``estimated`` (label-free, from calibrated scores); ``window`` = the window's start,
ISO 8601 UTC (``2026-01-05`` for day-aligned windows).  Label values are bounded: versions
times windows held (retention / window + 1), never a customer.  docs/model-quality.md lists
every metric.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from driftline.core.quality import Quality, WindowFigures
from driftline.core.quality.windows import NO_TIME, Counts

__all__ = ["FIGURES", "QualityMetrics", "window_label"]

P = "driftline_quality_"
#: Quality field -> (metric name, help).  Both bases, except calibration error (realised:
#: an estimate from calibrated scores is calibrated by assumption).
FIGURES: dict[str, tuple[str, str]] = {
    "roc_auc": (P + "roc_auc", "Area under the ROC curve of the window's predictions."),
    "pr_auc": (P + "pr_auc", "Area under the precision-recall curve (average precision)."),
    "brier": (P + "brier_score", "Mean squared error of the scores against the outcomes."),
    "calibration_error": (
        P + "calibration_error",
        "Expected calibration error over 10 equal-width score bins (realised only).",
    ),
    "prevalence": (
        P + "positive_ratio",
        "Share of positive outcomes (realised) or mean score (estimated).",
    ),
    "predicted_positive_rate": (
        P + "predicted_positive_ratio",
        "Share of predictions at or above the model's decision threshold.",
    ),
    "precision": (P + "precision_ratio", "Precision at the decision threshold."),
    "recall": (P + "recall_ratio", "Recall at the decision threshold."),
    "f1": (P + "f1_score", "F1 score at the decision threshold."),
}
WINDOW_LABELS = ["model", "model_version", "window"]
BASIS_LABELS = ["model", "model_version", "basis", "window"]


def window_label(start_ms: int) -> str:
    """The window's start as ISO 8601 UTC: a date when it is midnight, else to the second."""
    start = datetime.fromtimestamp(start_ms / 1000, tz=UTC)
    if start_ms % 86_400_000 == 0:
        return start.strftime("%Y-%m-%d")
    return start.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _Snapshot:
    figures: tuple[WindowFigures, ...] = ()
    training_auc: Mapping[tuple[str, str], float] = field(default_factory=dict)
    watermark_ms: int = NO_TIME
    accepted: Mapping[str, int] = field(default_factory=dict)
    late: Mapping[str, int] = field(default_factory=dict)
    invalid: Mapping[str, int] = field(default_factory=dict)
    windows_retired: int = 0
    published_at: float = math.nan


class QualityMetrics:
    """The service's registry (a private one, as :class:`WorkerMetrics` has)."""

    def __init__(self, min_labels: int, topics: Mapping[str, str]) -> None:
        """``topics`` maps ``predictions``/``outcomes`` to the topic names counted."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.min_labels = min_labels
        self.topics = dict(topics)
        self._snapshot = _Snapshot()
        self._lock = threading.Lock()
        self.registry.register(self)

    def publish(
        self,
        figures: Iterable[WindowFigures],
        *,
        training_auc: Mapping[tuple[str, str], float],
        watermark_ms: int,
        counts: Counts,
        invalid: Mapping[str, int],
        now: float,
    ) -> None:
        snapshot = _Snapshot(
            figures=tuple(figures),
            training_auc=dict(training_auc),
            watermark_ms=watermark_ms,
            accepted=dict(counts.accepted),
            late=dict(counts.late),
            invalid=dict(invalid),
            windows_retired=counts.windows_retired,
            published_at=now,
        )
        with self._lock:
            self._snapshot = snapshot

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def describe(self) -> list[Metric]:
        return []  # families vary with the windows held; nothing to check up front

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snap = self._snapshot
        basis = {
            field_name: GaugeMetricFamily(name, text, labels=BASIS_LABELS)
            for field_name, (name, text) in FIGURES.items()
        }
        per_window = {
            "labels": GaugeMetricFamily(
                P + "labels", "Distinct resolved (labelled) predictions held for the window.",
                labels=WINDOW_LABELS,
            ),
            "predictions": GaugeMetricFamily(
                P + "predictions", "Distinct predictions held for the window.",
                labels=WINDOW_LABELS,
            ),
            "due": GaugeMetricFamily(
                P + "due_predictions",
                "Predictions of the window whose label horizon has elapsed by the watermark.",
                labels=WINDOW_LABELS,
            ),
            "coverage": GaugeMetricFamily(
                P + "label_coverage_ratio",
                "Share of the due predictions that have a resolved outcome.",
                labels=WINDOW_LABELS,
            ),
            "sampled": GaugeMetricFamily(
                P + "window_sampled",
                "1 when the window holds a uniform sample (its cap reached), else 0.",
                labels=WINDOW_LABELS,
            ),
            "end": GaugeMetricFamily(
                P + "window_end_timestamp_seconds",
                "End of the window (event time); its start is the window label.",
                labels=WINDOW_LABELS,
            ),
        }  # fmt: skip
        for f in snap.figures:
            labels = [f.model_name, f.model_version, window_label(f.window_start_ms)]
            per_window["labels"].add_metric(labels, f.labels)
            per_window["predictions"].add_metric(labels, f.predictions)
            per_window["due"].add_metric(labels, f.due)
            per_window["sampled"].add_metric(labels, float(f.sampled))
            per_window["end"].add_metric(labels, f.window_end_ms / 1000)
            if not math.isnan(f.label_coverage):
                per_window["coverage"].add_metric(labels, f.label_coverage)
            for name, quality in (("realised", f.realised), ("estimated", f.estimated)):
                _add_quality(basis, [*labels[:2], name, labels[2]], quality)
        yield from basis.values()
        yield from per_window.values()
        training = GaugeMetricFamily(
            P + "training_roc_auc",
            "ROC AUC of the model version on its held-out test split at training time "
            "(registry metadata), the reference of ModelPerformanceDegraded.",
            labels=["model", "model_version"],
        )
        for (name, version), auc in sorted(snap.training_auc.items()):
            training.add_metric([name, version], auc)
        yield training
        yield GaugeMetricFamily(
            P + "min_labels",
            "Labels a window needs before its realised figures are reported.",
            value=self.min_labels,
        )
        # Before the first record, the families are announced without a sample.
        yield GaugeMetricFamily(
            P + "watermark_timestamp_seconds",
            "Event-time watermark: the greatest prediction or resolution time seen.",
            value=snap.watermark_ms / 1000 if snap.watermark_ms != NO_TIME else None,
        )
        yield GaugeMetricFamily(
            P + "last_refresh_timestamp_seconds",
            "Wall-clock time the figures were last computed.",
            value=None if math.isnan(snap.published_at) else snap.published_at,
        )
        records = CounterMetricFamily(
            P + "records",
            "Records read, by topic and result: accepted, late (window retired), invalid.",
            labels=["topic", "result"],
        )
        for kind, topic in sorted(self.topics.items()):
            for result, table in (
                ("accepted", snap.accepted),
                ("late", snap.late),
                ("invalid", snap.invalid),
            ):
                records.add_metric([topic, result], table.get(kind, 0))
        yield records
        yield CounterMetricFamily(
            P + "windows_retired",
            "Windows dropped after their retention.",
            value=snap.windows_retired,
        )


def _add_quality(
    families: dict[str, GaugeMetricFamily], labels: list[str], quality: Quality | None
) -> None:
    if quality is None:
        return
    for field_name, value in quality.as_dict().items():
        family = families.get(field_name)
        if family is not None and not math.isnan(value):
            family.add_metric(labels, value)
