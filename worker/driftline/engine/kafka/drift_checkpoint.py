"""Checkpoints of a worker's drift monitor and retrain trigger on a compacted topic.

The monitor's state (CUSUM sums, latched DRIFT states, open windows) is per worker
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

The record is plain data (``{"format": 1, "saved_at": ..., "monitor": {...}, "trigger":
{...}}``, numbers, strings and lists; README "Drift state topic"), never a pickle: anyone
who may produce to the topic could otherwise run code in every worker.  It is untrusted
input: a record that does not parse, has another format, or does not fit the model the
worker serves is logged, counted (``driftline_drift_checkpoints_ignored_total{reason}``)
and ignored, and the monitor starts clean.  Nothing in it can stop the worker.

The record is advisory state, written with its own (non-transactional) producer: losing
the last interval costs at most ``interval_s`` of statistics, never a prediction.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from confluent_kafka import Producer

from driftline.core.drift.checkpoint_check import mismatches
from driftline.core.drift.monitor import DriftMonitor
from driftline.core.drift.trigger import RetrainTrigger
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.engine.kafka.client_config import kafka_client_config
from driftline.engine.kafka.topic_reader import read_to_end

log = logging.getLogger(__name__)

FORMAT = 1


class CheckpointRecord(msgspec.Struct):
    """The record's envelope; ``monitor`` and ``trigger`` are checked on restore."""

    format: int
    saved_at: float
    monitor: dict[str, Any]
    trigger: dict[str, Any] | None = None


@dataclass(frozen=True)
class Restored:
    """A checkpoint that fits: the monitor and trigger to continue with."""

    monitor: DriftMonitor
    trigger: RetrainTrigger | None
    saved_at: float


class DriftCheckpoints:
    """Save and load one worker's drift checkpoint (``{"monitor": ..., "trigger": ...}``).

    ``on_ignored(reason)`` is called once per record ignored (one of ``CHECKPOINT_REASONS`` in
    :mod:`driftline.observability.drift_metrics`).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        worker_id: str,
        on_ignored: Callable[[str], None] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.key = worker_id.encode()
        self.on_ignored = on_ignored or (lambda _reason: None)
        self._producer: Producer | None = None

    def ensure_topic(self) -> None:
        ensure_topics(
            self.bootstrap,
            [TopicSpec(self.topic, 1, {"cleanup.policy": "compact", "retention.ms": "-1"})],
        )

    def load(self, timeout_s: float = 15.0) -> CheckpointRecord | None:
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
        return self.decode(latest)

    def decode(self, payload: bytes) -> CheckpointRecord | None:
        """The record in ``payload``, or None (logged and counted) if it is not one."""
        try:
            record = msgspec.json.decode(payload, type=CheckpointRecord)
        except msgspec.DecodeError as exc:  # also a record of the wrong shape
            self._ignore("undecodable", f"not a drift checkpoint: {exc}")
            return None
        if record.format != FORMAT:
            self._ignore("format", f"format {record.format}, this worker reads {FORMAT}")
            return None
        return record

    def restore(
        self, record: CheckpointRecord, fresh: DriftMonitor, trigger: RetrainTrigger | None
    ) -> Restored | None:
        """The monitor and trigger saved in ``record`` if they fit ``fresh`` (the monitor
        built for the model now served) and ``trigger``; None to start clean.

        A checkpoint of another model version or reference is expected after a model
        change and only logged; one that claims the same model but does not load or does
        not fit is counted as a ``mismatch``.
        """
        monitor_state, trigger_state = record.monitor, record.trigger
        same = monitor_state.get("reference_hash") == fresh.reference_hash and (
            trigger is None
            or (trigger_state if isinstance(trigger_state, dict) else {}).get("model_version")
            == trigger.model_version
        )
        if not same:
            log.info("drift checkpoint of another model or reference: monitor starts clean")
            return None
        fresh_state = fresh.state_dict()
        envelope = ("numeric", "categorical", "budget", "importances")
        config = monitor_state.get("config")
        if isinstance(config, dict):  # version 2 also had ADWIN's delta: not compared
            config = {k: v for k, v in config.items() if k != "adwin_delta"}
        if config != fresh_state["config"] or any(
            monitor_state.get(k) != fresh_state[k] for k in envelope
        ):
            # Compared before anything is built from it: a crafted config could otherwise
            # ask for a resampling that takes hours.
            self._ignore("mismatch", "monitor settings differ from the model's")
            return None
        try:
            monitor = DriftMonitor.from_state_dict(monitor_state)
            restored_trigger = None
            if trigger is not None and trigger_state is not None:
                restored_trigger = RetrainTrigger.from_state_dict(trigger_state)
        except Exception as exc:  # untrusted data: any failure to load is a bad record
            self._ignore("mismatch", f"does not load ({type(exc).__name__}: {exc})")
            return None
        found = mismatches(fresh, monitor)
        if restored_trigger is not None and (
            restored_trigger.model_name != trigger.model_name  # type: ignore[union-attr]
            or restored_trigger.model_version != trigger.model_version  # type: ignore[union-attr]
        ):
            found.append("trigger of another model")
        if found:
            self._ignore("mismatch", f"does not fit the model served: {', '.join(found)}")
            return None
        return Restored(monitor, restored_trigger, record.saved_at)

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

    def _ignore(self, reason: str, why: str) -> None:
        log.warning("drift checkpoint on %s ignored (%s): monitor starts clean", self.topic, why)
        self.on_ignored(reason)
        return None
