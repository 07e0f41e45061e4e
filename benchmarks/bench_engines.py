"""Throughput of the two engines side by side: the Kafka engine and the Faust engine.

Both run the same processor and model over the same input topic (loaded once), each in a
consumer group of its own, at-least-once, one worker, in alternation (``--rounds``) so
that a machine shared with other work weighs on both alike.  Printed: events/s from the
first batch to the batch that reached ``--events``, the mean batch, and the worker's own
stage sums per event (``driftline_stage_duration_seconds``).

    python benchmarks/bench_engines.py --bootstrap-servers 127.0.0.1:19092

A benchmark, not a test: the figures depend on the machine (printed with them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

from driftline.commands.train import register, train_on_events
from driftline.core.spec import FeatureSpec, load_default_spec
from driftline.engine.faust.worker import FaustScoringWorker
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.engine.kafka.worker import KafkaScoringWorker, WorkerSettings
from driftline.event_producer import produce_records
from driftline.model.registry import ModelRegistry
from driftline.model.runtimes.sklearn import limit_native_threads
from driftline.simulate import Population

ENGINES: dict[str, Any] = {"kafka": KafkaScoringWorker, "faust": FaustScoringWorker}
STAGES = ("decode", "state", "predict", "produce", "commit")


def run_engine(engine: str, settings: WorkerSettings, spec: FeatureSpec, n: int) -> dict[str, Any]:
    """One worker of ``engine`` over ``n`` events: rate, mean batch, stage µs per event."""
    worker = ENGINES[engine](settings, spec)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 600
        while worker.events_processed < n:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{engine} worker stopped during the benchmark")
            time.sleep(0.01)
        events = worker.events_processed
        wall = worker.last_batch_done - worker.first_batch_started
        sums: dict[str, float] = {}
        for family in worker.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == "driftline_stage_duration_seconds_sum":
                    sums[sample.labels["stage"]] = sample.value
        return {
            "eps": events / wall,
            "mean_batch": events / max(worker.batches, 1),
            "stage_us": {s: sums.get(s, 0.0) / events * 1e6 for s in STAGES},
        }
    finally:
        worker.stop()
        thread.join(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runtime", default="compiled", choices=["sklearn", "compiled"])
    args = parser.parse_args()
    limit_native_threads(1)
    spec = load_default_spec()
    population = Population(n_customers=5_000, seed=7)
    with tempfile.TemporaryDirectory(prefix="driftline-bench-engines-") as tmp:
        registry = ModelRegistry(Path(tmp) / "models")
        history = population.generate_history(days=365)
        result = train_on_events(history, spec, horizon_days=60, n_estimators=100, progress=False)
        register(result, registry, "churn", spec)
        encode = msgspec.json.Encoder().encode
        records = [
            (e["customer_id"].encode(), encode(e), None)
            for e in population.stream_events(max_events=args.events)
        ]
        run_id = uuid.uuid4().hex[:8]
        servers = args.bootstrap_servers
        topic = f"bench-engines-in-{run_id}"
        ensure_topics(servers, [TopicSpec(topic, args.partitions)])
        produce_records(servers, topic, records)
        rows: dict[str, list[dict[str, Any]]] = {engine: [] for engine in ENGINES}
        for round_ in range(args.rounds):
            for engine in ENGINES:
                out = f"bench-engines-out-{engine}-{round_}-{run_id}"
                ensure_topics(servers, [TopicSpec(out, args.partitions)])
                settings = WorkerSettings(
                    bootstrap_servers=servers,
                    input_topic=topic,
                    output_topic=out,
                    dead_letter_topic=out,
                    group_id=f"bench-{engine}-{round_}-{run_id}",
                    registry=str(registry.root),
                    batch_size=args.batch_size,
                    metrics_port=0,
                    model_runtime=args.runtime,
                )
                rows[engine].append(run_engine(engine, settings, spec, len(records)))
                print(f"round {round_ + 1} {engine}: {rows[engine][-1]['eps']:,.0f} events/s")
    print(
        f"\n{len(records):,} events, {args.partitions} partitions, batch {args.batch_size}, "
        f"{args.runtime} runtime, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}\n"
    )
    print(
        "| engine | events/s (median of rounds) | rounds | mean batch | "
        + " | ".join(f"{s} µs/ev" for s in STAGES)
        + " |"
    )
    print("|---" * (4 + len(STAGES)) + "|")
    for engine, runs in rows.items():
        eps = statistics.median(r["eps"] for r in runs)
        batch = statistics.median(r["mean_batch"] for r in runs)
        stages = " | ".join(
            f"{statistics.median(r['stage_us'][s] for r in runs):.1f}" for s in STAGES
        )
        every = ", ".join(f"{r['eps']:,.0f}" for r in runs)
        print(f"| {engine} | {eps:,.0f} | {every} | {batch:,.0f} | {stages} |")


if __name__ == "__main__":
    main()
