"""Drift checkpoints read from Kafka are data, never code, and never stop a worker.

Records produced to ``<group>-drift-state`` under a worker's id by someone else: a pickle
that would create a file when unpickled, corrupt bytes, and a version-2 checkpoint (which
held river's ADWIN as a pickle) whose pickle is such a payload.  The worker starts every
time, creates nothing, counts what it ignored on /metrics, and a checkpoint that is valid
apart from the old pickled field still restores the monitor.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import pickle
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.engine.kafka.topic_reader import read_to_end
from driftline.engine.kafka.worker import KafkaScoringWorker, WorkerSettings
from driftline.event_producer import produce
from driftline.simulate import Population, frame_to_events

pytestmark = pytest.mark.integration


class CreatesFile:
    """Unpickling this creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def ignored(worker: KafkaScoringWorker, reason: str) -> float:
    text = worker.metrics.render()
    text = text.decode() if isinstance(text, bytes) else text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "driftline_drift_checkpoints_ignored_total" and s.labels == {
                "reason": reason
            }:
                return float(s.value)
    return -1.0  # the series does not exist


def put(settings: WorkerSettings, value: bytes) -> None:
    """Produce ``value`` as this worker id's checkpoint (what any producer could do)."""
    topic = settings.drift_state_topic
    ensure_topics(
        settings.bootstrap_servers,
        [TopicSpec(topic, 1, {"cleanup.policy": "compact", "retention.ms": "-1"})],
    )
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    producer.produce(topic, key=settings.worker_id.encode(), value=value)
    assert producer.flush(30) == 0


def latest_checkpoint(settings: WorkerSettings) -> dict[str, Any]:
    key = settings.worker_id.encode()
    records = read_to_end(settings.bootstrap_servers, settings.drift_state_topic)
    mine = [m.value() for m in records if m.key() == key]
    assert mine, f"no checkpoint of {settings.worker_id}"
    return json.loads(mine[-1])


def test_hostile_and_corrupt_checkpoints_are_ignored_and_a_valid_one_restores(
    worker_settings: WorkerSettings,
    spec: Any,
    topic_factory: Callable[..., str],
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
    tmp_path: Path,
) -> None:
    settings = dataclasses.replace(
        worker_settings,
        drift=True,
        retrain_topic=topic_factory(1, "retrain"),
        worker_id=f"ckpt-safety-{uuid.uuid4().hex[:8]}",
    )
    marker = tmp_path / "pwned"

    # 1. A bare pickle as the record.
    put(settings, pickle.dumps(CreatesFile(marker)))
    with worker_in_thread(settings, spec) as worker:
        assert worker.drift_checkpoint_checked.wait(60), "worker did not start"
        assert worker.processor.drift.events_seen == 0
        assert ignored(worker, "undecodable") == 1
    assert not marker.exists()

    # 2. Corrupt bytes.
    put(settings, b"\x00\xff not json")
    with worker_in_thread(settings, spec) as worker:
        assert worker.drift_checkpoint_checked.wait(60), "worker did not start"
        assert ignored(worker, "undecodable") == 1

    # 3. A real checkpoint (saved at shutdown after some monitored events) ...
    population = Population(n_customers=400, seed=3)
    history = population.generate_history(days=240)
    live = list(population.stream_events(max_events=3000))
    with worker_in_thread(settings, spec) as worker:
        produce(settings.bootstrap_servers, settings.input_topic, frame_to_events(history))
        produce(settings.bootstrap_servers, settings.input_topic, live)
        total = len(history) + len(live)
        assert len(consume_all(settings.output_topic, expected=total, timeout=120)) >= total
        seen = worker.processor.drift.events_seen
    assert seen > 0
    saved = latest_checkpoint(settings)
    assert saved["monitor"]["events_seen"] == seen
    assert "adwin" not in saved["monitor"]  # no pickle in the record at all

    # ... rewritten as version 2 with a hostile pickle where ADWIN's used to be: versions
    # before 4 judged every event with per-event thresholds and are ignored now (the
    # monitor starts clean, counted as a mismatch), and the pickle is never loaded.
    valid = json.loads(json.dumps(saved))
    saved["monitor"]["version"] = 2
    saved["monitor"]["config"]["adwin_delta"] = 0.002
    saved["monitor"]["adwin"] = base64.b64encode(pickle.dumps(CreatesFile(marker))).decode()
    put(settings, json.dumps(saved).encode())
    with worker_in_thread(settings, spec) as worker:
        assert worker.drift_checkpoint_checked.wait(60), "worker did not start"
        assert worker.processor.drift.events_seen == 0
        assert ignored(worker, "mismatch") == 1
    assert not marker.exists(), "the checkpoint's pickle was loaded"

    # The valid checkpoint as saved restores exactly.
    put(settings, json.dumps(valid).encode())
    with worker_in_thread(settings, spec) as worker:
        assert worker.drift_checkpoint_checked.wait(60), "worker did not start"
        restored = worker.processor.drift.events_seen
        counts = {r: ignored(worker, r) for r in ("undecodable", "format", "mismatch")}
    assert restored == seen, "a valid checkpoint was not restored"
    assert counts == {"undecodable": 0, "format": 0, "mismatch": 0}
