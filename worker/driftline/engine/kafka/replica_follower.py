"""The Kafka side of the serving replica: follow the changelog and predictions topics.

A thin adapter over :class:`~driftline.core.replica.StateReplica`: one consumer, no
group (``assign`` of every partition from the beginning, nothing committed), reading
``read_committed`` so that an exactly-once worker's aborted batches never reach an
answer.  Records go to the replica a fetch at a time under the caller's lock.

Ready: when every partition has been read to the end it had when the follower started
(the stable end, read_committed's last stable offset, from ListOffsets), reached either
by the position or by a partition-EOF event at or past it.  Until then an answer could
be older than what the workers hold, so ``/readyz`` says no and lookups answer 503.
A topic that does not exist yet (the service started before any worker created its
changelog) is waited for; the service is not ready meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from driftline.core.replica import ApplyCounts, StateReplica
from driftline.engine.kafka.client_config import kafka_client_config

log = logging.getLogger(__name__)

#: Called after each applied fetch: (topic kind "changelog"/"predictions", counts,
#: the applied predictions' processed_at in epoch ms).
OnApplied = Callable[[str, ApplyCounts, list[int]], None]


@dataclass(slots=True)
class FollowerSettings:
    """Where the replica reads from."""

    bootstrap_servers: str
    changelog_topic: str
    predictions_topic: str
    fetch_wait_max_ms: int = 10
    #: How long to wait for the topics to exist before giving up (the service keeps
    #: answering /healthz, and /readyz stays false).
    topic_wait_s: float = 600.0
    consumer_config: dict[str, object] = field(default_factory=dict)


class ReplicaFollower:
    """Reads both topics into a replica on a background thread."""

    def __init__(
        self,
        settings: FollowerSettings,
        replica: StateReplica,
        lock: threading.Lock,
        on_applied: OnApplied | None = None,
    ) -> None:
        self.settings = settings
        self.replica = replica
        self.lock = lock
        self.on_applied = on_applied
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        #: (topic, partition) -> the stable end the replica must reach to be ready.
        self.targets: dict[tuple[str, int], int] = {}
        self._reached: set[tuple[str, int]] = set()
        self.error: str | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="replica-follower", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ internals
    def _run(self) -> None:
        try:
            self._follow()
        except Exception as error:  # the API must say why it stopped, not hang unready
            self.error = f"{type(error).__name__}: {error}"
            log.exception("replica follower stopped")

    def _partitions(self) -> dict[str, int] | None:
        """Partition counts of both topics, waiting for them to exist (None: stopped)."""
        s = self.settings
        admin = AdminClient(kafka_client_config({"bootstrap.servers": s.bootstrap_servers}))
        deadline = time.monotonic() + s.topic_wait_s
        topics = (s.changelog_topic, s.predictions_topic)
        while not self._stop.is_set():
            metadata = admin.list_topics(timeout=10).topics
            counts = {
                t: len(metadata[t].partitions)
                for t in topics
                if t in metadata and metadata[t].error is None and metadata[t].partitions
            }
            if len(counts) == len(topics):
                return counts
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {sorted(set(topics) - set(counts))} do not exist")
            log.info("waiting for topics %s", sorted(set(topics) - set(counts)))
            self._stop.wait(1.0)
        return None

    def _stable_ends(
        self, admin: AdminClient, tps: list[TopicPartition]
    ) -> dict[tuple[str, int], int]:
        from confluent_kafka import IsolationLevel
        from confluent_kafka.admin import OffsetSpec

        futures = admin.list_offsets(
            # OffsetSpec.latest is not annotated in confluent_kafka.
            {tp: OffsetSpec.latest() for tp in tps},  # type: ignore[no-untyped-call]
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=10,
        )
        return {(tp.topic, tp.partition): f.result(timeout=15).offset for tp, f in futures.items()}

    def _follow(self) -> None:
        s = self.settings
        counts = self._partitions()
        if counts is None:
            return
        tps = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
        admin = AdminClient(kafka_client_config({"bootstrap.servers": s.bootstrap_servers}))
        self.targets = self._stable_ends(admin, tps)
        log.info("replica catching up to %s", self.targets)
        consumer = Consumer(
            kafka_client_config(
                {
                    "bootstrap.servers": s.bootstrap_servers,
                    # No group membership, nothing committed: the id is only required.
                    "group.id": f"driftline-serve-{uuid.uuid4().hex[:12]}",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": s.fetch_wait_max_ms,
                    **s.consumer_config,
                }
            )
        )
        try:
            consumer.assign(
                [TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in tps]
            )
            self._check_targets(consumer, {})
            while not self._stop.is_set():
                # consume() waits its whole timeout unless the batch fills: keep it short, it is
                # what a new record can wait here before it is applied.
                messages = consumer.consume(10_000, 0.005)
                self._apply(messages)
                if not self.ready:
                    self._check_targets(consumer, self._eofs(messages))
        finally:
            consumer.close()

    def _apply(self, messages: list[Message]) -> None:
        changelog: dict[int, list[tuple[bytes, bytes | None]]] = {}
        predictions: list[bytes] = []
        s = self.settings
        for message in messages:
            if message.error() is not None:
                error = message.error()
                assert error is not None
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("replica fetch error: %s", error)
                continue
            topic, partition = message.topic(), message.partition()
            assert partition is not None
            if topic == s.changelog_topic:
                changelog.setdefault(partition, []).append((message.key() or b"", message.value()))
            elif (value := message.value()) is not None:
                predictions.append(value)
        if not changelog and not predictions:
            return
        applied: list[tuple[str, ApplyCounts, list[int]]] = []
        with self.lock:
            for partition, records in changelog.items():
                applied.append(("changelog", self.replica.apply_changelog(partition, records), []))
            if predictions:
                counts = self.replica.apply_predictions(predictions)
                applied.append(("predictions", counts, counts.processed_at))
        if self.on_applied is not None:
            for kind, counts, processed in applied:
                self.on_applied(kind, counts, processed)

    @staticmethod
    def _eofs(messages: list[Message]) -> dict[tuple[str, int], int]:
        eofs: dict[tuple[str, int], int] = {}
        for message in messages:
            error = message.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                if topic is not None and partition is not None and offset is not None:
                    eofs[(topic, partition)] = offset
        return eofs

    def _check_targets(self, consumer: Consumer, eofs: dict[tuple[str, int], int]) -> None:
        pending = [tp for tp in self.targets if tp not in self._reached]
        if pending:
            positions = consumer.position([TopicPartition(t, p) for t, p in pending])
            for tp in positions:
                key = (tp.topic, tp.partition)
                at = max(tp.offset, eofs.get(key, -1))
                if at >= self.targets[key] or self.targets[key] <= 0:
                    self._reached.add(key)
        if len(self._reached) == len(self.targets):
            log.info("replica caught up: %d customers", len(self.replica))
            self._ready.set()
