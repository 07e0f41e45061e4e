"""Ticks through the processor (what every engine runs): tick predictions are the same
whatever the batching, score exactly the training rows at the same cutoff, come before
the events that fired them, survive a restore, and stay out of the drift monitor."""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pytest

from driftline.core.clock_skew import ClockSkewPolicy
from driftline.core.drift.monitor import DriftMonitor, MonitorBudget
from driftline.core.offline import ChurnDefinition, cutoff_features, training_set
from driftline.core.predictions import TRIGGER_EVENT, TRIGGER_TICK, Prediction
from driftline.core.spec import DAY_MS, FeatureSpec
from driftline.model.registry import LoadedModel
from driftline.model.runtimes.sklearn import Scorer
from driftline.processor import WATERMARK_KEY, RawBatch, ScoringProcessor
from driftline.simulate import Population

decode = msgspec.json.Decoder(Prediction).decode
PARTITIONS = 3


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    """12 days of 60 simulated customers, in event-time order (many stay quiet for days)."""
    return Population(n_customers=60, seed=21).generate_history(days=12)


def records(history: pd.DataFrame) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) per event, keyed by customer as the input topic is."""
    out = []
    for row in history.to_dict("records"):
        event = {
            k: v
            for k, v in row.items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        }
        event["event_time"] = int(event["event_time"])
        customer = str(event["customer_id"])
        partition = zlib.crc32(customer.encode()) % PARTITIONS
        out.append((partition, customer.encode(), msgspec.json.encode(event)))
    return out


def batches(recs: list[tuple[int, bytes, bytes]], cuts: Sequence[int]) -> list[RawBatch]:
    """The records cut into micro-batches, with per-partition offsets."""
    offsets = np.zeros(PARTITIONS, dtype=np.int64)
    numbered = []
    for p, key, value in recs:
        numbered.append((p, int(offsets[p]), key, value))
        offsets[p] += 1
    bounds = sorted({0, len(recs), *[c for c in cuts if 0 < c < len(recs)]})
    out = []
    for lo, hi in itertools.pairwise(bounds):
        chunk = numbered[lo:hi]
        out.append(
            RawBatch(
                "events",
                [v for _, _, _, v in chunk],
                [k for _, _, k, _ in chunk],
                np.array([p for p, _, _, _ in chunk], dtype=np.int32),
                np.array([o for _, o, _, _ in chunk], dtype=np.int64),
            )
        )
    return out


def processor(spec: FeatureSpec, model: LoadedModel, history: pd.DataFrame, **kw: Any) -> Any:
    end_s = int(history["event_time"].max()) / 1000 + 86_400
    return ScoringProcessor(
        spec,
        Scorer(model),
        clock=lambda: end_s,
        clock_skew=ClockSkewPolicy(max_replay_jump_ms=30 * DAY_MS),
        tick_ms=DAY_MS,
        **kw,
    )


def run(spec: FeatureSpec, model: LoadedModel, history: pd.DataFrame, cuts: Sequence[int]):
    proc = processor(spec, model, history, changelog=False)
    out: list[Prediction] = []
    for raw in batches(records(history), cuts):
        result = proc.process(raw)
        assert not result.rejected
        out.extend(map(decode, result.prediction_values))
    return out


def by_key(predictions: list[Prediction]) -> dict[tuple[str, str], tuple[Any, ...]]:
    keyed = {
        (p.customer_id, p.event_id): (p.score, p.trigger, p.source_partition, p.source_offset)
        for p in predictions
    }
    assert len(keyed) == len(predictions), "a prediction came twice"
    return keyed


def test_tick_predictions_do_not_depend_on_the_batching(
    spec: FeatureSpec, model: LoadedModel, history: pd.DataFrame
) -> None:
    whole = run(spec, model, history, [])
    ticks = [p for p in whole if p.trigger == TRIGGER_TICK]
    # 12 days, 3 partitions: about 11 ticks each, every customer held re-scored at each.
    boundaries = {p.event_time for p in ticks}
    assert len(boundaries) >= 10 and all(b % DAY_MS == 0 for b in boundaries)
    assert len(ticks) > 10 * 40
    rng = np.random.default_rng(3)
    for _ in range(3):
        cuts = sorted(rng.integers(0, len(history), 12).tolist())
        assert by_key(run(spec, model, history, cuts)) == by_key(whole)
    assert by_key(run(spec, model, history, list(range(0, len(history), 97)))) == by_key(whole)


def test_tick_scores_are_the_scores_of_the_training_rows_at_the_same_cutoff(
    spec: FeatureSpec, model: LoadedModel, history: pd.DataFrame
) -> None:
    """'Cutoff rows are exactly ticks': a partition's tick at T scores, for each of its
    customers, the row ``core.offline`` builds for a training cutoff at T."""
    ticks = [p for p in run(spec, model, history, [500, 1500]) if p.trigger == TRIGGER_TICK]
    scorer = Scorer(model)
    parts = {c: p for p, c, _ in records(history)}
    checked = 0
    for partition in range(PARTITIONS):
        mine = history[history["customer_id"].map(lambda c: parts[str(c).encode()]) == partition]
        served = [p for p in ticks if p.source_partition == partition]
        boundaries = sorted({p.event_time for p in served})
        for boundary, rows in zip(boundaries, cutoff_features(mine, spec, boundaries), strict=True):
            want = dict(zip(rows.customer_ids, scorer.score_block(rows.block), strict=True))
            got = {p.customer_id: p.score for p in served if p.event_time == boundary}
            assert got.keys() == want.keys()
            for customer, score in got.items():
                assert score == pytest.approx(want[customer], abs=1e-12)
            checked += len(got)
    assert checked > 400


def test_training_rows_are_the_tick_features_within_the_lookback(
    spec: FeatureSpec, history: pd.DataFrame
) -> None:
    cutoff = int(history["event_time"].min()) // DAY_MS * DAY_MS + 4 * DAY_MS
    churn = ChurnDefinition(horizon_ms=5 * DAY_MS, lookback_ms=2 * DAY_MS)
    x, y, keys = training_set(history, spec, [cutoff], churn)
    (tick,) = cutoff_features(history, spec, [cutoff])
    frame = tick.block.frame()
    frame.index = pd.Index(tick.customer_ids)
    recent = history[
        (history["event_time"] <= cutoff) & (history["event_time"] > cutoff - 2 * DAY_MS)
    ]
    assert list(keys["customer_id"]) == sorted(set(recent["customer_id"].astype(str)))
    expected = frame.loc[keys["customer_id"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(x, expected)
    # Recency is measured to the cutoff, not to the customer's last event (always 0 then).
    assert (x["days_since_last_purchase"].dropna() > 0).mean() > 0.5
    assert len(y) == len(x)


def test_each_tick_prediction_precedes_the_customers_events_after_it(
    spec: FeatureSpec, model: LoadedModel, history: pd.DataFrame
) -> None:
    """On the output, a customer's records are in event time: the tick at T after its
    events up to T (an event at exactly T is in the tick) and before those after T."""
    out = run(spec, model, history, [700])
    seen: dict[str, tuple[int, int]] = {}
    order = {TRIGGER_EVENT: 0, TRIGGER_TICK: 1}
    for p in out:
        here = (p.event_time, order[p.trigger])
        assert here >= seen.get(p.customer_id, (0, 0)), p
        seen[p.customer_id] = here


def test_a_restored_partition_fires_the_same_ticks(
    spec: FeatureSpec, model: LoadedModel, history: pd.DataFrame
) -> None:
    """A worker restarted from the changelog (state and watermark record) after batch 1
    fires, in batch 2, exactly the ticks of an uninterrupted worker (exactly-once: the
    batch after the last committed one comes again and ticks again, identically)."""
    first, second = batches(records(history), [900])
    steady = processor(spec, model, history)
    steady.process(first)
    want = by_key(list(map(decode, steady.process(second).prediction_values)))

    before = processor(spec, model, history)
    changelog = before.process(first).changelog
    restarted = processor(spec, model, history)
    for partition in range(PARTITIONS):
        mine = [(k, v) for p, k, v in changelog if p == partition]
        committed = int(first.offsets[first.partitions == partition].max()) + 1
        restarted.restore(partition, mine, committed)
    got = by_key(list(map(decode, restarted.process(second).prediction_values)))
    assert got == want
    assert any(trigger == TRIGGER_TICK for _, trigger, _, _ in got.values())
    assert any(k == WATERMARK_KEY for _, k, _ in changelog)


def test_ticks_stay_out_of_the_drift_monitor(
    spec: FeatureSpec, model: LoadedModel, history: pd.DataFrame
) -> None:
    profile = model.metadata["reference_profile"]
    monitor = DriftMonitor(
        profile,
        spec.numeric_features,
        spec.categorical_features,
        MonitorBudget(events_per_day=10_000),
    )
    proc = processor(spec, model, history, changelog=False, drift=monitor)
    events = ticks = 0
    for raw in batches(records(history), [600, 1200]):
        result = proc.process(raw)
        assert result.drift is not None
        assert result.drift.n_events == len(result.scores)
        kinds = [decode(v).trigger for v in result.prediction_values]
        events += kinds.count(TRIGGER_EVENT)
        ticks += kinds.count(TRIGGER_TICK)
        assert result.ticks is None or len(result.ticks) == kinds.count(TRIGGER_TICK)
    assert ticks > 0
    assert result.drift.events_seen == events == len(history)


def test_ticks_off_by_default(spec: FeatureSpec, model: LoadedModel, history: pd.DataFrame) -> None:
    proc = ScoringProcessor(
        spec,
        Scorer(model),
        changelog=False,
        clock_skew=ClockSkewPolicy(max_replay_jump_ms=30 * DAY_MS),
    )
    (raw,) = batches(records(history), [])
    result = proc.process(raw)
    assert result.ticks is None
    assert {decode(v).trigger for v in result.prediction_values} == {TRIGGER_EVENT}


def test_an_at_least_once_redelivery_ticks_again_with_the_same_scores(
    spec: FeatureSpec, model: LoadedModel, history: pd.DataFrame
) -> None:
    """A crash between changelog and commit (at-least-once): the restored state already
    holds the batch, the watermark record says the batch was not committed, and the batch
    comes again.  Its ticks fire again (duplicates, as at-least-once allows), with the
    same scores; a customer whose restored state is already past a tick is left out of
    it (its events after the tick were scored, and cannot be taken out of its windows)."""
    first, second = batches(records(history), [900])
    steady = processor(spec, model, history)
    steady.process(first)
    result = steady.process(second)
    want = by_key(list(map(decode, result.prediction_values)))

    crashed = processor(spec, model, history)
    changelog = crashed.process(first).changelog + result.changelog
    restarted = processor(spec, model, history)
    for partition in range(PARTITIONS):
        mine = [(k, v) for p, k, v in changelog if p == partition]
        committed = int(first.offsets[first.partitions == partition].max()) + 1
        restarted.restore(partition, mine, committed)
    again = restarted.process(second)
    assert again.n_redelivered == len(second)
    got = by_key(list(map(decode, again.prediction_values)))
    ticks_wanted = {k: v for k, v in want.items() if v[1] == TRIGGER_TICK}
    assert got and set(got) < set(ticks_wanted)
    assert all(got[k] == ticks_wanted[k] for k in got)
    assert all(v[1] == TRIGGER_TICK for v in got.values())
