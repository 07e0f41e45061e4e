"""Streaming features (the engine, in arbitrary micro-batches) equal the reference ones."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.core.events import EVENT_TYPES, EventBatch
from driftline.core.spec import load_default_spec, parse_spec
from driftline.core.state import NATIVE_KERNEL, FeatureState
from driftline.core.watermark import PartitionWatermark
from support.feature_oracle import reference_features

SMALL_SPEC = parse_spec(
    {
        "state": {"allowed_lateness": "10m", "buckets_per_window": 6},
        "feature": [
            {"name": "purchases_1h", "agg": "count", "event_types": ["purchase"], "window": "1h"},
            {"name": "events_6h", "agg": "count", "window": "6h"},
            {
                "name": "spend_6h",
                "agg": "sum",
                "field": "amount",
                "event_types": ["purchase"],
                "window": "6h",
            },
            {"name": "aov_6h", "agg": "mean", "field": "amount", "window": "6h"},
            {"name": "min_amount_1h", "agg": "min", "field": "amount", "window": "1h"},
            {"name": "max_qty_6h", "agg": "max", "field": "quantity", "window": "6h"},
            {"name": "spend_all", "agg": "sum", "field": "amount"},
            {"name": "last_amount", "agg": "last", "field": "amount", "event_types": ["purchase"]},
            {
                "name": "hours_since_login",
                "agg": "time_since_last",
                "event_types": ["login"],
                "unit": "1h",
            },
            {"name": "months", "agg": "tenure", "unit": "1h", "floor": 0.5},
            {"name": "spend_per_month", "ratio": ["spend_6h", "months"]},
            {"name": "age", "profile": "age"},
            {"name": "plan", "profile": "plan_type"},
        ],
    }
)

MINUTE = 60_000
T0 = 1_700_000_000_000


@st.composite
def event_streams(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(1, 60))
    customers = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=n, max_size=n))
    # Mostly forward in time with jitter backwards (some late) and occasional long gaps
    # (eviction).
    steps = draw(
        st.lists(
            st.one_of(
                st.integers(0, 30 * MINUTE),
                st.integers(-20 * MINUTE, 0),
                st.integers(6 * 60 * MINUTE, 9 * 60 * MINUTE),
            ),
            min_size=n,
            max_size=n,
        )
    )
    times = T0 + np.cumsum(steps)
    types = draw(st.lists(st.sampled_from(EVENT_TYPES[:4]), min_size=n, max_size=n))
    maybe_amount = st.one_of(
        st.none(), st.floats(0, 500, allow_nan=False).map(lambda x: round(x, 2))
    )
    amounts = draw(st.lists(maybe_amount, min_size=n, max_size=n))
    quantities = draw(st.lists(st.one_of(st.none(), st.integers(0, 9)), min_size=n, max_size=n))
    ages = draw(st.lists(st.one_of(st.none(), st.integers(18, 90)), min_size=n, max_size=n))
    plans = draw(st.lists(st.sampled_from([None, "basic", "pro"]), min_size=n, max_size=n))
    frame = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "customer_id": customers,
            "event_time": times.astype(np.int64),
            "event_type": types,
            "amount": pd.array(amounts, dtype="Float64").astype(float),
            "quantity": pd.array(quantities, dtype="Float64").astype(float),
            "age": pd.array(ages, dtype="Float64").astype(float),
            "plan_type": pd.Series(plans, dtype=object),
        }
    )
    # The input topic is keyed by customer: a customer lives on one partition.
    frame["partition"] = [ord(c) % 2 for c in customers]
    return frame


#: Both ways of applying events: the C kernel (when built) and the numpy rounds.
ENGINES = [
    pytest.param(
        True, id="c-kernel", marks=pytest.mark.skipif(not NATIVE_KERNEL, reason="not built")
    ),
    pytest.param(False, id="numpy"),
]


def stream_features(
    events: pd.DataFrame, cuts: list[int], spec=SMALL_SPEC, native: bool | None = None
) -> pd.DataFrame:
    """Run the engine as the worker does: per partition, in the given micro-batches."""
    batch = EventBatch.from_frame(events)
    states: dict[int, FeatureState] = {}
    marks: dict[int, PartitionWatermark] = {}
    frames = []
    bounds = sorted({0, len(events), *[c for c in cuts if 0 < c < len(events)]})
    partitions = events["partition"].to_numpy()
    for lo, hi in itertools.pairwise(bounds):
        for p in np.unique(partitions[lo:hi]):
            rows = lo + np.flatnonzero(partitions[lo:hi] == p)
            part = batch.take(rows)
            mark = marks.setdefault(p, PartitionWatermark(spec.allowed_lateness_ms))
            late = mark.classify(part.event_time_ms)
            on_time = part.take(np.flatnonzero(~late))
            state = states.setdefault(p, FeatureState(spec, capacity=2, native=native))
            features = state.update(on_time)
            features.index = events.index[on_time.index]
            frames.append(features)
            state.evict_idle(mark.watermark_ms)
    return pd.concat(frames).sort_index()


def assert_same(online: pd.DataFrame, offline: pd.DataFrame) -> None:
    assert list(online.index) == list(offline.index)
    for name in offline.columns:
        for i, (a, b) in enumerate(zip(online[name], offline[name], strict=False)):
            if isinstance(b, float) and math.isnan(b):
                assert a is None or (isinstance(a, float) and math.isnan(a)), (name, i, a, b)
            elif isinstance(b, str) or b is None:
                assert a == b, (name, i, a, b)
            else:
                assert a == pytest.approx(b, rel=1e-9, abs=1e-9), (name, i, a, b)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.parametrize("native", ENGINES)
@given(events=event_streams(), cuts=st.lists(st.integers(0, 60), max_size=6))
def test_streaming_features_equal_reference(
    native: bool, events: pd.DataFrame, cuts: list[int]
) -> None:
    assert_same(
        stream_features(events, cuts, native=native), reference_features(events, SMALL_SPEC)
    )


@settings(max_examples=50, deadline=None)
@pytest.mark.parametrize("native", ENGINES)
@given(events=event_streams(), cuts=st.lists(st.integers(0, 60), max_size=6))
def test_batching_does_not_change_features(
    native: bool, events: pd.DataFrame, cuts: list[int]
) -> None:
    assert_same(
        stream_features(events, cuts, native=native), stream_features(events, [], native=native)
    )


@pytest.mark.parametrize("native", ENGINES)
def test_default_spec_parity_on_a_daily_stream(native: bool) -> None:
    rng = np.random.default_rng(7)
    n = 400
    events = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "customer_id": rng.choice(["x", "y", "z"], n),
            "event_time": (T0 + np.sort(rng.integers(0, 200 * 86_400_000, n))).astype(np.int64),
            "event_type": rng.choice(["purchase", "login", "support_ticket", "payment_failed"], n),
            "amount": np.where(rng.random(n) < 0.8, rng.gamma(2, 30, n).round(2), np.nan),
            "quantity": rng.integers(1, 5, n).astype(float),
            "income": np.where(rng.random(n) < 0.1, rng.normal(5e4, 1e4, n), np.nan),
            "region": pd.Series(np.where(rng.random(n) < 0.2, "eu", None), dtype=object),
            "partition": 0,
        }
    )
    spec = load_default_spec()
    assert_same(
        stream_features(events, [57, 130, 300], spec, native=native),
        reference_features(events, spec),
    )


def stream_with_restarts(
    events: pd.DataFrame, restarts: list[int], spec=SMALL_SPEC, native: bool | None = None
) -> pd.DataFrame:
    """Like a worker that is restarted at the given positions and restores its state.

    Every batch writes the snapshots of the customers it touched (as the changelog does);
    a restart rebuilds the state from the latest snapshot per customer only.
    """
    from driftline.processor import RawBatch, ScoringProcessor  # noqa: F401 - layering check

    batch = EventBatch.from_frame(events)
    bounds = sorted({0, len(events), *[c for c in restarts if 0 < c < len(events)]})
    changelog: dict[str, bytes] = {}
    mark = PartitionWatermark(spec.allowed_lateness_ms)
    state = FeatureState(spec, native=native)
    frames = []
    for lo, hi in itertools.pairwise(bounds):
        restored = FeatureState(spec, native=native)
        restored.restore(list(changelog), list(changelog.values()))
        state = restored
        part = batch.take(np.arange(lo, hi))
        late = mark.classify(part.event_time_ms)
        on_time = part.take(np.flatnonzero(~late))
        features = state.update(on_time, on_time.index.astype(np.int64))
        features.index = events.index[on_time.index]
        frames.append(features)
        customers = list(dict.fromkeys(on_time.customer_id.tolist()))
        changelog.update(zip(customers, state.export(customers), strict=True))
    return pd.concat(frames).sort_index()


@settings(max_examples=100, deadline=None)
@pytest.mark.parametrize("native", ENGINES)
@given(events=event_streams(), restarts=st.lists(st.integers(0, 60), max_size=5))
def test_state_restored_from_snapshots_gives_the_same_features(
    native: bool, events: pd.DataFrame, restarts: list[int]
) -> None:
    single = events.assign(partition=0)
    assert_same(
        stream_with_restarts(single, restarts, native=native),
        stream_features(single, [], native=native),
    )


def test_snapshots_of_another_spec_are_not_restored() -> None:
    state = FeatureState(SMALL_SPEC)
    frame = pd.DataFrame(
        {"customer_id": ["a"], "event_time": [T0], "event_type": ["purchase"], "amount": [3.0]}
    )
    state.update(EventBatch.from_frame(frame))
    other = FeatureState(load_default_spec())
    assert other.restore(["a"], state.export(["a"])) == 0
    assert "a" not in other
