"""Latency benchmark: event-to-prediction percentiles under a fixed offered load.

A throughput figure says nothing about how long one event waits; this one offers a
steady rate from a *separate producer process* (so the producer's pacing does not share
the worker's interpreter) to a worker process, and reads the predictions back here.

Latency of one event = the moment its prediction reaches the reader here minus the
moment the producer sent it.  The producer stamps the send time (wall clock, ms) into the
event's ``event_time``, which every prediction carries back, so no join is needed; both
processes run on this machine, so they share the clock.  The ms stamp truncates: figures
read up to 1 ms high, never low.  It includes everything a downstream consumer of the
predictions sees: the producer's linger, the broker, the worker's batching wait,
scoring, delivery, and the reader's own fetch.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from driftline.core.events import EVENT_TYPES
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.engine.kafka.client_config import kafka_client_config

#: Quantiles reported, as fractions.
QUANTILES = {"p50": 0.50, "p99": 0.99, "p99_9": 0.999}


@dataclass
class LatencyFigures:
    offered_eps: float
    achieved_eps: float
    sent: int
    received: int
    p50_ms: float | None
    p99_ms: float | None
    p99_9_ms: float | None
    max_ms: float | None
    mean_batch: float | None = None
    runtime: str = "sklearn"


def latency_summary(latencies_s: np.ndarray) -> dict[str, float | None]:
    """p50, p99, p99.9 and max in milliseconds (None for no data).

    ``method="higher"``: each percentile is an observed latency at or above the exact
    quantile, never an interpolation below it; a latency target is a promise, so the
    figure errs on the pessimistic side.
    """
    values = np.asarray(latencies_s, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {**dict.fromkeys(QUANTILES), "max": None}
    out: dict[str, float | None] = {
        name: float(np.percentile(values, q * 100, method="higher")) * 1000
        for name, q in QUANTILES.items()
    }
    out["max"] = float(values.max()) * 1000
    return out


# ----------------------------------------------------------------- producer process


def produce_at_rate(
    bootstrap: str, topic: str, rate: float, duration_s: float, prefix: str, customers: int
) -> int:
    """Send ``rate`` events/s for ``duration_s`` (paced every millisecond); returns sent."""
    producer = Producer(
        kafka_client_config(
            {"bootstrap.servers": bootstrap, "linger.ms": 1, "enable.idempotence": True}
        )
    )
    rng = np.random.default_rng(1)
    ids = [f"lat-c{i:05d}" for i in range(customers)]
    types = [t for t in EVENT_TYPES if t != "cancel_request"]
    encode = msgspec.json.Encoder().encode
    total = int(rate * duration_s)
    picks = rng.integers(0, customers, total)
    kinds = rng.integers(0, len(types), total)
    amounts = rng.gamma(2.0, 30.0, total).round(2)
    # Connect, fetch metadata and get the idempotent producer id before the clock
    # starts: on Tansu that first round trip took ~1 s, and the events stamped meanwhile
    # would measure the producer's start-up, not the worker.  The warm-up event's id
    # lacks the "<prefix>-" mark, so the reader ignores its prediction.
    warm = {"event_id": f"{prefix}warm", "customer_id": ids[0], "event_type": "login"}
    warm_value = encode({**warm, "event_time": int(time.time() * 1000)})
    producer.produce(topic, warm_value, ids[0].encode())
    producer.flush(30)
    sent = 0
    started = time.perf_counter()
    while sent < total:
        due = min(total, int((time.perf_counter() - started) * rate) + 1)
        now_ms = int(time.time() * 1000)
        while sent < due:
            customer = ids[picks[sent]]
            event: dict[str, Any] = {
                "event_id": f"{prefix}-{sent}",
                "customer_id": customer,
                "event_time": now_ms,
                "event_type": types[kinds[sent]],
            }
            if event["event_type"] == "purchase":
                event["amount"] = float(amounts[sent])
            producer.produce(topic, encode(event), customer.encode())
            sent += 1
        producer.poll(0)
        time.sleep(0.001)
    producer.flush(30)
    return sent


def _producer_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="fixed-rate event producer (latency bench)")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--customers", type=int, default=2000)
    a = parser.parse_args(argv)
    sent = produce_at_rate(a.bootstrap_servers, a.topic, a.rate, a.duration, a.prefix, a.customers)
    print(sent, flush=True)
    return 0


# ----------------------------------------------------------------- measuring side


class _Stamped(msgspec.Struct, forbid_unknown_fields=False):
    """What the reader needs of a record: predictions and events both carry these (the
    one-hop row reads the events themselves)."""

    event_id: str
    event_time: int


class _Reader(threading.Thread):
    """Reads the predictions topic; arrival minus send time for ids with ``prefix``.

    It first reads what is already there to the end of every partition (EOF: Tansu's
    ListOffsets end is wrong, so OFFSET_END cannot be trusted), and only then sets
    ``caught_up``: the producer starts after it, so no latency includes the time spent
    reading earlier runs' predictions.
    """

    def __init__(self, bootstrap: str, topic: str, prefix: str, expected: int, timeout_s: float):
        super().__init__(daemon=True, name="latency-reader")
        self.args = (bootstrap, topic)
        self.mark = f"{prefix}-"
        self.expected = expected
        self.timeout_s = timeout_s
        self.caught_up = threading.Event()
        self.latencies: list[float] = []

    def run(self) -> None:
        bootstrap, topic = self.args
        decode = msgspec.json.Decoder(_Stamped).decode
        consumer = Consumer(
            kafka_client_config(
                {
                    "bootstrap.servers": bootstrap,
                    "group.id": f"bench-latency-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    "fetch.wait.max.ms": READER_FETCH_WAIT_MS,
                }
            )
        )
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        deadline = time.monotonic() + self.timeout_s
        try:
            while len(self.latencies) < self.expected and time.monotonic() < deadline:
                for message in consumer.consume(1000, 0.002):
                    arrived = time.time()
                    error = message.error()
                    if error is not None:
                        partition = message.partition()
                        if error.code() == KafkaError._PARTITION_EOF and partition is not None:
                            at_end.add(partition)
                            if at_end >= set(partitions):
                                self.caught_up.set()
                        continue
                    value = message.value()
                    if value is None:
                        continue  # no prediction: the worker never writes a null value
                    try:
                        prediction = decode(value)
                    except msgspec.MsgspecError:
                        continue  # neither a prediction nor an event (a dead letter)
                    if prediction.event_id.startswith(self.mark):
                        self.latencies.append(arrived - prediction.event_time / 1000)
        finally:
            self.caught_up.set()
            consumer.close()


#: The reader's fetch wait.  Kafka answers a waiting fetch as soon as data arrives; Tansu
#: does not, so there the wait bounds how late the reader sees a prediction, but a fetch
#: every millisecond loads it: one hop at 5k events/s had p99 4 s with 1 ms, 76 ms with 10.
READER_FETCH_WAIT_MS = 10
#: The ``runtime`` of the rows measured without a worker.
ONE_HOP = "one hop, no worker"


def measure_rate(
    bootstrap: str,
    input_topic: str,
    output_topic: str,
    rate: float,
    duration_s: float,
    customers: int = 2000,
) -> LatencyFigures:
    """Offer ``rate`` events/s for ``duration_s`` from a child process; read latencies."""
    prefix = f"r{int(rate)}-{uuid.uuid4().hex[:6]}"
    command = [
        sys.executable,
        "-m",
        "driftline.benchmarks.latency",
        "--bootstrap-servers",
        bootstrap,
        "--topic",
        input_topic,
        "--rate",
        str(rate),
        "--duration",
        str(duration_s),
        "--prefix",
        prefix,
        "--customers",
        str(customers),
    ]
    expected = int(rate * duration_s)
    reader = _Reader(bootstrap, output_topic, prefix, expected, duration_s + 60)
    reader.start()
    reader.caught_up.wait(60)
    started = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        reader.join(duration_s + 90)
        out, _ = child.communicate(timeout=60)
    elapsed = time.perf_counter() - started
    sent = int(out.strip() or 0)
    latencies = np.asarray(reader.latencies)
    summary = latency_summary(latencies)
    return LatencyFigures(
        offered_eps=rate,
        achieved_eps=len(latencies) / max(elapsed, 1e-9),
        sent=sent,
        received=len(latencies),
        p50_ms=summary["p50"],
        p99_ms=summary["p99"],
        p99_9_ms=summary["p99_9"],
        max_ms=summary["max"],
    )


def run_one_hop_bench(
    bootstrap: str, rates: list[float], duration_s: float
) -> list[LatencyFigures]:
    """The broker's own share: the same producer process and reader, the reader on the
    input topic itself, no worker between them (``runtime`` "one hop, no worker")."""
    figures = []
    for rate in rates:
        topic = f"hop-{uuid.uuid4().hex[:8]}"
        ensure_topics(bootstrap, [TopicSpec(topic, 4)])
        measure_rate(bootstrap, topic, topic, 500, 1.0)  # the same warm-up as the workers'
        figure = measure_rate(bootstrap, topic, topic, rate, duration_s)
        figure.runtime = ONE_HOP
        figures.append(figure)
    return figures


def run_latency_bench(
    bootstrap: str,
    registry: str | Path,
    rates: list[float],
    duration_s: float,
    batch_size: int = 2000,
    latency_target_s: float = 0.05,
    runtime: str = "sklearn",
) -> list[LatencyFigures]:
    """Each offered rate on a fresh worker process and fresh topics, so that no rate
    inherits another's backlog, batch sizes or warm caches.

    ``runtime``: a model runtime, with ``+process`` for a scoring process
    (``sklearn+process``)."""
    return [
        _one_rate(bootstrap, registry, rate, duration_s, batch_size, latency_target_s, runtime)
        for rate in rates
    ]


def _one_rate(
    bootstrap: str,
    registry: str | Path,
    rate: float,
    duration_s: float,
    batch_size: int,
    latency_target_s: float,
    runtime: str,
) -> LatencyFigures:
    from driftline.benchmarks.worker_process import WorkerProcess

    model_runtime, _, process = runtime.partition("+")
    scoring_process = process == "process"

    run_id = uuid.uuid4().hex[:8]
    topics = (f"lat-in-{run_id}", f"lat-out-{run_id}", f"lat-dlq-{run_id}")
    ensure_topics(
        bootstrap, [TopicSpec(topics[0], 4), TopicSpec(topics[1], 4), TopicSpec(topics[2], 1)]
    )
    with tempfile.TemporaryDirectory(prefix="driftline-latency-") as logs:
        worker = WorkerProcess(
            bootstrap,
            input_topic=topics[0],
            output_topic=topics[1],
            dead_letter_topic=topics[2],
            group=f"bench-latency-{run_id}",
            registry=Path(registry),
            extra_args=[
                "--batch-size",
                str(batch_size),
                "--latency-target",
                str(latency_target_s),
                "--model-runtime",
                model_runtime,
                *(["--scoring-process"] if scoring_process else []),
            ],
            log_path=Path(logs) / "worker.log",
            name="latency",
        )
        with worker:
            worker.wait_ready(90)
            # A short warm-up: first batches pay imports, the first fetch, lazy caches.
            measure_rate(bootstrap, topics[0], topics[1], 500, 1.0)
            before = _batch_counts(worker)
            figure = measure_rate(bootstrap, topics[0], topics[1], rate, duration_s)
            after = _batch_counts(worker)
            if after[0] > before[0]:
                figure.mean_batch = (after[1] - before[1]) / (after[0] - before[0])
            figure.runtime = runtime
            worker.sigterm(timeout=60)
    return figure


def _batch_counts(worker: Any) -> tuple[float, float]:
    """(batches, events) from the worker's own metrics: the batch size it chose."""
    metrics = worker.metrics()
    return (
        float(metrics.get("driftline_batch_size_count", 0.0)),
        float(metrics.get("driftline_batch_size_sum", 0.0)),
    )


def to_rows(figures: list[LatencyFigures]) -> list[dict[str, Any]]:
    return [asdict(f) for f in figures]


if __name__ == "__main__":
    sys.exit(_producer_main(sys.argv[1:]))
