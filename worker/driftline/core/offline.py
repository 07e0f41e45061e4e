"""Offline features: point-in-time training sets over a historical event table.

``history_features`` / ``cutoff_features`` / ``training_set`` replay the history through
the same ``FeatureState`` the worker uses, so a model is trained on exactly what it will be
served.  Features of an event use only the customer's events that arrived before it, or
with it; features as of a cutoff only the events up to the cutoff: no information from
after the cutoff leaks into a training row.

**Cutoff rows are ticks.**  A training row at cutoff ``T`` is the customer's features as
of ``T`` (``FeatureState.features_at``: windows ending at ``T``, time since the last event
measured to ``T``), exactly what a worker's tick at ``T`` scores (``core.ticks``): the
tick fires before the partition's first event past ``T``, so its state holds the events
up to ``T``, as the replay here does.  The rows are the tick's customers (clock within
the eviction horizon of ``T``) that were also active within the churn lookback.  Before
ticks, a row was the features at the customer's last event before the cutoff, where the
time since that event is always 0: recency, the strongest churn signal, was invisible.

(The tests' independent oracle of the spec's semantics, ``reference_features``, is not
production code: it lives in ``tests/support/feature_oracle.py``.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from driftline.core.events import EventBatch
from driftline.core.labels.definition import ChurnDefinition, check_lookback
from driftline.core.spec import FeatureSpec
from driftline.core.state import AsOf, FeatureState
from driftline.core.watermark import PartitionWatermark

#: ``ChurnDefinition`` lives in ``core.labels`` (the spec's ``[label]``); it is re-exported
#: here, where training sets have always taken it from.
__all__ = ["ChurnDefinition", "cutoff_features", "history_features", "training_set"]


# --------------------------------------------------------------------------- training
def history_features(
    events: pd.DataFrame, spec: FeatureSpec, chunk: int = 50_000
) -> tuple[pd.DataFrame, np.ndarray]:
    """Point-in-time features for each event of a history, through the online engine.

    Events are applied in event-time order (stable), as a well-behaved producer would
    send them, one partition.  Returns (features, late mask) aligned with the sorted
    table's rows; the sorted table is ``events.sort_values('event_time', kind='stable')``.
    """
    ordered = events.sort_values("event_time", kind="stable").reset_index(drop=True)
    batch = EventBatch.from_frame(ordered)
    state = FeatureState(spec, capacity=max(1024, ordered["customer_id"].nunique()))
    watermark = PartitionWatermark(spec.allowed_lateness_ms)
    late = np.zeros(len(batch), dtype=bool)
    frames: list[pd.DataFrame] = []
    for start in range(0, len(batch), chunk):
        part = batch.take(np.arange(start, min(start + chunk, len(batch))))
        is_late = watermark.classify(part.event_time_ms)
        late[start : start + len(part)] = is_late
        on_time = part.take(np.flatnonzero(~is_late))
        features = state.update(on_time)
        features.index = on_time.index
        frames.append(features)
    features = pd.concat(frames) if frames else pd.DataFrame(columns=spec.feature_names)
    return features.reindex(range(len(batch))), late


def cutoff_features(
    events: pd.DataFrame, spec: FeatureSpec, cutoffs_ms: list[int], chunk: int = 50_000
) -> list[AsOf]:
    """Every customer's features as of each cutoff (ascending), as a worker's tick there.

    The history is applied in event-time order (stable), one partition, as
    ``history_features`` applies it; before the first event past a cutoff, the state is
    read as of the cutoff (``FeatureState.features_at``).  Returns one ``AsOf`` per
    cutoff: the customers (clock within the eviction horizon of the cutoff), their clocks
    and features.
    """
    ordered = events.sort_values("event_time", kind="stable").reset_index(drop=True)
    batch = EventBatch.from_frame(ordered)
    times = batch.event_time_ms
    state = FeatureState(spec, capacity=max(1024, ordered["customer_id"].nunique()))
    watermark = PartitionWatermark(spec.allowed_lateness_ms)
    out: list[AsOf] = []
    start = 0
    for cutoff in sorted(int(c) for c in cutoffs_ms):
        stop = int(np.searchsorted(times, cutoff, side="right"))
        for lo in range(start, stop, chunk):
            part = batch.take(np.arange(lo, min(lo + chunk, stop)))
            is_late = watermark.classify(part.event_time_ms)
            state.update_block(part.take(np.flatnonzero(~is_late)))
        start = max(start, stop)
        out.append(state.features_at(cutoff))
    return out


def training_set(
    events: pd.DataFrame,
    spec: FeatureSpec,
    cutoffs_ms: list[int],
    churn: ChurnDefinition,
) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """(X, y, keys): one row per customer and cutoff.

    X is the customer's features as of the cutoff, as the worker's tick at the cutoff
    scores them (``cutoff_features``), for the customers the tick scores that had an event
    within ``lookback`` before it; rows in customer id order.  y is the label of
    ``churn`` (``core.labels``): for kind ``silence`` 1 when no ``target_event`` follows in
    ``(cutoff, cutoff + horizon]``, for ``occurrence`` 1 when one does.  Cutoffs whose horizon
    runs past the end of the history are refused: their labels would be unknown, not
    negative; so is a lookback longer than the spec's idle eviction (no tick holds a
    customer idle that long, so the rows it promises are not there).
    """
    problem = check_lookback(churn, spec.eviction_after_ms)
    if problem is not None:
        raise ValueError(problem)
    ordered = events.sort_values("event_time", kind="stable").reset_index(drop=True)
    times = ordered["event_time"].to_numpy(dtype=np.int64)
    end = int(times.max())
    cutoffs = sorted(int(c) for c in cutoffs_ms)
    for cutoff in cutoffs:
        if cutoff + churn.horizon_ms > end:
            raise ValueError(
                f"cutoff {pd.Timestamp(cutoff, unit='ms')} + horizon runs past the end of the "
                f"history ({pd.Timestamp(end, unit='ms')}): labels would be unknown"
            )
    is_target = (ordered["event_type"] == churn.target_event).to_numpy()
    xs, ys, keys = [], [], []
    for cutoff, tick in zip(cutoffs, cutoff_features(ordered, spec, cutoffs), strict=True):
        active = np.flatnonzero(tick.clock > cutoff - churn.lookback_ms)
        if active.size == 0:
            continue
        customers = np.asarray(tick.customer_ids, dtype=object)[active]
        order = np.argsort(customers.astype(str), kind="stable")
        rows, customers = active[order], customers[order]
        after = is_target & (times > cutoff) & (times <= cutoff + churn.horizon_ms)
        returned = set(ordered["customer_id"][after].astype(str))
        xs.append(tick.block.take(rows).frame())
        ys.append(np.array([churn.label_of(c in returned) for c in customers], dtype=np.int64))
        keys.append(pd.DataFrame({"customer_id": customers, "cutoff_ms": cutoff}))
    if not xs:
        raise ValueError("no customer is active before any cutoff: nothing to train on")
    x = pd.concat(xs, ignore_index=True)
    y = pd.Series(np.concatenate(ys), name=churn.name)
    return x, y, pd.concat(keys, ignore_index=True)
