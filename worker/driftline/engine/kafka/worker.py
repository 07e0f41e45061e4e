"""The confluent-kafka engine: consume a micro-batch, process it, produce, then commit.

State: each input partition's customer state is written to a compacted changelog topic
(``<group>-<input>-changelog``, same partition numbers), one snapshot per customer the
batch touched plus a watermark record, and restored from it when the partition is
assigned, before any of its events is processed (``/readyz`` is false meanwhile).

At-least-once (default): predictions and dead letters are produced and flushed, then the
changelog, then the input offsets are committed.  A crash before the commit delivers the
batch again; customers whose snapshot already reflects an event skip it (counted as
redelivered), the others recompute the same predictions (duplicates, bounded by a batch).

Exactly-once (``exactly_once``): one transaction per batch holds the predictions, the dead
letters, the changelog records and the input offsets (``send_offsets_to_transaction``).
Restores read the changelog ``read_committed``, so state always matches the committed
offsets.  A failed transaction (its records timed out: a broker that did not answer for
longer than the transaction timeout) rewinds the worker to the last committed batch: a
new producer finishes the transaction, the committed offsets are asked of the broker (a
commit the client saw fail may have happened), state is restored from the changelog, the
consumer sought back and whatever did not commit scored again.  A fenced producer, or a
fatal error, stops the worker (exit 3) without committing: whoever takes the partitions
over restores them from the last committed batch.

Shutdown on SIGTERM/SIGINT: the flag is checked between batches, so the current batch
is finished, flushed and committed before the consumer leaves the group; exit code 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from driftline import config
from driftline.core.clock_skew import (
    DEFAULT_MAX_CLOCK_SKEW_MS,
    DEFAULT_MAX_REPLAY_JUMP_MS,
    ClockSkewPolicy,
)
from driftline.core.drift.cusum import NATIVE_SCAN
from driftline.core.drift.monitor import DriftMonitor, MonitorBudget
from driftline.core.drift.trigger import RetrainPolicy, RetrainRequest, RetrainTrigger
from driftline.core.spec import FeatureSpec
from driftline.core.state import NATIVE_KERNEL, NO_TIME, FeatureState
from driftline.engine.batching import AdaptiveBatcher, BatchPlan
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.engine.kafka.client_config import kafka_client_config
from driftline.engine.kafka.dead_letters import (
    PRODUCER_MAX_MESSAGE_BYTES,
    DeadLetterWriter,
    batch_size_for,
)
from driftline.engine.kafka.drift_checkpoint import DriftCheckpoints
from driftline.engine.kafka.retrain_history import read_retrain_requests
from driftline.model.registry import LoadedModel, ModelRefused, ModelRegistry
from driftline.model.runtimes.process import ScoringProcess, ScoringProcessFailed, ScoringRaised
from driftline.model.runtimes.sklearn import Scorer, limit_native_threads
from driftline.model.runtimes.verification import RuntimeRefused
from driftline.model.watcher import ModelWatcher
from driftline.observability.alerts import AlertIntake
from driftline.observability.bearer import BearerToken
from driftline.observability.drift_coverage import UnmonitoredEvents
from driftline.observability.drift_metrics import DriftMetrics
from driftline.observability.http import HealthServer, HealthState
from driftline.observability.metrics import WorkerMetrics
from driftline.processor import BatchResult, PreparedBatch, RawBatch, Rejected, ScoringProcessor

log = logging.getLogger(__name__)


@dataclass
class WorkerSettings:
    bootstrap_servers: str = config.DEFAULT_BOOTSTRAP
    input_topic: str = config.INPUT_TOPIC
    output_topic: str = config.OUTPUT_TOPIC
    dead_letter_topic: str = config.DEAD_LETTER_TOPIC
    group_id: str = config.CONSUMER_GROUP
    registry: str = config.DEFAULT_REGISTRY
    model_name: str = config.DEFAULT_MODEL_NAME
    model_version: str = "latest"
    #: Most records per micro-batch (the adaptive controller stays at or below it).
    batch_size: int = 2000
    #: Longest wait for a batch to fill (the controller waits less when caught up).
    poll_timeout_s: float = 0.05
    #: Adaptive micro-batching (``driftline.engine.batching``): grow the batch under a
    #: backlog, shrink it and the poll wait when caught up, to ``latency_target_s``.
    adaptive_batch: bool = True
    #: Floor of the adaptive size: below it, per-batch costs (a predict call is ~10 ms
    #: with scikit-learn) dominate and a burst needs many doublings to be absorbed.  It
    #: is only a cap: a caught-up worker's batches are what arrives within the wait.
    min_batch_size: int = 500
    latency_target_s: float = 0.05
    #: Deliver and commit batch N on a second thread while batch N+1 is consumed and
    #: scored (at most one batch in flight; same ordering guarantees as sequential).
    pipelined: bool = True
    #: Score in a child process (``driftline.model.scoring_process``): while it scores
    #: batch N the loop consumes, decodes and updates the state of batch N+1, so the
    #: model's time overlaps the loop's instead of adding to it.  Pays off when the model
    #: costs about as much as the rest (scikit-learn forests) and a second core is free;
    #: the compiled runtime is cheaper than the hand-off.
    scoring_process: bool = False
    #: ``auto`` (compiled when it reproduces the model, else sklearn), ``sklearn``,
    #: ``compiled`` or ``onnx``.  A faster runtime is only used after it matches
    #: scikit-learn on the model's reference sample within its tolerance; see
    #: driftline.model.compiled and driftline.model.onnx.
    model_runtime: str = "auto"
    onnx_tolerance: float = 1e-5
    #: ``compiled``: numpy preprocessing and direct tree calls; same bits expected.
    compiled_tolerance: float = 1e-12
    metrics_host: str = "0.0.0.0"
    metrics_port: int = config.DEFAULT_METRICS_PORT
    #: POST /alerts needs ``Authorization: Bearer <token>`` when set (never in a repr).
    alerts_token: BearerToken | None = field(default=None, repr=False)
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    max_event_bytes: int = 64 * 1024
    #: The producer's ``message.max.bytes`` (explicit, not librdkafka's default by
    #: accident): dead letters are cut to fit it and the dead-letter topic's own limit.
    producer_max_message_bytes: int = PRODUCER_MAX_MESSAGE_BYTES
    #: The consumer's ``fetch.max.bytes``: a fetch returns at least one whole record batch
    #: whatever its size, and librdkafka must be able to receive it (a 20 MB event is
    #: read, rejected as oversized and dead-lettered, not left blocking its partition).
    fetch_max_bytes: int = 64 * 1024 * 1024
    #: Future-dated events (``driftline.core.clock_skew``): how far ahead of the wall
    #: clock an event may be, and how far ahead of a replaying partition's own clock.
    max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS
    max_replay_jump_ms: int = DEFAULT_MAX_REPLAY_JUMP_MS
    eviction_interval_s: float = 30.0
    native_threads: int = 1
    model_poll_interval_s: float = 5.0
    changelog: bool = True
    exactly_once: bool = False
    #: Exactly-once: how long the broker keeps a transaction open (an abandoned one blocks
    #: read_committed readers until then), and how long librdkafka lets its records wait.
    transaction_timeout_s: float = 15.0
    group_instance_id: str | None = None
    restore_timeout_s: float = 300.0
    broker_probe_interval_s: float = 2.0
    #: Drift monitoring against the model's reference profile (off until it is complete).
    drift: bool = False
    retrain_topic: str = "retrain-requests"
    drift_checkpoint_interval_s: float = 30.0  # monitor checkpoints (and one at shutdown)
    drift_events_per_day: float | None = None  # default: from the reference profile
    #: Monitor events older than the reference period too (default: they are skipped,
    #: counted and logged by ``driftline.observability.drift_coverage``).
    drift_from_start: bool = False
    retrain_persistence_s: float = 600.0
    retrain_cooldown_s: float = 86400.0
    consumer_config: dict[str, Any] = field(default_factory=dict)
    producer_config: dict[str, Any] = field(default_factory=dict)

    @property
    def changelog_topic(self) -> str:
        return f"{self.group_id}-{self.input_topic}-changelog"

    @property
    def drift_state_topic(self) -> str:
        return f"{self.group_id}-drift-state"


@dataclass
class _Prepared:
    """A batch prepared (decoded, state updated) and not finished yet: with a scoring
    process, the batch whose scores the child is computing while the next is prepared."""

    prepared: PreparedBatch
    records: list[Message]
    started: float
    #: Its block was sent to the scoring process (a batch of rejects only has none).
    submitted: bool = False


@dataclass
class _InFlight:
    """A batch handed to the deliverer thread: what to commit once it is delivered."""

    future: Future[None]
    offsets: list[TopicPartition]
    n: int
    started: float


#: How long a replacement transactional producer waits for the broker to answer its
#: Times the committed offsets are asked for at assignment before giving up (a timeout,
#: or offsets held by an open transaction, which its transaction timeout ends).
COMMITTED_ATTEMPTS = 30
#: ``init_transactions`` before the worker gives up and stops (exit 3).
INIT_TRANSACTIONS_PATIENCE_S = 600.0


class DeliveryFailed(RuntimeError):
    """The producer could not deliver part of a batch: its offsets must not be committed."""


class TransactionFailed(RuntimeError):
    """A batch's transaction was aborted or fenced: nothing of it is visible.

    ``recoverable``: the producer is not done for (its records timed out, a broker did not
    answer in time), so the worker replaces it, rewinds to the last committed batch and
    carries on.  Otherwise (fenced, a fatal producer error) it stops.
    """

    def __init__(self, message: str, *, recoverable: bool = False) -> None:
        super().__init__(message)
        self.recoverable = recoverable


class RestoreFailed(RuntimeError):
    """A partition's state could not be restored: processing it would give wrong scores."""


class KafkaScoringWorker:
    """One worker process: a consumer-group member that scores what it is assigned."""

    def __init__(
        self,
        settings: WorkerSettings,
        spec: FeatureSpec,
        metrics: WorkerMetrics | None = None,
        health: HealthState | None = None,
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.metrics = metrics or WorkerMetrics()
        self.health = health or HealthState()
        self._stop = threading.Event()
        self._delivery_errors: list[str] = []
        self._last_eviction = self._last_contact = time.monotonic()
        self.processor: ScoringProcessor | None = None
        self.model_watcher: ModelWatcher | None = None
        self.drift_metrics = DriftMetrics(self.metrics.registry) if settings.drift else None
        self._unmonitored = UnmonitoredEvents(self.drift_metrics)
        #: Alertmanager's RetrainRequired alerts, queued by the HTTP thread (POST /alerts)
        #: and handled by this worker's loop, which owns the retrain trigger.
        self.alerts = AlertIntake(self.metrics.registry, token=settings.alerts_token)
        self.batches = 0
        self._pending_changelog: list[tuple[int, bytes, bytes | None]] = []
        self._drift_checkpoints: DriftCheckpoints | None = None
        self._consumer: Consumer | None = None  # the loop's, once running
        #: Set once the drift checkpoint was looked for (restored or not) at start.
        self.drift_checkpoint_checked = threading.Event()
        self._drift_saved_at = time.monotonic()
        self.events_processed = 0
        self.first_batch_started: float | None = None  # perf_counter, for benchmarks
        self.last_batch_done: float | None = None
        self._assigned: set[int] = set()
        #: Exactly-once: each assigned partition's offset as this worker last committed it
        #: (or found it at assignment); what a rewind restates.
        self._last_committed: dict[int, int] = {}
        #: The batch being delivered by the deliverer thread, if any.
        self._in_flight: _InFlight | None = None
        self._deliverer = ThreadPoolExecutor(1, thread_name_prefix="driftline-deliver")
        #: A delivery failure seen inside a rebalance callback, re-raised by the loop.
        self._failure: DeliveryFailed | TransactionFailed | ScoringProcessFailed | None = None
        #: ``scoring_process``: the child scoring the batches, and the batch it is on.
        self._scoring: ScoringProcess | None = None
        self._pending: _Prepared | None = None
        #: The loop's producer (rebalance callbacks finish the pending batch with it).
        self._producer: Producer | None = None
        #: Revocations that found a batch pending in the scoring process (and finished it).
        self.revoked_with_pending = 0
        #: Batches sent to the scoring process (the others were scored in the loop).
        self.batches_to_scoring_process = 0
        self.batcher: AdaptiveBatcher | None = None
        #: Dead letters cut to fit their topic; their failures never stop the worker.
        self._dead_letters: DeadLetterWriter | None = None
        #: Answers the committed offsets at assignment (see ``_committed``).
        self._offsets_admin: AdminClient | None = None

    @property
    def scoring_pid(self) -> int | None:
        """The scoring process's pid (None: the worker scores in its own process)."""
        return self._scoring.pid if self._scoring is not None else None

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask the loop to finish its batch, commit and leave (thread- and signal-safe)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def load_model(self) -> Scorer:
        s = self.settings
        self.model_watcher = ModelWatcher(
            ModelRegistry(s.registry),
            s.model_name,
            s.model_version,
            expected_features=self.spec.feature_names,
            expected_spec_digest=self.spec.digest,
            interval_s=s.model_poll_interval_s,
        )
        try:
            loaded = self.model_watcher.load()
        except ModelRefused as refused:
            self.metrics.inc_model_load_failures(refused.reason)
            self.health.set_model_loaded(False, f"{refused.reason}: {refused.message}")
            raise
        return self._use_model(loaded)

    def _drift_for(self, loaded: LoadedModel) -> tuple[DriftMonitor | None, RetrainTrigger | None]:
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
        per_day = s.drift_events_per_day or profile.get("events_per_day") or 100_000.0
        monitor = DriftMonitor(
            profile,
            self.spec.numeric_features,
            self.spec.categorical_features,
            MonitorBudget(false_triggers=1.0, period_days=30.0, events_per_day=float(per_day)),
            importances=_feature_importances(loaded, self.spec),
        )
        trigger = RetrainTrigger(
            RetrainPolicy(persistence_s=s.retrain_persistence_s, cooldown_s=s.retrain_cooldown_s),
            loaded.name,
            loaded.version,
            s.worker_id,
        )
        self._recall_requests(trigger)
        if monitor.inactive:
            log.info(
                "drift: nothing to test for %s (the reference never observed a value, or "
                "its missing rate leaves no room to rise): those detectors are off",
                ", ".join(sorted(f"{f}:{d}" for f, d in monitor.inactive)),
            )
        if self.drift_metrics is not None:
            self.drift_metrics.set_reference(
                loaded.name, loaded.version, int(profile.get("n_rows", 0))
            )
        return monitor, trigger

    def _drift_since(self, loaded: LoadedModel) -> int:
        """Event time from which drift is monitored: the reference period's start, or every
        event with ``--drift-from-start``."""
        return NO_TIME if self.settings.drift_from_start else _reference_start(loaded)

    def _restore_drift_checkpoint(self) -> None:
        """Continue the monitor (and trigger) this worker id saved, if it watched the same
        model version against the same reference; otherwise start clean."""
        try:
            self._restore_drift_state()
        finally:
            self.drift_checkpoint_checked.set()

    def _restore_drift_state(self) -> None:
        s = self.settings
        processor = self.processor
        self._drift_saved_at = time.monotonic()
        if processor is None or processor.drift is None:
            return
        store = DriftCheckpoints(
            s.bootstrap_servers,
            s.drift_state_topic,
            s.worker_id,
            on_ignored=None if self.drift_metrics is None else self.drift_metrics.ignore_checkpoint,
        )
        self._drift_checkpoints = store
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

    def _save_drift_checkpoint(self, flush: bool = False) -> None:
        self._drift_saved_at = time.monotonic()
        processor, store = self.processor, self._drift_checkpoints
        if processor is None or processor.drift is None or store is None:
            return
        try:
            trigger = None if processor.trigger is None else processor.trigger.state_dict()
            store.save(processor.drift.state_dict(), trigger)
            if flush:
                store.flush()
        except (ValueError, KafkaException, BufferError) as exc:
            log.warning("drift checkpoint not saved: %s", exc)

    def _recall_requests(self, trigger: RetrainTrigger) -> None:
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

    def _use_model(self, loaded: LoadedModel) -> Scorer:
        scorer = self._scorer_for(loaded)
        if self.settings.scoring_process:
            # A child per model: the old one is done (its batch was finished before).
            started = ScoringProcess(scorer, self.settings.native_threads)
            if self._scoring is not None:
                self._scoring.close()
            self._scoring = started
            log.info("scoring in process %s", started.pid)
        if self.processor is not None:
            # A new model brings its own reference: detectors restart against it, and the
            # old version's drift series go (their alerts would fire for a model not served).
            old = self.processor.scorer
            if self.drift_metrics is not None and (old.name, old.version) != (
                loaded.name,
                loaded.version,
            ):
                self.drift_metrics.forget(old.name, old.version)
            self.processor.drift, self.processor.trigger = self._drift_for(loaded)
            self.processor.drift_since_ms = self._drift_since(loaded)
        self.metrics.set_model(loaded.name, loaded.version, loaded.sha256)
        self.health.set_model_loaded(True)
        log.info("model %s %s loaded (sha256 %s)", loaded.name, loaded.version, loaded.sha256[:12])
        return scorer

    def _scorer_for(self, loaded: LoadedModel) -> Scorer:
        """scikit-learn, or a faster runtime when asked for and only once it matches
        scikit-learn on the model's reference sample (a mismatch or an unsupported model
        raises a ``RuntimeRefused``)."""
        runtime = self.settings.model_runtime
        if runtime == "sklearn":
            return Scorer(loaded)
        if runtime == "auto":
            # The compiled runtime when it reproduces the model, else scikit-learn's own.
            from driftline.model.runtimes.compiled import load_compiled_scorer

            try:
                compiled, _worst = load_compiled_scorer(loaded, self.settings.compiled_tolerance)
            except RuntimeRefused as refused:
                log.info(
                    "model %s %s runs in scikit-learn: %s", loaded.name, loaded.version, refused
                )
                return Scorer(loaded)
            log.info(
                "model %s %s runs in the compiled runtime (same scores as scikit-learn on "
                "its reference sample)",
                loaded.name,
                loaded.version,
            )
            return compiled
        scorer: Scorer
        if runtime == "compiled":
            from driftline.model.runtimes.compiled import load_compiled_scorer

            tolerance = self.settings.compiled_tolerance
            scorer, worst = load_compiled_scorer(loaded, tolerance)
            where = "the compiled runtime"
        elif runtime == "onnx":
            from driftline.model.runtimes.onnx import load_onnx_scorer

            tolerance = self.settings.onnx_tolerance
            scorer, worst = load_onnx_scorer(loaded, tolerance)
            where = "ONNX Runtime"
        else:
            raise ValueError(f"unknown model runtime {runtime!r}: auto, sklearn, compiled or onnx")
        log.info(
            "model %s %s runs in %s (max |diff| vs scikit-learn %.2g, tolerance %g)",
            loaded.name,
            loaded.version,
            where,
            worst,
            tolerance,
        )
        return scorer

    def _check_model(self, consumer: Consumer, producer: Producer) -> None:
        """Between batches: swap in a new verified model; a refused one is only counted."""
        watcher = self.model_watcher
        if watcher is None or self.processor is None or not watcher.due():
            return
        result = watcher.poll()  # logs loads and refusals itself
        if result.kind == "loaded" and result.model is not None:
            # A batch is scored and published by one model: the pending one, by the old.
            self._finish_pending(consumer, producer)
            try:
                self.processor.scorer = self._use_model(result.model)
            except RuntimeError as error:  # ONNX refused the new model: keep the old one
                log.error("new model not swapped in: %s", error)
        elif result.kind == "refused" and result.reason is not None:
            # The previous model keeps serving: health stays ready, the alert fires on this.
            self.metrics.inc_model_load_failures(result.reason)

    def _tick_trigger(self) -> None:
        """No batch this poll: the trigger runs on event time, so idling fires nothing
        (a replay that ended drifting stays quiet); an unanswered request may time out on
        the wall clock, which the retrain-required gauge must show."""
        processor = self.processor
        if processor is None or processor.trigger is None or not processor.trigger.tick():
            return
        log.warning("retrain request unanswered within the in-flight timeout: gate open")
        if self.drift_metrics is not None:
            scorer, trigger = processor.scorer, processor.trigger
            self.drift_metrics.publish_trigger(scorer.name, scorer.version, trigger, None)

    def _take_alerts(self, producer: Producer) -> None:
        """Between batches: alerts queued by POST /alerts meet the retrain trigger here,
        in the thread that feeds it, so an alert and the trigger cannot both fire an
        incident; a request the trigger lets through is sent at once."""
        if not self.alerts.pending or self.processor is None:
            return
        scorer, trigger = self.processor.scorer, self.processor.trigger
        for request in self.alerts.take(scorer.name, scorer.version, trigger):
            log.warning("retrain requested by alert (incident %s)", request.incident_id)
            self._send_retrain_request(producer, request)
            if self.drift_metrics is not None and trigger is not None:
                self.drift_metrics.publish_trigger(scorer.name, scorer.version, trigger, request)

    def _send_retrain_request(self, producer: Producer, request: RetrainRequest) -> None:
        """Outside a batch: a delivery error stops the worker at the next flush, like one
        of a batch; exactly-once gives the request a transaction of its own."""
        s = self.settings
        if s.exactly_once and self._consumer is not None:
            # The batch in flight commits its own transaction on the deliverer thread: let
            # it finish (and commit) before this request opens another one.
            self._collect_delivered(self._consumer, block=True)
        value, key = msgspec.json.encode(request), request.incident_id.encode()
        produce = producer.produce
        if not s.exactly_once:
            _produce_with_backpressure(producer, produce, s.retrain_topic, value, key)
            producer.poll(0)
            return
        try:
            producer.begin_transaction()
            _produce_with_backpressure(producer, produce, s.retrain_topic, value, key)
            producer.commit_transaction(60)
        except KafkaException as error:
            raise TransactionFailed(f"retrain request not committed: {error}") from error

    def _consumer_config(self) -> dict[str, Any]:
        s = self.settings
        return kafka_client_config(
            {
                "bootstrap.servers": s.bootstrap_servers,
                "group.id": s.group_id,
                "client.id": f"driftline-{s.worker_id}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1500,
                "max.poll.interval.ms": 300000,
                # The broker holds a fetch up to this long when it has nothing new: every
                # event can wait that long before the worker sees it.  A fifth of the latency
                # target (10 ms by default; 50 ms before cost ~15 ms of p50 on Tansu).
                "fetch.wait.max.ms": max(1, min(50, int(s.latency_target_s * 1000 / 5))),
                "statistics.interval.ms": 5000,
                "stats_cb": self.metrics.update_from_librdkafka_stats,
                "error_cb": self._on_client_error,
                "on_commit": self._on_commit,
                "isolation.level": "read_committed",
                "fetch.max.bytes": s.fetch_max_bytes,
                # librdkafka wants room for a whole fetch response plus its framing.
                "receive.message.max.bytes": s.fetch_max_bytes + 1024 * 1024,
                **({"group.instance.id": s.group_instance_id} if s.group_instance_id else {}),
                **s.consumer_config,
            }
        )

    def _producer_config(self) -> dict[str, Any]:
        s = self.settings
        return kafka_client_config(
            {
                "bootstrap.servers": s.bootstrap_servers,
                "client.id": f"driftline-{s.worker_id}",
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "batch.num.messages": 10000,
                "message.max.bytes": s.producer_max_message_bytes,
                # Under the dead-letter topic's limit: the broker refuses a whole record batch
                # over it, and librdkafka does not split one (see engine.kafka.dead_letters).
                "batch.size": batch_size_for(
                    self._dead_letters.record_limit
                    if self._dead_letters is not None
                    else s.producer_max_message_bytes
                ),
                "error_cb": self._on_client_error,
                # Delivery reports only for failures: a Python callback per delivered record
                # cost more than the produce call itself.  ``flush()`` still waits for every
                # record, and a failed one still reaches ``_on_delivery`` before it returns.
                "delivery.report.only.error": True,
                "on_delivery": self._on_delivery,
                **(
                    {
                        # A restarted instance must fence its crashed predecessor's open
                        # transaction: with static membership the instance id is the stable
                        # identity (the pid in the default worker id is not), so it names the
                        # transactional id too.  Brokers that never time out an abandoned
                        # transaction (Tansu) otherwise keep it open for good.
                        "transactional.id": transactional_id(
                            s.group_id, s.group_instance_id or s.worker_id
                        ),
                        # An abandoned transaction (a killed worker that does not come back
                        # under the same id) blocks read_committed readers until it times out.
                        "transaction.timeout.ms": int(s.transaction_timeout_s * 1000),
                    }
                    if s.exactly_once
                    else {}
                ),
                **s.producer_config,
            }
        )

    def _on_client_error(self, error: KafkaError) -> None:
        log.warning("kafka client: %s", error)
        if error.code() in (
            KafkaError._ALL_BROKERS_DOWN,
            KafkaError._TRANSPORT,
            KafkaError._TIMED_OUT,
        ):
            self.health.set_broker_ok(False, str(error))
        if error.fatal():
            self._delivery_errors.append(f"fatal client error: {error}")
            self.stop()

    def _probe_broker(self, consumer: Consumer) -> None:
        """While idle, ask the broker for metadata: readiness must notice a dead broker.

        With no records flowing nothing else talks to the broker from this thread, and a
        frozen broker (connection open, no answers) raises no client error for a long time.
        """
        try:
            consumer.list_topics(self.settings.input_topic, timeout=1.0)
        except KafkaException as error:
            self.health.set_broker_ok(False, f"metadata request failed: {error}")
        else:
            self.health.set_broker_ok(True)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self.processor is not None
        numbers = sorted(tp.partition for tp in partitions)
        s = self.settings
        needed = bool(numbers) and (s.changelog or s.exactly_once)
        committed = self._committed(consumer, numbers) if needed else {}
        if s.exactly_once:
            self._last_committed.update(committed)
        if s.changelog and numbers:
            self.health.set_restoring(f"restoring state of partitions {numbers}")
            log.info("restoring %s, committed offsets %s", numbers, committed)
            self._restore(numbers, committed)
            self.health.set_restoring(None)
        else:
            self.processor.assign(numbers)
        self._assigned.update(numbers)
        self._report_assignment()
        log.info("assigned %s", sorted(tp.partition for tp in partitions))

    def _committed(self, consumer: Consumer, partitions: list[int]) -> dict[int, int]:
        """The group's committed input offset per partition (negative: none yet).

        Asked through an admin client of its own, not the consumer: the consumer asks
        from inside its assignment callback, and there (Apache Kafka 4.4, librdkafka
        2.16) a restarted member's request went unanswered for minutes, in ~1 of 2 runs
        of the drift restart test; the admin client's answer comes in milliseconds.
        Stable offsets (``require_stable``): a transaction still open on them is waited
        for, as a read_committed consumer would.  Asked again (a timeout, or offsets
        still held by an open transaction) up to COMMITTED_ATTEMPTS times.
        """
        from confluent_kafka import ConsumerGroupTopicPartitions

        s = self.settings
        asked = [TopicPartition(s.input_topic, p) for p in partitions]
        if self._offsets_admin is None:
            self._offsets_admin = AdminClient(
                kafka_client_config({"bootstrap.servers": s.bootstrap_servers})
            )
        for attempt in range(1, COMMITTED_ATTEMPTS + 1):
            request = [ConsumerGroupTopicPartitions(s.group_id, asked)]
            futures = self._offsets_admin.list_consumer_group_offsets(
                request, require_stable=True, request_timeout=30
            )
            try:
                answer = futures[s.group_id].result(timeout=35)
            except KafkaException as error:
                kafka_error = error.args[0] if error.args else None
                retriable = isinstance(kafka_error, KafkaError) and kafka_error.retriable()
                if not retriable or attempt == COMMITTED_ATTEMPTS:
                    raise
                log.warning("committed offsets of %s: %s; asking again", partitions, error)
                continue
            answered = answer.topic_partitions or []
            unstable = [tp for tp in answered if tp.error is not None]
            if not unstable:
                return {tp.partition: tp.offset for tp in answered}
            # UNSTABLE_OFFSET_COMMIT: a transaction holding offsets for these partitions
            # is still open (a predecessor killed inside it); it ends by its timeout.
            if attempt == COMMITTED_ATTEMPTS:
                raise KafkaException(unstable[0].error)
            log.warning("committed offsets of %s: %s; asking again", partitions, unstable[0].error)
            time.sleep(1.0)
        raise AssertionError("unreachable")

    def _changelog_ends(self, partition: int) -> tuple[int, int]:
        """The changelog partition's stable end (what read_committed can see) and log end.

        A read_committed reader's EOF is the last stable offset: the first record of the
        oldest transaction still open.  When a worker was killed inside a transaction,
        its records sit there until the broker aborts it (its transaction timeout), and
        every record committed after them (this worker's own batches of the partition
        since it took over) stays invisible until then: an exactly-once restore that
        stopped at that EOF would rebuild the state of long before the committed offsets
        (seen on Kafka: a rewind during a rebalance restored 665 of ~3,000 records, and
        3,944 later scores were wrong).  So it waits until stable end = log end.
        """
        from confluent_kafka import IsolationLevel
        from confluent_kafka.admin import OffsetSpec

        s = self.settings
        if self._offsets_admin is None:
            self._offsets_admin = AdminClient(
                kafka_client_config({"bootstrap.servers": s.bootstrap_servers})
            )
        tp = TopicPartition(s.changelog_topic, partition)
        ends = []
        for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED):
            futures = self._offsets_admin.list_offsets(
                {tp: OffsetSpec.latest()}, isolation_level=level, request_timeout=10
            )
            try:
                ends.append(next(iter(futures.values())).result(timeout=15).offset)
            except KafkaException as error:
                # A broker just back from a freeze answers FENCED_LEADER_EPOCH and the
                # like for a moment: not known yet, asked again (the restore deadline
                # bounds the wait).
                log.info("changelog partition %d: end offsets not known yet: %s", partition, error)
                self._offsets_admin = None  # a fresh client, with fresh metadata, next time
                return -1, 0
        return ends[0], ends[1]

    def _rewind(
        self, consumer: Consumer, producer: Producer, failed: TransactionFailed
    ) -> Producer:
        """After a failed transaction, carry on from the last committed batch.

        The failed batch's records are purged and its producer replaced: the new one's
        ``init_transactions`` fences the old epoch and aborts the open transaction, so
        none of the batch's predictions, changelog records or offsets become visible.
        This process's state already holds the batch's events, though, and the consumer
        is past them: as a new owner would, the worker restores its partitions from the
        changelog (read committed: as of the last committed batch) and seeks back to the
        committed offsets, so the batch is scored again, once.  Kafka Streams treats a
        task whose transaction failed the same way (closed dirty, restored, resumed).  The
        drift monitor keeps what it saw of the failed batch: it sees those events twice.
        """
        assert self.processor is not None
        s = self.settings
        partitions = sorted(self._assigned)
        log.warning("%s: rewinding partitions %s to the last committed batch", failed, partitions)
        # A batch prepared after the failed one is dropped too: the restore below undoes
        # its state update, and the seek brings its records again.
        self._drop_pending()
        self.metrics.inc_transactions_aborted()
        self.health.note_abort()
        producer.purge()
        producer.poll(0)  # the purged records' delivery reports, then forget them
        self._delivery_errors.clear()
        if self._dead_letters is not None:
            # A dead letter the broker refused: the new producer's batches fit its limit.
            self._dead_letters.refresh_if_stale()
        producer = self._transactional_producer()
        self._pending_changelog = []  # evictions since: redone on the restored state
        if partitions:
            # The broker's word, not this worker's: a commit that failed on the client may
            # have committed on the broker (an EndTxn answered after the client gave up),
            # and rewinding past it scores its batch twice (seen on Kafka: 200 duplicated
            # predictions after a freeze).  The new producer's init_transactions finished
            # the old transaction either way, so the stable offsets are final.
            committed = self._committed(consumer, partitions)
            committed = {p: committed.get(p, -1) for p in partitions}
            stale = {p: o for p, o in committed.items() if o != self._last_committed.get(p, -1)}
            if stale:
                log.warning("the failed transaction committed on the broker: offsets %s", stale)
            self._last_committed.update(committed)
            log.info("rewinding to the committed offsets %s", committed)
            self._restate_offsets(consumer, producer, committed)
            self.health.set_restoring(f"rewinding partitions {partitions} after an abort")
            self._restore(partitions, committed)
            self.health.set_restoring(None)
            for p in partitions:
                offset = committed[p]
                position = offset if offset >= 0 else OFFSET_BEGINNING
                consumer.seek(TopicPartition(s.input_topic, p, position))
        return producer

    def _restate_offsets(
        self, consumer: Consumer, producer: Producer, committed: dict[int, int]
    ) -> None:
        """Commit the last committed offsets again, in a transaction of their own.

        Defensive: the failed transaction's offset commit may reach the broker after the
        new producer fenced it (a request sent before the broker froze, read when it
        woke).  Kafka refuses it (old epoch); a broker that did not would move the group
        past a batch that was never delivered, so the offsets this worker knows to be
        right are restated before it goes on.  (A rewind on Tansu once lost a small batch;
        the restore reading the aborted batch's changelog explains it as well, and is
        guarded in ``_restore``.)  A partition never committed gets offset 0, which reads
        the same as no commit (``auto.offset.reset`` earliest).
        """
        topic = self.settings.input_topic
        offsets = [TopicPartition(topic, p, max(o, 0)) for p, o in committed.items()]
        try:
            producer.begin_transaction()
            producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 60)
            producer.commit_transaction(60)
        except KafkaException as error:
            # A rebalance since (the group moved on while the broker was away) refuses it:
            # the partitions are then revoked at the next poll and restored by their owner.
            log.warning("could not restate the committed offsets: %s", error)
            kafka_error = error.args[0] if error.args else None
            if isinstance(kafka_error, KafkaError) and kafka_error.fatal():
                raise TransactionFailed(f"offsets not restated: {error}") from error
            with contextlib.suppress(KafkaException):
                producer.abort_transaction(30)

    def _transactional_producer(self) -> Producer:
        """A producer with transactions initialised, waiting while the broker is away."""
        producer = Producer(self._producer_config())
        deadline = time.monotonic() + INIT_TRANSACTIONS_PATIENCE_S
        while True:
            try:
                producer.init_transactions(30)
                return producer
            except KafkaException as error:
                kafka_error = error.args[0] if error.args else None
                retriable = isinstance(kafka_error, KafkaError) and kafka_error.retriable()
                if not retriable or self._stop.is_set() or time.monotonic() > deadline:
                    raise TransactionFailed(f"transactions not initialised: {error}") from error
                log.warning("init_transactions not answered yet (%s): retrying", error)

    def _restore(self, partitions: list[int], committed: dict[int, int]) -> None:
        """Read the partitions' changelogs to their ends and rebuild their state.

        One reader for all of them, so partitions restore in parallel.  The end is each
        partition's EOF event, not a high watermark from ListOffsets (which some brokers
        report short): a restore that stops early would silently lose state.
        """
        assert self.processor is not None
        s = self.settings
        started = time.perf_counter()
        reader = Consumer(
            kafka_client_config(
                {
                    "bootstrap.servers": s.bootstrap_servers,
                    "group.id": f"{s.group_id}-restore",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": 10,
                    "error_cb": self._on_client_error,
                }
            )
        )
        latest: dict[int, dict[bytes, bytes | None]] = {p: {} for p in partitions}
        records = dict.fromkeys(partitions, 0)
        ahead = dict.fromkeys(partitions, 0)
        # Exactly-once: a snapshot can only be as new as the committed offsets (one
        # transaction holds both), so one that holds a later event comes from a
        # transaction that did not commit.  Tansu was seen to show such records to this
        # read_committed reader (a kill -9 loop lost a batch: its snapshots restored,
        # its events then skipped as already applied, their predictions never visible).
        # Such a snapshot is passed over; the customer's previous one stands.
        probe = FeatureState(self.spec, capacity=16) if s.exactly_once else None
        pending = set(partitions)
        #: Exactly-once: partitions at their EOF, checked for an open transaction first.
        waiting: dict[int, int] = {}
        # Long enough for the broker to abort a dead predecessor's transaction (its
        # timeout, the same setting as ours by default, and the broker's abort sweep).
        settle_s = s.transaction_timeout_s + 15.0
        settle_deadline = time.monotonic() + settle_s
        try:
            reader.assign(
                [TopicPartition(s.changelog_topic, p, OFFSET_BEGINNING) for p in partitions]
            )
            deadline = time.monotonic() + s.restore_timeout_s
            while pending:
                if time.monotonic() > deadline:
                    raise RestoreFailed(
                        f"changelog {s.changelog_topic} partitions {sorted(pending)} not read to "
                        f"their end within {s.restore_timeout_s:g} s"
                    )
                for message in reader.consume(10_000, 0.2):
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            if s.exactly_once:
                                # Checked below; the EOF event's offset is where it is.
                                waiting[message.partition()] = message.offset()
                            else:
                                pending.discard(message.partition())
                            continue
                        raise KafkaException(error)
                    p = message.partition()
                    key, value = message.key() or b"", message.value()
                    records[p] += 1
                    if probe is not None and key and value is not None:
                        applied = probe.applied_offset_of(value)
                        if applied is not None and applied >= committed.get(p, -1):
                            ahead[p] += 1
                            continue
                    latest[p][key] = value
                for p, eof_at in sorted(waiting.items()):
                    # Done once nothing holds the stable end back and it has been read to.
                    stable, end = self._changelog_ends(p)
                    # Aborted records and markers past the last EOF move the position on
                    # without a new EOF event: the position says how far it was read.
                    tp = TopicPartition(s.changelog_topic, p)
                    at = max(eof_at, reader.position([tp])[0].offset)
                    waited_out = time.monotonic() > settle_deadline
                    if (stable >= 0 and stable >= end and at >= end) or waited_out:
                        if waited_out and not (stable >= end >= 0):
                            log.warning(
                                "changelog partition %d: its stable end did not reach its log "
                                "end within %.0f s; restoring what is visible",
                                p,
                                settle_s,
                            )
                        pending.discard(p)
                        del waiting[p]
                    elif 0 <= stable < end:
                        log.info(
                            "changelog partition %d: an open transaction holds its stable "
                            "end at %d (log end %d): waiting for it before restoring",
                            p,
                            stable,
                            end,
                        )
                if waiting:
                    time.sleep(0.2)
                self.health.beat()
        finally:
            reader.close()
        for p in partitions:
            if ahead[p]:
                log.warning(
                    "partition %d: %d changelog snapshots hold events at or past the committed "
                    "offset %d: records of a transaction that did not commit, passed over",
                    p,
                    ahead[p],
                    committed.get(p, -1),
                )
            customers = self.processor.restore(p, list(latest[p].items()), committed.get(p, -1))
            self.metrics.record_restore(records[p], customers, time.perf_counter() - started)
            log.info(
                "restored partition %d: %d customers from %d changelog records",
                p,
                customers,
                records[p],
            )
        log.info("restore of %s took %.2f s", partitions, time.perf_counter() - started)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Callbacks run inside consume(), between batches.  The last batch may still be in
        # flight on the deliverer thread: wait until it is delivered and committed, then
        # the partitions' state can simply be dropped.
        # A batch being scored in the scoring process is finished first: it is published
        # and committed before its partitions go.
        assert self.processor is not None
        try:
            if self._pending is not None and self._producer is not None:
                self.revoked_with_pending += 1
                self._finish_pending(consumer, self._producer)
            self._collect_delivered(consumer, block=True)
        except (DeliveryFailed, TransactionFailed, ScoringProcessFailed) as failed:
            self._failure = failed  # the loop re-raises it after consume() returns
        revoked = {tp.partition for tp in partitions}
        self.processor.revoke(sorted(revoked))
        self._pending_changelog = [r for r in self._pending_changelog if r[0] not in revoked]
        self._assigned.difference_update(tp.partition for tp in partitions)
        for p in revoked:
            self._last_committed.pop(p, None)
        self._report_assignment()
        log.info("revoked %s", sorted(tp.partition for tp in partitions))

    def _report_assignment(self) -> None:
        n = len(self._assigned)
        self.health.set_assigned(n)
        self.metrics.set_assigned_partitions(n)

    # ------------------------------------------------------------------ loop
    def run(self, ready: Callable[[], None] | None = None) -> int:
        """Run until ``stop()``; returns the process exit code."""
        s = self.settings
        limit_native_threads(s.native_threads)
        scorer = self.load_model()
        monitor, trigger = self._drift_for(scorer.model) if s.drift else (None, None)
        self.processor = ScoringProcessor(
            self.spec,
            scorer,
            max_event_bytes=s.max_event_bytes,
            changelog=s.changelog,
            drift=monitor,
            trigger=trigger,
            clock_skew=ClockSkewPolicy(s.max_clock_skew_ms, s.max_replay_jump_ms),
        )
        self.processor.drift_since_ms = self._drift_since(scorer.model)
        self._dead_letters = DeadLetterWriter(
            bootstrap=s.bootstrap_servers,
            topic=s.dead_letter_topic,
            source_topic=s.input_topic,
            worker_id=s.worker_id,
            producer_limit=s.producer_max_message_bytes,
            metrics=self.metrics,
            exactly_once=s.exactly_once,
            on_other_error=self._on_delivery,
        )
        if not NATIVE_KERNEL:
            log.warning(
                "the C state kernel is not built (no compiler at install?): state updates "
                "run on the numpy path, several times slower"
            )
        if monitor is not None and not NATIVE_SCAN:
            log.warning(
                "the C CUSUM scan is not built (no compiler at install?): while a feature "
                "stays drifted the monitor costs several times more per event"
            )
        self._restore_drift_checkpoint()
        if s.changelog:
            self._ensure_changelog_topic()
        consumer = Consumer(self._consumer_config())
        self._consumer = consumer
        producer = (
            self._transactional_producer() if s.exactly_once else Producer(self._producer_config())
        )
        self._producer = producer
        consumer.subscribe(
            [s.input_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        batcher = AdaptiveBatcher(
            max_size=s.batch_size,
            min_size=min(s.min_batch_size, s.batch_size),
            target_latency_s=s.latency_target_s,
            max_wait_s=s.poll_timeout_s,
            min_wait_s=min(0.001, s.poll_timeout_s),
            adaptive=s.adaptive_batch,
        )
        self.batcher = batcher
        self.metrics.set_up(True)
        if ready:
            ready()
        self._last_eviction = self._last_contact = time.monotonic()
        exit_code = 0
        try:
            while not self._stop.is_set():
                try:
                    self._step(consumer, producer, batcher)
                except TransactionFailed as failed:
                    if not failed.recoverable:
                        raise
                    producer = self._rewind(consumer, producer, failed)
                    self._producer = producer
            self._finish_pending(consumer, producer)
            self._collect_delivered(consumer, block=True)  # the last batch: committed
        except (DeliveryFailed, TransactionFailed, RestoreFailed, ScoringProcessFailed) as failed:
            log.error("stopping without commit: %s", failed)
            exit_code = 3
        finally:
            self.metrics.set_up(False)
            self._pending = None  # not published, not committed: it comes again
            if self._scoring is not None:
                self._scoring.close()
                self._scoring = None
            in_flight = self._in_flight
            if in_flight is not None and in_flight.future.exception() is not None:
                exit_code = 3  # waits for it: never close clients under a running delivery
            self._in_flight = None
            self._deliverer.shutdown(wait=True)
            if exit_code == 0:
                self._save_drift_checkpoint(flush=True)
            remaining = producer.flush(30)
            if remaining:
                log.error("%d records still undelivered at shutdown", remaining)
            consumer.close()  # leaves the group now, so partitions move without a timeout
        log.info("worker stopped after %d batches", self.batches)
        return exit_code

    def _step(self, consumer: Consumer, producer: Producer, batcher: AdaptiveBatcher) -> None:
        """One turn of the loop: a batch (or an idle tick), then the periodic chores."""
        s = self.settings
        assert self.processor is not None
        plan = batcher.plan()
        t0 = time.perf_counter()
        messages = self._poll_batch(consumer, producer, plan)
        poll_s = time.perf_counter() - t0
        if self._failure is not None:  # raised in a rebalance callback
            failure, self._failure = self._failure, None
            raise failure
        self.health.beat()
        self.metrics.heartbeat()
        records = [m for m in messages if not _is_error(m)]
        busy_s = 0.0
        if records:
            self.health.set_broker_ok(True)
            self._last_contact = time.monotonic()
            self.metrics.observe_stage("poll", poll_s)
            t1 = time.perf_counter()
            # A full batch means a backlog: the one case a scoring process overlaps.
            self._process(records, consumer, producer, backlog=len(messages) >= plan.size)
            busy_s = time.perf_counter() - t1
        else:
            self._finish_pending(consumer, producer)
            self._collect_delivered(consumer, block=False)
            self._tick_trigger()
            if time.monotonic() - self._last_contact > s.broker_probe_interval_s:
                self._probe_broker(consumer)
                self._last_contact = time.monotonic()
        batcher.observe(plan.size, len(messages), busy_s)
        if time.monotonic() - self._last_eviction > s.eviction_interval_s:
            # Tombstones go out with the next batch's changelog, after the snapshots of
            # every batch prepared so far: the pending one is published first.
            self._finish_pending(consumer, producer)
            tombstones = self.processor.evict_idle()
            if s.changelog:
                self._pending_changelog.extend(tombstones)
            self.metrics.inc_customers_evicted(len(tombstones))
            self.metrics.set_customers_in_state(self.processor.customers_in_state)
            self._last_eviction = time.monotonic()
        self._check_model(consumer, producer)
        self._take_alerts(producer)
        if time.monotonic() - self._drift_saved_at > s.drift_checkpoint_interval_s:
            self._save_drift_checkpoint()

    def _poll_batch(self, consumer: Consumer, producer: Producer, plan: BatchPlan) -> list[Message]:
        """Up to ``plan.size`` records: whatever is there, as soon as anything is.

        librdkafka's ``consume(n, timeout)`` returns early only once it has ``n`` records,
        so a caught-up worker would sit out the whole timeout with records in hand (at 5k
        events/s that was ~17 ms of every event's wait).  Here the timeout only bounds
        the wait for the *first* record; the batch is what arrived meanwhile, so it grows
        with the load by itself (smart batching) and a backlog still yields full batches.
        With ``adaptive_batch`` off the old fill-or-timeout behaviour is kept.

        A batch pending in the scoring process overlaps the next one only under a backlog
        (a full batch is already there).  Otherwise it is finished first, and the next
        batch is scored in the loop (``_process_batch``).
        """
        if self._pending is not None:
            ready = consumer.consume(num_messages=plan.size, timeout=0)
            if len(ready) < plan.size:
                self._finish_pending(consumer, producer)
            if ready:
                return ready
        if not self.settings.adaptive_batch:
            return consumer.consume(num_messages=plan.size, timeout=plan.wait_s)
        ready = consumer.consume(num_messages=plan.size, timeout=0)
        if ready:
            return ready
        first = consumer.poll(plan.wait_s)
        if first is None:
            return []
        return [first, *consumer.consume(num_messages=plan.size - 1, timeout=0)]

    def _process(
        self, records: list[Message], consumer: Consumer, producer: Producer, *, backlog: bool
    ) -> None:
        self.health.begin_batch()
        self._process_batch(records, consumer, producer, backlog=backlog)

    def _collect_delivered(
        self, consumer: Consumer, *, block: bool, commit_async: bool = False
    ) -> None:
        """Wait for (or, ``block=False``, just look at) the batch in flight, then commit
        its offsets (at-least-once) and count it done.

        The commit happens here, on the loop's thread, not on the deliverer: a synchronous
        commit from another thread while this one sits in ``consume()`` waits for a reply
        that ``consume()`` takes off the queue (it hung for seconds in the benchmark).  A
        delivery failure is re-raised here, so the worker stops without committing.

        ``commit_async``: the loop, about to produce the next batch, does not wait for the
        commit's answer (a broker round trip off every event's latency).  Nothing waits on
        it: the batch's predictions and changelog are delivered already, so a commit lost
        in a crash only means the batch comes again, and the restored state skips its
        events (counted as redelivered), as after any crash before a commit.  Commits
        from one consumer reach the coordinator in order, and a later one covers an
        earlier one that failed.  Rebalances and shutdown still commit synchronously.
        """
        in_flight = self._in_flight
        if in_flight is None or (not block and not in_flight.future.done()):
            return
        self._in_flight = None
        in_flight.future.result()
        if self.settings.exactly_once:
            self._last_committed.update((tp.partition, tp.offset) for tp in in_flight.offsets)
        elif commit_async:
            consumer.commit(offsets=in_flight.offsets, asynchronous=True)
        else:
            self._commit(consumer, in_flight.offsets)
        self.health.note_commit()
        self.batches += 1
        self.events_processed += in_flight.n
        self.first_batch_started = self.first_batch_started or in_flight.started
        self.last_batch_done = time.perf_counter()
        self.health.end_batch()

    def _process_batch(
        self, records: list[Message], consumer: Consumer, producer: Producer, *, backlog: bool
    ) -> None:
        """Score one batch, then hand its delivery and commit to the deliverer thread.

        Ordering, per batch, exactly as a sequential loop would do it: predictions and dead
        letters are delivered before the batch's changelog is produced (a snapshot must
        never claim an event whose prediction could still be lost), and the offsets are
        committed only after both.  Overlap: while batch N is delivered and committed, the
        loop consumes and scores batch N+1; it waits for N before producing anything of
        N+1, so at most one batch is ever in flight (the duplicates a crash can cause stay
        bounded by one batch, and N+1's changelog is written after N's commit).

        With a scoring process and a backlog (a full batch consumed), a batch is prepared
        (decoded, state updated) and sent to the child, and the previous batch is finished
        (scores taken, published) only then: the child scores N while the loop prepares
        N+1.  Without a backlog the loop scores the batch itself with its own copy of the
        model, as without a scoring process.  Nothing of N+1 is published before N, and
        nothing of a pending batch is published or committed until it is finished, so
        dropping one (a rewind) only needs the state restored.
        """
        s = self.settings
        started = time.perf_counter()
        values, keys, partitions, offsets, timestamps = _columns(records)
        columns_s = time.perf_counter() - started
        raw = RawBatch(
            topic=s.input_topic,
            values=values,
            keys=keys,
            partitions=partitions,
            offsets=offsets,
            timestamps=timestamps,
        )
        assert self.processor is not None
        prepared = _Prepared(self.processor.prepare(raw), records, started)
        # Reading the records' fields is part of decoding them.
        prepared.prepared.stage_seconds["decode"] += columns_s
        block = prepared.prepared.block
        if self._scoring is None or not backlog:
            # Scored here, at once: a caught-up worker has nothing to overlap the model
            # with, and the hand-off only added latency (p50 +20 ms at 1k events/s).
            self._finish_pending(consumer, producer)  # it goes first
            scores = self.processor.score(prepared.prepared)
            self._finish_batch(prepared, scores, consumer, producer)
            return
        # Scoring process: this batch is scored while the previous one is published.
        if block is not None:
            self._scoring.submit(block)
            prepared.submitted = True
            self.batches_to_scoring_process += 1
        previous, self._pending = self._pending, prepared
        if previous is not None:
            self._finish_batch(previous, self._scores_of(previous), consumer, producer)

    def _scores_of(self, prepared: _Prepared) -> np.ndarray:
        """A pending batch's scores from the scoring process ("predict": the wait)."""
        if not prepared.submitted:
            return _NO_SCORES
        assert self._scoring is not None and self.processor is not None
        t0 = time.perf_counter()
        try:
            scores = self._scoring.result()
        except ScoringRaised as raised:
            # The model raised on the block, the child is fine: isolate the rows here,
            # with the loop's identical copy of the model (model.isolation).
            log.warning("the scoring process could not score a batch: %s", raised.summary)
            scores = self.processor.score(prepared.prepared)
        prepared.prepared.stage_seconds["predict"] = time.perf_counter() - t0
        return scores

    def _finish_pending(self, consumer: Consumer, producer: Producer) -> None:
        """Publish the batch pending in the scoring process, if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._finish_batch(pending, self._scores_of(pending), consumer, producer)

    def _drop_pending(self) -> None:
        """Forget the pending batch (a rewind restores the state it updated)."""
        if self._pending is not None:
            log.info(
                "dropping the batch prepared after it (%d records): it comes again",
                len(self._pending.records),
            )
        self._pending = None
        if self._scoring is not None:
            self._scoring.discard()

    def _finish_batch(
        self, prepared: _Prepared, scores: np.ndarray, consumer: Consumer, producer: Producer
    ) -> None:
        """Drift, predictions, then delivery and commit (see ``_process_batch``)."""
        s = self.settings
        m = self.metrics
        assert self.processor is not None
        records, started, raw = prepared.records, prepared.started, prepared.prepared.raw
        result = self.processor.finish(prepared.prepared, scores)
        if prepared.prepared.model_errors:
            errors, calls = prepared.prepared.model_errors, prepared.prepared.isolation_calls
            m.record_model_errors(errors, calls)
            log.warning(
                "the model raised on %d event(s) of a batch of %d: dead-lettered as "
                "model_error, the rest scored (%d extra scorer calls)",
                errors,
                len(records),
                calls,
            )
        m.observe_stage("decode", result.stage_seconds["decode"])
        m.observe_stage("state", result.stage_seconds["state"])
        m.observe_stage("predict", result.stage_seconds["predict"])
        if result.drift is not None and self.drift_metrics is not None:
            m.observe_stage("drift", result.stage_seconds["drift"])
            scorer = self.processor.scorer
            self.drift_metrics.publish(result.drift, scorer.name, scorer.version, result.scores)
            self._unmonitored.record(
                scorer.name,
                scorer.version,
                result.drift_before_reference,
                self.processor.drift_since_ms,
            )
            if self.processor.trigger is not None:
                self.drift_metrics.publish_trigger(
                    scorer.name, scorer.version, self.processor.trigger, result.retrain_request
                )

        # The previous batch must be delivered and committed before this one produces.
        t_wait = time.perf_counter()
        self._collect_delivered(consumer, block=True, commit_async=True)
        t0 = time.perf_counter()
        # "commit": what the loop waits for the previous batch's delivery, plus its commit.
        m.observe_stage("commit", t0 - t_wait)
        changelog = self._pending_changelog + result.changelog
        self._pending_changelog = []
        next_offsets = _next_offsets(s.input_topic, raw)
        if s.exactly_once:
            try:
                producer.begin_transaction()
                self._produce(producer, result, records)
                self._produce_changelog(producer, changelog)
            except KafkaException as error:
                self._abort(producer, error)
            job = self._finish_transaction
            group = consumer.consumer_group_metadata()
            args: tuple[Any, ...] = (producer, next_offsets, group)
        else:
            self._produce(producer, result, records)
            job = self._finish_at_least_once
            args = (producer, changelog)
        m.observe_stage("produce", time.perf_counter() - t0 + result.stage_seconds["encode"])
        self.health.begin_batch()  # from here on: the batch's delivery is what is timed
        future = self._deliverer.submit(job, *args)
        self._in_flight = _InFlight(future, next_offsets, len(records), started)
        if not s.pipelined or s.exactly_once:
            # Exactly-once commits its transaction before the next poll.  Pipelined
            # transactions lost one batch (200 predictions) in the 300k-event, 20-kill
            # loop (DRIFTLINE_SLOW); most likely the restore taking an aborted batch's
            # changelog (Tansu returns aborted records to read_committed readers), now
            # guarded in ``_restore``.  Pipelining stays off until that loop passes with it.
            self._collect_delivered(consumer, block=True)

        if result.n_redelivered:
            m.inc_redelivered(result.n_redelivered)
        n = len(records)
        m.inc_events_consumed(s.input_topic, n)
        m.inc_predictions(
            self.processor.scorer.name, self.processor.scorer.version, len(result.prediction_values)
        )
        for reason, count in _count_reasons(result.rejected).items():
            m.inc_dead_letters(reason, count)
        if result.n_late:
            m.inc_late_events(result.n_late)
        m.observe_event_latencies(result.event_latency_seconds)
        m.set_customers_in_state(self.processor.customers_in_state)
        m.record_batch(n, time.perf_counter() - started)

    def _finish_at_least_once(
        self, producer: Producer, changelog: list[tuple[int, bytes, bytes | None]]
    ) -> None:
        """Predictions delivered, then the changelog delivered (the loop commits after)."""
        self._flush(producer)
        if changelog:
            self._produce_changelog(producer, changelog)
            self._flush(producer)

    def _finish_transaction(
        self, producer: Producer, offsets: list[TopicPartition], group: Any
    ) -> None:
        """The batch's input offsets join its transaction, which is then committed."""
        try:
            producer.send_offsets_to_transaction(offsets, group, 60)
            producer.commit_transaction(60)
        except KafkaException as error:
            self._abort(producer, error)
        if self._delivery_errors:
            raise TransactionFailed(
                f"delivery errors in a committed transaction: {self._delivery_errors[:3]}"
            )

    def _abort(self, producer: Producer, error: KafkaException) -> None:
        """The batch's transaction failed: stop, or let the loop rewind (``_rewind``).

        A fenced or fatal producer stops the worker.  Anything else is recoverable, and is
        not aborted here: records that timed out need an epoch bump to abort (KIP-360),
        which Tansu refuses with an unknown error that librdkafka retries for good.  A new
        producer under the same transactional id aborts the open transaction on any
        broker, in ``init_transactions``.
        """
        kafka_error = error.args[0] if error.args else None
        recoverable = isinstance(kafka_error, KafkaError) and not kafka_error.fatal()
        raise TransactionFailed(
            f"transaction not committed: {error}", recoverable=recoverable
        ) from error

    def _commit(self, consumer: Consumer, offsets: list[TopicPartition]) -> None:
        """Commit a delivered batch's offsets; a group that moved on is not an error.

        When the broker was unreachable longer than the session timeout, the group has
        already given these partitions to another member (or will at the next poll): the
        commit is refused, the batch is delivered again to the new owner (at-least-once),
        and this worker's ``on_lost`` drops the partitions at its next poll.
        """
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            kafka_error = error.args[0] if error.args else None
            code = kafka_error.code() if isinstance(kafka_error, KafkaError) else None
            if code not in _GROUP_MOVED_ON:
                raise
            log.warning("commit refused (%s): the partitions moved; the batch comes again", error)

    def _on_commit(self, error: KafkaError | None, _partitions: list[TopicPartition]) -> None:
        """An asynchronous commit's answer (served in ``consume()``): failures are logged;
        the next commit covers the offsets, and a crash meanwhile only redelivers."""
        if error is None:
            return
        if error.code() in _GROUP_MOVED_ON:
            log.warning("commit refused (%s): the partitions moved; the batch comes again", error)
        else:
            log.error("commit failed (%s): the next commit covers it", error)

    def _flush(self, producer: Producer) -> None:
        remaining = producer.flush(60)
        if remaining or self._delivery_errors:
            errors = self._delivery_errors[:3]
            raise DeliveryFailed(f"{remaining} undelivered, errors: {errors}")

    def _produce_changelog(
        self, producer: Producer, changelog: list[tuple[int, bytes, bytes | None]]
    ) -> None:
        topic = self.settings.changelog_topic
        produce = producer.produce
        for partition, key, value in changelog:
            try:
                produce(topic, value, key, partition)
            except BufferError:
                while True:
                    producer.poll(0.05)  # queue full: let deliveries drain, then retry
                    try:
                        produce(topic, value, key, partition)
                        break
                    except BufferError:
                        continue

    def _ensure_changelog_topic(self) -> None:
        s = self.settings
        admin = AdminClient(kafka_client_config({"bootstrap.servers": s.bootstrap_servers}))
        metadata = admin.list_topics(s.input_topic, timeout=30).topics[s.input_topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        partitions = len(metadata.partitions)
        ensure_topics(
            s.bootstrap_servers,
            [
                TopicSpec(
                    s.changelog_topic,
                    partitions,
                    {"cleanup.policy": "compact", "retention.ms": "-1"},
                )
            ],
        )

    def _on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._delivery_errors.append(str(error))
            self.metrics.inc_producer_delivery_errors()

    def _produce(self, producer: Producer, result: BatchResult, records: list[Message]) -> None:
        s = self.settings
        produce = producer.produce
        topic = s.output_topic
        for key, value in zip(result.prediction_keys, result.prediction_values, strict=True):
            try:
                produce(topic, value, key)
            except BufferError:
                _produce_with_backpressure(producer, produce, topic, value, key)
        if result.retrain_request is not None:
            request = result.retrain_request
            log.warning(
                "retrain requested (%s, incident %s): %s",
                request.reason,
                request.incident_id,
                [f.feature for f in request.drifted_features],
            )
            _produce_with_backpressure(
                producer,
                produce,
                s.retrain_topic,
                msgspec.json.encode(request),
                request.incident_id.encode(),
            )
        if result.rejected:
            assert self._dead_letters is not None
            failed_at = str(int(time.time() * 1000)).encode()
            self._dead_letters.produce(producer, records, result.rejected, failed_at)


def _produce_with_backpressure(
    producer: Producer,
    produce: Callable[..., None],
    topic: str,
    value: bytes | None,
    key: bytes | None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    while True:
        try:
            produce(topic, value, key, headers=headers)
            return
        except BufferError:
            producer.poll(0.05)  # queue full: let deliveries drain, then retry


#: Commit errors meaning "you are no longer the owner": not fatal at-least-once.
_GROUP_MOVED_ON = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.FENCED_INSTANCE_ID,
    }
)


def _reference_start(loaded: LoadedModel) -> int:
    """Start of the period the model's reference profile describes (epoch ms)."""
    window = (loaded.metadata.get("reference_profile") or {}).get("window_ms")
    return int(window[0]) if window else NO_TIME


def _feature_importances(loaded: LoadedModel, spec: FeatureSpec) -> dict[str, float] | None:
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


_NO_SCORES = np.empty(0)


def _columns(
    records: list[Message],
) -> tuple[list[bytes | None], list[bytes | None], np.ndarray, np.ndarray, np.ndarray]:
    """Values, keys, partitions, offsets and timestamps of the records (list
    comprehensions then one array conversion: the cheapest way through the Message API)."""
    return (
        [r.value() for r in records],
        [r.key() for r in records],
        np.array([r.partition() for r in records], np.int32),
        np.array([r.offset() for r in records], np.int64),
        np.array([r.timestamp()[1] for r in records], np.int64),
    )


def transactional_id(group_id: str, identity: str) -> str:
    """An exactly-once worker's transactional id: stable per group and instance.

    ``identity`` is the static group instance id, else the worker id.  Whoever starts a
    producer under the same id fences the previous one and aborts its open transaction:
    a restarted instance does, and so can an operator (or a test) standing in for the
    broker's transaction timeout.
    """
    return f"driftline-{group_id}-{identity}"


def _next_offsets(topic: str, raw: RawBatch) -> list[TopicPartition]:
    """Offset to commit per partition: one past the last record consumed from it."""
    offsets: dict[int, int] = {}
    for p in np.unique(raw.partitions).tolist():
        offsets[p] = int(raw.offsets[raw.partitions == p].max()) + 1
    return [TopicPartition(topic, p, o) for p, o in offsets.items()]


def _count_reasons(rejected: list[Rejected]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rejected:
        counts[r.reason] = counts.get(r.reason, 0) + 1
    return counts


def _is_error(message: Message) -> bool:
    error = message.error()
    if error is None:
        return False
    if error.code() == KafkaError._PARTITION_EOF:
        return True
    if error.fatal():
        raise KafkaException(error)
    log.warning("consume error: %s", error)
    return True


def serve_worker(settings: WorkerSettings, spec: FeatureSpec) -> int:
    """Run a worker with its HTTP endpoints until SIGTERM/SIGINT; the CLI entry."""
    worker = KafkaScoringWorker(settings, spec)
    worker.install_signal_handlers()
    with HealthServer(
        worker.metrics,
        settings.metrics_host,
        settings.metrics_port,
        worker.health,
        alerts=worker.alerts,
    ) as server:
        log.info("metrics and health on %s", server.url)
        try:
            return worker.run()
        except ModelRefused as refused:
            log.error("model refused (%s): %s", refused.reason, refused.message)
            return 2
        except RuntimeRefused as error:
            log.error("model runtime %s refused: %s", settings.model_runtime, error)
            return 2
