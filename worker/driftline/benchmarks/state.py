"""State benchmark: memory per customer, update speed at that size, snapshots, restore.

Customers are given a realistic spread of events (several event types over the longest
window) so that every bucket column is in use; memory is measured two ways: the numpy
columns alone, and the process's traced allocations (columns plus the id -> slot dict and
the id strings), both divided by the number of customers.

Update speed is measured twice: loading the history (20,000-event chunks into a growing
state), and in steady state, the way the worker uses it: 2,000-event batches of customers
already in the full state, with skewed activity (a few customers have several events in a
batch), each batch applied, turned into one feature frame and, for the second figure, its
customers' changelog snapshots exported (median batch of 20).
"""

from __future__ import annotations

import gc
import json
import statistics
import time
import tracemalloc
import uuid
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from driftline.core.events import EVENT_TYPES, EventBatch
from driftline.core.spec import DAY_MS, load_default_spec
from driftline.core.state import FeatureState
from driftline.engine.kafka.admin import TopicSpec, ensure_topics


@dataclass
class StateFigures:
    customers: int
    events: int
    column_bytes_per_customer: float
    traced_bytes_per_customer: float
    load_events_per_s: float
    #: Steady state: 2,000-event batches on the full state, features as one frame.
    update_events_per_s: float
    #: The same, plus the changelog snapshots of the customers each batch touched.
    update_export_events_per_s: float
    snapshot_bytes_per_customer: float
    export_customers_per_s: float
    restore_customers_per_s: float
    changelog_restore_seconds: float | None


START_MS = 1_760_000_000_000
HISTORY_MS = 90 * DAY_MS
BATCH = 2_000


def customer_ids(customers: int) -> np.ndarray:
    width = len(str(customers))
    return np.array([f"c{i:0{width}d}" for i in range(customers)], dtype=object)


def synthetic_events(customers: int, events_per_customer: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = customers * events_per_customer
    ids = customer_ids(customers)
    return _frame(
        rng, ids[rng.integers(0, customers, n)], START_MS + rng.integers(0, HISTORY_MS, n)
    )


def live_batches(customers: int, batches: int, seed: int = 2) -> list[EventBatch]:
    """``batches`` batches of ``BATCH`` events after the history, by customers drawn with
    lognormal activity weights (as in the simulator: some customers are much busier)."""
    rng = np.random.default_rng(seed)
    n = batches * BATCH
    weights = rng.lognormal(0.0, 1.0, customers)
    who = rng.choice(customers, n, p=weights / weights.sum())
    ids = customer_ids(customers)
    # Two events per customer per day on average, so a batch spans realistic minutes.
    span = max(1, n * DAY_MS // (2 * customers))
    frame = _frame(rng, ids[who], START_MS + HISTORY_MS + rng.integers(0, span, n))
    batch = EventBatch.from_frame(frame)
    return [batch.take(np.arange(lo, lo + BATCH)) for lo in range(0, n, BATCH)]


def _frame(rng: np.random.Generator, ids: np.ndarray, times: np.ndarray) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame(
        {
            "event_id": np.arange(n).astype(str),
            "customer_id": ids,
            "event_time": np.sort(times),
            "event_type": rng.choice(np.asarray(EVENT_TYPES[:5], dtype=object), n),
            "amount": rng.gamma(2.0, 30.0, n).round(2),
            "quantity": rng.integers(1, 4, n).astype(float),
            "plan_type": rng.choice(np.asarray(["basic", "pro", "family"], dtype=object), n),
            "age": rng.integers(18, 80, n).astype(float),
        }
    )


def measure(
    customers: int,
    events_per_customer: int = 8,
    changelog: bool = False,
    bootstrap: str | None = None,
    broker_kind: str = "auto",
) -> StateFigures:
    spec = load_default_spec()
    batch = EventBatch.from_frame(synthetic_events(customers, events_per_customer))
    n_events = len(batch)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    state = FeatureState(spec, capacity=customers)
    started = time.perf_counter()
    for lo in range(0, len(batch), 20_000):
        state.update_block(batch.take(np.arange(lo, min(lo + 20_000, len(batch)))))
    load_s = time.perf_counter() - started
    del batch  # at 1M customers the history is several GB: not kept through the rest
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    update_eps, update_export_eps = _steady_state(state, live_batches(customers, batches=20))

    ids = list(state._slots)
    started = time.perf_counter()
    snapshots = state.export(ids)
    export_s = time.perf_counter() - started
    snapshot_bytes = sum(map(len, snapshots)) / len(ids)
    fresh = FeatureState(spec, capacity=customers)
    started = time.perf_counter()
    fresh.restore(ids, snapshots)
    restore_s = time.perf_counter() - started
    del fresh
    changelog_s = _changelog_restore(ids, snapshots, bootstrap, broker_kind) if changelog else None
    return StateFigures(
        customers=len(state),
        events=n_events,
        column_bytes_per_customer=state.nbytes / len(state),
        traced_bytes_per_customer=traced / len(state),
        load_events_per_s=n_events / load_s,
        update_events_per_s=update_eps,
        update_export_events_per_s=update_export_eps,
        snapshot_bytes_per_customer=snapshot_bytes,
        export_customers_per_s=len(ids) / export_s,
        restore_customers_per_s=len(ids) / restore_s,
        changelog_restore_seconds=changelog_s,
    )


def _steady_state(state: FeatureState, batches: list[EventBatch]) -> tuple[float, float]:
    """Events/s of the worker's per-batch state work: (update + frame, and + export).

    From the median batch, not the total: on a shared machine one batch that waited for
    the CPU would otherwise set the figure.
    """
    update_s: list[float] = []
    export_s: list[float] = []
    offset = 0
    for batch in batches:
        offsets = np.arange(offset, offset + len(batch), dtype=np.int64)
        offset += len(batch)
        started = time.perf_counter()
        applied = state.already_applied(batch.customer_id, offsets)
        assert not applied.any()
        state.update_block(batch, offsets).frame()
        updated = time.perf_counter()
        state.export(list(dict.fromkeys(batch.customer_id.tolist())))
        update_s.append(updated - started)
        export_s.append(time.perf_counter() - updated)
    both = [u + e for u, e in zip(update_s, export_s, strict=True)]
    return BATCH / statistics.median(update_s), BATCH / statistics.median(both)


def _changelog_restore(
    ids: list[str], snapshots: list[bytes], bootstrap: str | None, broker_kind: str
) -> float:
    """Write the snapshots to a changelog partition, then time a worker-style restore."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

    from driftline.benchmarks.broker import bench_broker

    with bench_broker(bootstrap, broker_kind) as (servers, _name):
        topic = f"bench-changelog-{uuid.uuid4().hex[:8]}"
        ensure_topics(servers, [TopicSpec(topic, 1, {"cleanup.policy": "compact"})])
        producer = Producer({"bootstrap.servers": servers, "linger.ms": 20})
        for key, value in zip(ids, snapshots, strict=True):
            while True:
                try:
                    producer.produce(topic, value, key.encode(), partition=0)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.flush()
        spec = load_default_spec()
        started = time.perf_counter()
        reader = Consumer(
            {
                "bootstrap.servers": servers,
                "group.id": "bench-restore",
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 10,
            }
        )
        reader.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        latest: dict[bytes, bytes] = {}
        done = False
        while not done:
            for message in reader.consume(10_000, 0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        done = True
                        break
                    continue
                customer, snapshot = message.key(), message.value()
                # The state export writes every snapshot keyed by its customer.
                assert customer is not None and snapshot is not None
                latest[customer] = snapshot
        reader.close()
        state = FeatureState(spec, capacity=len(latest))
        state.restore([k.decode() for k in latest], list(latest.values()))
        return time.perf_counter() - started


def run_state_bench(
    sizes: list[int],
    changelog_sizes: list[int],
    bootstrap: str | None = None,
    broker_kind: str = "auto",
) -> list[StateFigures]:
    """State figures at each size; the changelog restores on ``bootstrap``, or on a broker
    of ``broker_kind`` started for them."""
    return [
        measure(n, changelog=n in changelog_sizes, bootstrap=bootstrap, broker_kind=broker_kind)
        for n in sizes
    ]


def to_table(figures: list[StateFigures]) -> str:
    lines = [
        f"{'customers':>10} {'events':>10} {'col B/cust':>11} {'traced B/cust':>14} "
        f"{'load ev/s':>10} {'update ev/s':>12} {'+export ev/s':>13} {'snap B/cust':>12} "
        f"{'export c/s':>11} {'restore c/s':>12} {'changelog restore s':>20}"
    ]
    for f in figures:
        restore = f"{f.changelog_restore_seconds:.1f}" if f.changelog_restore_seconds else "-"
        lines.append(
            f"{f.customers:>10,} {f.events:>10,} {f.column_bytes_per_customer:>11,.0f} "
            f"{f.traced_bytes_per_customer:>14,.0f} {f.load_events_per_s:>10,.0f} "
            f"{f.update_events_per_s:>12,.0f} {f.update_export_events_per_s:>13,.0f} "
            f"{f.snapshot_bytes_per_customer:>12,.0f} {f.export_customers_per_s:>11,.0f} "
            f"{f.restore_customers_per_s:>12,.0f} {restore:>20}"
        )
    lines.append(
        "update ev/s: steady state, 2,000-event batches on the full state (state + one "
        "feature frame); +export: and the changelog snapshots"
    )
    return "\n".join(lines)


def to_json(figures: list[StateFigures]) -> str:
    return json.dumps([asdict(f) for f in figures], indent=2)
