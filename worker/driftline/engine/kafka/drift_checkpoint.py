"""Checkpoints of a worker's drift monitor and retrain trigger on a compacted topic.

The monitor's state (CUSUM sums, latched DRIFT states, open windows, ADWIN) is per worker
process, over whatever partitions it owns, so it is not part of the per-partition feature
changelog.  It is saved as one JSON record keyed by the worker id on
``<group>-drift-state`` (compacted: the latest record per worker is what remains), every
``interval_s`` and at shutdown.  A worker restarting under the same id (a container keeps
its hostname and pid 1; ``--worker-id`` pins it elsewhere) restores it, if it was taken
against the same model version and reference profile, so a restart neither clears a
latched alarm (the dashboard and the FeatureDrift alert would flap) nor starts the
statistics from zero.  Without a usable checkpoint the monitor starts clean, and the
retrain gates still come back from the requests topic
(:mod:`driftline.engine.kafka.retrain_history`).

The record is advisory state, written with its own (non-transactional) producer: losing
the last interval costs at most ``interval_s`` of statistics, never a prediction.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from confluent_kafka import Producer

from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.engine.kafka.client_config import kafka_client_config
from driftline.engine.kafka.topic_reader import read_to_end

log = logging.getLogger(__name__)

FORMAT = 1


class DriftCheckpoints:
    """Save and load one worker's drift checkpoint (``{"monitor": ..., "trigger": ...}``)."""

    def __init__(self, bootstrap: str, topic: str, worker_id: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.key = worker_id.encode()
        self._producer: Producer | None = None

    def ensure_topic(self) -> None:
        ensure_topics(
            self.bootstrap,
            [TopicSpec(self.topic, 1, {"cleanup.policy": "compact", "retention.ms": "-1"})],
        )

    def load(self, timeout_s: float = 15.0) -> dict[str, Any] | None:
        """This worker's latest checkpoint, or None (none, unreadable, or another format)."""
        latest: bytes | None = None
        try:
            for message in read_to_end(self.bootstrap, self.topic, timeout_s):
                if message.key() == self.key:
                    latest = message.value()  # None for a tombstone
        except (TimeoutError, RuntimeError) as exc:
            log.warning("drift checkpoints on %s not read: %s", self.topic, exc)
            return None
        if not latest:
            return None
        try:
            record = json.loads(latest)
        except ValueError as exc:
            log.warning("unreadable drift checkpoint on %s: %s", self.topic, exc)
            return None
        return record if isinstance(record, dict) and record.get("format") == FORMAT else None

    def save(self, monitor: dict[str, Any], trigger: dict[str, Any] | None) -> None:
        """Queue the checkpoint (delivered in the background; :meth:`flush` waits)."""
        if self._producer is None:
            self._producer = Producer(
                kafka_client_config({"bootstrap.servers": self.bootstrap, "linger.ms": 50})
            )
        record = {"format": FORMAT, "saved_at": time.time(), "monitor": monitor, "trigger": trigger}
        payload = json.dumps(record, allow_nan=False, separators=(",", ":")).encode()
        self._producer.produce(self.topic, key=self.key, value=payload)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 10.0) -> None:
        if self._producer is not None and self._producer.flush(timeout_s):
            log.warning("drift checkpoint not delivered within %.0f s", timeout_s)
