"""``driftline quality``: the Kafka adapter around :class:`WindowedQuality`.

Reads ``predictions`` and ``prediction-outcomes`` and serves the windows' figures on
``/metrics``.  Everything it knows is rebuilt from the two topics at start: it assigns
every partition of both from the beginning (no consumer group, nothing committed), so a
restart, or a second replica, computes the same figures from the same records, and
windows older than the retention are dropped as they are read.  Run one per deployment
(two would export every series twice; Prometheus' ``max by`` would still be right).

Per poll: the messages are cut into runs of one topic in arrival order, each run decoded
(a record that does not decode is counted as ``invalid`` with its reason logged, never
raised) and fed to the windows as one numpy batch.  Figures are recomputed at most every
``refresh_s`` seconds, and whenever the consumer has caught up, so a scrape soon after
the records were read sees them.  Training-time ROC AUC of each version is read from the
registry's metadata (``metrics.test.roc_auc``; JSON only, the model is never unpickled).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from driftline.core.quality import (
    QualitySettings,
    WindowedQuality,
    decode_outcomes,
    decode_predictions,
    outcome_columns,
    prediction_columns,
)
from driftline.engine.kafka.client_config import kafka_client_config
from driftline.model.registry import METADATA_FILE, ModelRegistry
from driftline.observability.http import HealthServer, HealthState
from driftline.observability.quality_metrics import QualityMetrics

log = logging.getLogger(__name__)

#: Seconds between looks for a topic that does not exist yet.
TOPIC_RETRY_S = 5.0


@dataclass
class QualityServiceSettings:
    bootstrap_servers: str
    predictions_topic: str = "predictions"
    outcomes_topic: str = "prediction-outcomes"
    registry: str | None = None
    quality: QualitySettings = field(default_factory=QualitySettings)
    batch_size: int = 5_000
    poll_timeout_s: float = 0.5
    refresh_s: float = 5.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9301
    consumer_config: dict[str, Any] = field(default_factory=dict)


def training_roc_auc(registry: str | Path, model_name: str, model_version: str) -> float | None:
    """``metrics.test.roc_auc`` of a registered version's metadata, or None (no registry
    entry, an unreadable file, or a version trained without a test split)."""
    try:
        path = ModelRegistry(registry).path(model_name, model_version) / METADATA_FILE
        metadata = json.loads(path.read_text(encoding="utf-8"))
        value = metadata["metrics"]["test"]["roc_auc"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) else None


class QualityService:
    """One consumer over both topics, the windows, and the metrics they publish."""

    def __init__(self, settings: QualityServiceSettings) -> None:
        self.settings = settings
        self.quality = WindowedQuality(settings.quality)
        self.metrics = QualityMetrics(
            settings.quality.min_labels,
            {"predictions": settings.predictions_topic, "outcomes": settings.outcomes_topic},
        )
        self.health = HealthState(require_assignment=False)
        self.health.set_model_loaded(True)  # no model here: the check does not apply
        self.invalid = {"predictions": 0, "outcomes": 0}
        self.training_auc: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._assigned: set[str] = set()
        self._next_topic_look = 0.0
        self._last_refresh = 0.0
        self._dirty = True

    def stop(self) -> None:
        """Finish the poll in progress and leave (thread- and signal-safe)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self) -> int:
        s = self.settings
        consumer = Consumer(
            kafka_client_config(
                {
                    "bootstrap.servers": s.bootstrap_servers,
                    "group.id": "driftline-quality",  # required by the client, never joined
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "error_cb": self._on_error,
                    **s.consumer_config,
                }
            )
        )
        try:
            while not self._stop.is_set():
                self.health.beat()
                self._assign_new_topics(consumer)
                messages = (
                    consumer.consume(s.batch_size, s.poll_timeout_s) if self._assigned else []
                )
                if not self._assigned:
                    self._stop.wait(s.poll_timeout_s)
                self._handle(messages)
                caught_up = len(messages) < s.batch_size
                if self._dirty and (
                    caught_up or time.monotonic() - self._last_refresh >= s.refresh_s
                ):
                    self.refresh()
        finally:
            consumer.close()
        return 0

    def _on_error(self, error: KafkaError) -> None:
        log.warning("Kafka: %s", error)
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.health.set_broker_ok(False, str(error))

    def _assign_new_topics(self, consumer: Consumer) -> None:
        """Every partition of each topic from the beginning, once the topic exists."""
        wanted = {self.settings.predictions_topic, self.settings.outcomes_topic} - self._assigned
        if not wanted or time.monotonic() < self._next_topic_look:
            return
        self._next_topic_look = time.monotonic() + TOPIC_RETRY_S
        partitions = []
        for topic in sorted(wanted):
            metadata = consumer.list_topics(topic, timeout=5).topics.get(topic)
            if metadata is None or metadata.error is not None or not metadata.partitions:
                log.info("topic %s does not exist yet; looking again in %g s", topic, TOPIC_RETRY_S)
                continue
            partitions += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
            self._assigned.add(topic)
        if partitions:
            consumer.incremental_assign(partitions)
            self.health.set_assigned(len(partitions))

    def _handle(self, messages: Sequence[Message]) -> None:
        """Runs of one topic, in arrival order, each one batch."""
        run: list[bytes] = []
        topic: str | None = None
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume: %s", error)
                continue
            self.health.set_broker_ok(True)
            if message.topic() != topic and run:
                self._feed(topic, run)
                run = []
            topic = message.topic()
            run.append(message.value() or b"")
        if run:
            self._feed(topic, run)

    def _feed(self, topic: str | None, values: list[bytes]) -> None:
        self._dirty = True
        if topic == self.settings.predictions_topic:
            predictions, bad = decode_predictions(values)
            self.quality.add_predictions(prediction_columns(predictions))
            self._count_invalid("predictions", topic, bad)
        else:
            outcomes, bad = decode_outcomes(values)
            self.quality.add_outcomes(outcome_columns(outcomes))
            self._count_invalid("outcomes", topic, bad)

    def _count_invalid(self, kind: str, topic: str | None, reasons: list[str]) -> None:
        if reasons:
            self.invalid[kind] += len(reasons)
            log.warning("%s: %d invalid records skipped, e.g. %s", topic, len(reasons), reasons[0])

    def refresh(self) -> None:
        """Recompute the figures of the windows that changed, and publish them."""
        figures = self.quality.figures()
        if self.settings.registry is not None:
            for f in figures:
                key = (f.model_name, f.model_version)
                if key not in self.training_auc:
                    auc = training_roc_auc(self.settings.registry, *key)
                    if auc is not None:
                        self.training_auc[key] = auc
        self.metrics.publish(
            figures,
            training_auc=self.training_auc,
            watermark_ms=self.quality.watermark_ms,
            counts=self.quality.counts,
            invalid=self.invalid,
            now=time.time(),
        )
        self._last_refresh = time.monotonic()
        self._dirty = False


def serve_quality(
    settings: QualityServiceSettings, on_ready: Callable[[HealthServer], None] | None = None
) -> int:
    """Run the service with its HTTP endpoints until SIGTERM/SIGINT."""
    service = QualityService(settings)
    service.install_signal_handlers()
    with HealthServer(
        service.metrics, settings.metrics_host, settings.metrics_port, service.health
    ) as server:
        log.info(
            "driftline quality: %s + %s, metrics on %s/metrics",
            settings.predictions_topic,
            settings.outcomes_topic,
            server.url,
        )
        if on_ready is not None:
            on_ready(server)
        return service.run()
