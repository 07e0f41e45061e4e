"""Live label resolution (``core.labels.resolver``): batching cannot change an outcome, the
labels equal the offline training set's, and the bounds hold."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.core.events import EventBatch
from driftline.core.labels import ChurnDefinition
from driftline.core.labels.records import CustomerSnapshot, PartitionSnapshot, PredictionOutcome
from driftline.core.labels.resolver import OutcomeResolver
from driftline.core.offline import training_set
from driftline.core.predictions import Prediction, tick_event_id
from driftline.core.spec import DAY_MS, load_default_spec
from driftline.core.watermark import PartitionWatermark
from driftline.simulate import Population

HOUR_MS = 3_600_000
LATENESS = HOUR_MS


def prediction(customer: str, time: int, event_id: str, trigger: str = "tick") -> Prediction:
    return Prediction(
        event_id=event_id, customer_id=customer, score=0.25, decision=False, threshold=0.5,
        model_name="churn", model_version="v0001", event_time=time, processed_at=0,
        source_partition=0, source_offset=0, trigger=trigger,  # type: ignore[arg-type]
    )  # fmt: skip


def events_frame(rows: Sequence[tuple[str, int, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(rows))],
            "customer_id": [r[0] for r in rows],
            "event_time": np.array([r[1] for r in rows], dtype=np.int64),
            "event_type": [r[2] for r in rows],
        }
    )


def run(
    resolver: OutcomeResolver,
    events: pd.DataFrame,
    predictions: Sequence[Prediction],
    steps: Sequence[tuple[int, int]],
) -> list[PredictionOutcome]:
    """Feed ``events`` (in order) and ``predictions`` (in order) in steps: each step takes
    the next ``e`` events and the next ``p`` predictions; the rest comes in a last step."""
    batch = EventBatch.from_frame(events) if len(events) else None
    out: list[PredictionOutcome] = []
    ei = pi = 0
    for e, p in [*steps, (len(events), len(predictions))]:
        part = None
        if batch is not None and e and ei < len(events):
            part = batch.take(np.arange(ei, min(ei + e, len(events))))
        out += resolver.step(events=part, predictions=predictions[pi : pi + p])
        ei, pi = min(ei + e, len(events)), min(pi + p, len(predictions))
    return out


def as_rows(outcomes: Sequence[PredictionOutcome]) -> list[tuple[Any, ...]]:
    return sorted(msgspec.structs.astuple(o) for o in outcomes)


def resolver(label: ChurnDefinition, **kw: Any) -> OutcomeResolver:
    return OutcomeResolver(label, allowed_lateness_ms=LATENESS, **kw)


# ---------------------------------------------------------------- the rules, by brute force
def oracle(
    label: ChurnDefinition,
    events: pd.DataFrame,
    predictions: Sequence[Prediction],
    sample_every_ms: int,
) -> list[tuple[Any, ...]]:
    """The documented rules one record at a time: events late by the worker's watermark
    are ignored; a prediction older than the greatest before it minus the lateness is
    stale; per customer only a bucket above its last kept one is kept; a kept prediction
    at t resolves by the first on-time target in (t, t + H] in the stream's order, else
    at t + H once the final watermark has passed t + H, else stays pending."""
    watermark = PartitionWatermark(LATENESS)
    times = events["event_time"].to_numpy(dtype=np.int64)
    late = np.array(
        [bool(watermark.classify(times[i : i + 1])[0]) for i in range(len(times))], dtype=bool
    )
    on_time = events[~late]
    targets = on_time[on_time["event_type"] == label.target_event]
    greatest, last_bucket, out = None, {}, []
    for p in predictions:
        t = p.event_time
        stale = greatest is not None and t < greatest - LATENESS
        greatest = t if greatest is None else max(greatest, t)
        bucket = t // sample_every_ms
        if stale or bucket <= last_bucket.get(p.customer_id, -(2**62)):
            continue
        last_bucket[p.customer_id] = bucket
        mine = targets["event_time"][targets["customer_id"] == p.customer_id].to_numpy()
        following = mine[(mine > t) & (mine <= t + label.horizon_ms)]
        if following.size:
            resolved: tuple[int, int] | None = (label.label_of(True), int(following[0]))
        elif t + label.horizon_ms < watermark.watermark_ms:
            resolved = (label.label_of(False), t + label.horizon_ms)
        else:
            resolved = None
        if resolved is not None:
            out.append(
                msgspec.structs.astuple(
                    PredictionOutcome(
                        event_id=p.event_id, customer_id=p.customer_id, prediction_time=t,
                        score=p.score, decision=p.decision, threshold=p.threshold,
                        model_name=p.model_name, model_version=p.model_version,
                        trigger=p.trigger, label=resolved[0], label_source="events",
                        resolved_at=resolved[1], horizon_ms=label.horizon_ms,
                    )
                )
            )  # fmt: skip
    return sorted(out)


@st.composite
def streams(draw: st.DrawFn) -> tuple[pd.DataFrame, list[Prediction]]:
    customers = ["a", "b", "c", "d"]
    n_events = draw(st.integers(0, 60))
    clock, rows = 0, []
    for _ in range(n_events):
        clock += draw(st.integers(0, 3 * DAY_MS))
        jitter = draw(st.sampled_from([0, 0, 0, -HOUR_MS // 2, -2 * HOUR_MS]))  # some late
        rows.append((draw(st.sampled_from(customers)), 20 * DAY_MS + clock + jitter,
                     draw(st.sampled_from(["purchase", "login", "purchase"]))))  # fmt: skip
    clock, predictions = 20 * DAY_MS, []
    for i in range(draw(st.integers(0, 40))):
        clock += draw(st.integers(0, 2 * DAY_MS))
        back = draw(st.sampled_from([0, 0, -HOUR_MS // 3, -3 * HOUR_MS]))  # disorder, stale
        predictions.append(prediction(draw(st.sampled_from(customers)), clock + back, f"p{i}",
                                      draw(st.sampled_from(["event", "tick"]))))  # fmt: skip
    return events_frame(rows), predictions


step_lists = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    stream=streams(),
    steps=step_lists,
    other=step_lists,
    kind=st.sampled_from(["silence", "occurrence"]),
    sample_days=st.sampled_from([1, 3]),
)
def test_any_batching_gives_the_same_outcomes_and_they_follow_the_rules(
    stream: tuple[pd.DataFrame, list[Prediction]],
    steps: list[tuple[int, int]],
    other: list[tuple[int, int]],
    kind: str,
    sample_days: int,
) -> None:
    events, predictions = stream
    label = ChurnDefinition(horizon_ms=5 * DAY_MS, kind=kind)
    every = sample_days * DAY_MS
    one = run(resolver(label, sample_every_ms=every), events, predictions, steps)
    two = run(resolver(label, sample_every_ms=every), events, predictions, other)
    everything_first = run(
        resolver(label, sample_every_ms=every), events, predictions, [(len(events), 0)]
    )
    assert as_rows(one) == as_rows(two) == as_rows(everything_first)
    assert as_rows(one) == oracle(label, events, predictions, every)
    assert len({(o.customer_id, o.event_id) for o in one}) == len(one)  # each at most once


# ---------------------------------------------------------------- against the training set
def tick_stream(
    events: pd.DataFrame, keys: pd.DataFrame
) -> Iterator[tuple[pd.DataFrame, list[Prediction]]]:
    """The worker's order: a tick at T is written before the first event past T."""
    times = events["event_time"].to_numpy()
    start = 0
    for cutoff, rows in keys.groupby("cutoff_ms", sort=True):
        stop = int(np.searchsorted(times, cutoff, side="right"))
        yield (
            events.iloc[start:stop],
            [prediction(c, int(cutoff), tick_event_id(int(cutoff))) for c in rows["customer_id"]],
        )
        start = stop
    yield events.iloc[start:], []


@pytest.mark.parametrize(
    ("kind", "target", "lag"),
    [("silence", "purchase", 0), ("occurrence", "support_ticket", 0),
     ("silence", "purchase", 7), ("silence", "purchase", None)],
)  # fmt: skip
def test_live_labels_equal_the_offline_training_labels(
    kind: str, target: str, lag: int | None
) -> None:
    """Daily ticks over a simulated history, resolved live; every label equals
    ``training_set``'s for that customer and cutoff.  ``lag``: predictions read that many
    event batches behind the events (None: every event first, as a consumer that read the
    whole input topic before the first prediction)."""
    spec = load_default_spec()
    history = Population(n_customers=150, seed=11).generate_history(days=120)
    history = history.sort_values("event_time", kind="stable").reset_index(drop=True)
    label = ChurnDefinition(horizon_ms=20 * DAY_MS, target_event=target, kind=kind)
    end = int(history["event_time"].max())
    first = int(history["event_time"].min()) // DAY_MS * DAY_MS + 5 * DAY_MS
    cutoffs = list(range(first, end - label.horizon_ms - 2 * DAY_MS, DAY_MS))
    _, y, keys = training_set(history, spec, cutoffs, label)
    expected = dict(zip(zip(keys["customer_id"], keys["cutoff_ms"], strict=True), y, strict=True))
    live = resolver(label, sample_every_ms=DAY_MS)
    chunks = list(tick_stream(history, keys))
    outcomes: list[PredictionOutcome] = []
    if lag is None:
        outcomes += live.step(events=EventBatch.from_frame(history))
        for _, predictions in chunks:
            outcomes += live.step(predictions=predictions)
    else:
        for i, (part, _) in enumerate(chunks):
            behind = chunks[i - lag][1] if i >= lag else []
            outcomes += live.step(events=EventBatch.from_frame(part), predictions=behind)
        for _, predictions in chunks[len(chunks) - lag :]:
            outcomes += live.step(predictions=predictions)
    got = {(o.customer_id, o.prediction_time): o.label for o in outcomes}
    assert len(got) == len(outcomes)
    assert got == expected, "every tick resolved, each with the training set's label"
    assert 0.05 < np.mean(list(got.values())) < 0.95, "both labels occur"
    assert live.pending_count == 0 and live.dropped["sampled"] == 0


# ---------------------------------------------------------------- rules one by one
def test_external_outcomes_resolve_predictions_whose_horizon_holds_them() -> None:
    label = ChurnDefinition(horizon_ms=10 * DAY_MS)
    live = resolver(label, sample_every_ms=DAY_MS)
    assert not live.step(predictions=[prediction("a", DAY_MS, "p1"),
                                      prediction("a", 3 * DAY_MS, "p2"),
                                      prediction("b", 3 * DAY_MS, "p3")])  # fmt: skip
    out = live.step(external=[("a", 12 * DAY_MS, 1)])  # in p2's horizon only
    assert [(o.event_id, o.label, o.label_source, o.resolved_at) for o in out] == [
        ("p2", 1, "external", 12 * DAY_MS)
    ]
    # kept for a prediction still to come, and it wins over a target seen as well
    live.step(events=EventBatch.from_frame(events_frame([("a", 11 * DAY_MS, "purchase")])))
    out = live.step(predictions=[prediction("a", 4 * DAY_MS, "p4")])
    assert [(o.event_id, o.label_source) for o in out] == [("p4", "external")]
    assert {p.event_id for p in live.pending_predictions()} == {"p3"}


def test_a_customer_holds_at_most_one_pending_prediction_per_sampling_bucket() -> None:
    """Daily ticks and a 90-day horizon: 90 per customer without sampling; 13 with weekly
    buckets, each customer's first prediction of each week kept, whatever the trigger."""
    label = ChurnDefinition(horizon_ms=90 * DAY_MS)
    live = resolver(label)  # default: 7-day buckets
    predictions = [
        prediction(c, day * DAY_MS + offset, f"{c}-{day}-{offset}", trigger)
        for day in range(1, 91)
        for c in ("a", "b")
        for offset, trigger in ((0, "tick"), (HOUR_MS // 2, "event"))
    ]
    assert live.step(predictions=predictions) == []
    per_customer = pd.Series([p.customer_id for p in live.pending_predictions()]).value_counts()
    assert per_customer.to_dict() == {"a": 13, "b": 13}
    assert live.dropped["sampled"] == len(predictions) - 26
    kept = sorted(p.event_time for p in live.pending_predictions() if p.customer_id == "a")
    assert [t // (7 * DAY_MS) for t in kept] == list(range(13))


def test_the_capacity_sheds_new_predictions_and_stale_redeliveries_drop() -> None:
    label = ChurnDefinition(horizon_ms=30 * DAY_MS)
    live = resolver(label, sample_every_ms=DAY_MS)
    live.step(predictions=[prediction(c, 10 * DAY_MS, f"p{c}") for c in "abcdef"], capacity=4)
    assert live.pending_count == 4 and live.dropped["capacity"] == 2
    assert {p.customer_id for p in live.pending_predictions()} == set("abcd")
    live.step(predictions=[prediction("x", 12 * DAY_MS, "late"),
                           prediction("y", 12 * DAY_MS - 2 * HOUR_MS, "redelivered")])  # fmt: skip
    assert live.dropped["stale"] == 1 and live.pending_count == 5
    only_ticks = resolver(label, triggers=("tick",))
    only_ticks.step(predictions=[prediction("a", DAY_MS, "e1", "event")])
    assert only_ticks.pending_count == 0 and only_ticks.dropped["trigger"] == 1


def test_times_no_prediction_to_come_needs_are_forgotten() -> None:
    """Targets older than the latest prediction minus the lateness cannot resolve any
    prediction still to come: the resolver keeps only the newer ones, and customers with
    nothing left leave the changelog (a tombstone)."""
    label = ChurnDefinition(horizon_ms=30 * DAY_MS)
    live = resolver(label, sample_every_ms=DAY_MS)
    live.step(events=EventBatch.from_frame(events_frame(
        [("a", d * DAY_MS, "purchase") for d in range(1, 20)])))  # fmt: skip
    assert live.retained_times == 19
    live.step(predictions=[prediction("b", 10 * DAY_MS + HOUR_MS + 1, "p1")])
    assert live.retained_times == 9  # a's purchases after day 10
    dirty = dict(live.take_dirty())
    assert dirty["a"] is not None and len(dirty["a"].targets) == 9
    live.step(predictions=[prediction("b", 30 * DAY_MS, "p2")])
    assert live.retained_times == 0
    assert dict(live.take_dirty())["a"] is None


def replay_with_restarts(
    label: ChurnDefinition, events: pd.DataFrame, predictions: list[Prediction], cuts: int
) -> list[PredictionOutcome]:
    """Feed in steps; after some, rebuild the resolver from its changelog alone."""
    changelog: dict[str, CustomerSnapshot] = {}
    meta: PartitionSnapshot | None = None
    live = resolver(label, sample_every_ms=DAY_MS)
    chunk_e, chunk_p = max(1, len(events) // 12), max(1, len(predictions) // 12)
    out: list[PredictionOutcome] = []
    rng = random.Random(cuts)
    batch = EventBatch.from_frame(events)
    for i in range(13):
        part = batch.take(np.arange(i * chunk_e, min((i + 1) * chunk_e, len(events))))
        out += live.step(events=part, predictions=predictions[i * chunk_p : (i + 1) * chunk_p])
        for customer, snapshot in live.take_dirty():
            if snapshot is None:
                changelog.pop(customer, None)
            else:  # through the wire format, as the service writes it
                changelog[customer] = msgspec.json.decode(
                    msgspec.json.encode(snapshot), type=CustomerSnapshot
                )
        meta = live.snapshot()
        if rng.random() < cuts / 13:
            live = resolver(label, sample_every_ms=DAY_MS)
            live.restore_partition(meta)
            live.restore_customers(changelog.items())
    rest = batch.take(np.arange(13 * chunk_e, len(events)))
    out += live.step(events=rest, predictions=predictions[13 * chunk_p :])
    return out


def test_a_resolver_rebuilt_from_its_changelog_resolves_as_one_that_ran_on() -> None:
    history = Population(n_customers=60, seed=5).generate_history(days=60)
    history = history.sort_values("event_time", kind="stable").reset_index(drop=True)
    label = ChurnDefinition(horizon_ms=7 * DAY_MS)
    times = history["event_time"].to_numpy()
    predictions = [
        prediction(str(c), int(t), f"p{i}", "event")
        for i, (c, t) in enumerate(zip(history["customer_id"], times, strict=True))
    ]
    steady = replay_with_restarts(label, history, predictions, cuts=0)
    restarted = replay_with_restarts(label, history, predictions, cuts=6)
    assert len(steady) > 300
    assert as_rows(restarted) == as_rows(steady)
