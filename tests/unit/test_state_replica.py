"""The serving replica's pure part (``driftline.core.replica``): snapshots in, the worker's
own features out; latest prediction per customer by input offset; bad records skipped."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pandas as pd
import pytest

from driftline.core.events import EventBatch
from driftline.core.predictions import Prediction
from driftline.core.replica import StateReplica
from driftline.core.spec import FeatureSpec, load_default_spec
from driftline.core.state import FeatureState
from driftline.simulate import Population


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return load_default_spec()


def _events(n: int) -> pd.DataFrame:
    population = Population(n_customers=40, seed=5)
    population.generate_history(days=20)
    frame = pd.DataFrame(list(population.stream_events(max_events=n)))
    return EventBatch.from_frame(frame).to_frame().sort_values("event_time", kind="stable")


def _worker_state(spec: FeatureSpec, frame: pd.DataFrame) -> tuple[FeatureState, pd.DataFrame]:
    """A worker's partition state after ``frame`` in two batches, and every event's
    features as the worker scored them (with the event's customer and offset)."""
    state = FeatureState(spec)
    offsets = np.arange(len(frame), dtype=np.int64)
    half = len(frame) // 2
    features = []
    for lo, hi in ((0, half), (half, len(frame))):
        block = state.update_block(EventBatch.from_frame(frame.iloc[lo:hi]), offsets[lo:hi])
        features.append(block.frame())
    scored = pd.concat(features, ignore_index=True)
    scored["customer_id"] = frame["customer_id"].to_numpy()
    scored["offset"] = offsets
    return state, scored


def _same(a: object, b: object) -> bool:
    """Equal, or for numbers within 1e-12 relative: a window's total read back from its
    ring buckets is summed in another order than the worker's running total (the last bit
    of a float sum can differ)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12)
    if a is None and isinstance(b, float):
        return math.isnan(b)
    return a == b


def test_replica_features_are_the_workers_features_of_each_customers_latest_event(
    spec: FeatureSpec,
) -> None:
    frame = _events(600)
    state, scored = _worker_state(spec, frame)
    customers = sorted(set(frame["customer_id"]))
    replica = StateReplica(spec)
    # The changelog: an older snapshot first (of a few customers), then the latest ones.
    counts = replica.apply_changelog(
        0,
        [(b"", b"watermark record")]
        + [(c.encode(), s) for c, s in zip(customers, state.export(customers), strict=True)],
    )
    assert counts.customers == len(customers) and counts.rejected == 0
    assert len(replica) == len(customers)
    latest = scored.groupby("customer_id").tail(1).set_index("customer_id")
    for customer in customers:
        view = replica.customer(customer)
        assert view is not None
        row = latest.loc[customer]
        assert view.state_offset == row["offset"]
        assert list(view.features) == spec.feature_names
        for name in spec.feature_names:
            assert _same(view.features[name], row[name]), (customer, name)
    assert replica.customer("nobody") is None


def test_tombstones_forget_and_later_snapshots_win(spec: FeatureSpec) -> None:
    frame = _events(300)
    first, _ = _worker_state(spec, frame.iloc[:150])
    full, scored = _worker_state(spec, frame)
    customer = str(frame["customer_id"].iloc[0])
    replica = StateReplica(spec)
    old, new = first.export([customer])[0], full.export([customer])[0]
    replica.apply_changelog(2, [(customer.encode(), old)])
    before = replica.customer(customer)
    assert before is not None and replica.customer(customer) is before  # cached
    replica.apply_changelog(2, [(customer.encode(), new)])
    view = replica.customer(customer)
    assert view is not None and view.partition == 2 and view is not before
    assert view.state_offset == scored.loc[scored["customer_id"] == customer, "offset"].max()
    counts = replica.apply_changelog(2, [(customer.encode(), None)])
    assert counts.tombstones == 1
    assert replica.customer(customer) is None and len(replica) == 0


def test_unreadable_snapshots_are_counted_and_do_not_stop_the_rest(spec: FeatureSpec) -> None:
    frame = _events(200)
    state, _ = _worker_state(spec, frame)
    good = str(frame["customer_id"].iloc[-1])
    replica = StateReplica(spec)
    counts = replica.apply_changelog(
        0,
        [(b"bad", b"\xff not msgpack"), (good.encode(), state.export([good])[0])],
    )
    assert counts.rejected == 1 and counts.customers == 1
    assert replica.customer(good) is not None and replica.customer("bad") is None


def _prediction(customer: str, offset: int, score: float, event_id: str) -> bytes:
    return msgspec.json.encode(
        Prediction(
            event_id=event_id,
            customer_id=customer,
            score=score,
            decision=score >= 0.5,
            threshold=0.5,
            model_name="churn",
            model_version="v0001",
            event_time=1_700_000_000_000 + offset,
            processed_at=1_700_000_000_500 + offset,
            source_partition=0,
            source_offset=offset,
        )
    )


def test_latest_prediction_is_the_latest_input_records_and_a_redelivery_does_not_undo_it(
    spec: FeatureSpec,
) -> None:
    frame = _events(100)
    state, _ = _worker_state(spec, frame)
    customer = str(frame["customer_id"].iloc[-1])
    replica = StateReplica(spec)
    replica.apply_changelog(0, [(customer.encode(), state.export([customer])[0])])
    counts = replica.apply_predictions(
        [
            _prediction(customer, 10, 0.2, "e10"),
            _prediction(customer, 12, 0.7, "e12"),
            _prediction(customer, 10, 0.2, "e10"),  # at-least-once redelivery
            b"not json",
        ]
    )
    assert counts.rejected == 1 and counts.records == 4
    assert counts.processed_at == [1_700_000_000_510, 1_700_000_000_512, 1_700_000_000_510]
    view = replica.customer(customer)
    assert view is not None and view.prediction is not None
    assert view.prediction.event_id == "e12" and view.prediction.score == 0.7
    replica.apply_predictions([_prediction(customer, 12, 0.71, "e12-again")])
    view = replica.customer(customer)
    assert view is not None and view.prediction is not None
    assert view.prediction.event_id == "e12-again"  # same offset: the later record wins
