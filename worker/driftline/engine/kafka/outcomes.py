"""``driftline outcomes`` on Kafka: a thin adapter over ``core.labels.resolver``.

It consumes the predictions topic, the input events topic and (optionally) the
customer-outcomes topic in one consumer group, and writes one ``prediction-outcomes``
record per resolved prediction.

**Co-partitioning.**  All three are keyed by customer id with the same partition count,
so partition ``p`` of each holds the same customers.  The group uses the ``range``
assignor, which gives partition ``p`` of every subscribed topic with equal partition
counts to the same member: one resolver per partition number sees all of its customers'
records.  Topics with different partition counts are refused at start.

**State and restarts.**  Each batch is one Kafka transaction: the outcomes, the changed
customers' state (``CustomerSnapshot``, tombstones for customers with none left) and the
partition's clocks on the compacted changelog ``<group>-changelog`` (partition ``p`` for
input partition ``p``), dead letters, and the consumed offsets of all three topics.  On
assignment a partition's resolver is rebuilt from its changelog before any of its records
is read, so a killed service resumes where its last committed batch left off: no
prediction's outcome is lost or written twice.  A failed transaction rewinds every
partition to its committed state (changelog and offsets) and goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from driftline.core.labels.definition import ChurnDefinition
from driftline.core.labels.records import (
    PARTITION_KEY,
    CustomerSnapshot,
    PartitionSnapshot,
    PredictionOutcome,
)
from driftline.core.labels.resolver import DROP_REASONS, OutcomeResolver
from driftline.core.state import NO_TIME
from driftline.engine.kafka.admin import TopicSpec, ensure_topics, wait_for_broker
from driftline.engine.kafka.changelog_reader import read_to_end
from driftline.engine.kafka.client_config import kafka_client_config
from driftline.engine.kafka.dead_letters import (
    PRODUCER_MAX_MESSAGE_BYTES,
    _header_list,
    dead_letter_headers,
    fit_dead_letter,
    topic_max_message_bytes,
)
from driftline.engine.kafka.errors import RestoreFailed
from driftline.engine.kafka.offsets import BrokerOffsets
from driftline.engine.kafka.outcome_inputs import PartitionInputs, decode_contract, decode_events
from driftline.observability.outcome_metrics import OutcomeMetrics

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_decode_customer = msgspec.json.Decoder(CustomerSnapshot).decode
_decode_partition = msgspec.json.Decoder(PartitionSnapshot).decode


class OutcomeServiceError(RuntimeError):
    """The service cannot run as configured (missing topics, mismatched partitions)."""


@dataclass
class OutcomeSettings:
    bootstrap_servers: str
    label: ChurnDefinition
    allowed_lateness_ms: int
    predictions_topic: str = "predictions"
    events_topic: str = "customer-events"
    external_topic: str | None = None
    output_topic: str = "prediction-outcomes"
    dead_letter_topic: str = "prediction-outcomes-dlq"
    group_id: str = "driftline-outcomes"
    #: Names the transactional id: a restarted instance under the same id fences its
    #: predecessor and aborts its open transaction.
    instance_id: str = "outcomes-0"
    sample_every_ms: int = 7 * 86_400_000
    disorder_ms: int | None = None
    triggers: tuple[str, ...] = ("event", "tick")
    max_pending: int = 1_000_000
    #: How far (event time) a partition's events may run ahead of its predictions before
    #: its events are paused; None: the horizon plus a day.  See ``_flow``.
    max_lead_ms: int | None = None
    batch_size: int = 5000
    poll_timeout_s: float = 0.5
    restore_timeout_s: float = 120.0
    transaction_timeout_s: float = 60.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def changelog_topic(self) -> str:
        return f"{self.group_id}-changelog"

    @property
    def inputs(self) -> list[str]:
        topics = [self.predictions_topic, self.events_topic]
        return topics + ([self.external_topic] if self.external_topic else [])


class OutcomeService:
    """The consume, resolve, produce loop; ``run`` until ``stop`` is set."""

    def __init__(self, settings: OutcomeSettings, metrics: OutcomeMetrics | None = None):
        self.s = settings
        self.metrics = metrics or OutcomeMetrics()
        self.stop = threading.Event()
        self.resolvers: dict[int, OutcomeResolver] = {}
        self.partition_count = 0
        self._dropped_seen: dict[tuple[int, str], int] = {}
        self._late_seen: dict[int, int] = {}
        self.record_limit = PRODUCER_MAX_MESSAGE_BYTES
        self.ready = threading.Event()
        self.paused: set[int] = set()
        self._ends: BrokerOffsets | None = None

    # ------------------------------------------------------------------ start-up
    def check_topics(self) -> int:
        """The inputs' common partition count; creates the outputs.  Refuses inputs that
        are missing or not co-partitioned."""
        s = self.s
        metadata = wait_for_broker(s.bootstrap_servers, 30.0)
        counts = {}
        for topic in s.inputs:
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                raise OutcomeServiceError(
                    f"topic {topic!r} does not exist: start the worker (or create it) first"
                )
            counts[topic] = len(found.partitions)
        if len(set(counts.values())) != 1:
            raise OutcomeServiceError(
                "the input topics must have the same partition count (they are joined by "
                f"partition: co-partitioned by customer id): {counts}"
            )
        n = next(iter(counts.values()))
        delete = {"cleanup.policy": "delete"}
        ensure_topics(
            s.bootstrap_servers,
            [
                TopicSpec(s.output_topic, n, delete),
                TopicSpec(s.dead_letter_topic, n, delete),
                TopicSpec(s.changelog_topic, n, {"cleanup.policy": "compact"}),
            ],
        )
        limit = topic_max_message_bytes(s.bootstrap_servers, s.dead_letter_topic)
        self.record_limit = min(PRODUCER_MAX_MESSAGE_BYTES, limit or PRODUCER_MAX_MESSAGE_BYTES)
        self.partition_count = n
        return n

    def _new_resolver(self) -> OutcomeResolver:
        s = self.s
        return OutcomeResolver(
            s.label,
            allowed_lateness_ms=s.allowed_lateness_ms,
            sample_every_ms=s.sample_every_ms,
            disorder_ms=s.disorder_ms,
            triggers=s.triggers,
        )

    def _producer(self) -> Producer:
        s = self.s
        producer = Producer(
            kafka_client_config(
                {
                    "bootstrap.servers": s.bootstrap_servers,
                    "client.id": f"driftline-{s.instance_id}",
                    "transactional.id": f"{s.group_id}-{s.instance_id}",
                    "transaction.timeout.ms": int(s.transaction_timeout_s * 1000),
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 5,
                    "message.max.bytes": PRODUCER_MAX_MESSAGE_BYTES,
                    "batch.size": max(1000, self.record_limit - 4096),
                }
            )
        )
        producer.init_transactions(60)
        return producer

    def _consumer(self) -> Consumer:
        s = self.s
        return Consumer(
            kafka_client_config(
                {
                    "bootstrap.servers": s.bootstrap_servers,
                    "group.id": s.group_id,
                    "client.id": f"driftline-{s.instance_id}",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    # partition p of every input on one member: see the module docstring
                    "partition.assignment.strategy": "range",
                    "session.timeout.ms": 10000,
                    "fetch.wait.max.ms": 50,
                    **s.extra,
                }
            )
        )

    # ------------------------------------------------------------------ restore
    def _changelog_ends(self) -> BrokerOffsets:
        """The changelog's stable and log ends (``BrokerOffsets.changelog_ends``)."""
        if self._ends is None:
            s = self.s
            self._ends = BrokerOffsets(
                s.bootstrap_servers, s.group_id, s.predictions_topic, s.changelog_topic
            )
        return self._ends

    def restore(self, partitions: Iterable[int]) -> None:
        """Rebuild the partitions' resolvers from their changelogs (read to their ends)."""
        wanted = sorted(set(partitions))
        if not wanted:
            return
        s = self.s
        started = time.monotonic()
        latest: dict[int, dict[bytes, bytes | None]] = {p: {} for p in wanted}

        def take(p: int, message: Message) -> None:
            latest[p][message.key() or b""] = message.value()

        # To each partition's EOF, as the worker's restore: a high watermark is short on
        # Tansu (the last batch's base offset + 1), and held back by an open transaction.
        try:
            read_to_end(
                {"bootstrap.servers": s.bootstrap_servers, "group.id": f"{s.group_id}-restore",
                 "fetch.wait.max.ms": 10},
                s.changelog_topic,
                wanted,
                take,
                timeout_s=s.restore_timeout_s,
                stable_ends=self._changelog_ends().changelog_ends,
                # A predecessor's open transaction: aborted by this service's producer
                # (same transactional id) before any restore, by its timeout otherwise.
                settle_s=s.transaction_timeout_s + 15.0,
            )  # fmt: skip
        except RestoreFailed as error:
            raise OutcomeServiceError(str(error)) from error
        for p in wanted:
            resolver = self._new_resolver()
            clocks = latest[p].pop(PARTITION_KEY, None)
            if clocks is not None:
                resolver.restore_partition(_decode_partition(clocks))
            customers = resolver.restore_customers(
                (key.decode(), _decode_customer(value))
                for key, value in latest[p].items()
                if value is not None
            )
            resolver.take_dirty()  # restored state is on the changelog already
            self.resolvers[p] = resolver
            self._late_seen[p] = resolver.late_events
            for reason in DROP_REASONS:
                self._dropped_seen[(p, reason)] = resolver.dropped[reason]
            self.metrics.restored_customers.inc(customers)
            log.info("outcomes: partition %d restored, %d customers, %d pending", p, customers,
                     resolver.pending_count)  # fmt: skip
        log.info("outcomes: restore of %s took %.2f s", wanted, time.monotonic() - started)
        self._gauges()

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        s = self.s
        if not self.partition_count:
            self.check_topics()
        producer = self._producer()  # before the restore: it aborts a predecessor's txn
        consumer = self._consumer()

        def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
            numbers = {tp.partition for tp in partitions} - set(self.resolvers)
            self.restore(numbers)
            self.paused.clear()  # a new assignment starts unpaused
            self.metrics.partitions.set(len(self.resolvers))

        def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
            for p in {tp.partition for tp in partitions}:
                self.resolvers.pop(p, None)
            self.metrics.partitions.set(len(self.resolvers))
            self._gauges()

        consumer.subscribe(s.inputs, on_assign=on_assign, on_revoke=on_revoke)
        self.ready.set()
        log.info("outcomes: consuming %s, writing %s", s.inputs, s.output_topic)
        try:
            while not self.stop.is_set():
                messages = consumer.consume(s.batch_size, s.poll_timeout_s)
                if not messages:
                    self._flow(consumer)
                    continue
                try:
                    self._batch(producer, consumer, messages)
                except KafkaException as error:
                    kafka_error = error.args[0] if error.args else None
                    fatal = isinstance(kafka_error, KafkaError) and (
                        kafka_error.fatal() or kafka_error.code() == KafkaError._FENCED
                    )
                    if fatal:
                        raise
                    log.warning("outcomes: transaction failed (%s): rewinding", error)
                    self.metrics.transactions_aborted.inc()
                    try:
                        producer.abort_transaction(30)
                    except KafkaException:
                        producer = self._producer()
                    self._rewind(consumer)
                self._flow(consumer)
        finally:
            consumer.close()
            producer.flush(10)

    def _flow(self, consumer: Consumer) -> None:
        """Pause a partition's events while they run more than the lead ahead of its
        predictions (in event time); resume them once the predictions caught up.

        The resolver keeps every target-event time a prediction still to come may need:
        without this, a service started behind (or a worker lagging) would keep the
        target events of the whole backlog.  With it, it keeps about ``lead`` of them.
        A lead above the horizon keeps every pending prediction resolvable: the events
        may always run past ``t + H`` for any prediction at ``t`` already read.
        """
        lead = self.s.max_lead_ms
        if lead is None:
            lead = self.s.label.horizon_ms + 86_400_000
        assigned = {tp.partition for tp in consumer.assignment() if tp.topic == self.s.events_topic}
        ahead = set()
        for p, resolver in self.resolvers.items():
            events_at = resolver.watermark.max_event_time_ms
            predictions_at = resolver.max_prediction_ms
            if events_at != NO_TIME and (
                predictions_at == NO_TIME or events_at - predictions_at > lead
            ):
                ahead.add(p)
        ahead &= assigned
        pause, resume = ahead - self.paused, (self.paused & assigned) - ahead
        if pause:
            consumer.pause([TopicPartition(self.s.events_topic, p) for p in sorted(pause)])
        if resume:
            consumer.resume([TopicPartition(self.s.events_topic, p) for p in sorted(resume)])
        self.paused = ahead
        self.metrics.paused.set(len(ahead))

    def _rewind(self, consumer: Consumer) -> None:
        """Back to the last committed batch: state from the changelog, offsets from the
        group's committed ones."""
        numbers = list(self.resolvers)
        self.resolvers.clear()
        self.restore(numbers)
        assignment = consumer.assignment()
        committed = consumer.committed(assignment, 30)
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def _batch(self, producer: Producer, consumer: Consumer, messages: list[Message]) -> None:
        s = self.s
        by_partition: dict[int, dict[str, list[Message]]] = defaultdict(lambda: defaultdict(list))
        positions: dict[tuple[str, int], int] = {}
        for m in messages:
            if (error := m.error()) is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(error)
            topic, p, offset = str(m.topic()), _partition(m), int(m.offset() or 0)
            by_partition[p][topic].append(m)
            positions[(topic, p)] = max(positions.get((topic, p), -1), offset + 1)
            self.metrics.records.labels(topic).inc()
        outcomes: list[PredictionOutcome] = []
        changelog: list[tuple[int, bytes, bytes | None]] = []
        dead: list[tuple[int, PartitionInputs]] = []
        for p, topics in sorted(by_partition.items()):
            resolver = self.resolvers.get(p)
            if resolver is None:  # not ours (a record fetched before a revoke)
                continue
            inputs = PartitionInputs()
            decode_events(inputs, topics.get(s.events_topic, []))
            decode_contract(inputs, s.predictions_topic,
                            topics.get(s.predictions_topic, []), external=False)  # fmt: skip
            if s.external_topic:
                decode_contract(inputs, s.external_topic,
                                topics.get(s.external_topic, []), external=True)  # fmt: skip
            room = max(0, s.max_pending - sum(r.pending_count for r in self.resolvers.values()))
            outcomes += resolver.step(
                events=inputs.events,
                predictions=inputs.predictions,
                external=inputs.external,
                capacity=room,
            )
            for customer, snapshot in resolver.take_dirty():
                value = None if snapshot is None else _encode(snapshot)
                changelog.append((p, customer.encode(), value))
            changelog.append((p, PARTITION_KEY, _encode(resolver.snapshot())))
            self.metrics.skipped_events.inc(inputs.skipped_events)
            if inputs.rejected:
                dead.append((p, inputs))

        producer.begin_transaction()
        for o in outcomes:
            producer.produce(s.output_topic, _encode(o), o.customer_id.encode())
        for p, key, value in changelog:
            producer.produce(s.changelog_topic, value, key, partition=p)
        failed_at = str(int(time.time() * 1000)).encode()
        for p, inputs in dead:
            for r in inputs.rejected:
                record = inputs.records[r.index]
                headers = dead_letter_headers(
                    record, r, inputs.rejected_topics[r.index], s.instance_id, failed_at
                )
                letter_key, letter, headers_out, _ = fit_dead_letter(
                    record.key(), record.value(), headers, _header_list(record),
                    self.record_limit,
                )  # fmt: skip
                # librdkafka takes None header values; the stub's list type is invariant
                producer.produce(
                    s.dead_letter_topic, letter, letter_key, partition=p,
                    headers=headers_out,  # type: ignore[arg-type]
                )  # fmt: skip
                self.metrics.dead_letters.labels(r.reason).inc()
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(60)
        # counted once committed
        for o in outcomes:
            self.metrics.resolved.labels(str(o.label), o.label_source).inc()
        self._gauges()

    def _gauges(self) -> None:
        self.metrics.pending.set(sum(r.pending_count for r in self.resolvers.values()))
        self.metrics.retained_times.set(sum(r.retained_times for r in self.resolvers.values()))
        for p, resolver in self.resolvers.items():
            for reason in DROP_REASONS:
                now = resolver.dropped[reason]
                before = self._dropped_seen.get((p, reason), 0)
                if now > before:
                    self.metrics.dropped.labels(reason).inc(now - before)
                self._dropped_seen[(p, reason)] = now
            late = resolver.late_events - self._late_seen.get(p, 0)
            if late > 0:
                self.metrics.late_events.inc(late)
            self._late_seen[p] = resolver.late_events


def _partition(message: Message) -> int:
    partition = message.partition()
    assert partition is not None
    return int(partition)
