"""The drift sidecar: monitoring the scored stream, checkpoints, and retrain requests.

Beside the scoring path, not in it: the processor feeds the monitor and the trigger
(``driftline.core.drift``) with each batch; this module gives them their model's reference
profile, continues them across restarts from a checkpoint topic
(``<group>-drift-state``), publishes what they find as metrics, and publishes the retrain
requests they (or Alertmanager, through POST /alerts) raise to the retrain topic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import msgspec
from confluent_kafka import KafkaException

from driftline.core.drift.monitor import DriftMonitor, MonitorBudget
from driftline.core.drift.trigger import RetrainPolicy, RetrainRequest, RetrainTrigger
from driftline.core.spec import FeatureSpec
from driftline.core.state import NO_TIME
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.engine.kafka.delivery import produce_with_backpressure
from driftline.engine.kafka.drift_checkpoint import DriftCheckpoints
from driftline.engine.kafka.ports import ProducerPort
from driftline.engine.kafka.retrain_history import read_retrain_requests
from driftline.engine.kafka.settings import WorkerSettings
from driftline.engine.kafka.transactions import ExactlyOnce
from driftline.model.profile import profiled_features
from driftline.model.registry import LoadedModel
from driftline.observability.alerts import AlertIntake
from driftline.observability.drift_coverage import UnmonitoredEvents
from driftline.observability.drift_metrics import DriftMetrics
from driftline.observability.metrics import WorkerMetrics
from driftline.processor import BatchResult, ScoringProcessor

log = logging.getLogger(__name__)


class DriftSidecar:
    """A worker's drift monitoring, its checkpoints and its retrain requests."""

    def __init__(self, settings: WorkerSettings, spec: FeatureSpec, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.spec = spec
        self.worker_metrics = metrics
        self.metrics = DriftMetrics(metrics.registry) if settings.drift else None
        self.unmonitored = UnmonitoredEvents(self.metrics)
        #: Alertmanager's RetrainRequired alerts, queued by the HTTP thread (POST /alerts)
        #: and handled by the worker's loop, which owns the retrain trigger.
        self.alerts = AlertIntake(metrics.registry, token=settings.alerts_token)
        self._checkpoints: DriftCheckpoints | None = None
        #: Set once the drift checkpoint was looked for (restored or not) at start.
        self.checkpoint_checked = threading.Event()
        self._saved_at = time.monotonic()

    # ------------------------------------------------------------------ per model
    def monitor_for(self, loaded: LoadedModel) -> tuple[DriftMonitor | None, RetrainTrigger | None]:
        """Monitor and trigger for a model, from the reference profile in its metadata."""
        s = self.settings
        profile = loaded.metadata.get("reference_profile")
        if not s.drift or not profile:
            if s.drift:
                log.warning(
                    "model %s %s has no reference profile: no drift monitoring",
                    loaded.name,
                    loaded.version,
                )
            return None, None
        monitor = build_monitor(loaded, self.spec, s.drift_events_per_day)
        trigger = RetrainTrigger(
            RetrainPolicy(persistence_s=s.retrain_persistence_s, cooldown_s=s.retrain_cooldown_s),
            loaded.name,
            loaded.version,
            s.worker_id,
        )
        self.recall_requests(trigger)
        log.info(
            "drift budget for %s %s: one false alarm per 30 days of %.6g events/day (%s)",
            loaded.name,
            loaded.version,
            monitor.budget.events_per_day,
            "--drift-events-per-day"
            if s.drift_events_per_day
            else "the reference's events per day"
            if profile.get("events_per_day")
            else "default",
        )
        if monitor.inactive:
            log.info(
                "drift: nothing to test for %s (the reference never observed a value, or "
                "its missing rate leaves no room to rise): those detectors are off",
                ", ".join(sorted(f"{f}:{d}" for f, d in monitor.inactive)),
            )
        if self.metrics is not None:
            self.metrics.set_reference(loaded.name, loaded.version, int(profile.get("n_rows", 0)))
        return monitor, trigger

    def since(self, loaded: LoadedModel) -> int:
        """Event time from which drift is monitored: the reference period's start, or every
        event with ``--drift-from-start``."""
        return NO_TIME if self.settings.drift_from_start else reference_start(loaded)

    def model_changed(self, processor: ScoringProcessor, loaded: LoadedModel) -> None:
        """A new model brings its own reference: detectors restart against it, and the
        old version's drift series go (their alerts would fire for a model not served)."""
        old = processor.scorer
        if self.metrics is not None and (old.name, old.version) != (loaded.name, loaded.version):
            self.metrics.forget(old.name, old.version)
        processor.drift, processor.trigger = self.monitor_for(loaded)
        processor.drift_since_ms = self.since(loaded)

    def recall_requests(self, trigger: RetrainTrigger) -> None:
        """Gates of a new trigger from the requests already on the topic (a restart must
        neither repeat the incident's request nor forget its cooldown)."""
        s = self.settings
        ensure_topics(s.bootstrap_servers, [TopicSpec(s.retrain_topic, 1)])
        try:
            recalled = trigger.recall(read_retrain_requests(s.bootstrap_servers, s.retrain_topic))
        except (TimeoutError, RuntimeError) as exc:
            log.warning("retrain history unreadable (%s): gates start empty", exc)
            return
        if recalled:
            log.info("recalled %d recent retrain request(s) of %s", recalled, trigger.model_name)

    # ------------------------------------------------------------------ checkpoints
    def restore_checkpoint(self, processor: ScoringProcessor) -> None:
        """Continue the monitor (and trigger) this worker id saved, if it watched the same
        model version against the same reference; otherwise start clean."""
        try:
            self._restore_state(processor)
        finally:
            self.checkpoint_checked.set()

    def _restore_state(self, processor: ScoringProcessor) -> None:
        s = self.settings
        self._saved_at = time.monotonic()
        if processor.drift is None:
            return
        store = DriftCheckpoints(
            s.bootstrap_servers,
            s.drift_state_topic,
            s.worker_id,
            on_ignored=None if self.metrics is None else self.metrics.ignore_checkpoint,
        )
        self._checkpoints = store
        store.ensure_topic()
        saved = store.load()
        restored = (
            None if saved is None else store.restore(saved, processor.drift, processor.trigger)
        )
        if restored is None:
            return
        if restored.trigger is not None:
            try:
                restored.trigger.recall(read_retrain_requests(s.bootstrap_servers, s.retrain_topic))
            except (TimeoutError, RuntimeError) as exc:
                log.warning("drift checkpoint not restored (%s): monitor starts clean", exc)
                return
            processor.trigger = restored.trigger
        processor.drift = restored.monitor
        log.info(
            "drift monitor restored from its checkpoint (%d events seen, drifted: %s)",
            processor.drift.events_seen,
            [f for f, state in processor.drift.states.items() if state == 2] or "none",
        )

    def checkpoint_due(self) -> bool:
        return time.monotonic() - self._saved_at > self.settings.drift_checkpoint_interval_s

    def save_checkpoint(self, processor: ScoringProcessor | None, flush: bool = False) -> None:
        self._saved_at = time.monotonic()
        store = self._checkpoints
        if processor is None or processor.drift is None or store is None:
            return
        try:
            trigger = None if processor.trigger is None else processor.trigger.state_dict()
            store.save(processor.drift.state_dict(), trigger)
            if flush:
                store.flush()
        except (ValueError, KafkaException, BufferError) as exc:
            log.warning("drift checkpoint not saved: %s", exc)

    # ------------------------------------------------------------------ per batch
    def publish(self, processor: ScoringProcessor, result: BatchResult) -> None:
        """A batch's drift, coverage and trigger state as metrics."""
        if result.drift is None or self.metrics is None:
            return
        self.worker_metrics.observe_stage("drift", result.stage_seconds["drift"])
        scorer = processor.scorer
        self.metrics.publish(result.drift, scorer.name, scorer.version, result.scores)
        self.unmonitored.record(
            scorer.name, scorer.version, result.drift_before_reference, processor.drift_since_ms
        )
        if processor.trigger is not None:
            self.metrics.publish_trigger(
                scorer.name, scorer.version, processor.trigger, result.retrain_request
            )

    def tick_trigger(self, processor: ScoringProcessor | None) -> None:
        """No batch this poll: the trigger runs on event time, so idling fires nothing
        (a replay that ended drifting stays quiet); an unanswered request may time out on
        the wall clock, which the retrain-required gauge must show."""
        if processor is None or processor.trigger is None or not processor.trigger.tick():
            return
        log.warning("retrain request unanswered within the in-flight timeout: gate open")
        if self.metrics is not None:
            scorer, trigger = processor.scorer, processor.trigger
            self.metrics.publish_trigger(scorer.name, scorer.version, trigger, None)

    # ------------------------------------------------------------------ retrain requests
    def take_alerts(
        self, processor: ScoringProcessor | None, send: Callable[[RetrainRequest], None]
    ) -> None:
        """Between batches: alerts queued by POST /alerts meet the retrain trigger here,
        in the thread that feeds it, so an alert and the trigger cannot both fire an
        incident; a request the trigger lets through is sent at once (``send``)."""
        if not self.alerts.pending or processor is None:
            return
        scorer, trigger = processor.scorer, processor.trigger
        for request in self.alerts.take(scorer.name, scorer.version, trigger):
            log.warning("retrain requested by alert (incident %s)", request.incident_id)
            send(request)
            if self.metrics is not None and trigger is not None:
                self.metrics.publish_trigger(scorer.name, scorer.version, trigger, request)

    def send_retrain_request(
        self,
        producer: ProducerPort,
        request: RetrainRequest,
        transactions: ExactlyOnce | None,
        settle: Callable[[], None],
    ) -> None:
        """Outside a batch: a delivery error stops the worker at the next flush, like one
        of a batch; exactly-once gives the request a transaction of its own, after
        ``settle`` let the batch in flight commit its own (on the deliverer thread)."""
        topic = self.settings.retrain_topic
        value, key = msgspec.json.encode(request), request.incident_id.encode()
        if transactions is None:
            produce_with_backpressure(producer, topic, value, key)
            producer.poll(0)
            return
        settle()
        transactions.send_alone(
            producer,
            lambda: produce_with_backpressure(producer, topic, value, key),
            "retrain request",
        )


def build_monitor(
    loaded: LoadedModel, spec: FeatureSpec, events_per_day: float | None = None
) -> DriftMonitor:
    """The drift monitor of a model, from the reference profile in its metadata.

    Only the features the profile has a reference for are watched: a model trained without
    some spec features (constant or entirely missing in training) has none for them.  The
    positive rate is counted at the model's own decision threshold, as the worker decides.
    """
    profile = loaded.metadata["reference_profile"]
    per_day = events_per_day or profile.get("events_per_day") or 100_000.0
    numeric, categorical = profiled_features(
        profile, spec.numeric_features, spec.categorical_features
    )
    return DriftMonitor(
        profile,
        numeric,
        categorical,
        MonitorBudget(false_triggers=1.0, period_days=30.0, events_per_day=float(per_day)),
        importances=feature_importances(loaded, spec),
        decision_threshold=loaded.threshold,
    )


def reference_start(loaded: LoadedModel) -> int:
    """Start of the period the model's reference profile describes (epoch ms)."""
    window = (loaded.metadata.get("reference_profile") or {}).get("window_ms")
    return int(window[0]) if window else NO_TIME


def feature_importances(loaded: LoadedModel, spec: FeatureSpec) -> dict[str, float] | None:
    """Importance per spec feature, summed over its encoded columns (``num__x``, ``cat__x_a``).

    None (equal weights) when the model recorded none.
    """
    recorded = loaded.metadata.get("metrics", {}).get("top_importances") or []
    if not recorded:
        return None
    totals = dict.fromkeys(spec.feature_names, 0.0)
    for entry in recorded:
        column = str(entry.get("feature", "")).split("__", 1)[-1]
        owner = next(
            (
                f
                for f in sorted(totals, key=len, reverse=True)
                if column == f or column.startswith(f"{f}_")
            ),
            None,
        )
        if owner is not None:
            totals[owner] += float(entry.get("importance", 0.0))
    return totals if any(totals.values()) else None
