"""The changelog: where each input partition's customer state is kept, and restored from.

Each batch writes, per customer it touched, one snapshot to the compacted topic
``<group>-<input>-changelog`` (same partition numbers as the input), plus evictions'
tombstones (``pending``: they go out with the next batch, after every snapshot before
them).  When a partition is assigned, or rewound after a failed transaction, its state is
rebuilt here from the changelog, read to its end before any of its events is processed,
as Quix Streams' state recovery and Kafka Streams' restore consumer do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import (
    KafkaError,
    KafkaException,
    Message,
)
from confluent_kafka.admin import AdminClient

from driftline.core.spec import FeatureSpec
from driftline.core.state import FeatureState
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.engine.kafka.changelog_reader import read_to_end
from driftline.engine.kafka.client_config import kafka_client_config
from driftline.engine.kafka.clients import fetch_wait_ms
from driftline.engine.kafka.delivery import ChangelogRecord
from driftline.engine.kafka.offsets import BrokerOffsets
from driftline.engine.kafka.settings import WorkerSettings
from driftline.observability.http import HealthState
from driftline.observability.metrics import WorkerMetrics
from driftline.processor import ScoringProcessor

log = logging.getLogger(__name__)


class Changelog:
    """A worker's changelog topic: records waiting for the next batch, and restores."""

    def __init__(
        self,
        settings: WorkerSettings,
        spec: FeatureSpec,
        *,
        offsets: BrokerOffsets,
        metrics: WorkerMetrics,
        health: HealthState,
        on_client_error: Callable[[KafkaError], None],
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.offsets = offsets
        self.metrics = metrics
        self.health = health
        self.on_client_error = on_client_error
        #: Tombstones of evicted customers, produced with the next batch's changelog.
        self.pending: list[ChangelogRecord] = []

    def take(self, batch: list[ChangelogRecord]) -> list[ChangelogRecord]:
        """What a batch writes: the pending records first, then its own snapshots."""
        records, self.pending = self.pending + batch, []
        return records

    def forget(self, revoked: set[int]) -> None:
        """Revoked partitions' pending records: their new owner restores without them."""
        self.pending = [r for r in self.pending if r[0] not in revoked]

    def ensure_topic(self) -> None:
        """The changelog topic, compacted, with as many partitions as the input topic."""
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

    def restore(
        self, processor: ScoringProcessor, partitions: list[int], committed: dict[int, int]
    ) -> None:
        """Read the partitions' changelogs to their ends (``read_to_end``) and rebuild
        their state."""
        s = self.settings
        started = time.perf_counter()
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

        def take(p: int, message: Message) -> None:
            key, value = message.key() or b"", message.value()
            records[p] += 1
            if probe is not None and key and value is not None:
                applied = probe.applied_offset_of(value)
                if applied is not None and applied >= committed.get(p, -1):
                    ahead[p] += 1
                    return
            latest[p][key] = value

        read_to_end(
            {
                "bootstrap.servers": s.bootstrap_servers,
                "group.id": f"{s.group_id}-restore",
                # 10 ms, or the worker's own wait if it was given one (Tansu).
                "fetch.wait.max.ms": fetch_wait_ms(s) if s.fetch_wait_max_ms else 10,
                "error_cb": self.on_client_error,
            },
            s.changelog_topic,
            partitions,
            take,
            timeout_s=s.restore_timeout_s,
            stable_ends=self.offsets.changelog_ends if s.exactly_once else None,
            # Long enough for the broker to abort a dead predecessor's transaction (its
            # timeout, the same setting as ours by default, and the broker's abort sweep).
            settle_s=s.transaction_timeout_s + 15.0,
            beat=self.health.beat,
        )
        for p in partitions:
            if ahead[p]:
                log.warning(
                    "partition %d: %d changelog snapshots hold events at or past the committed "
                    "offset %d: records of a transaction that did not commit, passed over",
                    p,
                    ahead[p],
                    committed.get(p, -1),
                )
            customers = processor.restore(p, list(latest[p].items()), committed.get(p, -1))
            self.metrics.record_restore(records[p], customers, time.perf_counter() - started)
            log.info(
                "restored partition %d: %d customers from %d changelog records",
                p,
                customers,
                records[p],
            )
        log.info("restore of %s took %.2f s", partitions, time.perf_counter() - started)
