"""The live side of a drift report: the events of a window, their features and scores.

The worker's features are a function of each customer's event history, and the offline
replay (``core.offline.history_features``) computes exactly what the worker computed (the
same ``FeatureState``, the same watermark): so the report recomputes them from the input
topic (or an event file) instead of asking the worker.  The whole history up to the
window's end is replayed, since a feature of an event in the window depends on the
customer's earlier events; only the window's on-time events are compared (late events
are not scored by the worker either).

The topic is read once from its beginning to its end, without a consumer group (nothing is
committed: the report never moves a worker's offsets), with ``read_committed`` as the
worker reads it.  Records the worker would dead-letter are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from confluent_kafka import Message

from driftline.core.events import EventBatch, decode_batch
from driftline.core.offline import history_features
from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.topic_reader import read_to_end

DECODE_CHUNK = 20_000


@dataclass
class LiveWindow:
    """On-time events of ``[start_ms, end_ms]`` with their point-in-time features."""

    features: pd.DataFrame
    event_time_ms: np.ndarray
    n_events_read: int
    n_rejected: int
    n_late: int


def decode_records(messages: Iterable[Message]) -> tuple[pd.DataFrame, int]:
    """Events of raw records as an event table, and how many were rejected."""
    values: list[bytes | None] = []
    keys: list[bytes | None] = []
    batches: list[EventBatch] = []
    rejected = 0

    def flush() -> None:
        nonlocal rejected
        batch, rejections = decode_batch(values, keys)
        batches.append(batch)
        rejected += len(rejections)
        values.clear()
        keys.clear()

    for message in messages:
        values.append(message.value())
        keys.append(message.key())
        if len(values) >= DECODE_CHUNK:
            flush()
    if values:
        flush()
    batch = EventBatch.concat(batches) if batches else EventBatch.empty()
    return batch.to_frame(), rejected


def read_topic_events(
    bootstrap: str, topic: str, timeout_s: float = 120.0
) -> tuple[pd.DataFrame, int]:
    """Every valid event on ``topic`` (all partitions), and the count of rejected records."""
    return decode_records(read_to_end(bootstrap, topic, timeout_s))


def window_features(
    events: pd.DataFrame,
    spec: FeatureSpec,
    start_ms: int,
    end_ms: int,
    columns: Sequence[str],
    *,
    n_rejected: int = 0,
) -> LiveWindow:
    """Point-in-time features of the on-time events with ``start_ms <= time <= end_ms``,
    from a replay of every event up to ``end_ms``."""
    history = events[events["event_time"].to_numpy(dtype=np.int64) <= end_ms]
    ordered = history.sort_values("event_time", kind="stable").reset_index(drop=True)
    if ordered.empty:
        return LiveWindow(
            pd.DataFrame(columns=list(columns)), np.empty(0, np.int64), 0, n_rejected, 0
        )
    features, late = history_features(ordered, spec)
    times = ordered["event_time"].to_numpy(dtype=np.int64)
    in_window = times >= start_ms
    rows = np.flatnonzero(in_window & ~late)
    return LiveWindow(
        features=features.iloc[rows][list(columns)].reset_index(drop=True),
        event_time_ms=times[rows],
        n_events_read=len(events),
        n_rejected=n_rejected,
        n_late=int((in_window & late).sum()),
    )
