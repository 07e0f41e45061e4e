"""Live model quality per model version over tumbling event-time windows.

A prediction belongs to the window of its own event time (``prediction_time``), whenever
its label arrives: a churn label needs the whole horizon (90 days) to pass, so the
realised figures of a window fill in for months after the window closed, and meanwhile
the label-free estimate (:mod:`.estimated`) is the only view there is.  Each window of
each ``(model_name, model_version)`` holds two samples of distinct records:

* **predictions** (scores; the estimate, and label coverage),
* **resolved outcomes** (score and label; the realised figures).

**Clock.**  The watermark is the greatest event time seen so far in stream order: a
prediction's ``event_time``, an outcome's ``resolved_at`` (the time its label became
known).  A record is late when its window ended more than ``retention`` before the
watermark *as it stood before that record*; late records are counted and dropped, and
after every batch the windows past their retention are retired (memory stays bounded by
``versions x (retention / window + 2) x 2 x max_records`` records of 25 bytes: at the
defaults, 180 MB per model version at most).  Because each record is judged
by the records before it, the figures do not depend on how the stream is cut into batches.

**Label coverage** is the share of a window's predictions whose horizon has elapsed by the
watermark (``prediction_time + horizon <= watermark``) that have a resolved outcome: below
1 it says labels are missing (an outcome join behind, a label source down), not that the
model is worse.

**Memory cap.**  Up to ``max_records`` distinct records per window and kind are exact.
Beyond that a window keeps the ``max_records`` records with the smallest key hashes (a
bottom-k sample): uniform, because the hash is independent of score and label, and the
same set whatever the order or batching of the stream (a reservoir sample's content
depends on arrival order, which would make figures depend on the batching).  Predictions
and outcomes share the key hash, so below the smaller of the two samples' largest keys the
samples are coordinated and coverage stays an unbiased join.  The figures of a capped
window are then those of a uniform sample of ``max_records`` (standard error of AUC about
0.002 at 200 000), and ``sampled`` says so.

**Minimum sample.**  Realised figures are reported only from ``min_labels`` labelled
predictions in the window (ROC AUC and PR AUC also need both classes); the estimate from
``min_labels`` predictions.  The default, 200, keeps the standard error of ROC AUC near
0.03 at a churn prevalence of 10-50 % (Hanley & McNeil), small enough for an alert margin
of 0.05 not to fire on noise alone; the label count is always reported so a dashboard
shows why a figure is absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from driftline.core.quality.estimated import estimated_quality
from driftline.core.quality.realised import Quality, realised_quality
from driftline.core.quality.records import Columns, split_model_key
from driftline.core.spec import DAY_MS

#: Labelled predictions a window needs before its realised figures are reported.
MIN_LABELS = 200
#: Distinct records held per window and kind (predictions, outcomes) before sampling.
MAX_RECORDS = 200_000
#: Monday 1970-01-05 00:00 UTC: 7-day windows start on Mondays.
MONDAY_ORIGIN_MS = 4 * DAY_MS
#: Records appended to a window before they are merged (sorted, deduplicated) into it.
_MIN_PENDING = 8_192
NO_TIME = -(2**62)


@dataclass(frozen=True)
class QualitySettings:
    """Window length and alignment, the label horizon, how long windows are kept, and the
    minimum and maximum sample sizes (all times in epoch milliseconds)."""

    window_ms: int = 7 * DAY_MS
    origin_ms: int = MONDAY_ORIGIN_MS
    horizon_ms: int = 90 * DAY_MS
    #: A window is retired this long after its end: the horizon plus a month for labels
    #: that arrive late (an outcome join catching up).
    retention_ms: int = 120 * DAY_MS
    min_labels: int = MIN_LABELS
    max_records: int = MAX_RECORDS

    def __post_init__(self) -> None:
        for name in ("window_ms", "horizon_ms", "retention_ms", "min_labels", "max_records"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if self.min_labels < 2:
            raise ValueError("min_labels must be at least 2 (a curve needs two points)")

    def window_start(self, time_ms: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        start: npt.NDArray[np.int64] = (
            time_ms - self.origin_ms
        ) // self.window_ms * self.window_ms + self.origin_ms
        return start


class _Sample:
    """The distinct records of one window and kind: at most ``cap``, those with the
    smallest keys; the first copy of a key (in stream order) wins."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.keys = np.empty(0, dtype=np.uint64)
        self.time = np.empty(0, dtype=np.int64)
        self.scores = np.empty(0, dtype=np.float64)
        self.labels = np.empty(0, dtype=np.int8)
        self.duplicates = 0
        self.sampled_out = 0
        self._pending: list[Columns] = []
        self._pending_n = 0

    def add(self, columns: Columns) -> None:
        self._pending.append(columns)
        self._pending_n += len(columns)
        if self._pending_n > max(_MIN_PENDING, self.keys.size // 4):
            self.compact()

    def compact(self) -> None:
        """Merge the pending records: one sort per merge, amortised over batches."""
        if not self._pending:
            return
        pending, self._pending, self._pending_n = self._pending, [], 0
        keys = np.concatenate([self.keys, *(c.keys for c in pending)])
        # np.unique's index is each key's first occurrence: held records come first, then
        # pending ones in arrival order, so the earliest copy wins; the index is key-sorted.
        unique, first = np.unique(keys, return_index=True)
        self.duplicates += keys.size - unique.size
        if first.size > self.cap:
            self.sampled_out += first.size - self.cap
            first = first[: self.cap]
        self.keys = keys[first]
        self.time = np.concatenate([self.time, *(c.time for c in pending)])[first]
        self.scores = np.concatenate([self.scores, *(c.scores for c in pending)])[first]
        self.labels = np.concatenate([self.labels, *(c.labels for c in pending)])[first]

    @property
    def full(self) -> bool:
        return self.sampled_out > 0


@dataclass
class _Window:
    start_ms: int
    predictions: _Sample
    outcomes: _Sample


@dataclass(frozen=True)
class WindowFigures:
    """One window of one model version: counts always, figures when the sample allows.

    ``realised`` is None below ``min_labels`` labels (and its AUCs are NaN with one class
    only); ``estimated`` is None below ``min_labels`` predictions.  ``label_coverage`` is
    NaN while no prediction of the window is due (its horizon not yet elapsed)."""

    model_name: str
    model_version: str
    window_start_ms: int
    window_end_ms: int
    threshold: float
    predictions: int
    labels: int
    due: int
    resolved_due: int
    label_coverage: float
    realised: Quality | None
    estimated: Quality | None
    sampled: bool


@dataclass
class Counts:
    """Records by fate, for the service's counters."""

    accepted: dict[str, int] = field(default_factory=lambda: {"predictions": 0, "outcomes": 0})
    late: dict[str, int] = field(default_factory=lambda: {"predictions": 0, "outcomes": 0})
    windows_retired: int = 0


class WindowedQuality:
    """Feed batches of predictions and outcomes in stream order; read :meth:`figures`."""

    def __init__(self, settings: QualitySettings | None = None) -> None:
        self.settings = settings or QualitySettings()
        self.watermark_ms = NO_TIME
        self.counts = Counts()
        self._windows: dict[tuple[str, int], _Window] = {}
        self._thresholds: dict[str, float] = {}
        #: Figures of windows unchanged since the last :meth:`figures` (only their label
        #: coverage follows the watermark), so a refresh costs the windows that changed.
        self._cached: dict[tuple[str, int], WindowFigures] = {}

    def add_predictions(self, columns: Columns) -> None:
        """A batch of predictions (``labels`` ignored)."""
        self._add(columns, "predictions")

    def add_outcomes(self, columns: Columns) -> None:
        """A batch of resolved outcomes."""
        self._add(columns, "outcomes")

    def _add(self, columns: Columns, kind: str) -> None:
        if len(columns) == 0:
            return
        s = self.settings
        # The watermark each record is judged by: the greatest clock before it.
        running = np.maximum.accumulate(np.maximum(columns.clock, self.watermark_ms))
        before = np.r_[self.watermark_ms, running[:-1]]
        starts = s.window_start(columns.time)
        late = starts + s.window_ms + s.retention_ms <= before
        self.watermark_ms = int(running[-1])
        self.counts.late[kind] += int(late.sum())
        if late.any():
            keep = np.flatnonzero(~late)
            columns, starts = columns.take(keep), starts[keep]
        self.counts.accepted[kind] += len(columns)
        if len(columns):
            self._remember_thresholds(columns)
            self._route(columns, starts, kind)
        self._retire()

    def _remember_thresholds(self, columns: Columns) -> None:
        models, first = np.unique(columns.models, return_index=True)
        for model, index in zip(models.tolist(), first.tolist(), strict=True):
            self._thresholds.setdefault(str(model), float(columns.thresholds[index]))

    def _route(self, columns: Columns, starts: npt.NDArray[np.int64], kind: str) -> None:
        """Each record to its (model version, window); one slice per group, stream order
        kept inside a group (stable sort)."""
        models, model_code = np.unique(columns.models, return_inverse=True)
        windows, window_code = np.unique(starts, return_inverse=True)
        group = model_code.astype(np.int64) * windows.size + window_code
        order = np.argsort(group, kind="stable")
        bounds = np.flatnonzero(np.diff(group[order])) + 1
        for index in np.split(order, bounds):
            g = int(group[index[0]])
            model, start = str(models[g // windows.size]), int(windows[g % windows.size])
            window = self._windows.get((model, start))
            if window is None:
                cap = self.settings.max_records
                window = _Window(start, _Sample(cap), _Sample(cap))
                self._windows[(model, start)] = window
            sample = window.outcomes if kind == "outcomes" else window.predictions
            sample.add(columns.take(index))
            self._cached.pop((model, start), None)

    def _retire(self) -> None:
        s = self.settings
        expired = [
            key
            for key, window in self._windows.items()
            if window.start_ms + s.window_ms + s.retention_ms <= self.watermark_ms
        ]
        for key in expired:
            del self._windows[key]
            self._cached.pop(key, None)
        self.counts.windows_retired += len(expired)

    def windows(self) -> list[tuple[str, str, int]]:
        """``(model_name, model_version, window_start_ms)`` of every window held."""
        return sorted((*split_model_key(m), start) for m, start in self._windows)

    def figures(self) -> list[WindowFigures]:
        """Every held window's figures, sorted by model, version and window."""
        found = []
        for key, window in sorted(self._windows.items()):
            cached = self._cached.get(key)
            if cached is None:
                cached = self._figures(*key, window)
            else:
                cached = self._with_coverage(cached, window)
            self._cached[key] = cached
            found.append(cached)
        return found

    def _with_coverage(self, figures: WindowFigures, window: _Window) -> WindowFigures:
        due, resolved_due = _coverage(
            window.predictions, window.outcomes, self.watermark_ms - self.settings.horizon_ms
        )
        return replace(
            figures,
            due=due,
            resolved_due=resolved_due,
            label_coverage=resolved_due / due if due else math.nan,
        )

    def _figures(self, model: str, start: int, window: _Window) -> WindowFigures:
        s = self.settings
        predictions, outcomes = window.predictions, window.outcomes
        predictions.compact()
        outcomes.compact()
        threshold = self._thresholds.get(model, 0.5)
        realised = (
            realised_quality(outcomes.scores, outcomes.labels, threshold)
            if outcomes.keys.size >= s.min_labels
            else None
        )
        estimated = (
            estimated_quality(predictions.scores, threshold)
            if predictions.keys.size >= s.min_labels
            else None
        )
        due, resolved_due = _coverage(predictions, outcomes, self.watermark_ms - s.horizon_ms)
        name, version = split_model_key(model)
        return WindowFigures(
            model_name=name,
            model_version=version,
            window_start_ms=start,
            window_end_ms=start + s.window_ms,
            threshold=threshold,
            predictions=int(predictions.keys.size),
            labels=int(outcomes.keys.size),
            due=due,
            resolved_due=resolved_due,
            label_coverage=resolved_due / due if due else math.nan,
            realised=realised,
            estimated=estimated,
            sampled=predictions.full or outcomes.full,
        )


def _coverage(predictions: _Sample, outcomes: _Sample, due_by_ms: int) -> tuple[int, int]:
    """Predictions made at or before ``due_by_ms`` (horizon elapsed), and how many of them
    are resolved; on capped samples, only below both samples' largest keys (coordinated)."""
    limit = np.iinfo(np.uint64).max
    for sample in (predictions, outcomes):
        if sample.full and sample.keys.size:
            limit = min(limit, int(sample.keys[-1]))
    keys = predictions.keys
    due = (predictions.time <= due_by_ms) & (keys <= np.uint64(limit))
    due_keys = keys[due]
    if due_keys.size == 0 or outcomes.keys.size == 0:
        return int(due_keys.size), 0
    found = np.minimum(np.searchsorted(outcomes.keys, due_keys), outcomes.keys.size - 1)
    return int(due_keys.size), int(np.count_nonzero(outcomes.keys[found] == due_keys))
