"""Fault scenarios on real worker processes, and the check of what came out of them.

``kill_loop`` SIGKILLs a worker (``driftline.benchmarks.worker_process.WorkerProcess``)
at random points and restarts it; ``PredictionCheck`` sums up what came out against what
went in: lost events, duplicate predictions and scores that differ from a reference run
(``reference_scores``, computed offline from the same events).

Test support, not shipped: no command kills workers.  The worker process itself is
``driftline.benchmarks.worker_process``, shipped for ``driftline bench latency``.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from driftline.benchmarks.worker_process import WorkerProcess
from driftline.core.predictions import Prediction

__all__ = [
    "Crash",
    "PredictionCheck",
    "kill_loop",
    "partitions_of",
    "reference_scores",
]


@dataclass
class PredictionCheck:
    """What came out for what went in.

    ``lost``: valid event ids without any prediction.  ``duplicated``: predictions beyond
    the first for an event id (a count of records, not of ids).  ``mismatched``: event
    ids with at least one prediction whose score differs from the reference by more than
    ``atol`` (only when a reference is given).  ``unexpected``: predictions for ids that
    were never sent.
    """

    events: int
    predicted: int
    lost: int
    duplicated: int
    mismatched: int
    unexpected: int
    checked_scores: int
    max_abs_diff: float
    lost_ids: list[str] = field(default_factory=list)
    duplicate_ids: dict[str, int] = field(default_factory=dict)
    mismatch_examples: list[tuple[str, float, float]] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        predictions: Iterable[Prediction],
        event_ids: Iterable[str],
        reference: Mapping[str, float] | None = None,
        atol: float = 1e-12,
        examples: int = 10,
    ) -> PredictionCheck:
        ids = set(event_ids)
        predictions = list(predictions)
        counts = collections.Counter(p.event_id for p in predictions)
        lost_ids = sorted(ids - counts.keys())
        duplicates = {k: c for k, c in counts.items() if c > 1}
        mismatched: set[str] = set()
        examples_: list[tuple[str, float, float]] = []
        checked = 0
        max_diff = 0.0
        if reference is not None:
            for p in predictions:
                want = reference.get(p.event_id)
                if want is None:
                    continue
                checked += 1
                diff = abs(p.score - want)
                max_diff = max(max_diff, diff)
                if diff > atol:
                    if p.event_id not in mismatched and len(examples_) < examples:
                        examples_.append((p.event_id, p.score, want))
                    mismatched.add(p.event_id)
        return cls(
            events=len(ids),
            predicted=len(predictions),
            lost=len(lost_ids),
            duplicated=sum(c - 1 for c in duplicates.values()),
            mismatched=len(mismatched),
            unexpected=len(counts.keys() - ids),
            checked_scores=checked,
            max_abs_diff=max_diff,
            lost_ids=lost_ids[:examples],
            duplicate_ids=dict(list(duplicates.items())[:examples]),
            mismatch_examples=examples_,
        )

    @property
    def exactly_once(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.unexpected == 0

    def summary(self) -> str:
        text = (
            f"events={self.events} predicted={self.predicted} lost={self.lost} "
            f"duplicated={self.duplicated} unexpected={self.unexpected} "
            f"mismatched={self.mismatched}/{self.checked_scores} "
            f"max_abs_diff={self.max_abs_diff:.3g}"
        )
        if self.lost_ids:
            text += f"\n  lost e.g. {self.lost_ids}"
        if self.duplicate_ids:
            text += f"\n  duplicated e.g. {self.duplicate_ids}"
        if self.mismatch_examples:
            text += f"\n  mismatched (id, got, want) e.g. {self.mismatch_examples}"
        return text


def reference_scores(
    events: Sequence[Mapping[str, Any]],
    partition_of: Mapping[str, int],
    spec: Any,
    model: Any,
) -> dict[str, float]:
    """event_id -> score computed offline: the spec's reference features, in each
    partition's order (production order within a partition), scored by ``model``.

    ``partition_of`` maps customer id -> input partition (e.g. from the predictions'
    ``source_partition``); customers missing from it are put on a partition of their
    own, which is exact as long as no event is late (each customer's features depend
    only on its own events; a partition's watermark only decides lateness).
    """
    import pandas as pd

    from driftline.core.events import EventBatch
    from driftline.model.runtimes.sklearn import Scorer
    from support.feature_oracle import reference_features

    frame = EventBatch.from_frame(pd.DataFrame(list(events))).to_frame()
    unknown = {
        c: -1 - i for i, c in enumerate(sorted(set(frame["customer_id"]) - partition_of.keys()))
    }
    frame["partition"] = frame["customer_id"].map(lambda c: partition_of.get(c, unknown.get(c)))
    frame = frame.sort_values("partition", kind="stable")
    features = reference_features(frame, spec)
    scores = Scorer(model).score(features)
    ids = frame.loc[features.index, "event_id"].to_numpy()
    return {str(i): float(s) for i, s in zip(ids, scores, strict=True)}


def partitions_of(predictions: Iterable[Prediction]) -> dict[str, int]:
    """customer id -> source partition, from predictions (raises if one has two)."""
    out: dict[str, int] = {}
    for p in predictions:
        seen = out.setdefault(p.customer_id, p.source_partition)
        if seen != p.source_partition:
            raise AssertionError(
                f"customer {p.customer_id} on partitions {seen} and {p.source_partition}"
            )
    return out


@dataclass(frozen=True)
class Crash:
    """One SIGKILL: which start it ended, after how long, and how far that start got."""

    start: int
    ready_after_s: float
    delay_s: float
    consumed_before_kill: float
    redelivered: float


def kill_loop(
    worker: WorkerProcess,
    kills: int,
    rng: Any,
    done: Any,
    min_delay: float = 0.3,
    max_delay: float = 2.0,
    ready_timeout: float = 90.0,
    progress_metric: str = "driftline_events_consumed_total",
) -> list[Crash]:
    """Start ``worker`` and SIGKILL it ``kills`` times at random points, restarting it.

    Each start: wait for /readyz, then for progress (``progress_metric`` > 0), then a
    random delay (``rng.uniform(min_delay, max_delay)``), then SIGKILL.  Stops early when
    ``done()`` says there is nothing left to process (a kill then would prove nothing),
    leaving that last start running; otherwise the worker is left killed.
    """
    crashes: list[Crash] = []
    while len(crashes) < kills:
        worker.start()
        ready_after = worker.wait_ready(ready_timeout)
        deadline = time.monotonic() + ready_timeout
        while worker.metric(progress_metric) <= 0:
            if done():
                return crashes
            if time.monotonic() > deadline:
                raise RuntimeError(f"{worker.name} made no progress:\n{worker.log_tail()}")
            if not worker.alive:
                raise RuntimeError(f"{worker.name} exited on its own:\n{worker.log_tail()}")
            time.sleep(0.02)
        delay = rng.uniform(min_delay, max_delay)
        time.sleep(delay)
        if not worker.alive:
            raise RuntimeError(f"{worker.name} exited on its own:\n{worker.log_tail()}")
        metrics = worker.metrics()
        if done():
            return crashes
        worker.kill9()
        crashes.append(
            Crash(
                start=worker.starts,
                ready_after_s=round(ready_after, 2),
                delay_s=round(delay, 2),
                consumed_before_kill=metrics.get(progress_metric, 0.0),
                redelivered=metrics.get("driftline_redelivered_events_total", 0.0),
            )
        )
    return crashes
