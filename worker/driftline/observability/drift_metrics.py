"""Prometheus export of the drift monitor and the retrain trigger.

Labels are only ``model``, ``model_version``, ``feature``, ``detector`` and ``reason``: a
bounded set (features come from the spec, detectors from the monitor), never a customer.
Gauges are set from each batch's ``DriftUpdate``; counters count alarms and triggers.

The dashboards in ``grafana/dashboards`` (drift-overview, prediction) and the recording
rules in ``monitoring/rules`` select on ``model`` and ``model_version``, so every series
here carries both, the score histogram included.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from driftline.core.drift.monitor import SCORE, DriftUpdate
from driftline.core.drift.trigger import RetrainRequest, RetrainTrigger
from driftline.observability.metrics import BulkHistogram

_NS = "driftline"
log = logging.getLogger(__name__)
#: 0.05 wide over [0, 1]: fine enough for a heatmap and for quantiles of a churn score.
SCORE_BUCKETS = tuple(round(x, 2) for x in np.linspace(0.05, 1.0, 20))
#: Hex digits of the reference hash exported as a number: 48 bits, exact in a float64.
REFERENCE_HASH_HEX_DIGITS = 12
#: Why a drift checkpoint record was ignored (the ``reason`` label: a fixed vocabulary).
CHECKPOINT_REASONS = ("undecodable", "format", "mismatch")
#: ``reason`` of events not monitored because they are older than the reference period.
BEFORE_REFERENCE = "before_reference_period"


class ModelHistogram:
    """A histogram labelled by ``model`` and ``model_version`` that takes whole batches.

    :class:`BulkHistogram` bins a NumPy array in one step but has no labels; the score
    distribution must be told apart per model version (a new version is expected to score
    differently), so this keeps one unregistered ``BulkHistogram`` per version and exposes
    them as a single ordinary histogram family.
    """

    LABELS = ("model", "model_version")

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._buckets = tuple(buckets)
        self._children: dict[tuple[str, str], BulkHistogram] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, model: str, version: str) -> BulkHistogram:
        """The version's histogram, created (all buckets at 0) on first use."""
        key = (model, str(version))
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = BulkHistogram(self.name, self.documentation, self._buckets)
                self._children[key] = child
            return child

    def remove(self, model: str, version: str) -> None:
        """Stop exporting the version's histogram."""
        with self._lock:
            self._children.pop((model, str(version)), None)

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.LABELS)]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.LABELS)
        with self._lock:
            children = list(self._children.items())
        for labels, child in children:
            cumulative, total = child.snapshot()
            bounds = [floatToGoString(b) for b in child.upper_bounds] + ["+Inf"]
            family.add_metric(
                list(labels),
                buckets=[(le, float(c)) for le, c in zip(bounds, cumulative, strict=True)],
                sum_value=total,
            )
        yield family


class DriftMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        mv = ["model", "model_version"]
        feature = [*mv, "feature"]
        detector = [*feature, "detector"]

        def gauge(name: str, doc: str, labels: list[str]) -> Gauge:
            return Gauge(name, doc, labels, namespace=_NS, registry=registry)

        self.score = gauge(
            "feature_drift_score", "Current drift statistic per feature and detector.", detector
        )
        self.threshold = gauge(
            "feature_drift_threshold",
            "Alarm threshold of the detector, from the false-alarm budget.",
            detector,
        )
        self.state = gauge("feature_drift_state", "0 OK, 1 WARN, 2 DRIFT (latched).", feature)
        self.psi = gauge(
            "feature_psi",
            "PSI of the last completed window against the frozen reference bins "
            "(detector: event_window or time_window). Shown, not used as the alarm.",
            detector,
        )
        self.js = gauge(
            "feature_js_divergence",
            "Jensen-Shannon divergence (base 2) of the last completed window.",
            detector,
        )
        self.missing = gauge(
            "feature_missing_ratio", "Missing share in the last event window.", feature
        )
        self.unseen = gauge(
            "feature_unseen_category_ratio",
            "Share of categories not in the reference vocabulary, last event window.",
            feature,
        )
        self.prediction_state = gauge(
            "prediction_drift_state", "Score drift: 0 OK, 1 WARN, 2 DRIFT.", mv
        )
        self.positive_rate = gauge(
            "prediction_positive_rate", "Share of positive decisions in the last batch.", mv
        )
        self.mean_score = gauge("prediction_mean_score", "Mean score in the last batch.", mv)
        self.scores = ModelHistogram(
            f"{_NS}_prediction_score",
            "Scores produced, per model version.",
            SCORE_BUCKETS,
            registry=registry,
        )
        self.alarms = Counter(
            "drift_alarms_total", "Detector alarms.", detector, namespace=_NS, registry=registry
        )
        self.drifted = gauge("drifted_features", "Input features in DRIFT.", mv)
        self.drifted_share = gauge(
            "drifted_importance_share", "Importance-weighted share of features in DRIFT.", mv
        )
        self.unmonitored = Counter(
            "drift_unmonitored_events_total",
            "Scored events the drift monitor did not see, by reason (before_reference_period: "
            "older than the model's reference period; see --drift-from-start).",
            [*mv, "reason"],
            namespace=_NS,
            registry=registry,
        )
        self.reference_rows = gauge(
            "reference_rows", "Rows the model's reference profile was built from.", mv
        )
        # The hash is the value, not a label: the label set stays the fixed one above, and
        # "do all workers compare against the same reference?" is max != min in PromQL.
        self.reference_hash = gauge(
            "reference_hash",
            f"First {REFERENCE_HASH_HEX_DIGITS} hex digits of the reference profile's sha256, "
            "as a number (display it in hex).",
            mv,
        )
        self.triggers = Counter(
            "retrain_triggers_total",
            "Retrain requests sent, by reason.",
            [*mv, "reason"],
            namespace=_NS,
            registry=registry,
        )
        self.last_trigger = gauge(
            "retrain_last_trigger_timestamp_seconds", "When the last retrain request was sent.", mv
        )
        self.cooldown = gauge(
            "retrain_cooldown_remaining_seconds",
            "Event-time seconds of the stream before another request may be sent.",
            mv,
        )
        self.required = gauge(
            "retrain_required", "1 while a retrain request is in flight for this model.", mv
        )
        self.reference_mismatch = gauge(
            "reference_mismatch",
            "1 when most features of the model's first monitored events were off its "
            "reference at once (the reference does not describe the stream: no retrain is "
            "requested), 0 when they fit, NaN before the check.",
            mv,
        )
        #: Model versions whose reference verdict was logged.
        self._verdict_logged: set[tuple[str, str]] = set()
        self.checkpoints_ignored = Counter(
            "drift_checkpoints_ignored_total",
            "Drift checkpoint records ignored at start-up (undecodable, other format, or not "
            "fitting the model served): the monitor started clean.",
            ["reason"],
            namespace=_NS,
            registry=registry,
        )
        for reason in CHECKPOINT_REASONS:
            self.checkpoints_ignored.labels(reason)
        #: Every metric whose first two labels are model and model_version.
        self._by_version: list[Gauge | Counter] = [
            m
            for m in vars(self).values()
            if isinstance(m, Gauge | Counter) and tuple(m._labelnames[:2]) == tuple(mv)
        ]

    def forget(self, model: str, version: str) -> int:
        """Remove every series of ``model`` ``version`` (it stopped serving); returns how many.

        Without this, a swapped-out version's last values stay exported for as long as the
        worker runs: a latched DRIFT state or ``retrain_required`` of 1 would keep
        FeatureDrift and RetrainRequired firing for a model no longer served.
        """
        key = (model, str(version))
        removed = 0
        for metric in self._by_version:
            with metric._lock:  # prometheus_client keeps children by label values
                stale = [labels for labels in metric._metrics if labels[:2] == key]
            for labels in stale:
                metric.remove(*labels)
                removed += 1
        self.scores.remove(model, version)
        return removed

    def ignore_checkpoint(self, reason: str) -> None:
        """Count one ignored checkpoint record (``reason``: one of ``CHECKPOINT_REASONS``)."""
        self.checkpoints_ignored.labels(reason).inc()

    def set_reference(self, model: str, version: str, rows: int) -> None:
        """A model (re)loaded: its series start at 0, so rate/increase see the first step."""
        self.reference_rows.labels(model, version).set(rows)
        for reason in ("prediction_drift", "feature_drift"):
            self.triggers.labels(model, version, reason)
        self.unmonitored.labels(model, version, BEFORE_REFERENCE)
        self.required.labels(model, version).set(0)
        self.reference_mismatch.labels(model, version).set(math.nan)
        self._verdict_logged.discard((model, str(version)))
        self.scores.labels(model, version)

    def publish(self, update: DriftUpdate, model: str, version: str, scores: np.ndarray) -> None:
        """Set the gauges from one batch's update (cheap: a few hundred label lookups)."""
        for feature, by_detector in update.statistics.items():
            limits = update.thresholds.get(feature, {})
            for name, value in by_detector.items():
                self.score.labels(model, version, feature, name).set(_finite(value))
                self.threshold.labels(model, version, feature, name).set(
                    _finite(limits.get(name, math.nan))
                )
        for feature, state in update.states.items():
            if feature == SCORE:
                self.prediction_state.labels(model, version).set(state)
            else:
                self.state.labels(model, version, feature).set(state)
        for values, window in ((update.psi, "event_window"), (update.psi_time, "time_window")):
            for feature, value in values.items():
                self.psi.labels(model, version, feature, window).set(_finite(value))
        for values, window in ((update.js, "event_window"), (update.js_time, "time_window")):
            for feature, value in values.items():
                self.js.labels(model, version, feature, window).set(_finite(value))
        for feature, value in update.missing_ratio.items():
            self.missing.labels(model, version, feature).set(_finite(value))
        for feature, value in update.unseen_ratio.items():
            self.unseen.labels(model, version, feature).set(_finite(value))
        for alarm in update.alarms:
            self.alarms.labels(model, version, alarm.feature, alarm.detector).inc()
        prediction = update.prediction
        if update.n_events:
            self.positive_rate.labels(model, version).set(_finite(prediction.positive_rate))
            self.mean_score.labels(model, version).set(_finite(prediction.mean_score))
        self.drifted.labels(model, version).set(len(update.drifted))
        self.drifted_share.labels(model, version).set(_finite(update.drifted_share))
        self.reference_hash.labels(model, version).set(_hash_value(update.reference_hash))
        self.scores.labels(model, version).observe_many(scores)
        if update.reference_mismatch is not None:
            self.reference_mismatch.labels(model, version).set(int(update.reference_mismatch))
            self._log_verdict(update, model, str(version))

    def _log_verdict(self, update: DriftUpdate, model: str, version: str) -> None:
        """One line per model version when the reference check has decided."""
        if (model, version) in self._verdict_logged:
            return
        self._verdict_logged.add((model, version))
        off = ", ".join(f"{f} (PSI {v:.2f})" for f, v in sorted(update.reference_off.items()))
        if update.reference_mismatch:
            log.warning(
                "drift: the reference of %s %s does not describe the stream: most features of "
                "its first monitored events are off it at once (%s). Drift states are shown "
                "but no retrain is requested; train on data like the stream served "
                "(driftline_reference_mismatch=1)",
                model,
                version,
                off,
            )
        else:
            log.info(
                "drift: the reference of %s %s fits the stream's first events (off: %s)",
                model,
                version,
                off or "none",
            )

    def count_unmonitored(self, model: str, version: str, n_events: int) -> None:
        """``n_events`` scored but not monitored: they precede the reference period."""
        if n_events:
            self.unmonitored.labels(model, version, BEFORE_REFERENCE).inc(n_events)

    def publish_trigger(
        self, model: str, version: str, trigger: RetrainTrigger, request: RetrainRequest | None
    ) -> None:
        if request is not None:
            self.triggers.labels(model, version, request.reason).inc()
            self.last_trigger.labels(model, version).set(request.created_at)
        self.required.labels(model, version).set(1 if trigger.in_flight else 0)
        self.cooldown.labels(model, version).set(trigger.cooldown_remaining_s())


def _hash_value(reference_hash: str) -> float:
    """The hash prefix as an integer-valued float (NaN when there is no hash)."""
    try:
        return float(int(reference_hash[:REFERENCE_HASH_HEX_DIGITS], 16))
    except ValueError:
        return math.nan


def _finite(value: float | None) -> float:
    if value is None:
        return math.nan
    return float(value)
