"""Scheduled re-scoring on a real broker: a ``driftline worker --tick 1d`` consuming a
stream that spans days publishes, at every day boundary a partition's events cross, one
prediction per customer held in that partition's state (``trigger: "tick"``), with the
score of the features ``core.offline`` computes as of that boundary; with
``--exactly-once`` a kill -9 mid-stream still leaves exactly one tick prediction per
(customer, tick) on the read_committed output."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pytest

from driftline.benchmarks.worker_process import WorkerProcess, killed_on_exit
from driftline.core.events import EventBatch
from driftline.core.offline import cutoff_features
from driftline.core.predictions import TRIGGER_EVENT, TRIGGER_TICK, Prediction
from driftline.core.spec import DAY_MS, FeatureSpec
from driftline.event_producer import produce
from driftline.model.registry import LoadedModel
from driftline.model.runtimes.sklearn import Scorer
from driftline.simulate import Population
from support.faults import PredictionCheck, kill_loop
from support.topic_reading import committed_all, read_topic, topic_layout, wait_committed

pytestmark = pytest.mark.integration

decode = msgspec.json.Decoder(Prediction).decode


def stream(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` live events of 200 simulated customers: about two weeks of event time, in
    which many customers stay quiet for days."""
    population = Population(n_customers=200, seed=seed)
    population.generate_history(days=10)
    return list(population.stream_events(max_events=n))


def expected_ticks(
    bootstrap: str, topic: str, n: int, spec: FeatureSpec, model: LoadedModel
) -> dict[tuple[str, int], float]:
    """(customer, boundary) -> score, computed offline from the input topic as the
    worker reads it: each partition's events in offset order, a day boundary ticked when
    the partition's greatest event time first passes it, the features as of the boundary
    from ``core.offline.cutoff_features`` (the training path), scored by ``model``."""
    by_partition: dict[int, list[dict[str, Any]]] = {}
    for message in read_topic(bootstrap, topic, False, n):
        by_partition.setdefault(message.partition(), []).append(
            msgspec.json.decode(message.value())
        )
    scorer = Scorer(model)
    out: dict[tuple[str, int], float] = {}
    for events in by_partition.values():
        frame = EventBatch.from_frame(pd.DataFrame(events)).to_frame()
        times = frame["event_time"].to_numpy(dtype=np.int64)
        assert (np.diff(times) >= 0).all(), "the simulated stream is in event-time order"
        high = np.maximum.accumulate(times)
        boundaries = sorted(
            {
                k * DAY_MS
                for before, t in zip(high[:-1], times[1:], strict=True)
                for k in range(-(-int(before) // DAY_MS), -(-int(t) // DAY_MS))
            }
        )
        for boundary, rows in zip(
            boundaries, cutoff_features(frame, spec, boundaries), strict=True
        ):
            scores = scorer.score_block(rows.block)
            out.update(
                ((c, boundary), float(s)) for c, s in zip(rows.customer_ids, scores, strict=True)
            )
    return out


def check_ticks(predictions: list[Prediction], expected: dict[tuple[str, int], float]) -> None:
    ticks = [p for p in predictions if p.trigger == TRIGGER_TICK]
    counts = Counter((p.customer_id, p.event_time) for p in ticks)
    duplicated = {k: c for k, c in counts.items() if c > 1}
    assert not duplicated, f"{len(duplicated)} (customer, tick) scored more than once"
    assert counts.keys() == expected.keys(), (
        f"missing {sorted(expected.keys() - counts.keys())[:5]}, "
        f"unexpected {sorted(counts.keys() - expected.keys())[:5]}"
    )
    got = np.array([p.score for p in ticks])
    want = np.array([expected[(p.customer_id, p.event_time)] for p in ticks])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert all(p.event_id == f"tick-{p.event_time}" for p in ticks)


def silent_rescored(predictions: list[Prediction]) -> int:
    """Tick predictions of customers with no event in the day before the tick."""
    last_event: dict[str, int] = {}
    silent = 0
    for p in predictions:  # each partition's records in order
        if p.trigger == TRIGGER_EVENT:
            last_event[p.customer_id] = max(last_event.get(p.customer_id, 0), p.event_time)
        elif p.event_time - last_event.get(p.customer_id, p.event_time) >= DAY_MS:
            silent += 1
    return silent


def run_worker(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    unique_group: str,
    trained_registry: Path,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    tmp_path: Path,
    *,
    exactly_once: bool,
    kills: int,
) -> tuple[list[Prediction], dict[tuple[str, int], float], list[dict[str, Any]], dict[str, float]]:
    names = (topic_factory(4, "events"), topic_factory(4, "predictions"), topic_factory(1, "dlq"))
    events = stream(4000, seed=31)
    produce(kafka_bootstrap, names[0], events)
    layout = topic_layout(kafka_bootstrap, names[0], len(events))
    expected = expected_ticks(kafka_bootstrap, names[0], len(events), spec, loaded_model)
    extra = ["--tick", "1d", "--batch-size", "200", "--group-instance-id", "tick-0"]
    worker = WorkerProcess(
        kafka_bootstrap,
        *names,
        group=unique_group,
        registry=trained_registry,
        extra_args=extra + (["--exactly-once"] if exactly_once else []),
        log_path=tmp_path / "worker.log",
        name="ticks",
    )
    with killed_on_exit(worker):
        crashes = kill_loop(
            worker,
            kills,
            random.Random(5),
            min_delay=0.05,
            max_delay=0.3,
            done=lambda: committed_all(kafka_bootstrap, unique_group, names[0], layout.end_offsets),
        )
        if not worker.alive:
            worker.start()
        worker.wait_ready(90)
        wait_committed(
            kafka_bootstrap, unique_group, names[0], layout.end_offsets, 120, workers=[worker]
        )
        metrics = worker.metrics()
        assert worker.sigterm(timeout=60) == 0, worker.log_tail()
    if kills:
        assert crashes, "the stream was done before the first kill: nothing was tested"
    messages = read_topic(
        kafka_bootstrap, names[1], exactly_once, len(events) + len(expected), timeout=60
    )
    predictions = [decode(m.value()) for m in messages]
    assert all(
        m.key() == p.customer_id.encode() for m, p in zip(messages, predictions, strict=True)
    )
    return predictions, expected, events, metrics


def test_a_worker_rescores_every_customer_in_state_at_each_day_as_offline(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    unique_group: str,
    trained_registry: Path,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    predictions, expected, events, metrics = run_worker(
        kafka_bootstrap, topic_factory, unique_group, trained_registry, spec, loaded_model,
        tmp_path, exactly_once=False, kills=0,
    )  # fmt: skip
    check_ticks(predictions, expected)
    boundaries = {b for _, b in expected}
    assert len(boundaries) >= 10 and len(expected) > 2000
    assert silent_rescored(predictions) > 500
    events_check = PredictionCheck.of(
        [p for p in predictions if p.trigger == TRIGGER_EVENT], (e["event_id"] for e in events)
    )
    assert events_check.exactly_once, events_check.summary()
    ticks_done = metrics.get("driftline_ticks_total", 0)
    assert ticks_done == len(
        {(p.source_partition, p.event_time) for p in predictions if p.trigger == TRIGGER_TICK}
    )
    assert metrics.get("driftline_tick_customers_sum", 0) == len(expected)
    assert metrics.get("driftline_tick_duration_seconds_count", 0) == ticks_done
    print(
        f"\nticks: {len(events)} events over {len(boundaries)} days -> {int(ticks_done)} "
        f"ticks, {len(expected)} tick predictions, {time.monotonic() - started:.1f}s"
    )


def test_exactly_once_a_kill_9_leaves_one_tick_prediction_per_customer_and_tick(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    unique_group: str,
    trained_registry: Path,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    tmp_path: Path,
    strict_exactly_once: bool,
) -> None:
    if not strict_exactly_once:
        pytest.skip("Tansu returns aborted transactions to read_committed readers")
    predictions, expected, events, _ = run_worker(
        kafka_bootstrap, topic_factory, unique_group, trained_registry, spec, loaded_model,
        tmp_path, exactly_once=True, kills=3,
    )  # fmt: skip
    check_ticks(predictions, expected)
    events_check = PredictionCheck.of(
        [p for p in predictions if p.trigger == TRIGGER_EVENT], (e["event_id"] for e in events)
    )
    assert events_check.exactly_once, events_check.summary()
