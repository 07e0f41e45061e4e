"""Offline features: point-in-time training sets over a historical event table.

``history_features`` / ``training_set`` replay the history through the same
``FeatureState`` the worker uses, so a model is trained on exactly what it will be served.
Features of an event use only the customer's events that arrived before it, or with it: no
information from after the cutoff leaks into a training row.

(The tests' independent oracle of the spec's semantics, ``reference_features``, is not
production code: it lives in ``tests/support/feature_oracle.py``.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from driftline.core.events import EventBatch
from driftline.core.spec import DAY_MS, FeatureSpec
from driftline.core.state import FeatureState
from driftline.core.watermark import PartitionWatermark


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


@dataclass(frozen=True)
class ChurnDefinition:
    """A customer churns at ``cutoff`` if no ``target_event`` follows within ``horizon``.

    Only customers with an event within ``lookback`` before the cutoff are included: a
    customer long gone before the cutoff is not a prediction anyone needs.
    """

    horizon_ms: int = 90 * DAY_MS
    target_event: str = "purchase"
    lookback_ms: int = 180 * DAY_MS


def training_set(
    events: pd.DataFrame,
    spec: FeatureSpec,
    cutoffs_ms: list[int],
    churn: ChurnDefinition,
) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """(X, y, keys): one row per customer and cutoff.

    X is the customer's features as the worker computed them when it scored the
    customer's last event at or before the cutoff; y is 1 when no ``target_event`` follows
    in ``(cutoff, cutoff + horizon]``.  Cutoffs whose horizon runs past the end of the
    history are refused: their labels would be unknown, not negative.
    """
    ordered = events.sort_values("event_time", kind="stable").reset_index(drop=True)
    features, late = history_features(ordered, spec)
    times = ordered["event_time"].to_numpy(dtype=np.int64)
    end = int(times.max())
    is_target = (ordered["event_type"] == churn.target_event).to_numpy()
    xs, ys, keys = [], [], []
    for cutoff in sorted(cutoffs_ms):
        if cutoff + churn.horizon_ms > end:
            raise ValueError(
                f"cutoff {pd.Timestamp(cutoff, unit='ms')} + horizon runs past the end of the "
                f"history ({pd.Timestamp(end, unit='ms')}): labels would be unknown"
            )
        before = (times <= cutoff) & (times > cutoff - churn.lookback_ms) & ~late
        if not before.any():
            continue
        last_rows = ordered.index[before].to_series().groupby(ordered["customer_id"][before]).max()
        after = is_target & (times > cutoff) & (times <= cutoff + churn.horizon_ms)
        returned = set(ordered["customer_id"][after])
        customers = last_rows.index.to_numpy()
        xs.append(features.loc[last_rows.to_numpy()].reset_index(drop=True))
        ys.append(np.array([c not in returned for c in customers], dtype=np.int64))
        keys.append(pd.DataFrame({"customer_id": customers, "cutoff_ms": cutoff}))
    if not xs:
        raise ValueError("no customer is active before any cutoff: nothing to train on")
    x = pd.concat(xs, ignore_index=True)
    y = pd.Series(np.concatenate(ys), name="churned")
    return x, y, pd.concat(keys, ignore_index=True)
