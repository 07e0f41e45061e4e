"""The scoring worker end to end on a real broker."""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pytest

from driftline.core.events import EventBatch, decode_batch
from driftline.core.predictions import (
    DLQ_REASON,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    Prediction,
)
from driftline.core.spec import FeatureSpec
from driftline.corpus import bad_payloads, interleave
from driftline.engine.kafka.worker import WorkerSettings
from driftline.event_producer import produce, produce_records
from driftline.model.registry import LoadedModel
from driftline.model.runtimes.sklearn import Scorer
from driftline.simulate import Population
from support.feature_oracle import reference_features

pytestmark = pytest.mark.integration

decode_prediction = msgspec.json.Decoder(Prediction).decode


def live_events(n: int, seed: int = 5) -> list[dict[str, Any]]:
    population = Population(n_customers=150, seed=seed)
    population.generate_history(days=30)  # advance the clock; the stream continues from it
    return list(population.stream_events(max_events=n))


def offline_scores(
    events: list[dict[str, Any]], partitions: dict[str, int], spec: FeatureSpec, model: LoadedModel
) -> pd.Series:
    """Score each event from features computed offline by the reference implementation.

    Events are taken per partition in production order, as the worker sees them.
    """
    frame = EventBatch.from_frame(pd.DataFrame(events)).to_frame()
    frame["partition"] = frame["customer_id"].map(partitions)
    frame = frame.sort_values("partition", kind="stable")
    features = reference_features(frame, spec)
    scores = Scorer(model).score(features)
    return pd.Series(scores, index=frame.loc[features.index, "event_id"].to_numpy())


def assert_scored_once_as_offline(
    messages: list[Any], events: list[dict[str, Any]], spec: FeatureSpec, model: LoadedModel
) -> list[Prediction]:
    """One prediction per event, none for anything else, each with the offline score of
    its partition's events in order; returns the predictions."""
    predictions = [decode_prediction(m.value()) for m in messages]
    ids = collections.Counter(p.event_id for p in predictions)
    assert set(ids) == {e["event_id"] for e in events}
    assert max(ids.values()) == 1, f"{sum(c - 1 for c in ids.values())} duplicated"
    partitions = {p.customer_id: p.source_partition for p in predictions}
    expected = offline_scores(events, partitions, spec, model)
    got = pd.Series({p.event_id: p.score for p in predictions})
    np.testing.assert_allclose(
        got[expected.index].to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12
    )
    return predictions


@pytest.mark.parametrize("runtime", ["sklearn", "compiled", "sklearn+scoring-process"])
def test_every_valid_event_gets_exactly_one_prediction_equal_to_offline_scoring(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
    runtime: str,
) -> None:
    """The offline reference scores with scikit-learn's predict_proba, whatever runtime
    the worker uses: the compiled one must give the same scores, and so must a scoring
    process (a copy of the model in a child, batches pipelined through it)."""
    worker_settings.model_runtime, _, process = runtime.partition("+")
    worker_settings.scoring_process = bool(process)
    events = live_events(3000)
    if process:  # a backlog: the scoring process only takes full batches
        produce(worker_settings.bootstrap_servers, worker_settings.input_topic, events)
    with worker_in_thread(worker_settings, spec) as worker:
        if not process:
            produce(worker_settings.bootstrap_servers, worker_settings.input_topic, events)
        messages = consume_all(worker_settings.output_topic, expected=len(events), timeout=90)
        assert (worker.batches_to_scoring_process > 0) == bool(process)
    predictions = assert_scored_once_as_offline(messages, events, spec, loaded_model)
    assert len(predictions) == len(events)
    assert all(
        m.key().decode() == p.customer_id for m, p in zip(messages, predictions, strict=True)
    )
    assert all(p.decision == (p.score >= p.threshold) for p in predictions)
    assert {p.model_version for p in predictions} == {loaded_model.version}
    assert consume_all(worker_settings.dead_letter_topic, expected=0, timeout=20) == []


@pytest.mark.parametrize("scoring_process", [False, True], ids=["in-loop", "scoring-process"])
def test_bad_input_goes_to_the_dead_letter_topic_and_valid_events_around_it_are_scored(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
    scoring_process: bool,
) -> None:
    """With a scoring process, batches of rejects only (nothing to score) pass through
    the pipeline between scored ones."""
    worker_settings.scoring_process = scoring_process
    valid = [msgspec.json.encode(e) for e in live_events(1500, seed=8)]
    bad = bad_payloads(600, seed=4)
    mixed = interleave([(v, None) for v in valid], bad, seed=2)
    records = []
    for value, _reason in mixed:
        batch, _ = decode_batch([value]) if value else (EventBatch.empty(), [])
        key = batch.customer_id[0].encode() if len(batch) else b"poison"
        records.append((key, value, None))
    produce_records(worker_settings.bootstrap_servers, worker_settings.input_topic, iter(records))
    with worker_in_thread(worker_settings, spec) as worker:
        predictions = consume_all(worker_settings.output_topic, expected=len(valid), timeout=90)
        dead = consume_all(worker_settings.dead_letter_topic, expected=len(bad), timeout=60)
        assert worker.batches > 0
        assert (worker.batches_to_scoring_process > 0) == scoring_process
    assert len(predictions) == len(valid)
    assert len(dead) == len(bad)
    expected_reasons = collections.Counter(reason for _, reason in bad)
    got_reasons = collections.Counter(dict(m.headers())[DLQ_REASON].decode() for m in dead)
    assert got_reasons == expected_reasons
    sent = collections.Counter(value for value, reason in mixed if reason is not None)
    assert collections.Counter(m.value() for m in dead) == sent
    for m in dead:
        headers = dict(m.headers())
        assert int(headers[DLQ_SOURCE_PARTITION]) >= 0 and int(headers[DLQ_SOURCE_OFFSET]) >= 0


def test_a_rebalance_while_a_batch_is_in_the_scoring_process_loses_and_repeats_nothing(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
) -> None:
    """A worker scoring in a child process holds a prepared batch between two steps.  A
    second worker joins during a backlog: the first finishes that batch (publishes and
    commits it) before its partitions go, so every event is scored once, from the state
    that moved with its partition."""
    worker_settings.scoring_process = True
    # scikit-learn's ~12 ms per predict call and small batches keep the first worker
    # busy with its backlog (~8k events/s) until the second has started and joined.
    worker_settings.model_runtime = "sklearn"
    worker_settings.batch_size = 100
    population = Population(n_customers=2_000, seed=11)
    population.generate_history(days=30)
    events = list(population.stream_events(max_events=50_000))
    produce(worker_settings.bootstrap_servers, worker_settings.input_topic, events)
    with worker_in_thread(worker_settings, spec) as first:
        deadline = time.monotonic() + 90
        while first.events_processed < 1_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.events_processed >= 1_000, "the first worker made no progress"
        joining = dataclasses.replace(worker_settings, worker_id="second-worker")
        with worker_in_thread(joining, spec) as second:
            messages = consume_all(worker_settings.output_topic, expected=len(events), timeout=120)
            assert second.events_processed > 0, "the second worker got no partition"
        assert first.revoked_with_pending >= 1, "no revocation found a batch pending"
        assert first.batches_to_scoring_process > 0
    assert_scored_once_as_offline(messages, events, spec, loaded_model)


def test_an_exactly_once_restore_passes_over_snapshots_of_a_transaction_that_did_not_commit(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
) -> None:
    """Exactly-once commits a batch's changelog and its offsets in one transaction, so a
    snapshot that holds an event at or past the committed offset comes from a transaction
    that did not commit.  Tansu once showed such records to the restore's read_committed
    reader (a kill -9 loop lost a batch: its events were skipped as already applied).

    Here such snapshots are written to the changelog by hand, for every customer of the
    events not yet scored; the restarted worker must pass them over and score those
    events from the committed state, as if the snapshots were not there."""
    from confluent_kafka import Producer

    from driftline.core.state import FeatureState

    worker_settings.exactly_once = True
    events = live_events(900)
    first, rest = events[:600], events[600:]
    with worker_in_thread(worker_settings, spec) as worker:
        produce(worker_settings.bootstrap_servers, worker_settings.input_topic, first)
        deadline = time.monotonic() + 90
        while worker.events_processed < len(first):
            assert time.monotonic() < deadline, "the first events were not scored"
            time.sleep(0.05)
    produce(worker_settings.bootstrap_servers, worker_settings.input_topic, rest)

    # The snapshots a transaction over the rest would have written, built from the input
    # as the worker reads it (per partition, in offset order).
    records = consume_all(worker_settings.input_topic, expected=len(events), timeout=60)
    by_id = {e["event_id"]: e for e in events}
    rest_ids = {e["event_id"] for e in rest}
    forged = Producer({"bootstrap.servers": worker_settings.bootstrap_servers})
    for p in sorted({m.partition() for m in records}):
        mine = sorted((m for m in records if m.partition() == p), key=lambda m: m.offset())
        rows = [by_id[decode_event_id(m.value())] for m in mine]
        state = FeatureState(spec)
        state.update_block(
            EventBatch.from_frame(pd.DataFrame(rows)), np.array([m.offset() for m in mine])
        )
        customers = sorted({r["customer_id"] for r in rows if r["event_id"] in rest_ids})
        for customer, snapshot in zip(customers, state.export(customers), strict=True):
            forged.produce(worker_settings.changelog_topic, snapshot, customer.encode(), p)
    assert forged.flush(30) == 0

    with worker_in_thread(worker_settings, spec) as worker:
        deadline = time.monotonic() + 90
        while worker.events_processed < len(rest):
            assert time.monotonic() < deadline, (
                f"{worker.events_processed} of {len(rest)} events scored after the restore"
            )
            time.sleep(0.05)
    messages = consume_all(worker_settings.output_topic, expected=len(events), timeout=60)
    assert_scored_once_as_offline(messages, events, spec, loaded_model)


def decode_event_id(value: bytes) -> str:
    return str(msgspec.json.decode(value)["event_id"])


def test_a_transaction_that_committed_on_the_broker_but_failed_on_the_client_is_not_scored_again(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A commit's outcome is unknown to a client whose EndTxn went unanswered: the broker
    may have committed it.  Here the third batch's transaction commits on the (real)
    broker and the client is told it timed out; the worker must rewind to the offsets
    the broker holds, not to the ones it last saw commit, or that batch is scored twice
    (seen on Kafka after a broker freeze: 200 duplicated predictions)."""
    from confluent_kafka import KafkaError, KafkaException, Producer

    # Exactly-once producers are made in the transactions module.
    import driftline.engine.kafka.transactions as engine

    commits = collections.Counter[str]()

    class CommitAnsweredLate(Producer):  # type: ignore[misc]
        def commit_transaction(self, *args: Any) -> None:
            super().commit_transaction(*args)
            commits["all"] += 1
            if commits["all"] == 3:
                commits["failed"] += 1
                raise KafkaException(
                    KafkaError(KafkaError._TIMED_OUT, "EndTxn not answered", retriable=True)
                )

    monkeypatch.setattr(engine, "Producer", CommitAnsweredLate)
    worker_settings.exactly_once = True
    worker_settings.batch_size = 100
    events = live_events(1_200)
    produce(worker_settings.bootstrap_servers, worker_settings.input_topic, events)
    with worker_in_thread(worker_settings, spec) as worker:
        deadline = time.monotonic() + 90
        # The batch whose commit "failed" is not counted as processed by this worker.
        while worker.events_processed < len(events) - worker_settings.batch_size:
            assert time.monotonic() < deadline, f"{worker.events_processed} events scored"
            time.sleep(0.05)
    assert commits["failed"] == 1, commits
    messages = consume_all(worker_settings.output_topic, expected=len(events), timeout=60)
    assert_scored_once_as_offline(messages, events, spec, loaded_model)
