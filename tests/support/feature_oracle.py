"""The test oracle of the feature spec: a deliberately plain implementation of it.

``reference_features`` computes every event's features per customer from a list of its
past events (filter, then aggregate), written from the definitions in the ``core.spec``
and ``core.state`` docstrings without sharing code with ``FeatureState``.  It is slow and
obviously right; the parity tests and the end-to-end checks hold the fast engine (numpy
rounds and C kernel) to it.  It is not production code, so it lives with the tests: the
worker and ``driftline train`` compute features only through ``FeatureState``
(``driftline.core.offline``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import pandas as pd

from driftline.core.events import EVENT_TYPE_CODE
from driftline.core.spec import (
    AggregateFeature,
    FeatureSpec,
    ProfileFeature,
    RatioFeature,
    TenureFeature,
)
from driftline.core.watermark import QUORUM
from driftline.core.watermark import WINDOW as WATERMARK_WINDOW


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
    rows, kept, _ = _replay(events, spec, None)
    return pd.DataFrame(rows, index=pd.Index(kept), columns=spec.feature_names)


def reference_features_at(events: pd.DataFrame, spec: FeatureSpec, at_ms: int) -> pd.DataFrame:
    """Features as of ``at_ms`` (a tick) of every customer, indexed by customer id.

    A partition's tick at ``at_ms`` fires before its first on-time event dated after it
    (in arrival order), so each partition's events are taken up to there; later rows of
    that partition, whatever their time, are not.  Every customer whose latest event is
    within ``eviction_after`` of ``at_ms`` is scored: windows end at ``at_ms``,
    ``time_since_last`` and tenure are measured to it.
    """
    _, _, history = _replay(events, spec, at_ms)
    rows, customers = [], []
    for customer, past in history.items():
        if not past:
            continue
        clock = max(p.time for p in past)
        if at_ms - spec.eviction_after_ms <= clock <= at_ms:
            rows.append(_features_of(past, spec, at=at_ms))
            customers.append(customer)
    frame = pd.DataFrame(rows, index=pd.Index(customers, name="customer_id"))
    return frame.reindex(columns=spec.feature_names).sort_index()


def _replay(
    events: pd.DataFrame, spec: FeatureSpec, stop_after_ms: int | None
) -> tuple[list[dict[str, object]], list[object], dict[str, list[_Past]]]:
    """Each non-late event's features, their labels, and every customer's history; with
    ``stop_after_ms``, a partition stops at its first on-time event dated after it."""
    partitions = events["partition"] if "partition" in events else pd.Series(0, index=events.index)
    # The watermark's front (``core.watermark``): the QUORUM-th greatest of the partition's
    # last WINDOW times, never moving back.
    front: dict[object, int | None] = defaultdict(lambda: None)
    recent: dict[object, list[int]] = defaultdict(list)
    history: dict[str, list[_Past]] = defaultdict(list)
    rows: list[dict[str, object]] = []
    kept: list[object] = []
    value_fields = ("amount", "quantity", "age", "income", "tenure_months", "plan_type", "region")
    stopped: set[object] = set()
    for label, record in events.iterrows():
        t = int(record["event_time"])
        part = partitions[label]
        if part in stopped:
            continue
        seen = front[part]
        recent[part] = [*recent[part], t][-WATERMARK_WINDOW:]
        if len(recent[part]) >= QUORUM:
            confirmed = sorted(recent[part])[-QUORUM]
            front[part] = confirmed if seen is None else max(seen, confirmed)
        if seen is not None and t < seen - spec.allowed_lateness_ms:
            continue  # late: dead-lettered, no features
        if stop_after_ms is not None and t > stop_after_ms:
            stopped.add(part)
            continue
        customer = str(record["customer_id"])
        past = history[customer]
        if past and t > max(p.time for p in past) + spec.eviction_after_ms:
            past.clear()  # idle long enough to have been evicted
        values = {f: record.get(f, None) for f in value_fields}
        past.append(_Past(t, EVENT_TYPE_CODE[record["event_type"]], values))
        rows.append(_features_of(past, spec))
        kept.append(label)
    return rows, kept, history


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _features_of(past: list[_Past], spec: FeatureSpec, at: int | None = None) -> dict[str, object]:
    """Features of a customer's events evaluated at ``at`` (default: its latest event)."""
    clock = max(p.time for p in past) if at is None else at
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
