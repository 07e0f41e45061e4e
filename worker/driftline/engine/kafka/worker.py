"""The confluent-kafka engine's loop: consume a micro-batch, process it, produce, commit.

The loop is here; each concern it coordinates has a module of its own (settings, clients,
consume, model_runtime, scoring_overlap, delivery, transactions, ports, offsets, changelog,
rebalance, drift_sidecar): see docs/architecture.md for the map and one event's walk.

At-least-once (default): predictions and dead letters are produced and flushed, then the
changelog, then the input offsets are committed.  A crash before the commit delivers the
batch again; customers whose snapshot already reflects an event skip it (counted as
redelivered), the others recompute the same predictions (duplicates, bounded by a batch).
Exactly-once (``exactly_once``): see ``transactions``.  A fenced producer (unless its
commit was fenced after its timeout: ``transactions`` asks the broker), or a fatal
error, stops the worker (exit 3) without committing: whoever takes the partitions over
restores them from the last committed batch.

Shutdown on SIGTERM/SIGINT: the flag is checked between batches, so the current batch
is finished, flushed and committed before the consumer leaves the group; exit code 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from driftline.core.clock_skew import ClockSkewPolicy
from driftline.core.drift.cusum import NATIVE_SCAN
from driftline.core.drift.trigger import RetrainRequest
from driftline.core.spec import FeatureSpec
from driftline.core.state import NATIVE_KERNEL
from driftline.engine.base import (
    EXIT_MODEL_REFUSED,
    EXIT_NOT_COMMITTED,
    EXIT_OK,
    ScoringEngine,
)
from driftline.engine.batch_metrics import record_batch, record_scored
from driftline.engine.batching import AdaptiveBatcher
from driftline.engine.kafka.changelog import Changelog
from driftline.engine.kafka.clients import consumer_config, producer_config
from driftline.engine.kafka.consume import is_error, poll_batch, raw_batch
from driftline.engine.kafka.dead_letters import DeadLetterWriter
from driftline.engine.kafka.delivery import (
    GROUP_MOVED_ON,
    Deliverer,
    Delivery,
    next_offsets,
)
from driftline.engine.kafka.drift_sidecar import DriftSidecar
from driftline.engine.kafka.errors import DeliveryFailed, RestoreFailed, TransactionFailed
from driftline.engine.kafka.offsets import COMMITTED_ATTEMPTS, BrokerOffsets
from driftline.engine.kafka.ports import ProducerPort
from driftline.engine.kafka.rebalance import Rebalance
from driftline.engine.kafka.scoring_overlap import Prepared, ScoringOverlap
from driftline.engine.kafka.settings import WorkerSettings, transactional_id
from driftline.engine.kafka.transactions import (
    INIT_TRANSACTIONS_PATIENCE_S,
    ExactlyOnce,
    transactional_producer,
)
from driftline.engine.model_runtime import load_first_model, model_watcher, scorer_for
from driftline.model.registry import LoadedModel, ModelRefused
from driftline.model.runtimes.process import ScoringProcessFailed
from driftline.model.runtimes.sklearn import Scorer, limit_native_threads
from driftline.model.runtimes.verification import RuntimeRefused
from driftline.model.watcher import ModelWatcher
from driftline.observability.http import HealthServer, HealthState
from driftline.observability.metrics import WorkerMetrics
from driftline.processor import ScoringProcessor

log = logging.getLogger(__name__)

#: The names this module always exported (tests, commands and the benchmark import them).
__all__ = [
    "COMMITTED_ATTEMPTS",
    "GROUP_MOVED_ON",
    "INIT_TRANSACTIONS_PATIENCE_S",
    "DeliveryFailed",
    "KafkaScoringWorker",
    "RestoreFailed",
    "TransactionFailed",
    "WorkerSettings",
    "serve_worker",
    "transactional_id",
]


class KafkaScoringWorker(ScoringEngine):
    """One worker process: a consumer-group member that scores what it is assigned."""

    def __init__(
        self,
        settings: WorkerSettings,
        spec: FeatureSpec,
        metrics: WorkerMetrics | None = None,
        health: HealthState | None = None,
    ) -> None:
        s = self.settings = settings
        self.spec = spec
        self.metrics = metrics or WorkerMetrics()
        self.health = health or HealthState()
        self._stop = threading.Event()
        self._last_eviction = self._last_contact = time.monotonic()
        self.processor: ScoringProcessor | None = None
        self.model_watcher: ModelWatcher | None = None
        self.drift = DriftSidecar(settings, spec, self.metrics)
        self.drift_metrics = self.drift.metrics
        self.alerts = self.drift.alerts
        self.drift_checkpoint_checked = self.drift.checkpoint_checked
        self._consumer: Consumer | None = None  # the loop's, once running
        self.delivery = Delivery(
            output_topic=s.output_topic,
            retrain_topic=s.retrain_topic,
            changelog_topic=s.changelog_topic,
            metrics=self.metrics,
        )
        self.offsets = BrokerOffsets(
            s.bootstrap_servers, s.group_id, s.input_topic, s.changelog_topic
        )
        self.changelog = Changelog(
            settings,
            spec,
            offsets=self.offsets,
            metrics=self.metrics,
            health=self.health,
            on_client_error=self._on_client_error,
        )
        self.transactions = (
            ExactlyOnce(
                input_topic=s.input_topic,
                delivery=self.delivery,
                metrics=self.metrics,
                health=self.health,
                new_producer=self._transactional_producer,
                committed_offsets=self.offsets.committed,
                restore=self._restore,
                transaction_timeout_s=s.transaction_timeout_s,
            )
            if s.exactly_once
            else None
        )
        self.deliverer = Deliverer(
            self.delivery,
            self.health,
            on_transaction_committed=self.transactions.committed if self.transactions else None,
        )
        self.rebalance = Rebalance(
            settings,
            processor=lambda: self.processor,
            changelog=self.changelog,
            offsets=self.offsets,
            transactions=self.transactions,
            settle=self._settle,
            health=self.health,
            metrics=self.metrics,
        )
        #: ``scoring_process``: the child scoring the batches, and the batch it is on.
        self.overlap = ScoringOverlap()
        #: The loop's producer (rebalance callbacks finish the pending batch with it).
        self._producer: ProducerPort | None = None
        #: Revocations that found a batch pending in the scoring process (and finished it).
        self.revoked_with_pending = 0
        self.batcher: AdaptiveBatcher | None = None
        #: Dead letters cut to fit their topic; their failures never stop the worker.
        self._dead_letters: DeadLetterWriter | None = None

    # What the deliverer counted (read by tests, benchmarks and the health endpoints).
    @property
    def batches(self) -> int:
        return self.deliverer.batches

    @property
    def events_processed(self) -> int:
        return self.deliverer.events

    @property
    def first_batch_started(self) -> float | None:
        return self.deliverer.first_batch_started

    @property
    def last_batch_done(self) -> float | None:
        return self.deliverer.last_batch_done

    @property
    def batches_to_scoring_process(self) -> int:
        """Batches sent to the scoring process (the others were scored in the loop)."""
        return self.overlap.batches_sent

    @property
    def scoring_pid(self) -> int | None:
        """The scoring process's pid (None: the worker scores in its own process)."""
        return self.overlap.pid

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask the loop to finish its batch, commit and leave (thread- and signal-safe)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def load_model(self) -> Scorer:
        self.model_watcher = model_watcher(self.settings, self.spec)
        return self._use_model(load_first_model(self.model_watcher, self.metrics, self.health))

    def _use_model(self, loaded: LoadedModel) -> Scorer:
        scorer = scorer_for(loaded, self.settings)
        if self.settings.scoring_process:
            self.overlap.use(scorer, self.settings.native_threads)
        if self.processor is not None:
            self.drift.model_changed(self.processor, loaded)
        self.metrics.set_model(loaded.name, loaded.version, loaded.sha256)
        self.health.set_model_loaded(True)
        log.info("model %s %s loaded (sha256 %s)", loaded.name, loaded.version, loaded.sha256[:12])
        return scorer

    def _check_model(self, consumer: Consumer, producer: ProducerPort) -> None:
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

    def _send_retrain_request(self, producer: ProducerPort, request: RetrainRequest) -> None:
        def settle() -> None:
            # The batch in flight commits its own transaction on the deliverer thread:
            # let it finish (and commit) before this request opens another one.
            if self._consumer is not None:
                self.deliverer.collect(self._consumer, block=True)

        self.drift.send_retrain_request(producer, request, self.transactions, settle)

    def _producer_config(self) -> dict[str, Any]:
        limit = (
            self._dead_letters.record_limit
            if self._dead_letters is not None
            else self.settings.producer_max_message_bytes
        )
        return producer_config(
            self.settings,
            record_limit=limit,
            error_cb=self._on_client_error,
            on_delivery=self.delivery.on_delivery,
        )

    def _transactional_producer(self) -> Producer:
        return transactional_producer(self._producer_config(), self._stop)

    def _on_client_error(self, error: KafkaError) -> None:
        log.warning("kafka client: %s", error)
        if error.code() in (
            KafkaError._ALL_BROKERS_DOWN,
            KafkaError._TRANSPORT,
            KafkaError._TIMED_OUT,
        ):
            self.health.set_broker_ok(False, str(error))
        if error.fatal():
            if self.transactions is not None and self.transactions.fenced_by_own_timeout(error):
                return  # the commit's own failure asks the broker (``transactions``)
            self.delivery.errors.append(f"fatal client error: {error}")
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

    def _restore(self, partitions: list[int], committed: dict[int, int]) -> None:
        assert self.processor is not None
        self.changelog.restore(self.processor, partitions, committed)

    def _settle(self, consumer: Consumer) -> None:
        """Before partitions go: the batch pending in the scoring process is published and
        committed, and the batch in flight delivered and committed."""
        if self.overlap.pending is not None and self._producer is not None:
            self.revoked_with_pending += 1
            self._finish_pending(consumer, self._producer)
        self.deliverer.collect(consumer, block=True)

    def _rewind(
        self, consumer: Consumer, producer: ProducerPort, failed: TransactionFailed
    ) -> ProducerPort:
        """After a failed transaction, carry on from the last committed batch
        (``ExactlyOnce.rewind``)."""
        assert self.transactions is not None

        def reset() -> None:
            # A batch prepared after the failed one is dropped too: the restore undoes its
            # state update, and the seek brings its records again.
            self.overlap.drop()
            if self._dead_letters is not None:
                # A dead letter the broker refused: the new producer's batches fit its limit.
                self._dead_letters.refresh_if_stale()
            self.changelog.pending = []  # evictions since: redone on the restored state

        partitions = sorted(self.rebalance.assigned)
        return self.transactions.rewind(consumer, producer, failed, partitions, reset)

    # ------------------------------------------------------------------ loop
    def run(self, ready: Callable[[], None] | None = None) -> int:
        """Run until ``stop()``; returns the process exit code."""
        s = self.settings
        limit_native_threads(s.native_threads)
        scorer = self.load_model()
        monitor, trigger = self.drift.monitor_for(scorer.model) if s.drift else (None, None)
        self.processor = ScoringProcessor(
            self.spec,
            scorer,
            max_event_bytes=s.max_event_bytes,
            changelog=s.changelog,
            drift=monitor,
            trigger=trigger,
            clock_skew=ClockSkewPolicy(s.max_clock_skew_ms, s.max_replay_jump_ms),
            tick_ms=s.tick_ms,
            tick_from_ms=s.tick_from_ms,
            explain=s.explain,
        )
        self.processor.drift_since_ms = self.drift.since(scorer.model)
        self._dead_letters = DeadLetterWriter(
            bootstrap=s.bootstrap_servers,
            topic=s.dead_letter_topic,
            source_topic=s.input_topic,
            worker_id=s.worker_id,
            producer_limit=s.producer_max_message_bytes,
            metrics=self.metrics,
            exactly_once=s.exactly_once,
            on_other_error=self.delivery.on_delivery,
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
        self.drift.restore_checkpoint(self.processor)
        if s.changelog:
            self.changelog.ensure_topic()
        consumer = Consumer(
            consumer_config(
                s,
                stats_cb=self.metrics.update_from_librdkafka_stats,
                error_cb=self._on_client_error,
                on_commit=self.delivery.on_commit,
            )
        )
        self._consumer = consumer
        producer: ProducerPort = (
            self._transactional_producer() if s.exactly_once else Producer(self._producer_config())
        )
        self._producer = producer
        consumer.subscribe(
            [s.input_topic],
            on_assign=self.rebalance.on_assign,
            on_revoke=self.rebalance.on_revoke,
            on_lost=self.rebalance.on_revoke,
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
        exit_code = EXIT_OK
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
            self.deliverer.collect(consumer, block=True)  # the last batch: committed
        except (DeliveryFailed, TransactionFailed, RestoreFailed, ScoringProcessFailed) as failed:
            log.error("stopping without commit: %s", failed)
            exit_code = EXIT_NOT_COMMITTED
        finally:
            self.metrics.set_up(False)
            self.overlap.close()  # the pending batch: not published, not committed
            # Waits for the batch in flight: never close clients under a running delivery.
            if self.deliverer.close():
                exit_code = EXIT_NOT_COMMITTED
            if exit_code == EXIT_OK:
                self.drift.save_checkpoint(self.processor, flush=True)
            remaining = producer.flush(30)
            if remaining:
                log.error("%d records still undelivered at shutdown", remaining)
            consumer.close()  # leaves the group now, so partitions move without a timeout
        log.info("worker stopped after %d batches", self.batches)
        return exit_code

    def _step(self, consumer: Consumer, producer: ProducerPort, batcher: AdaptiveBatcher) -> None:
        """One turn of the loop: a batch (or an idle tick), then the periodic chores."""
        s = self.settings
        assert self.processor is not None
        plan = batcher.plan()
        t0 = time.perf_counter()
        messages = poll_batch(
            consumer,
            plan,
            adaptive=s.adaptive_batch,
            pending=self.overlap.pending is not None,
            finish_pending=lambda: self._finish_pending(consumer, producer),
        )
        poll_s = time.perf_counter() - t0
        self.rebalance.take_failure()  # raised in a rebalance callback
        self.health.beat()
        self.metrics.heartbeat()
        records = [m for m in messages if not is_error(m)]
        busy_s = 0.0
        if records:
            self.health.set_broker_ok(True)
            self._last_contact = time.monotonic()
            self.metrics.observe_stage("poll", poll_s)
            t1 = time.perf_counter()
            # A full batch means a backlog: the one case a scoring process overlaps.
            self.health.begin_batch()
            self._process_batch(records, consumer, producer, backlog=len(messages) >= plan.size)
            busy_s = time.perf_counter() - t1
        else:
            self._finish_pending(consumer, producer)
            self.deliverer.collect(consumer, block=False)
            self.drift.tick_trigger(self.processor)
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
                self.changelog.pending.extend(tombstones)
            self.metrics.inc_customers_evicted(len(tombstones))
            self.metrics.set_customers_in_state(self.processor.customers_in_state)
            self._last_eviction = time.monotonic()
        self._check_model(consumer, producer)
        self.drift.take_alerts(
            self.processor, lambda request: self._send_retrain_request(producer, request)
        )
        if self.drift.checkpoint_due():
            self.drift.save_checkpoint(self.processor)

    def _process_batch(
        self, records: list[Message], consumer: Consumer, producer: ProducerPort, *, backlog: bool
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
        started = time.perf_counter()
        raw, columns_s = raw_batch(self.settings.input_topic, records)
        assert self.processor is not None
        prepared = Prepared(self.processor.prepare(raw), records, started)
        # Reading the records' fields is part of decoding them.
        prepared.prepared.stage_seconds["decode"] += columns_s
        if self.overlap.process is None or not backlog:
            # Scored here, at once: a caught-up worker has nothing to overlap the model
            # with, and the hand-off only added latency (p50 +20 ms at 1k events/s).
            self._finish_pending(consumer, producer)  # it goes first
            scores = self.processor.score(prepared.prepared)
            self._finish_batch(prepared, scores, consumer, producer)
            return
        # Scoring process: this batch is scored while the previous one is published.
        previous = self.overlap.submit(prepared)
        if previous is not None:
            scores = self.overlap.scores_of(previous, self.processor)
            self._finish_batch(previous, scores, consumer, producer)

    def _finish_pending(self, consumer: Consumer, producer: ProducerPort) -> None:
        """Publish the batch pending in the scoring process, if any."""
        pending = self.overlap.take()
        if pending is not None:
            assert self.processor is not None
            scores = self.overlap.scores_of(pending, self.processor)
            self._finish_batch(pending, scores, consumer, producer)

    def _finish_batch(
        self, prepared: Prepared, scores: np.ndarray, consumer: Consumer, producer: ProducerPort
    ) -> None:
        """Drift, predictions, then delivery and commit (see ``_process_batch``)."""
        s = self.settings
        m = self.metrics
        assert self.processor is not None
        records, started, raw = prepared.records, prepared.started, prepared.prepared.raw
        result = self.processor.finish(prepared.prepared, scores)
        record_scored(m, prepared.prepared, result)
        self.drift.publish(self.processor, result)

        # The previous batch must be delivered and committed before this one produces.
        t_wait = time.perf_counter()
        self.deliverer.collect(consumer, block=True, commit_async=True)
        t0 = time.perf_counter()
        # "commit": what the loop waits for the previous batch's delivery, plus its commit.
        m.observe_stage("commit", t0 - t_wait)
        changelog = self.changelog.take(result.changelog)
        offsets = next_offsets(s.input_topic, raw)
        delivery, dead_letters = self.delivery, self._dead_letters
        job: Callable[..., None]
        if self.transactions is not None:

            def fill() -> None:
                delivery.produce_batch(producer, result, records, dead_letters)
                delivery.produce_changelog(producer, changelog)

            self.transactions.open(producer, fill)
            job = self.transactions.finish
            args: tuple[Any, ...] = (producer, offsets, consumer.consumer_group_metadata())
        else:
            delivery.produce_batch(producer, result, records, dead_letters)
            job = delivery.finish_at_least_once
            args = (producer, changelog)
        m.observe_stage("produce", time.perf_counter() - t0 + result.stage_seconds["encode"])
        self.health.begin_batch()  # from here on: the batch's delivery is what is timed
        self.deliverer.submit(job, args, offsets, len(records), started)
        if not s.pipelined or s.exactly_once:
            # Exactly-once commits its transaction before the next poll.  Pipelined
            # transactions lost one batch (200 predictions) in the 300k-event, 20-kill
            # loop (DRIFTLINE_SLOW); most likely the restore taking an aborted batch's
            # changelog (Tansu returns aborted records to read_committed readers), now
            # guarded in ``Changelog.restore``.  Pipelining stays off until that loop passes.
            self.deliverer.collect(consumer, block=True)

        record_batch(
            m,
            self.processor,
            result,
            topic=s.input_topic,
            n=len(records),
            seconds=time.perf_counter() - started,
        )


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
            return EXIT_MODEL_REFUSED
        except RuntimeRefused as error:
            log.error("model runtime %s refused: %s", settings.model_runtime, error)
            return EXIT_MODEL_REFUSED
