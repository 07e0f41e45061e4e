"""The state engine's own invariants: snapshot formats, count headroom, memory, ordering.

The feature values themselves are held to the reference implementation by
``test_feature_parity``; these tests cover what parity cannot see: that the narrowed
snapshot round-trips byte for byte, that snapshots written by the first format (version 1,
captured below from that build) still restore to the same features, that a count never
wraps silently, and that the per-customer footprint stays under its budget.
"""

from __future__ import annotations

import itertools

import msgspec
import numpy as np
import pandas as pd
import pytest
from test_feature_parity import ENGINES, SMALL_SPEC, T0, assert_same

from driftline.core.events import EventBatch
from driftline.core.spec import load_default_spec
from driftline.core.state import (
    COUNT_MAX,
    NATIVE_KERNEL,
    SNAPSHOT_VERSION,
    CountOverflowError,
    FeatureBlock,
    FeatureState,
    SnapshotError,
)
from support.feature_oracle import reference_features

MINUTE = 60_000
COLUMNS = ["customer_id", "event_time", "event_type", "amount", "quantity", "age", "plan_type"]
#: The events the version 1 snapshots below were exported after.  Customer a's 70-minute
#: bucket has slid out of its 1h window by its 4h event, but version 1 still holds it
#: (with a stale bucket id); LATER reads that window again.
HISTORY = [
    ("a", 0, "purchase", 10.0, 1.0, 30.0, "basic"),
    ("b", 5 * MINUTE, "login", None, None, None, None),
    ("c", 10 * MINUTE, "purchase", 1.0, 1.0, None, None),
    ("a", 20 * MINUTE, "login", None, None, None, None),
    ("a", 70 * MINUTE, "purchase", 12.5, 2.0, None, "pro"),
    ("a", 4 * 60 * MINUTE, "purchase", 7.25, None, 31.0, None),
]
LATER = [
    ("a", 4 * 60 * MINUTE + 5 * MINUTE, "purchase", 3.0, 1.0, None, None),
    ("c", 4 * 60 * MINUTE + 10 * MINUTE, "login", None, None, 50.0, "basic"),
    ("b", 4 * 60 * MINUTE + 50 * MINUTE, "purchase", 5.0, None, None, None),
    ("a", 5 * 60 * MINUTE, "login", None, None, None, None),
]
#: Snapshots exported by the version 1 build (commit d7bf6c9) after HISTORY, SMALL_SPEC.
V1_SNAPSHOTS = {
    "a": bytes.fromhex(
        "94c4089ccea246f450288fc4980022c1d08b0100000068e5cf8b0100000500000000000000000000"
        "0000000080cd3b2b0000000000bc3b2b0000000000b73b2b00000000000000000000000080000000"
        "000000008000000000000000800000000000000080a23407000000000000000000000000809e3407"
        "00000000009f340700000000000022c1d08b01000080b7f7cf8b0100000022c1d08b010000407e25"
        "d08b010000c501700000000000000000000000000000f03f000000000000f03f0000000000000000"
        "0000000000000000000000000000000000000000000000000000000000000000000000000000f03f"
        "00000000000000000000000000000040000000000000f03f00000000000000000000000000000000"
        "0000000000001d400000000000000000000000000000244000000000000029400000000000000000"
        "00000000000000000000000000001d40000000000000000000000000000024400000000000002940"
        "00000000000000000000000000000000000000000000f03f0000000000000000000000000000f03f"
        "000000000000f03f000000000000f07f0000000000001d400000000000002940000000000000f07f"
        "000000000000f07f000000000000f07f000000000000f0ff000000000000f0ff000000000000f0ff"
        "000000000000f0ff000000000000f03f00000000000000400000000000c03d400000000000001d40"
        "000000000000f87f0000000000003f4091a370726f"
    ),
    "b": bytes.fromhex(
        "94c4089ccea246f450288fc498e0fbe9cf8b010000e0fbe9cf8b0100000100000000000000000000"
        "0000000080b53b2b0000000000000000000000008000000000000000800000000000000080000000"
        "000000008000000000000000800000000000000080000000000000008000000000000000809e3407"
        "000000000000000000000000800000000000000080e0fbe9cf8b0100000000000000000080000000"
        "0000000080c501700000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "0000000000000000000000000000f03f000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "0000000000000000000000000000f07f000000000000f07f000000000000f07f000000000000f07f"
        "000000000000f07f000000000000f07f000000000000f0ff000000000000f0ff000000000000f0ff"
        "000000000000f0ff000000000000f0ff000000000000f0ff0000000000000000000000000000f87f"
        "000000000000f87f000000000000f87f91c0"
    ),
    "c": bytes.fromhex(
        "94c4089ccea246f450288fc498c08feecf8b010000c08feecf8b0100000200000000000000000000"
        "00000000800000000000000080b63b2b000000000000000000000000800000000000000080000000"
        "000000008000000000000000800000000000000080000000000000008000000000000000809e3407"
        "00000000000000000000000080c08feecf8b01000000000000000000800000000000000080000000"
        "0000000080c5017000000000000000000000000000000000000000000000f03f0000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "0000000000000000000000000000f03f000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000f03f00000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000f03f0000000000000000"
        "0000000000000000000000000000000000000000000000000000000000000000000000000000f03f"
        "0000000000000000000000000000f07f000000000000f07f000000000000f03f000000000000f07f"
        "000000000000f07f000000000000f07f000000000000f0ff000000000000f0ff000000000000f0ff"
        "000000000000f0ff000000000000f03f000000000000f0ff000000000000f03f000000000000f03f"
        "000000000000f87f000000000000f87f91c0"
    ),
}


def events(rows: list[tuple[object, ...]], first_id: int = 0) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["event_time"] = T0 + frame["event_time"]
    frame["event_id"] = [f"e{first_id + i}" for i in range(len(frame))]
    return frame


def features_after(state: FeatureState, frame: pd.DataFrame) -> pd.DataFrame:
    return state.update(EventBatch.from_frame(frame)).set_axis(frame.index)


def test_snapshots_round_trip_byte_for_byte() -> None:
    state = FeatureState(SMALL_SPEC)
    state.update(EventBatch.from_frame(events(HISTORY)), np.arange(len(HISTORY), dtype=np.int64))
    snapshots = state.export(["a", "b", "c"])
    version, layout, _record, categories = msgspec.msgpack.decode(snapshots[0])
    assert version == SNAPSHOT_VERSION and layout == state.layout
    assert categories == ["pro"]  # a's latest plan_type
    fresh = FeatureState(SMALL_SPEC)
    assert fresh.restore(["a", "b", "c"], snapshots) == 3
    assert fresh.export(["a", "b", "c"]) == snapshots
    later = events(LATER, len(HISTORY))
    assert_same(features_after(fresh, later), features_after(state, later))


def test_version_1_snapshots_restore_to_the_same_features() -> None:
    state = FeatureState(SMALL_SPEC)
    assert state.restore(list(V1_SNAPSHOTS), list(V1_SNAPSHOTS.values())) == 3
    history, later = events(HISTORY), events(LATER, len(HISTORY))
    later.index += len(history)
    online = features_after(state, later)
    offline = reference_features(pd.concat([history, later]), SMALL_SPEC).loc[later.index]
    assert_same(online, offline)
    # Redelivered events are recognized from the offsets the v1 snapshots held.
    assert state.already_applied(np.array(["a", "c"], dtype=object), np.array([5, 6])).tolist() == [
        True,
        False,
    ]


def test_snapshots_of_an_unknown_version_fail_loudly() -> None:
    state = FeatureState(SMALL_SPEC)
    future = msgspec.msgpack.encode((SNAPSHOT_VERSION + 1, state.layout, b"", []))
    with pytest.raises(SnapshotError, match="version 3"):
        state.restore(["a"], [future])
    with pytest.raises(SnapshotError, match="not a state snapshot"):
        state.restore(["a"], [msgspec.msgpack.encode("garbage")])
    with pytest.raises(SnapshotError, match="not a state snapshot"):
        state.restore(["a"], [b"\xc1 not msgpack"])
    short = msgspec.msgpack.encode((SNAPSHOT_VERSION, state.layout, b"\0" * 8, []))
    with pytest.raises(SnapshotError, match="bytes"):
        state.restore(["a"], [short])


def _with_count(state: FeatureState, customer: str, count: int) -> None:
    """Set the customer's current 1h purchase bucket to ``count`` (through a snapshot)."""
    version, layout, record, categories = msgspec.msgpack.decode(state.export([customer])[0])
    rows = np.frombuffer(record, dtype=state._record).copy()
    block = next(b for b in state._blocks if b.kind == "n" and b.windowed)
    key = next(i for i, k in enumerate(block.keys) if k.window_ms == 3_600_000 and k.kind == "n")
    bucket = int(rows["clock"][0] // (3_600_000 // SMALL_SPEC.buckets_per_window))
    rows[block.name][0, key, bucket % SMALL_SPEC.buckets_per_window] = count
    snapshot = msgspec.msgpack.encode((version, layout, rows.tobytes(), categories))
    state.restore([customer], [snapshot])


@pytest.mark.parametrize("native", ENGINES)
def test_counts_reach_their_limit_and_refuse_to_wrap(native: bool) -> None:
    state = FeatureState(SMALL_SPEC, native=native)
    purchase = [("a", 0, "purchase", 1.0, None, None, None)]
    state.update(EventBatch.from_frame(events(purchase)))
    _with_count(state, "a", COUNT_MAX - 2)
    two = events(purchase * 2)
    assert features_after(state, two)["purchases_1h"].tolist() == [COUNT_MAX - 1, COUNT_MAX]
    before = state.export(["a"])
    with pytest.raises(CountOverflowError, match="refusing the batch"):
        state.update(EventBatch.from_frame(events(purchase)))
    assert state.export(["a"]) == before  # refused before anything changed


@pytest.mark.parametrize("native", ENGINES)
def test_a_single_round_keeps_batch_order_whatever_the_slots(native: bool) -> None:
    """Customers restored in one order and seen in another (every one once per batch)."""
    state = FeatureState(SMALL_SPEC, native=native)
    state.update(
        EventBatch.from_frame(events([(c, 0, "purchase", 1.0, None, None, None) for c in "abc"]))
    )
    rows = [(c, MINUTE, "purchase", float(i), None, None, None) for i, c in enumerate("cab")]
    online = features_after(state, events(rows))
    assert online["spend_6h"].tolist() == [1.0, 2.0, 3.0]
    assert online["purchases_1h"].tolist() == [2.0, 2.0, 2.0]


def test_feature_frames_concatenate_in_spec_order_with_object_categories() -> None:
    spec = load_default_spec()
    parts = [FeatureState(spec), FeatureState(spec)]
    frame = events(
        [("a", 0, "purchase", 5.0, 1.0, 40.0, "pro"), ("b", 0, "login", None, None, None, None)]
    )
    frame["region"] = pd.Series(["north", None], dtype=object)
    blocks = [s.update_block(EventBatch.from_frame(frame.iloc[[i]])) for i, s in enumerate(parts)]
    features = FeatureBlock.concat(blocks).frame()
    assert list(features.columns) == spec.feature_names
    assert features["plan_type"].dtype == object
    assert features["plan_type"].tolist() == ["pro", None]
    assert features["region"].tolist() == ["north", None]
    assert features["spend_30d"].tolist() == [5.0, 0.0]
    assert len(FeatureState(spec).update(EventBatch.empty())) == 0


def test_a_customer_fits_in_a_kilobyte_with_the_default_spec() -> None:
    state = FeatureState(load_default_spec(), capacity=1000)
    assert state.nbytes / 1000 <= 1024


def test_the_c_state_kernel_is_built() -> None:
    """The install builds it (an optional extension: a failed build would otherwise only
    show as a worker several times slower)."""
    assert NATIVE_KERNEL, "driftline.core._state_kernel is missing: was a C compiler there?"


def _random_stream(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Many customers, repeats within batches, late jitter and idle gaps (evictions)."""
    steps = rng.choice([0, MINUTE, 3 * 3_600_000, 40 * 86_400_000], n, p=[0.3, 0.6, 0.09, 0.01])
    jitter = rng.integers(-30 * MINUTE, 1, n)
    frame = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "customer_id": rng.choice([f"c{i}" for i in range(60)], n),
            "event_time": T0 + np.cumsum(steps) + jitter,
            "event_type": rng.choice(["purchase", "login", "support_ticket", "payment_failed"], n),
            "amount": np.where(rng.random(n) < 0.7, rng.gamma(2, 30, n).round(2), np.nan),
            "quantity": np.where(rng.random(n) < 0.5, rng.integers(1, 5, n), np.nan),
            "income": np.where(rng.random(n) < 0.1, rng.normal(5e4, 1e4, n), np.nan),
            "plan_type": pd.Series(rng.choice(["basic", "pro", None], n), dtype=object),
            "region": pd.Series(rng.choice(["eu", "us", None], n), dtype=object),
        }
    )
    frame["event_time"] = frame["event_time"].astype(np.int64)
    return frame


@pytest.mark.skipif(not NATIVE_KERNEL, reason="the C state kernel is not built")
def test_the_c_kernel_leaves_the_records_the_numpy_rounds_leave() -> None:
    """Stronger than feature parity: every number of every record (rings, clocks,
    offsets, latest values) and every category, after each batch, and the features read."""
    spec = load_default_spec()
    rng = np.random.default_rng(11)
    stream = _random_stream(rng, 3000)
    native, rounds = FeatureState(spec, native=True), FeatureState(spec, native=False)
    cuts = [0, *sorted(rng.choice(np.arange(1, 3000), 25, replace=False).tolist()), 3000]
    for lo, hi in itertools.pairwise(cuts):
        batch = EventBatch.from_frame(stream.iloc[lo:hi].reset_index(drop=True))
        offsets = np.arange(lo, hi, dtype=np.int64)
        a = native.update_block(batch, offsets)
        b = rounds.update_block(batch, offsets)
        np.testing.assert_allclose(a.numeric, b.numeric, rtol=1e-12, atol=0, equal_nan=True)
        assert a.categorical.tolist() == b.categorical.tolist()
        used = np.fromiter(native._slots.values(), np.int64)
        assert native._slots == rounds._slots
        for name in native._record.names:
            np.testing.assert_array_equal(native._rows[name][used], rounds._rows[name][used])
        assert native._latest_category[used].tolist() == rounds._latest_category[used].tolist()
        assert native.export(list(native._slots)) == rounds.export(list(rounds._slots))


@pytest.mark.skipif(not NATIVE_KERNEL, reason="the C state kernel is not built")
def test_the_c_kernel_writes_snapshots_as_msgspec_does() -> None:
    """Byte for byte, at every msgpack string size class (fixstr, str8, str16, str32)."""
    spec = load_default_spec()
    plans = [None, "", "pro", "x" * 31, "é" * 16, "y" * 32, "z" * 255, "w" * 256, "v" * 70_000]
    frame = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(plans))],
            "customer_id": [f"c{i}" for i in range(len(plans))],
            "event_time": [T0 + i for i in range(len(plans))],
            "event_type": "purchase",
            "amount": 5.0,
            "plan_type": pd.Series(plans, dtype=object),
            "region": pd.Series(["eu", None] * 4 + ["ü"], dtype=object),
        }
    )
    state = FeatureState(spec, native=True)
    state.update(EventBatch.from_frame(frame), np.arange(len(plans), dtype=np.int64))
    customers = list(state._slots)
    native = state.export(customers)
    state.native = False
    assert native == state.export(customers)
    assert msgspec.msgpack.decode(native[-1])[3] == ["v" * 70_000, "ü"]
