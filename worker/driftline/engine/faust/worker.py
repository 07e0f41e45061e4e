"""The Faust engine's worker: a faust-streaming app whose agent scores micro-batches.

One agent takes the input topic's events in micro-batches (``Stream.noack_take(n,
within=...)``: ``take`` with the acks left to the agent) and runs them through the same
``ScoringProcessor`` as the Kafka engine: decode, future and late split, state update,
features, one scorer call, predictions.  ``engine.faust.delivery`` then produces
predictions and dead letters, then the state changelog; only once all of that is
acknowledged by the broker does the worker commit the batch's offsets, itself: Faust's
own commits are off (``engine.faust.transport`` says why).  That is the Kafka engine's
at-least-once contract.  ``Stream.take`` itself acks its buffer in a ``finally``, even
when the agent raised, and Faust would commit acked offsets.

Rebalances: each partition this worker owns has a cursor (``engine.faust.cursors``), and
only the events that continue from it reach the processor, in offset order, so that
events Faust hands out late or out of order around a rebalance are neither skipped nor
scored twice.  Between a revocation and the next assignment the worker owns nothing and
scores nothing: the partitions' next owner may already be restoring them.

State: Driftline's changelog topic and format (``engine.faust.changelog``), restored
before a newly assigned partition's first batch; ``/readyz`` is false meanwhile.

Health and metrics: Driftline's own HTTP server (``observability.http``) with the Kafka
engine's metric names; Faust's web server is off.  ``/healthz`` follows a heartbeat that a
task on the app's event loop beats: a blocked loop makes it stale.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import faust
import numpy as np
from faust.streams import Stream
from faust.types import TP, EventT

from driftline.core.clock_skew import ClockSkewPolicy
from driftline.core.spec import FeatureSpec
from driftline.engine.base import ScoringEngine
from driftline.engine.faust.changelog import RestoreFailed, group_positions, restore
from driftline.engine.faust.cursors import GapProbe, select_in_order
from driftline.engine.faust.delivery import DeliveryFailed, FaustDelivery
from driftline.engine.faust.records import (
    SourceRecord,
    consistent_partition,
    next_offsets,
    raw_batch,
)
from driftline.engine.faust.transport import EngineCommittedConsumer, EngineTransport
from driftline.engine.kafka.admin import TopicSpec, ensure_topics, wait_for_broker
from driftline.engine.kafka.client_config import kafka_client_config
from driftline.engine.kafka.dead_letters import batch_size_for, topic_max_message_bytes
from driftline.engine.kafka.worker import WorkerSettings
from driftline.engine.model_runtime import load_first_model, model_watcher, scorer_for
from driftline.model.registry import LoadedModel, ModelRefused
from driftline.model.runtimes.sklearn import Scorer, limit_native_threads
from driftline.model.runtimes.verification import RuntimeRefused
from driftline.model.watcher import ModelWatcher
from driftline.observability.http import HealthServer, HealthState
from driftline.observability.metrics import WorkerMetrics
from driftline.processor import BatchResult, Rejected, ScoringProcessor

log = logging.getLogger(__name__)

#: Faust's agent name (also the name of its stream in Faust's logs).
AGENT_NAME = "driftline-score"
#: How often the loop's heartbeat task beats and runs the idle chores.
TICK_S = 0.5


def unsupported(settings: WorkerSettings) -> list[str]:
    """What ``settings`` asks for that the Faust engine does not do (see the README)."""
    missing = []
    if settings.exactly_once:
        missing.append("--exactly-once (Faust engine: at-least-once only)")
    if settings.drift:
        missing.append("--drift (drift monitoring runs in the Kafka engine only)")
    if settings.scoring_process:
        missing.append("--scoring-process (Kafka engine only)")
    if settings.tick_ms is not None:
        missing.append("--tick (scheduled re-scoring runs in the Kafka engine only: --tick off)")
    if settings.explain is not None:
        missing.append("--explain (reason codes: Kafka engine only)")
    user = {
        k: v for k, v in kafka_client_config({}).items() if k not in ("logger", "bootstrap.servers")
    }
    if user:
        missing.append(
            f"Kafka client properties {sorted(user)} (the Faust engine's aiokafka clients "
            "take none of them: plaintext brokers only)"
        )
    return missing


class FaustScoringWorker(ScoringEngine):
    """One worker process: a Faust app in the consumer group, scoring what it is assigned."""

    def __init__(
        self,
        settings: WorkerSettings,
        spec: FeatureSpec,
        metrics: WorkerMetrics | None = None,
        health: HealthState | None = None,
    ) -> None:
        missing = unsupported(settings)
        if missing:
            raise ValueError("the Faust engine does not support " + "; ".join(missing))
        self.settings = settings
        self.spec = spec
        self.metrics = metrics or WorkerMetrics()
        self.health = health or HealthState()
        self.processor: ScoringProcessor | None = None
        self.model_watcher: ModelWatcher | None = None
        self.batches = 0
        self.events_processed = 0
        self.first_batch_started: float | None = None  # perf_counter, for benchmarks
        self.last_batch_done: float | None = None
        #: Partitions whose state is restored (the processor holds them).
        self.restored: set[int] = set()
        #: Per partition this worker owns: the next offset to score (``engine.faust.cursors``).
        self.cursors: dict[int, int] = {}
        #: Times a partition was sought back to its cursor over a hole in what Faust handed out.
        self.holes = 0
        self._sought: dict[int, tuple[int, float]] = {}  # partition: (offset, monotonic)
        self._gaps: GapProbe | None = None
        self._pending_changelog: list[tuple[int, bytes, bytes | None]] = []
        self._lag_series: set[int] = set()
        self._stop_requested = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._failure: BaseException | None = None
        self._closing = False
        self._app: faust.App | None = None
        self._delivery: FaustDelivery | None = None
        self._last_eviction = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Finish the batch, commit and leave (thread- and signal-safe)."""
        self._stop_requested.set()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            loop.call_soon_threadsafe(stopping.set)

    def run(self, ready: Callable[[], None] | None = None) -> int:
        """Run until ``stop()``; returns the exit code (0, or 3 after a failed batch)."""
        return asyncio.run(self._main(ready))

    def load_model(self) -> Scorer:
        self.model_watcher = model_watcher(self.settings, self.spec)
        return self._use_model(load_first_model(self.model_watcher, self.metrics, self.health))

    def _use_model(self, loaded: LoadedModel) -> Scorer:
        scorer = scorer_for(loaded, self.settings)
        self.metrics.set_model(loaded.name, loaded.version, loaded.sha256)
        self.health.set_model_loaded(True)
        log.info("model %s %s loaded (sha256 %s)", loaded.name, loaded.version, loaded.sha256[:12])
        return scorer

    def _setup_topics(self) -> int:
        """The changelog topic (as many partitions as the input); the dead-letter limit."""
        s = self.settings
        metadata = wait_for_broker(s.bootstrap_servers).topics.get(s.input_topic)
        if metadata is None or metadata.error is not None:
            raise RuntimeError(f"input topic {s.input_topic} not found")
        if s.changelog:
            ensure_topics(
                s.bootstrap_servers,
                [
                    TopicSpec(
                        s.changelog_topic,
                        len(metadata.partitions),
                        {"cleanup.policy": "compact", "retention.ms": "-1"},
                    )
                ],
            )
        limits = [s.producer_max_message_bytes]
        topic_limit = topic_max_message_bytes(s.bootstrap_servers, s.dead_letter_topic)
        if topic_limit is not None:
            limits.append(topic_limit)
        return min(limits)

    def _make_app(self, datadir: Path, record_limit: int) -> faust.App:
        s = self.settings
        app = faust.App(
            s.group_id,  # Faust's app id is its consumer group
            broker=[f"kafka://{server}" for server in s.bootstrap_servers.split(",")],
            autodiscover=False,
            datadir=str(datadir),
            store="memory://",
            web_enabled=False,
            topic_disable_leader=True,
            topic_allow_declare=False,
            processing_guarantee="at_least_once",
            # Stopping waits for the batch being scored (``_main``), not for every event
            # handed out: events left unacked (after ``stop()``, or a failed batch's) are
            # not committed, and come again.  Faust's wait for them would never end.
            stream_wait_empty=False,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=6.0,
            broker_heartbeat_interval=1.5,
            broker_commit_interval=1.0,
            broker_max_poll_records=s.batch_size,
            stream_buffer_maxsize=max(4096, 2 * s.batch_size),
            consumer_max_fetch_size=s.fetch_max_bytes,
            producer_acks=-1,
            producer_linger_ms=5,
            producer_max_request_size=s.producer_max_message_bytes,
            producer_max_batch_size=batch_size_for(record_limit),
            producer_partitioner=consistent_partition,
            consumer_group_instance_id=s.group_instance_id,
        )
        app.transport = EngineTransport(app.conf.broker, app)  # before the app's clients
        topic = app.topic(
            s.input_topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

        async def score(stream: faust.StreamT[Any]) -> None:
            # Faust hands its agents a ``Stream``; ``noack_take`` is not on the protocol.
            await self._consume(cast(Stream[Any], stream))

        app.agent(topic, name=AGENT_NAME)(score)
        # cast: mode types a handler as ``Callable[[T, VarArg(), NamedArg(BaseSignalT,
        # "signal"), KwArg()], ...]``, which no function definition matches under mypy
        # (not even mode's own example); the handlers take (sender, partitions, **kwargs).
        app.on_partitions_assigned.connect(cast(Any, self._on_assigned))
        app.on_partitions_revoked.connect(cast(Any, self._on_revoked))
        return app

    async def _main(self, ready: Callable[[], None] | None) -> int:
        s = self.settings
        limit_native_threads(s.native_threads)
        scorer = self.load_model()
        self.processor = ScoringProcessor(
            self.spec,
            scorer,
            max_event_bytes=s.max_event_bytes,
            changelog=s.changelog,
            clock_skew=ClockSkewPolicy(s.max_clock_skew_ms, s.max_replay_jump_ms),
        )
        record_limit = await asyncio.to_thread(self._setup_topics)
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        if self._stop_requested.is_set():
            self._stopping.set()
        datadir = Path(tempfile.mkdtemp(prefix="driftline-faust-"))
        app = self._make_app(datadir, record_limit)
        self._app = app
        self._gaps = gaps = GapProbe(s.bootstrap_servers, s.input_topic)
        exit_code = 0
        try:
            await app.start()
            self._delivery = FaustDelivery(
                app.producer,
                output_topic=s.output_topic,
                dead_letter_topic=s.dead_letter_topic,
                changelog_topic=s.changelog_topic,
                source_topic=s.input_topic,
                worker_id=s.worker_id,
                record_limit=record_limit,
                metrics=self.metrics,
            )
            self.metrics.set_up(True)
            if ready:
                ready()
            ticker = asyncio.create_task(self._tick())
            await self._stopping.wait()
            ticker.cancel()
            # The batch being scored is finished (delivered and acked) before Faust stops
            # and commits; none starts after.
            async with self._lock:
                self._closing = True
        finally:
            self.metrics.set_up(False)
            await app.stop()
            await gaps.close()
            shutil.rmtree(datadir, ignore_errors=True)
        if self._failure is not None:
            log.error("stopped without committing the failed batch: %s", self._failure)
            exit_code = 3
        log.info("worker stopped after %d batches", self.batches)
        return exit_code

    # ------------------------------------------------------------------ partitions
    def _input_partitions(self, tps: Any) -> set[int]:
        return {tp.partition for tp in tps if tp.topic == self.settings.input_topic}

    async def _on_assigned(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        """Restore the state of the partitions this worker did not hold.

        Faust's ``on_partitions_assigned`` signal: ``args[0]`` is the whole assignment.
        """
        assert self._lock is not None
        partitions = self._input_partitions(args[0])
        async with self._lock:
            self._forget(self.restored - partitions)
            await self._restore(sorted(partitions - self.restored))
            self._report_assignment(len(partitions))

    async def _on_revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        """Drop revoked partitions' state: their next owner restores it.

        Faust's ``on_partitions_revoked`` signal: ``args[0]`` holds the revoked partitions.

        Under the lock: the batch being scored is delivered and committed first.  Events
        of these partitions handed out later are not scored (no cursor): they come again
        to whoever owns the partitions next, from the group's committed offsets.
        """
        assert self._lock is not None
        async with self._lock:
            self._forget(self._input_partitions(args[0]))

    def _forget(self, partitions: set[int]) -> None:
        if not partitions or self.processor is None:
            return
        self.processor.revoke(sorted(partitions))
        self.restored -= partitions
        for p in partitions:
            self.cursors.pop(p, None)
        self._pending_changelog = [r for r in self._pending_changelog if r[0] not in partitions]
        for p in partitions & self._lag_series:
            self.metrics.consumer_lag.remove(self.settings.input_topic, str(p))
        self._lag_series -= partitions
        self._report_assignment(len(self.restored))
        log.info("revoked %s", sorted(partitions))

    async def _restore(self, partitions: list[int]) -> None:
        """Rebuild the partitions' state from the changelog (caller holds the lock)."""
        assert self.processor is not None
        if not partitions:
            return
        s = self.settings
        if not s.changelog:
            _, starts = await group_positions(
                s.bootstrap_servers, s.group_id, s.input_topic, partitions
            )
            self.processor.assign(partitions)
            self.restored.update(partitions)
            self.cursors.update(starts)
            return
        self.health.set_restoring(f"restoring state of partitions {partitions}")
        try:
            done = await restore(
                s.bootstrap_servers,
                s.group_id,
                s.input_topic,
                s.changelog_topic,
                partitions,
                s.restore_timeout_s,
            )
            for p in partitions:
                customers = self.processor.restore(
                    p, list(done.latest[p].items()), done.committed[p]
                )
                self.metrics.record_restore(done.records[p], customers, done.seconds)
                log.info(
                    "restored partition %d: %d customers from %d changelog records "
                    "(committed offset %d)",
                    p,
                    customers,
                    done.records[p],
                    done.committed[p],
                )
            self.restored.update(partitions)
            self.cursors.update(done.starts)
        finally:
            self.health.set_restoring(None)

    def _report_assignment(self, n: int) -> None:
        self.health.set_assigned(n)
        self.metrics.set_assigned_partitions(n)

    # ------------------------------------------------------------------ batches
    async def _consume(self, stream: Stream[Any]) -> None:
        """The agent: micro-batches until the worker stops or a batch fails."""
        s = self.settings
        assert self._lock is not None
        async for batch in stream.noack_take(s.batch_size, within=s.poll_timeout_s):
            # ``noack_take`` yields the events themselves (to be acked), though typed
            # as the stream's values.
            events = cast(Sequence[EventT[Any]], batch)
            async with self._lock:
                if self._closing or self._failure is not None:
                    continue  # not acked: they come again after the restart
                try:
                    await self._process(events)
                except (DeliveryFailed, RestoreFailed, Exception) as failed:
                    # Nothing of the batch is acked, so nothing of it is committed.
                    log.exception("batch failed: the worker stops without committing it")
                    self._failure = failed
                    if self._stopping is not None:
                        self._stopping.set()
                    continue
            for event in events:
                await stream.ack(event)

    async def _process(self, events: Sequence[Any]) -> None:
        s, m = self.settings, self.metrics
        processor, delivery, app = self.processor, self._delivery, self._app
        assert processor is not None and delivery is not None and app is not None
        started = time.perf_counter()
        records = await self._in_order([SourceRecord.of(e.message) for e in events])
        if not records:
            return
        raw = raw_batch(s.input_topic, records)
        self.health.begin_batch()
        columns_s = time.perf_counter() - started
        prepared = processor.prepare(raw)
        prepared.stage_seconds["decode"] += columns_s
        result = processor.finish(prepared, processor.score(prepared))
        if prepared.model_errors:
            m.record_model_errors(prepared.model_errors, prepared.isolation_calls)
        for stage in ("decode", "state", "predict"):
            m.observe_stage(stage, result.stage_seconds[stage])
        changelog, self._pending_changelog = self._pending_changelog + result.changelog, []
        t0 = time.perf_counter()
        await delivery.deliver(result, records, changelog)
        m.observe_stage("produce", time.perf_counter() - t0 + result.stage_seconds["encode"])
        self._count(result, raw.topic, len(records))
        done = next_offsets(raw)
        self.cursors.update(done)
        await self._commit(done)
        self._set_lag(done)
        self.health.note_commit()
        self.health.end_batch()
        self.health.beat()
        m.record_batch(len(records), time.perf_counter() - started)
        self.batches += 1
        self.events_processed += len(records)
        self.first_batch_started = self.first_batch_started or started
        self.last_batch_done = time.perf_counter()

    async def _in_order(self, records: list[SourceRecord]) -> list[SourceRecord]:
        """The records to score: per owned partition, those continuing from its cursor,
        in offset order; a partition with a hole is sought back to its cursor."""
        app, gaps = self._app, self._gaps
        assert app is not None and gaps is not None
        selection = await select_in_order(
            np.array([r.partition() for r in records], np.int32),
            np.array([r.offset() for r in records], np.int64),
            self.cursors,
            gaps.records_between,
        )
        if selection.dropped:
            log.debug(
                "%d events not scored: not owned, scored already, or after a hole",
                selection.dropped,
            )
        now = time.monotonic()
        for p, offset in selection.holes.items():
            # Faust left events out (handed out later, or dropped): read them again, once
            # (events fetched before the seek still come, and show the same hole).
            if self._sought.get(p, (-1, 0.0))[0] == offset and now - self._sought[p][1] < 1.0:
                continue
            log.warning(
                "partition %d: events missing after offset %d; reading again from it", p, offset
            )
            self.holes += 1
            self._sought[p] = (offset, now)
            await app.consumer.seek(TP(self.settings.input_topic, p), offset)
        return [records[i] for i in selection.indexes.tolist()]

    async def _commit(self, next_offsets: dict[int, int]) -> None:
        """Commit the delivered batch's offsets (the group rebalancing meanwhile: not)."""
        app = self._app
        assert app is not None
        consumer = cast(EngineCommittedConsumer, app.consumer)
        topic = self.settings.input_topic
        if not await consumer.commit_processed(
            {TP(topic, p): offset for p, offset in next_offsets.items()}
        ):
            log.info("offsets %s not committed: the group is rebalancing", next_offsets)

    def _count(self, result: BatchResult, topic: str, n: int) -> None:
        m, processor = self.metrics, self.processor
        assert processor is not None
        if result.n_redelivered:
            m.inc_redelivered(result.n_redelivered)
        m.inc_events_consumed(topic, n)
        m.inc_predictions(
            processor.scorer.name, processor.scorer.version, len(result.prediction_values)
        )
        for reason, count in _count_reasons(result.rejected).items():
            m.inc_dead_letters(reason, count)
        if result.n_late:
            m.inc_late_events(result.n_late)
        m.observe_event_latencies(result.event_latency_seconds)
        m.set_customers_in_state(processor.customers_in_state)

    def _set_lag(self, next_offset: dict[int, int]) -> None:
        """``driftline_consumer_lag`` from the high watermarks Faust's fetches carry."""
        app = self._app
        assert app is not None
        topic = self.settings.input_topic
        for p, offset in next_offset.items():
            tp = TP(topic, p)
            try:
                highwater = app.consumer.highwater(tp)
            except Exception:  # not fetched yet: unknown, as librdkafka's -1
                continue
            if highwater is None:
                continue
            self.metrics.consumer_lag.labels(topic=topic, partition=str(p)).set(
                max(0, int(highwater) - offset)
            )
            self._lag_series.add(p)

    # ------------------------------------------------------------------ chores
    async def _tick(self) -> None:
        """Heartbeat, idle eviction and model swaps, between batches (under the lock)."""
        assert self._lock is not None
        s = self.settings
        while True:
            await asyncio.sleep(TICK_S)
            self.health.beat()
            self.metrics.heartbeat()
            async with self._lock:
                if time.monotonic() - self._last_eviction > s.eviction_interval_s:
                    self._evict()
                self._check_model()

    def _evict(self) -> None:
        assert self.processor is not None
        tombstones = self.processor.evict_idle()
        if self.settings.changelog:
            self._pending_changelog.extend(tombstones)  # written with the next batch
        self.metrics.inc_customers_evicted(len(tombstones))
        self.metrics.set_customers_in_state(self.processor.customers_in_state)
        self._last_eviction = time.monotonic()

    def _check_model(self) -> None:
        """Swap in a new verified model; a refused one is only counted."""
        watcher, processor = self.model_watcher, self.processor
        if watcher is None or processor is None or not watcher.due():
            return
        result = watcher.poll()
        if result.kind == "loaded" and result.model is not None:
            try:
                processor.scorer = self._use_model(result.model)
            except RuntimeRefused as error:
                log.error("new model not swapped in: %s", error)
        elif result.kind == "refused" and result.reason is not None:
            self.metrics.inc_model_load_failures(result.reason)


def _count_reasons(rejected: list[Rejected]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rejected:
        counts[r.reason] = counts.get(r.reason, 0) + 1
    return counts


def serve_faust_worker(settings: WorkerSettings, spec: FeatureSpec) -> int:
    """Run a Faust worker with Driftline's HTTP endpoints until SIGTERM/SIGINT."""
    worker = FaustScoringWorker(settings, spec)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    with HealthServer(
        worker.metrics, settings.metrics_host, settings.metrics_port, worker.health
    ) as server:
        log.info("metrics and health on %s (engine: faust)", server.url)
        try:
            return worker.run()
        except ModelRefused as refused:
            log.error("model refused (%s): %s", refused.reason, refused.message)
            return 2
        except RuntimeRefused as error:
            log.error("model runtime %s refused: %s", settings.model_runtime, error)
            return 2
