"""Throughput benchmark: the worker against its transport and compute limits.

All four figures are measured in one run, on one broker, on the same events, so their
ratios hold on a noisy shared machine even when the absolute numbers move:

(a) pass-through: consume -> produce -> commit with no work, the transport limit;
(b) the Driftline worker (decode, state, features, one predict_proba per batch, produce,
    changelog, commit after delivery), at-least-once and (b') exactly-once;
(c) the usual hand-written loop: per event, decode, update state, a one-row DataFrame
    and ``predict_proba``, produce;
(d) the model alone: ``predict_proba`` on ready feature frames at the worker's batch
    size, no Kafka, the compute limit.
"""

from __future__ import annotations

import json
import platform
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
from confluent_kafka import Consumer, Producer, TopicPartition

from driftline.broker import EmbeddedBroker
from driftline.commands.train import register, train_on_events
from driftline.core.events import EventBatch, decode_one
from driftline.core.offline import history_features
from driftline.core.spec import FeatureSpec, load_default_spec
from driftline.core.state import FeatureState
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.engine.kafka.worker import KafkaScoringWorker, WorkerSettings
from driftline.model.registry import ModelRegistry
from driftline.model.scoring import Scorer, limit_native_threads
from driftline.simulate import Population, produce_records


@dataclass
class BenchResult:
    events: int
    per_event_events: int
    batch_size: int
    partitions: int
    passthrough_eps: float
    worker_eps: float
    worker_exactly_once_eps: float
    per_event_eps: float
    model_only_eps: float
    machine: str

    @property
    def ratios(self) -> dict[str, float]:
        return {
            "worker/passthrough": self.worker_eps / self.passthrough_eps,
            "worker/per_event": self.worker_eps / self.per_event_eps,
            "worker/model_only": self.worker_eps / self.model_only_eps,
            "exactly_once/at_least_once": self.worker_exactly_once_eps / self.worker_eps,
        }

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ratios": self.ratios}, indent=2)

    def to_table(self) -> str:
        rows = [
            ("(a) pass-through consume->produce", self.passthrough_eps, self.events),
            ("(b) driftline worker, at-least-once", self.worker_eps, self.events),
            ("(b') driftline worker, exactly-once", self.worker_exactly_once_eps, self.events),
            ("(c) per-event scoring loop", self.per_event_eps, self.per_event_events),
            ("(d) model alone (predict_proba)", self.model_only_eps, self.events),
        ]
        lines = [
            f"machine: {self.machine}",
            f"batch size {self.batch_size}, {self.partitions} partitions",
            "",
            f"{'':38} {'events/s':>12} {'events':>9}",
        ]
        lines += [f"{name:38} {eps:>12,.0f} {n:>9,}" for name, eps, n in rows]
        lines.append("")
        lines += [f"{name:38} {value:>12.3f}" for name, value in self.ratios.items()]
        return "\n".join(lines)


def machine_description() -> str:
    import os

    return (
        f"{platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.platform(terse=True)}"
    )


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "fetch.wait.max.ms": 50,
        }
    )


def passthrough(bootstrap: str, topic: str, out: str, n: int, batch: int) -> float:
    """Events/s of consume -> produce -> commit, timed from the first record received."""
    consumer = _consumer(bootstrap, f"bench-pass-{uuid.uuid4().hex[:8]}")
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )
    consumer.subscribe([topic])
    seen, started = 0, None
    try:
        while seen < n:
            messages = [m for m in consumer.consume(batch, 1.0) if m.error() is None]
            if not messages:
                continue
            started = started or time.perf_counter()
            for m in messages:
                producer.produce(out, m.value(), m.key())
            producer.flush()
            consumer.commit(
                offsets=[TopicPartition(topic, m.partition(), m.offset() + 1) for m in messages],
                asynchronous=False,
            )
            seen += len(messages)
        assert started is not None
        return seen / (time.perf_counter() - started)
    finally:
        consumer.close()


def per_event(
    bootstrap: str, topic: str, out: str, n: int, spec: FeatureSpec, scorer: Scorer
) -> float:
    """The hand-written baseline: one event at a time, one-row DataFrame per prediction."""
    consumer = _consumer(bootstrap, f"bench-single-{uuid.uuid4().hex[:8]}")
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    consumer.subscribe([topic])
    states: dict[int, FeatureState] = {}
    seen, started = 0, None
    try:
        while seen < n:
            m = consumer.poll(1.0)
            if m is None or m.error() is not None:
                continue
            started = started or time.perf_counter()
            event = decode_one(m.value())
            state = states.setdefault(m.partition(), FeatureState(spec))
            features = state.update(EventBatch.from_events([event], np.zeros(1, np.int64)))
            row = pd.DataFrame([features.iloc[0].to_dict()])
            score = float(scorer.pipeline.predict_proba(row)[0, 1])
            producer.produce(out, json.dumps({"event_id": event.event_id, "score": score}), m.key())
            producer.poll(0)
            consumer.commit(message=m, asynchronous=True)
            seen += 1
        producer.flush()
        assert started is not None
        return seen / (time.perf_counter() - started)
    finally:
        consumer.close()


def worker_throughput(settings: WorkerSettings, spec: FeatureSpec, n: int) -> float:
    """Events/s of the real worker, from its first batch to the batch that reached ``n``."""
    worker = KafkaScoringWorker(settings, spec)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        while worker.events_processed < n:
            if not thread.is_alive():
                raise RuntimeError("worker stopped during the benchmark")
            time.sleep(0.01)
        assert worker.first_batch_started is not None and worker.last_batch_done is not None
        return worker.events_processed / (worker.last_batch_done - worker.first_batch_started)
    finally:
        worker.stop()
        thread.join(60)


def model_only(features: pd.DataFrame, scorer: Scorer, batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(features), batch):
        scorer.score(features.iloc[start : start + batch])
    return len(features) / (time.perf_counter() - started)


@contextmanager
def _broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


def run_bench(
    events: int = 100_000,
    per_event_events: int = 2_000,
    batch_size: int = 2000,
    partitions: int = 4,
    customers: int = 5_000,
    bootstrap: str | None = None,
    progress: bool = True,
) -> BenchResult:
    limit_native_threads(1)
    spec = load_default_spec()
    population = Population(n_customers=customers, seed=7)
    history = population.generate_history(days=365)
    with tempfile.TemporaryDirectory(prefix="driftline-bench-") as tmp:
        registry = ModelRegistry(Path(tmp) / "models")
        result = train_on_events(
            history, spec, horizon_days=60, n_estimators=100, progress=progress
        )
        register(result, registry, "churn", spec)
        scorer = Scorer(registry.load("churn", expected_features=spec.feature_names))

        live = pd.concat(list(_take_frames(population, events)), ignore_index=True).head(events)
        encode = msgspec.json.Encoder().encode
        from driftline.simulate import frame_to_events

        records = [(e["customer_id"].encode(), encode(e), None) for e in frame_to_events(live)]
        features, _late = history_features(live, spec)

        with _broker(bootstrap) as servers:
            run_id = uuid.uuid4().hex[:8]
            topic, out = f"bench-in-{run_id}", f"bench-out-{run_id}"
            ensure_topics(servers, [TopicSpec(topic, partitions), TopicSpec(out, partitions)])
            produce_records(servers, topic, records, progress=progress, desc="load input")
            model_eps = model_only(features, scorer, batch_size)
            pass_eps = passthrough(servers, topic, out, events, batch_size)
            settings = WorkerSettings(
                bootstrap_servers=servers,
                input_topic=topic,
                output_topic=out,
                dead_letter_topic=out,
                group_id=f"bench-worker-{run_id}",
                registry=str(registry.root),
                batch_size=batch_size,
                metrics_port=0,
            )
            worker_eps = worker_throughput(settings, spec, events)
            settings.group_id = f"bench-worker-eos-{run_id}"
            settings.exactly_once = True
            eos_eps = worker_throughput(settings, spec, events)
            single_eps = per_event(servers, topic, out, per_event_events, spec, scorer)
    return BenchResult(
        events=events,
        per_event_events=per_event_events,
        batch_size=batch_size,
        partitions=partitions,
        passthrough_eps=pass_eps,
        worker_eps=worker_eps,
        worker_exactly_once_eps=eos_eps,
        per_event_eps=single_eps,
        model_only_eps=model_eps,
        machine=machine_description(),
    )


def _take_frames(population: Population, n: int) -> Iterator[pd.DataFrame]:
    total = 0
    for frame in population.stream_frames():
        yield frame
        total += len(frame)
        if total >= n:
            return
