"""Offline features: point-in-time training sets, and the reference semantics of the spec.

Two things live here:

- ``reference_features``: a deliberately plain implementation of the spec (per customer,
  list of past events, filter and aggregate) written from the definitions in
  ``core.spec`` and ``core.state`` docstrings, without sharing code with ``FeatureState``.
  It is slow and obviously right; the property test holds the fast engine to it.
- ``history_features`` / ``training_set``: point-in-time features over a historical event
  table, computed by replaying it through the same ``FeatureState`` the worker uses, so
  a model is trained on exactly what it will be served.  Features of an event use only the
  customer's events that arrived before it, or with it: no information from after the
  cutoff leaks into a training row.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd

from driftline.core.events import EVENT_TYPE_CODE, EventBatch
from driftline.core.spec import (
    DAY_MS,
    AggregateFeature,
    FeatureSpec,
    ProfileFeature,
    RatioFeature,
    TenureFeature,
)
from driftline.core.state import FeatureState
from driftline.core.watermark import QUORUM, PartitionWatermark
from driftline.core.watermark import WINDOW as WATERMARK_WINDOW


# --------------------------------------------------------------------------- reference
@dataclass
class _Past:
    time: int
    type: int
    values: dict[str, object]


def reference_features(events: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Features of every event, in row (arrival) order; late events get no row.

    ``events`` has the event field columns with ``event_time`` in epoch millis and an
    optional ``partition`` column (default: one partition).  Returns the features with
    the original index of the non-late rows.
    """
    partitions = events["partition"] if "partition" in events else pd.Series(0, index=events.index)
    # The watermark's front (``core.watermark``): the QUORUM-th greatest of the partition's
    # last WINDOW times, never moving back.
    front: dict[object, int | None] = defaultdict(lambda: None)
    recent: dict[object, list[int]] = defaultdict(list)
    history: dict[str, list[_Past]] = defaultdict(list)
    rows: list[dict[str, object]] = []
    kept: list[object] = []
    value_fields = ("amount", "quantity", "age", "income", "tenure_months", "plan_type", "region")
    for label, record in events.iterrows():
        t = int(record["event_time"])
        part = partitions[label]
        seen = front[part]
        recent[part] = [*recent[part], t][-WATERMARK_WINDOW:]
        if len(recent[part]) >= QUORUM:
            confirmed = sorted(recent[part])[-QUORUM]
            front[part] = confirmed if seen is None else max(seen, confirmed)
        if seen is not None and t < seen - spec.allowed_lateness_ms:
            continue  # late: dead-lettered, no features
        customer = str(record["customer_id"])
        past = history[customer]
        if past and t > max(p.time for p in past) + spec.eviction_after_ms:
            past.clear()  # idle long enough to have been evicted
        values = {f: record.get(f, None) for f in value_fields}
        past.append(_Past(t, EVENT_TYPE_CODE[record["event_type"]], values))
        rows.append(_features_of(past, spec))
        kept.append(label)
    return pd.DataFrame(rows, index=pd.Index(kept), columns=spec.feature_names)


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _features_of(past: list[_Past], spec: FeatureSpec) -> dict[str, object]:
    clock = max(p.time for p in past)
    result: dict[str, object] = {}
    for feature in spec.features:
        if isinstance(feature, AggregateFeature):
            codes = {EVENT_TYPE_CODE[t] for t in feature.event_types}
            chosen = [p for p in past if not codes or p.type in codes]
            if feature.window_ms is not None:
                b = feature.window_ms // spec.buckets_per_window
                oldest_bucket = clock // b - spec.buckets_per_window + 1
                chosen = [p for p in chosen if p.time // b >= oldest_bucket]
            if feature.field is not None:
                chosen = [p for p in chosen if _present(p.values[feature.field])]
            numbers = [float(p.values[feature.field]) for p in chosen] if feature.field else []
            match feature.agg:
                case "count":
                    value: object = float(len(chosen))
                case "sum":
                    value = float(sum(numbers))
                case "mean":
                    value = sum(numbers) / len(numbers) if numbers else math.nan
                case "min":
                    value = min(numbers) if numbers else math.nan
                case "max":
                    value = max(numbers) if numbers else math.nan
                case "last":
                    latest = _latest(chosen)
                    value = float(latest.values[feature.field]) if latest else math.nan
                case "time_since_last":
                    latest = _latest(chosen)
                    value = (clock - latest.time) / feature.unit_ms if latest else math.nan
                case _:
                    raise AssertionError(feature.agg)
        elif isinstance(feature, TenureFeature):
            first = min(p.time for p in past)
            value = max((clock - first) / feature.unit_ms, feature.floor)
        elif isinstance(feature, ProfileFeature):
            latest = _latest([p for p in past if _present(p.values[feature.source])])
            if latest is None:
                value = None if feature.categorical else math.nan
            else:
                raw = latest.values[feature.source]
                value = str(raw) if feature.categorical else float(raw)  # type: ignore[arg-type]
        else:
            assert isinstance(feature, RatioFeature)
            num = result[feature.numerator]
            den = result[feature.denominator]
            ok = den is not None and not math.isnan(den) and den != 0  # type: ignore[arg-type]
            value = num / den if ok else math.nan  # type: ignore[operator]
        result[feature.name] = value
    return result


def _latest(past: list[_Past]) -> _Past | None:
    """The event with the greatest time; among equal times, the later arrival."""
    best: _Past | None = None
    for p in past:
        if best is None or p.time >= best.time:
            best = p
    return best


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
