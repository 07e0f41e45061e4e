"""Event-time ticks (``core.ticks``): features as of a boundary equal the oracle's, fired
before the first event past it, whatever the batching."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_feature_parity import ENGINES, SMALL_SPEC, T0, assert_same, event_streams

from driftline.core.events import EventBatch
from driftline.core.spec import DAY_MS, SpecError, load_default_spec
from driftline.core.state import NO_TIME, FeatureState
from driftline.core.ticks import apply_with_ticks, crossings, parse_tick
from driftline.core.watermark import PartitionWatermark
from support.feature_oracle import reference_features_at

HOUR = 3_600_000


def stream_ticks(
    events: pd.DataFrame,
    cuts: list[int],
    period_ms: int,
    spec=SMALL_SPEC,
    native: bool | None = None,
    from_ms: int | None = None,
) -> dict[tuple[int, int], pd.DataFrame]:
    """Run the engine as the worker does (per partition, in the given micro-batches, idle
    customers evicted after each batch) and collect every tick: (partition, boundary) ->
    the features of the customers it scored, indexed by customer id."""
    batch = EventBatch.from_frame(events)
    states: dict[int, FeatureState] = {}
    marks: dict[int, PartitionWatermark] = {}
    ticks: dict[tuple[int, int], pd.DataFrame] = {}
    bounds = sorted({0, len(events), *[c for c in cuts if 0 < c < len(events)]})
    partitions = events["partition"].to_numpy()
    for lo, hi in itertools.pairwise(bounds):
        for p in np.unique(partitions[lo:hi]).tolist():
            part = batch.take(lo + np.flatnonzero(partitions[lo:hi] == p))
            mark = marks.setdefault(p, PartitionWatermark(spec.allowed_lateness_ms))
            before = mark.max_event_time_ms
            late = mark.classify(part.event_time_ms)
            on_time = part.take(np.flatnonzero(~late))
            state = states.setdefault(p, FeatureState(spec, capacity=2, native=native))
            update = apply_with_ticks(
                state,
                on_time,
                on_time.index.astype(np.int64),
                partition=p,
                period_ms=period_ms,
                high_mark_ms=before,
                from_ms=from_ms,
            )
            assert len(update.block) == len(on_time)
            for tick in update.ticks:
                key = (tick.partition, tick.boundary_ms)
                assert key not in ticks, f"tick {key} fired twice"
                frame = tick.block.frame()
                frame.index = pd.Index(tick.customer_ids, name="customer_id")
                ticks[key] = frame.sort_index()
            state.evict_idle(mark.watermark_ms)
    return ticks


def oracle_ticks(
    events: pd.DataFrame, period_ms: int, spec=SMALL_SPEC
) -> dict[tuple[int, int], pd.DataFrame]:
    """Every boundary each partition's on-time events cross, with the oracle's features."""
    out: dict[tuple[int, int], pd.DataFrame] = {}
    for p, rows in events.groupby("partition", sort=True):
        mark = PartitionWatermark(spec.allowed_lateness_ms)
        times = rows["event_time"].to_numpy(dtype=np.int64)
        accepted = times[~mark.classify(times)]
        high = np.maximum.accumulate(accepted)
        for before, t in itertools.pairwise(high):
            for k in range(-(-int(before) // period_ms), -(-int(t) // period_ms)):
                boundary = k * period_ms
                if boundary > before + spec.eviction_after_ms:
                    break
                out[(int(p), boundary)] = reference_features_at(rows, spec, boundary)
    return out


def assert_same_ticks(
    got: dict[tuple[int, int], pd.DataFrame], want: dict[tuple[int, int], pd.DataFrame]
) -> None:
    assert sorted(got) == sorted(want)
    for key, frame in want.items():
        assert list(got[key].columns) == list(frame.columns)
        assert_same(got[key], frame)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.parametrize("native", ENGINES)
@given(
    events=event_streams(),
    cuts=st.lists(st.integers(0, 60), max_size=6),
    period_h=st.sampled_from([2, 6, 24]),
)
def test_tick_features_equal_the_oracle_as_of_the_boundary(
    native: bool, events: pd.DataFrame, cuts: list[int], period_h: int
) -> None:
    """Random streams (late events, eviction gaps, two partitions), random batching: every
    tick fires once, before the first event past it, with each live customer's features
    as of the boundary exactly as the oracle computes them."""
    period = period_h * HOUR
    assert_same_ticks(
        stream_ticks(events, cuts, period, native=native), oracle_ticks(events, period)
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=event_streams(), cuts=st.lists(st.integers(0, 60), max_size=6))
def test_ticks_do_not_depend_on_the_batching_or_change_event_features(
    events: pd.DataFrame, cuts: list[int]
) -> None:
    from test_feature_parity import stream_features

    assert_same_ticks(stream_ticks(events, cuts, HOUR), stream_ticks(events, [], HOUR))
    # Reading the state as of a tick writes nothing: events' features are as without ticks.
    batch = EventBatch.from_frame(events)
    plain = stream_features(events, cuts)
    state = FeatureState(SMALL_SPEC)
    mark = PartitionWatermark(SMALL_SPEC.allowed_lateness_ms)
    single = events.assign(partition=0)
    before = mark.max_event_time_ms
    on_time = batch.take(np.flatnonzero(~mark.classify(batch.event_time_ms)))
    update = apply_with_ticks(
        state, on_time, np.arange(len(on_time)), partition=0, period_ms=HOUR, high_mark_ms=before
    )
    frame = update.block.frame()
    frame.index = single.index[on_time.index]
    assert_same(frame, stream_features(single, []))
    assert len(plain) == len(stream_features(events, []))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=event_streams(),
    cuts=st.lists(st.integers(0, 60), max_size=6),
    skipped=st.integers(0, 12),
)
def test_ticks_from_a_time_on_are_the_same_ticks_without_the_earlier_ones(
    events: pd.DataFrame, cuts: list[int], skipped: int
) -> None:
    """``--tick-from``: a warm-up replay publishes no ticks before the given time, and
    the ticks after it are exactly those of a worker ticking all along."""
    every = stream_ticks(events, [], 2 * HOUR)
    boundaries = sorted({b for _, b in every})
    from_ms = boundaries[skipped] if skipped < len(boundaries) else T0 + 10_000 * HOUR
    later = {key: frame for key, frame in every.items() if key[1] >= from_ms}
    assert_same_ticks(stream_ticks(events, cuts, 2 * HOUR, from_ms=from_ms), later)


def test_default_spec_ticks_on_a_daily_stream_equal_the_oracle() -> None:
    """The default spec (7/30/90-day windows, tenure, ratios) on 100 days of 3 customers:
    the quiet days' ticks see recency grow and windows empty out."""
    rng = np.random.default_rng(11)
    n = 150
    events = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "customer_id": rng.choice(["x", "y", "z"], n),
            "event_time": (T0 + np.sort(rng.integers(0, 100 * DAY_MS, n))).astype(np.int64),
            "event_type": rng.choice(["purchase", "login", "support_ticket"], n),
            "amount": np.where(rng.random(n) < 0.8, rng.gamma(2, 30, n).round(2), np.nan),
            "quantity": rng.integers(1, 5, n).astype(float),
            "region": pd.Series(np.where(rng.random(n) < 0.2, "eu", None), dtype=object),
            "partition": 0,
        }
    )
    spec = load_default_spec()
    got = stream_ticks(events, [30, 70, 71, 120], DAY_MS, spec)
    want = oracle_ticks(events, DAY_MS, spec)
    assert len(want) > 80
    assert_same_ticks(got, want)
    # A customer quiet for days is re-scored with a growing days_since_last_purchase.
    since = [f.loc["x", "days_since_last_purchase"] for f in got.values() if "x" in f.index]
    assert np.nanmax(since) > 3


def test_crossings_fire_each_boundary_once_before_the_first_event_past_it() -> None:
    day = DAY_MS
    times = np.array([day + 5, 2 * day, 2 * day + 1, 2 * day - 7, 5 * day + 3])
    found = crossings(day, day - 1, times, horizon_ms=100 * day)
    # day (crossed by day+5), 2*day (by 2*day+1: an event at exactly 2*day is as of it),
    # then 3, 4 and 5 days by the jump to 5*day+3.
    assert found.positions.tolist() == [0, 2, 4, 4, 4]
    assert (found.boundaries // day).tolist() == [1, 2, 3, 4, 5]
    # Nothing before a partition's first event; the eviction horizon caps a long jump.
    assert len(crossings(day, NO_TIME, np.array([10 * day + 1]), horizon_ms=day)) == 0
    capped = crossings(day, 0, np.array([10 * day + 1]), horizon_ms=2 * day)
    assert (capped.boundaries // day).tolist() == [0, 1, 2]


def test_parse_tick() -> None:
    assert parse_tick("1d") == DAY_MS
    assert parse_tick("6h") == 6 * HOUR
    assert parse_tick("1w") == 7 * DAY_MS
    assert parse_tick("off") is None
    for bad in ("7h", "0d", "soon"):
        with pytest.raises(SpecError):
            parse_tick(bad)
