"""The demo's drift view: the worker's drift state from /metrics, and its retrain requests.

The status line shows what the worker itself exports (``driftline_feature_drift_state``,
``driftline_prediction_drift_state``), not anything the demo computes, so what it shows
is what an operator's dashboard would show.  Retrain requests are read back from the
retrain-requests topic (what a retraining job would consume) and printed as they arrive.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from prometheus_client.parser import text_string_to_metric_families

STATES = ("OK", "WARN", "DRIFT")


@dataclasses.dataclass(frozen=True)
class DriftView:
    """Drift as the worker reports it: worst state, features by state, score state."""

    features: dict[str, int]  # feature -> 0 OK, 1 WARN, 2 DRIFT
    prediction: int | None  # None: not reported (drift off, or nothing scored yet)

    @property
    def state(self) -> int:
        return max([*self.features.values(), self.prediction or 0], default=0)

    def top(self, limit: int = 3) -> list[str]:
        """Features in the worst state first (DRIFT, then WARN), by name within a state."""
        ranked = sorted(
            (f for f, s in self.features.items() if s > 0), key=lambda f: (-self.features[f], f)
        )
        return ranked[:limit]

    def drifted(self) -> list[str]:
        return sorted(f for f, s in self.features.items() if s >= 2)

    def line(self) -> str:
        """``drift DRIFT: spend_30d, spend_90d +2 | score WARN``, or ``drift off``."""
        if not self.features and self.prediction is None:
            return "drift off"
        top = self.top()
        more = sum(1 for s in self.features.values() if s > 0) - len(top)
        text = f"drift {STATES[self.state]}"
        if top:
            text += ": " + ", ".join(top) + (f" +{more}" if more > 0 else "")
        if self.prediction is not None:
            text += f" | score {STATES[self.prediction]}"
        return text


def drift_view(metrics_text: str) -> DriftView:
    """Parse the drift gauges of one /metrics scrape (worst value per label, all workers)."""
    features: dict[str, int] = {}
    prediction: int | None = None
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "driftline_feature_drift_state":
                name = sample.labels.get("feature", "?")
                features[name] = max(features.get(name, 0), int(sample.value))
            elif sample.name == "driftline_prediction_drift_state":
                prediction = max(prediction or 0, int(sample.value))
    return DriftView(features, prediction)


def describe_request(request: Mapping[str, Any]) -> str:
    """One line for a retrain request as published on the retrain-requests topic."""
    if request.get("reason") == "quality":  # from ModelPerformanceDegraded, no features
        return (
            f"retrain request {request.get('model_name')} {request.get('model_version')}: "
            f"quality (ModelPerformanceDegraded; incident "
            f"{str(request.get('incident_id', ''))[:12]})"
        )
    features = [f.get("feature", "?") for f in request.get("drifted_features", [])]
    unique = list(dict.fromkeys(features))
    shown = ", ".join(unique[:5]) + (f" +{len(unique) - 5}" if len(unique) > 5 else "")
    return (
        f"retrain request {request.get('model_name')} {request.get('model_version')}: "
        f"{request.get('reason')} (drifted share {request.get('drifted_share', 0):.2f}; "
        f"{shown or 'score only'}; incident {str(request.get('incident_id', ''))[:12]})"
    )


def _end_offset(consumer: Any, topic: str, partition: int, attempts: int = 20) -> int:
    """The partition's end offset now; a topic just created may have no leader for a
    moment (asked again), and after that ``OFFSET_END`` (resolved at the first fetch)."""
    from confluent_kafka import OFFSET_END, KafkaException, TopicPartition

    for _ in range(attempts):
        try:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
            return int(high) if high >= 0 else OFFSET_END
        except KafkaException:
            time.sleep(0.5)
    return OFFSET_END


class RetrainWatcher:
    """Reads the retrain-requests topic from its end at start and reports each request.

    ``start`` returns once the consumer is positioned (so no request sent after it is
    missed); ``on_request`` is called from the watcher's thread with the decoded request.
    """

    def __init__(
        self,
        client_config: Mapping[str, Any],
        topic: str,
        on_request: Callable[[dict[str, Any]], None],
    ) -> None:
        self._config = dict(client_config)
        self.topic = topic
        self.on_request = on_request
        self.requests: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="retrain-watcher")
        self._consumer: Any = None

    def start(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        topic = self.topic
        consumer = Consumer(
            {
                **self._config,
                "group.id": f"driftline-demo-watcher-{topic}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        metadata = consumer.list_topics(self.topic, timeout=10)
        partitions = sorted(metadata.topics[self.topic].partitions)
        consumer.assign(
            [TopicPartition(topic, p, _end_offset(consumer, topic, p)) for p in partitions]
        )
        self._consumer = consumer
        self._thread.start()

    def _run(self) -> None:
        decode = msgspec.json.Decoder().decode
        consumer = self._consumer
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.5)
                if message is None or message.error() is not None:
                    continue
                try:
                    request = decode(message.value() or b"")
                except msgspec.DecodeError:
                    continue
                if isinstance(request, dict):
                    self.requests.append(request)
                    self.on_request(request)
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
