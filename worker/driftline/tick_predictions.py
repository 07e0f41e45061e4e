"""Tick predictions: a batch's ticks scored, encoded and put in their place among its
event predictions.  Used by ``ScoringProcessor.finish``, whatever the engine.

The ticks' features come from ``core.ticks`` (computed while the batch was applied to the
state); here they are scored with the model that scores the batch (one call for all the
batch's ticks; a row the model raises on is isolated and left out, counted, since there is
no input record to dead-letter) and encoded as ``Prediction`` records with ``trigger:
"tick"``, ``event_id`` ``tick-<boundary>``, ``event_time`` the boundary and the source
partition and offset of the event whose arrival fired the tick.

**Order.**  A tick's predictions go right before the prediction of the event that fired
it: on the output topic a customer's tick prediction as of ``T`` is never after one of
its events dated after ``T``, so "the latest record per customer" stays the freshest.

**Not monitored for drift.**  The drift monitor compares the features and scores served
*at events* with the model's reference, which is built from the same kind of rows; tick
rows are a different population (every customer, quiet ones included, at one instant) and
would shift the served distribution every tick, and its retrain trigger with it.  So
ticks have their own metrics (``driftline_ticks_total``, ``driftline_tick_customers``,
``driftline_tick_duration_seconds``) and stay out of ``DriftMonitor.update``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import repeat

import msgspec
import numpy as np

from driftline.core.predictions import TRIGGER_TICK, Prediction, tick_event_id
from driftline.core.state import FeatureBlock
from driftline.core.ticks import Tick
from driftline.model.isolation import describe, score_isolating
from driftline.model.runtimes.sklearn import Scorer

_encode = msgspec.json.Encoder().encode
#: Sorts an event prediction after the ticks its event fired.
_EVENT_LAST = np.iinfo(np.int64).max


@dataclass(frozen=True, slots=True)
class TickSummary:
    """One tick as the metrics see it."""

    partition: int
    boundary_ms: int
    customers: int
    seconds: float


@dataclass(slots=True)
class TickOutput:
    """A batch's tick predictions (in tick order) and what the metrics need."""

    keys: list[bytes]
    values: list[bytes]
    #: Raw index of the event whose arrival fired each prediction's tick.
    source_index: np.ndarray
    boundary_ms: np.ndarray
    ticks: list[TickSummary] = field(default_factory=list)
    #: Customers the model raised on (left out; the first error's text for the log).
    errors: int = 0
    first_error: str | None = None

    def __len__(self) -> int:
        return len(self.values)


def score_ticks(scorer: Scorer, ticks: list[Tick], now_ms: int) -> TickOutput:
    """Score every tick of a batch in one model call and encode the predictions."""
    t0 = time.perf_counter()
    sizes = np.array([len(t) for t in ticks], dtype=np.int64)
    n = int(sizes.sum())
    errors, first_error = 0, None
    if n:
        block = FeatureBlock.concat([t.block for t in ticks if len(t)])
        isolated = score_isolating(scorer.score_block, block)
        scores = isolated.scores
        ok = np.ones(n, dtype=bool)
        if isolated.offenders.size:
            ok[isolated.offenders] = False
            errors, first_error = int(isolated.offenders.size), describe(isolated.errors[0])
    else:
        scores, ok = np.empty(0), np.ones(0, dtype=bool)
    boundary = np.repeat([t.boundary_ms for t in ticks], sizes)
    partition = np.repeat([t.partition for t in ticks], sizes)
    offset = np.repeat([t.source_offset for t in ticks], sizes)
    source = np.repeat([t.source_index for t in ticks], sizes)
    customers = [c for t in ticks for c in t.customer_ids]
    if errors:
        rows = np.flatnonzero(ok)
        customers = [customers[i] for i in rows.tolist()]
        scores, boundary, partition = scores[rows], boundary[rows], partition[rows]
        offset, source = offset[rows], source[rows]
    decisions = scorer.decide(scores)
    event_ids = {b: tick_event_id(b) for b in np.unique(boundary).tolist()}
    predictions = map(
        Prediction,
        map(event_ids.__getitem__, boundary.tolist()),
        customers,
        scores.tolist(),
        decisions.tolist(),
        repeat(scorer.threshold),
        repeat(scorer.name),
        repeat(scorer.version),
        boundary.tolist(),
        repeat(now_ms),
        partition.tolist(),
        offset.tolist(),
        repeat(TRIGGER_TICK),
    )
    values = list(map(_encode, predictions))
    keys = [c.encode() for c in customers]
    # The scoring and encoding, shared out by customers; the features were timed per tick.
    shared = (time.perf_counter() - t0) / max(n, 1)
    summaries = [
        TickSummary(t.partition, t.boundary_ms, len(t), t.seconds + shared * len(t)) for t in ticks
    ]
    return TickOutput(keys, values, source, boundary, summaries, errors, first_error)


def order_with_ticks(
    keys: list[bytes], values: list[bytes], index: np.ndarray, ticks: TickOutput
) -> tuple[list[bytes], list[bytes], np.ndarray]:
    """The event predictions (raw index ``index``) and the tick predictions in one list,
    each tick's before the event that fired it (see the module docstring)."""
    if not len(ticks):
        return keys, values, index
    at = np.concatenate([index, ticks.source_index])
    then = np.concatenate([np.full(len(index), _EVENT_LAST), ticks.boundary_ms])
    order = np.lexsort((then, at)).tolist()
    all_keys, all_values = keys + ticks.keys, values + ticks.values
    return (
        [all_keys[i] for i in order],
        [all_values[i] for i in order],
        at[order],
    )
