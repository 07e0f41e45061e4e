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

Beside them: the worker with its loop run sequentially (deliver and commit each batch
before consuming the next: what the pipelined loop gains), the worker's own per-stage
breakdown (from its metrics: where the time goes), and, when the ``onnx`` extra is
installed, the worker and the model alone with the forest in ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from driftline.benchmarks.broker import bench_broker
from driftline.commands.train import register, train_on_events
from driftline.core.events import EventBatch, decode_one
from driftline.core.offline import history_features
from driftline.core.spec import FeatureSpec, load_default_spec
from driftline.core.state import FeatureState
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.engine.kafka.client_config import kafka_client_config
from driftline.engine.kafka.worker import KafkaScoringWorker, WorkerSettings
from driftline.event_producer import produce_records
from driftline.model.registry import LoadedModel, ModelRegistry
from driftline.model.runtimes.sklearn import Scorer, limit_native_threads
from driftline.simulate import Population

#: Stages of the breakdown, in pipeline order (the worker's ``stage`` label values).
BREAKDOWN_STAGES = ("poll", "decode", "state", "predict", "drift", "produce", "commit")


@dataclass
class WorkerRun:
    """One worker run: events/s, the mean batch it chose, its stages in µs per event."""

    eps: float
    mean_batch: float
    stage_us: dict[str, float]
    #: CPU the worker used (its process, and its scoring process if any), in cores, from
    #: its first batch to the last: how much of the machine the rate took.
    cpu_cores: float | None = None


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
    worker_sequential_eps: float | None = None
    #: µs per event by stage of the at-least-once run; "other" is wall time not in a stage.
    stage_us: dict[str, float] | None = None
    mean_batch: float | None = None
    #: The compiled runtime (numpy preprocessing, direct tree calls; same scores).
    compiled_worker_eps: float | None = None
    compiled_model_only_eps: float | None = None
    compiled_max_abs_diff: float | None = None
    compiled_skipped: str | None = None
    onnx_worker_eps: float | None = None
    onnx_model_only_eps: float | None = None
    onnx_max_abs_diff: float | None = None
    onnx_skipped: str | None = None
    #: scikit-learn in a scoring process (``--scoring-process``), batches pipelined.
    process_worker_eps: float | None = None
    process_worker_exactly_once_eps: float | None = None
    process_stage_us: dict[str, float] | None = None
    process_mean_batch: float | None = None
    #: Cores used by (b) and by the scoring-process run.
    worker_cpu_cores: float | None = None
    process_cpu_cores: float | None = None
    #: (b) with the drift monitor on (``--drift``), as the product is deployed.
    drift_worker_eps: float | None = None
    drift_stage_us: dict[str, float] | None = None

    @property
    def ratios(self) -> dict[str, float]:
        ratios = {
            "worker/passthrough": self.worker_eps / self.passthrough_eps,
            "worker/per_event": self.worker_eps / self.per_event_eps,
            "worker/model_only": self.worker_eps / self.model_only_eps,
            "exactly_once/at_least_once": self.worker_exactly_once_eps / self.worker_eps,
        }
        if self.worker_sequential_eps:
            ratios["pipelined/sequential"] = self.worker_eps / self.worker_sequential_eps
        if self.drift_worker_eps:
            ratios["drift-monitored worker/worker"] = self.drift_worker_eps / self.worker_eps
        if self.compiled_worker_eps and self.compiled_model_only_eps:
            ratios["compiled worker/compiled model_only"] = (
                self.compiled_worker_eps / self.compiled_model_only_eps
            )
            ratios["compiled worker/model_only"] = self.compiled_worker_eps / self.model_only_eps
        if self.process_worker_eps:
            ratios["scoring-process worker/model_only"] = (
                self.process_worker_eps / self.model_only_eps
            )
            ratios["scoring-process worker/worker"] = self.process_worker_eps / self.worker_eps
            if self.process_worker_exactly_once_eps:
                ratios["scoring-process exactly_once/at_least_once"] = (
                    self.process_worker_exactly_once_eps / self.process_worker_eps
                )
        if self.onnx_worker_eps and self.onnx_model_only_eps:
            ratios["onnx worker/onnx model_only"] = self.onnx_worker_eps / self.onnx_model_only_eps
            ratios["onnx worker/sklearn worker"] = self.onnx_worker_eps / self.worker_eps
        return ratios

    @property
    def rows(self) -> list[tuple[str, float | None, int, str]]:
        """(name, events/s, events, note) per measured line, for both report formats."""
        skip = f"skipped: {self.onnx_skipped}" if self.onnx_skipped else ""
        return [
            ("(a) pass-through consume->produce", self.passthrough_eps, self.events, ""),
            (
                "(b) driftline worker, at-least-once",
                self.worker_eps,
                self.events,
                _cores_note(self.worker_cpu_cores),
            ),
            ("(b') driftline worker, exactly-once", self.worker_exactly_once_eps, self.events, ""),
            (
                "(b-drift) worker, at-least-once, drift monitor on",
                self.drift_worker_eps,
                self.events,
                "--drift",
            ),
            (
                "(b0) worker, sequential loop",
                self.worker_sequential_eps,
                self.events,
                "at-least-once, no pipelining",
            ),
            (
                "(b-process) worker, scoring process, at-least-once",
                self.process_worker_eps,
                self.events,
                _cores_note(self.process_cpu_cores),
            ),
            (
                "(b'-process) worker, scoring process, exactly-once",
                self.process_worker_exactly_once_eps,
                self.events,
                "",
            ),
            ("(c) per-event scoring loop", self.per_event_eps, self.per_event_events, ""),
            ("(d) model alone (predict_proba)", self.model_only_eps, self.events, ""),
            (
                "(b-compiled) worker, compiled runtime",
                self.compiled_worker_eps,
                self.events,
                f"skipped: {self.compiled_skipped}" if self.compiled_skipped else "",
            ),
            (
                "(d-compiled) model alone, compiled runtime",
                self.compiled_model_only_eps,
                self.events,
                f"skipped: {self.compiled_skipped}"
                if self.compiled_skipped
                else (
                    f"max |diff| vs sklearn {self.compiled_max_abs_diff:.1e}"
                    if self.compiled_max_abs_diff is not None
                    else ""
                ),
            ),
            ("(b-onnx) worker, ONNX Runtime forest", self.onnx_worker_eps, self.events, skip),
            (
                "(d-onnx) model alone, ONNX Runtime",
                self.onnx_model_only_eps,
                self.events,
                skip
                or (
                    f"max |diff| vs sklearn {self.onnx_max_abs_diff:.1e}"
                    if self.onnx_max_abs_diff is not None
                    else ""
                ),
            ),
        ]

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ratios": self.ratios}, indent=2)

    def to_table(self) -> str:
        """A markdown table (readable as plain text too)."""
        lines = [
            f"machine: {self.machine}",
            f"batch size {self.batch_size} (mean chosen by the worker: "
            f"{self.mean_batch or 0:,.0f}; with a scoring process: "
            f"{self.process_mean_batch or 0:,.0f}), {self.partitions} partitions",
            "",
            "| | events/s | events | note |",
            "|---|---:|---:|---|",
        ]
        for name, eps, n, note in self.rows:
            figure = f"{eps:,.0f}" if eps is not None else "-"
            lines.append(f"| {name} | {figure} | {n:,} | {note} |")
        lines += ["", "| ratio | value |", "|---|---:|"]
        lines += [f"| {name} | {value:.3f} |" for name, value in self.ratios.items()]
        for title, stage_us in (
            ("worker, at-least-once", self.stage_us),
            ("worker, at-least-once, drift monitor on", self.drift_stage_us),
            ("worker, scoring process (predict: the wait)", self.process_stage_us),
        ):
            if not stage_us:
                continue
            total = sum(stage_us.values())
            lines += ["", f"| stage ({title}) | µs/event | share |", "|---|---:|---:|"]
            lines += [f"| {name} | {us:.2f} | {us / total:.0%} |" for name, us in stage_us.items()]
        return "\n".join(lines)


def _cores_note(cores: float | None) -> str:
    return f"{cores:.2f} cores" if cores is not None else ""


def machine_description() -> str:
    import os

    from driftline.core.state import NATIVE_KERNEL

    return (
        f"{platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.platform(terse=True)}, state update: "
        f"{'C kernel' if NATIVE_KERNEL else 'numpy (C kernel not built)'}"
    )


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        kafka_client_config(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "fetch.wait.max.ms": 50,
            }
        )
    )


def passthrough(bootstrap: str, topic: str, out: str, n: int, batch: int) -> float:
    """Events/s of consume -> produce -> commit, timed from the first record received."""
    consumer = _consumer(bootstrap, f"bench-pass-{uuid.uuid4().hex[:8]}")
    producer = Producer(
        kafka_client_config(
            {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
        )
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
            consumer.commit(offsets=_next_offsets(topic, messages), asynchronous=False)
            seen += len(messages)
        assert started is not None
        return seen / (time.perf_counter() - started)
    finally:
        consumer.close()


def _next_offsets(topic: str, messages: list[Message]) -> list[TopicPartition]:
    """The offsets to commit after ``messages`` (records read have a partition and offset)."""
    offsets = []
    for m in messages:
        partition, offset = m.partition(), m.offset()
        assert partition is not None and offset is not None
        offsets.append(TopicPartition(topic, partition, offset + 1))
    return offsets


def per_event(
    bootstrap: str, topic: str, out: str, n: int, spec: FeatureSpec, scorer: Scorer
) -> float:
    """The hand-written baseline: one event at a time, one-row DataFrame per prediction."""
    consumer = _consumer(bootstrap, f"bench-single-{uuid.uuid4().hex[:8]}")
    producer = Producer(kafka_client_config({"bootstrap.servers": bootstrap, "linger.ms": 5}))
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
            state = states.setdefault(m.partition() or 0, FeatureState(spec))
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
    return worker_run(settings, spec, n).eps


def worker_run(settings: WorkerSettings, spec: FeatureSpec, n: int) -> WorkerRun:
    """Run the real worker over ``n`` events; its rate, mean batch and stage breakdown.

    The breakdown is the worker's own ``driftline_stage_duration_seconds`` sums divided
    by the events: the loop's wall time, stage by stage ("commit" is what the loop waited
    for the previous batch's delivery and commit; the rest of it overlapped).
    """
    worker = KafkaScoringWorker(settings, spec)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    cpu_start: tuple[float, float] | None = None
    try:
        while worker.events_processed < n:
            if not thread.is_alive():
                raise RuntimeError("worker stopped during the benchmark")
            if cpu_start is None and worker.first_batch_started is not None:
                cpu_start = (time.perf_counter(), _cpu_seconds(worker))
            time.sleep(0.01)
        cpu_end = (time.perf_counter(), _cpu_seconds(worker))
        assert worker.first_batch_started is not None and worker.last_batch_done is not None
        events = worker.events_processed
        wall = worker.last_batch_done - worker.first_batch_started
        sums = _stage_sums(worker)
        stage_us = {stage: sums.get(stage, 0.0) / events * 1e6 for stage in BREAKDOWN_STAGES}
        stage_us["other"] = max(0.0, wall / events * 1e6 - sum(stage_us.values()))
        cores = None
        if cpu_start is not None and cpu_end[0] - cpu_start[0] > 0.2:
            cores = (cpu_end[1] - cpu_start[1]) / (cpu_end[0] - cpu_start[0])
        return WorkerRun(events / wall, events / max(worker.batches, 1), stage_us, cores)
    finally:
        worker.stop()
        thread.join(60)


def _cpu_seconds(worker: KafkaScoringWorker) -> float:
    """CPU seconds of this process (the worker's thread and librdkafka's; the benchmark's
    own thread mostly sleeps) plus the worker's scoring process, if it has one."""
    total = time.process_time()
    pid = worker.scoring_pid
    if pid is not None:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _stage_sums(worker: KafkaScoringWorker) -> dict[str, float]:
    sums: dict[str, float] = {}
    for family in worker.metrics.stage_duration.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                sums[sample.labels["stage"]] = sample.value
    return sums


def model_only(features: pd.DataFrame, scorer: Scorer, batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(features), batch):
        scorer.score(features.iloc[start : start + batch])
    return len(features) / (time.perf_counter() - started)


def train_bench_model(
    registry: ModelRegistry,
    population: Population,
    spec: FeatureSpec,
    progress: bool,
    n_estimators: int = 100,
) -> None:
    """RandomForest(100) on a year of the population's simulated history, registered."""
    history = population.generate_history(days=365)
    result = train_on_events(
        history, spec, horizon_days=60, n_estimators=n_estimators, progress=progress
    )
    register(result, registry, "churn", spec)


def run_bench(
    events: int = 100_000,
    per_event_events: int = 2_000,
    batch_size: int = 2000,
    partitions: int = 4,
    customers: int = 5_000,
    bootstrap: str | None = None,
    broker_kind: str = "auto",
    progress: bool = True,
    sequential: bool = True,
    onnx: bool = True,
    registry: ModelRegistry | None = None,
) -> BenchResult:
    """Every throughput figure, on one broker; trains the model unless ``registry`` has it
    (the suite trains once for all its benchmarks, from the same population seed)."""
    limit_native_threads(1)
    spec = load_default_spec()
    population = Population(n_customers=customers, seed=7)
    with tempfile.TemporaryDirectory(prefix="driftline-bench-") as tmp:
        if registry is None:
            registry = ModelRegistry(Path(tmp) / "models")
            train_bench_model(registry, population, spec, progress)
        else:
            population.generate_history(days=365)  # the live stream continues from it
        loaded = registry.load("churn", expected_features=spec.feature_names)
        scorer = Scorer(loaded)

        live = pd.concat(list(_take_frames(population, events)), ignore_index=True).head(events)
        encode = msgspec.json.Encoder().encode
        from driftline.simulate import frame_to_events

        records = [(e["customer_id"].encode(), encode(e), None) for e in frame_to_events(live)]
        features, _late = history_features(live, spec)

        with bench_broker(bootstrap, broker_kind) as (servers, _broker_name):
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
                # The target rows are scikit-learn's predict_proba; the compiled runtime
                # (the worker's default) has rows of its own.
                model_runtime="sklearn",
            )
            alo = worker_run(settings, spec, events)
            settings.group_id = f"bench-worker-drift-{run_id}"
            settings.drift = True
            drifted = worker_run(settings, spec, events)
            settings.drift = False
            settings.group_id = f"bench-worker-process-{run_id}"
            settings.scoring_process = True
            in_process = worker_run(settings, spec, events)
            settings.group_id = f"bench-worker-process-eos-{run_id}"
            settings.exactly_once = True
            process_eos_eps = worker_run(settings, spec, events).eps
            settings.exactly_once = settings.scoring_process = False
            seq_eps = None
            if sequential:
                settings.group_id = f"bench-worker-seq-{run_id}"
                settings.pipelined = False
                seq_eps = worker_run(settings, spec, events).eps
                settings.pipelined = True
            settings.group_id = f"bench-worker-eos-{run_id}"
            settings.exactly_once = True
            eos_eps = worker_run(settings, spec, events).eps
            settings.exactly_once = False
            single_eps = per_event(servers, topic, out, per_event_events, spec, scorer)
            bench = BenchResult(
                events=events,
                per_event_events=per_event_events,
                batch_size=batch_size,
                partitions=partitions,
                passthrough_eps=pass_eps,
                worker_eps=alo.eps,
                worker_exactly_once_eps=eos_eps,
                per_event_eps=single_eps,
                model_only_eps=model_eps,
                machine=machine_description(),
                worker_sequential_eps=seq_eps,
                stage_us=alo.stage_us,
                mean_batch=alo.mean_batch,
                process_worker_eps=in_process.eps,
                process_worker_exactly_once_eps=process_eos_eps,
                process_stage_us=in_process.stage_us,
                process_mean_batch=in_process.mean_batch,
                worker_cpu_cores=alo.cpu_cores,
                process_cpu_cores=in_process.cpu_cores,
                drift_worker_eps=drifted.eps,
                drift_stage_us=drifted.stage_us,
            )
            for runtime in ("compiled", "onnx") if onnx else ("compiled",):
                _runtime_rows(bench, runtime, loaded, features, settings, spec, run_id)
    return bench


def _runtime_rows(
    bench: BenchResult,
    runtime: str,
    loaded: LoadedModel,
    features: pd.DataFrame,
    settings: WorkerSettings,
    spec: FeatureSpec,
    run_id: str,
) -> None:
    """A faster runtime's rows (``compiled`` or ``onnx``), or the reason they are skipped."""
    from driftline.model.runtimes import RuntimeRefused, load_verified

    try:
        scorer, worst = load_verified(runtime, loaded, extra_rows=features.head(5000))
    except RuntimeRefused as error:
        setattr(bench, f"{runtime}_skipped", str(error))
        return
    setattr(bench, f"{runtime}_max_abs_diff", worst)
    setattr(bench, f"{runtime}_model_only_eps", model_only(features, scorer, bench.batch_size))
    settings.group_id = f"bench-worker-{runtime}-{run_id}"
    settings.model_runtime = runtime
    setattr(bench, f"{runtime}_worker_eps", worker_run(settings, spec, bench.events).eps)
    settings.model_runtime = "sklearn"


def _take_frames(population: Population, n: int) -> Iterator[pd.DataFrame]:
    total = 0
    for frame in population.stream_frames():
        yield frame
        total += len(frame)
        if total >= n:
            return
