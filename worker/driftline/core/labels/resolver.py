"""Live labels: one partition's pending predictions, resolved by what follows them.

A prediction at event time ``t`` for customer ``c`` asks whether a target event of ``c``
follows in ``(t, t + H]`` (``ChurnDefinition``).  It resolves

* as soon as such an event is seen: "a target followed" (label 0 for kind ``silence``,
  1 for ``occurrence``), ``resolved_at`` the time of the first such event to arrive
  (in the input topic's order: events may be out of order within the lateness);
* once the partition's **event-time watermark** (``core.watermark``, the worker's own:
  the events' front minus the allowed lateness) passes ``t + H`` with none: "none
  followed", ``resolved_at = t + H``.  Any target in ``(t, t + H]`` still to come would
  be late (dropped by the worker too), so the label cannot change after;
* by an external outcome (``CustomerOutcome``) of ``c`` dated in ``(t, t + H]``: its
  label, ``label_source = "external"``, ``resolved_at`` its time.  Whichever of the three
  comes first decides; in one call to ``step`` external outcomes are applied first.

The three streams (events, predictions, external outcomes) are read by independent
consumers, so a prediction may arrive after the events that resolve it.  The resolver
therefore keeps, per customer, the target-event and external-outcome times that a
prediction still to come may need: those after ``floor = P - disorder``, where ``P`` is
the greatest prediction time seen and ``disorder`` (default: the allowed lateness) how far
behind ``P`` the worker may still write one.  A prediction older than ``floor`` is a
redelivery (the worker is at-least-once) and is dropped as ``stale``.  With that, the
labels depend only on the events, not on how the streams interleave or are batched
(property-tested), and equal ``core.offline.training_set``'s for the same history when
no event is late (oracle-tested).

**Bounds.**  A customer scored by every event and by daily ticks would hold one pending
prediction per event and per day of the horizon (90 with daily ticks and a 90-day
horizon).  Predictions are sampled per customer and time bucket: the first prediction of
a customer in each bucket of ``sample_every`` (epoch-aligned; default 7 days) is kept, the
rest are dropped as ``sampled`` (so a customer holds at most ``H / sample_every + 1``).
Time buckets rather than a random share keep the sample the same on every replay and
restart, weigh customers alike whatever their event rate, and make redeliveries of a kept
prediction drop out by themselves.  ``capacity`` (given per call by the caller, a global
cap over its partitions) drops predictions beyond it as ``capacity``: the ones already
pending resolve first, so the cap sheds the newest.  Which ones it sheds depends on
timing, unlike everything else here.

Everything is vectorised over a micro-batch (one sort and search per call); only the
customer-id lookup and the outcome records themselves are per item.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd

from driftline.core.events import EVENT_TYPE_CODE, EventBatch
from driftline.core.labels.definition import ChurnDefinition
from driftline.core.labels.records import (
    LABEL_SOURCE_EVENTS,
    LABEL_SOURCE_EXTERNAL,
    CustomerSnapshot,
    PartitionSnapshot,
    PredictionOutcome,
)
from driftline.core.predictions import Prediction
from driftline.core.state import NO_TIME
from driftline.core.watermark import PartitionWatermark

DAY_MS = 86_400_000
DEFAULT_SAMPLE_EVERY_MS = 7 * DAY_MS
Int64s = npt.NDArray[np.int64]
#: Why an admitted prediction was not kept pending (``dropped`` counters).
DROP_SAMPLED = "sampled"
DROP_CAPACITY = "capacity"
DROP_STALE = "stale"
DROP_TRIGGER = "trigger"
DROP_REASONS = (DROP_SAMPLED, DROP_CAPACITY, DROP_STALE, DROP_TRIGGER)


def first_within(
    q_code: Int64s, q_lo: Int64s, q_hi: Int64s, k_code: Int64s, k_time: Int64s
) -> Int64s:
    """For each query (code, lo, hi): the least index of a key of the same code with
    ``lo < time <= hi``, or -1.  Keys are in arrival order, so that is the first to have
    arrived: one sort, two searches and one ``minimum.reduceat`` (times rank-compressed so
    that code and time make one int64 key without overflow)."""
    out = np.full(len(q_code), -1, dtype=np.int64)
    if len(q_code) == 0 or len(k_code) == 0:
        return out
    ranks = np.unique(np.concatenate([k_time, q_lo, q_hi]), return_inverse=True)[1].reshape(-1)
    span = int(ranks.max()) + 1
    nk, nq = len(k_time), len(q_lo)
    k_key = k_code * span + ranks[:nk]
    order = np.argsort(k_key, kind="stable")
    sorted_key = k_key[order]
    lo = np.searchsorted(sorted_key, q_code * span + ranks[nk : nk + nq], side="right")
    hi = np.searchsorted(sorted_key, q_code * span + ranks[nk + nq :], side="right")
    some = np.flatnonzero(hi > lo)
    if some.size == 0:
        return out
    # minimum over order[lo:hi] for each query: reduceat over the pairs (lo, hi), with a
    # sentinel so that hi may be the end.
    arrival = np.append(order, np.int64(np.iinfo(np.int64).max))
    bounds = np.empty(2 * some.size, dtype=np.int64)
    bounds[0::2], bounds[1::2] = lo[some], hi[some]
    out[some] = np.minimum.reduceat(arrival, bounds)[0::2]
    return out


@dataclass
class _Columns:
    """Parallel int64 columns (one row per item) with row selection."""

    names: tuple[str, ...]
    data: dict[str, Int64s] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = {n: np.zeros(0, dtype=np.int64) for n in self.names}

    def __len__(self) -> int:
        return len(self.data[self.names[0]])

    def __getitem__(self, name: str) -> Int64s:
        return self.data[name]

    def append(self, **columns: Int64s) -> None:
        for n in self.names:
            self.data[n] = np.concatenate([self.data[n], np.asarray(columns[n], dtype=np.int64)])

    def keep(self, mask: npt.NDArray[np.bool_]) -> None:
        for n in self.names:
            self.data[n] = self.data[n][mask]


class OutcomeResolver:
    """Pending predictions of one partition and the times that resolve them.

    Feed it each micro-batch with ``step`` (or ``on_events`` / ``on_predictions`` /
    ``on_external``); each returns the outcomes it resolved.  ``take_dirty`` gives the
    customers whose state changed since its last call (for the changelog), ``snapshot``
    the partition's clocks; ``restore_customers`` / ``restore_partition`` rebuild it.
    """

    def __init__(
        self,
        label: ChurnDefinition,
        *,
        allowed_lateness_ms: int,
        sample_every_ms: int = DEFAULT_SAMPLE_EVERY_MS,
        disorder_ms: int | None = None,
        triggers: Iterable[str] = ("event", "tick"),
    ) -> None:
        if sample_every_ms <= 0:
            raise ValueError("sample_every_ms must be positive")
        self.label = label
        self.horizon_ms = label.horizon_ms
        self.sample_every_ms = sample_every_ms
        self.disorder_ms = allowed_lateness_ms if disorder_ms is None else disorder_ms
        self.triggers = frozenset(triggers)
        self.watermark = PartitionWatermark(allowed_lateness_ms)
        self._target_code = EVENT_TYPE_CODE[label.target_event]
        self.max_prediction_ms = int(NO_TIME)
        self.dropped: Counter[str] = Counter()
        self.late_events = 0
        # customer id <-> code; codes of customers with no state left are reused
        self._codes: dict[str, int] = {}
        self._ids: list[str] = []
        self._free: list[int] = []
        self._last_bucket = np.zeros(0, dtype=np.int64)  # by code; NO_TIME: none
        self._pending = _Columns(("code", "time", "slot"))
        self._payload: dict[int, Prediction] = {}
        self._next_slot = 0
        self._targets = _Columns(("code", "time"))
        self._external = _Columns(("code", "time", "label"))
        self._dirty: set[int] = set()

    # ------------------------------------------------------------------ inspection
    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def retained_times(self) -> int:
        """Target-event and external-outcome times kept for predictions to come."""
        return len(self._targets) + len(self._external)

    @property
    def floor_ms(self) -> int:
        """Predictions older than this are stale; times up to it are no longer needed."""
        if self.max_prediction_ms == NO_TIME:
            return int(NO_TIME)
        return self.max_prediction_ms - self.disorder_ms

    def pending_predictions(self) -> list[Prediction]:
        return [self._payload[int(s)] for s in self._pending["slot"]]

    # ------------------------------------------------------------------ codes
    def _code_of(self, customers: Sequence[str] | npt.NDArray[np.object_]) -> Int64s:
        """Codes of customer ids, new ones assigned (one dict lookup per distinct id)."""
        values = np.asarray(customers, dtype=object)
        if values.size == 0:
            return np.zeros(0, dtype=np.int64)
        uniques, inverse = np.unique(values.astype(str), return_inverse=True)
        codes = np.empty(len(uniques), dtype=np.int64)
        for i, customer in enumerate(uniques.tolist()):
            code = self._codes.get(customer)
            if code is None:
                code = self._free.pop() if self._free else len(self._ids)
                if code == len(self._ids):
                    self._ids.append(customer)
                    if code >= len(self._last_bucket):  # grow by doubling: amortised O(1)
                        grown = np.full(max(1024, 2 * code), NO_TIME, dtype=np.int64)
                        grown[: len(self._last_bucket)] = self._last_bucket
                        self._last_bucket = grown
                else:
                    self._ids[code] = customer
                self._last_bucket[code] = NO_TIME
                self._codes[customer] = code
            codes[i] = code
        return codes[inverse.reshape(-1)]

    # ------------------------------------------------------------------ inputs
    def step(
        self,
        events: EventBatch | None = None,
        predictions: Sequence[Prediction] = (),
        external: Sequence[tuple[str, int, int]] = (),
        capacity: int | None = None,
    ) -> list[PredictionOutcome]:
        """One micro-batch of a partition: external outcomes, events, then predictions."""
        out = self.on_external(external) if external else []
        if events is not None and len(events):
            out += self.on_events(events)
        if predictions:
            out += self.on_predictions(predictions, capacity)
        return out

    def on_events(self, events: EventBatch) -> list[PredictionOutcome]:
        """Events of the partition in offset order: the watermark advances over them, their
        on-time target events resolve pending predictions, and are kept for predictions to
        come; predictions whose horizon the watermark passed resolve as "none followed"."""
        late = self.watermark.classify(events.event_time_ms)
        self.late_events += int(late.sum())
        rows = np.flatnonzero(~late & (events.event_type == self._target_code))
        out: list[PredictionOutcome] = []
        if rows.size:
            codes = self._code_of(events.customer_id[rows])
            # All kept until pruned below: an old one may still resolve an old prediction.
            self._targets.append(code=codes, time=events.event_time_ms[rows])
            self._dirty.update(codes.tolist())
            # Only these customers' pending predictions can have a new target.
            out += self._resolve_by_targets(self._pending_of(codes))
        out += self._expire()
        self._prune()
        return out

    def on_external(self, outcomes: Sequence[tuple[str, int, int]]) -> list[PredictionOutcome]:
        """External outcomes (customer id, event time, label): each resolves the customer's
        pending predictions whose horizon holds its time, and is kept for those to come."""
        if not outcomes:
            return []
        codes = self._code_of([c for c, _, _ in outcomes])
        times = np.fromiter((t for _, t, _ in outcomes), dtype=np.int64, count=len(outcomes))
        labels = np.fromiter((y for _, _, y in outcomes), dtype=np.int64, count=len(outcomes))
        self._external.append(code=codes, time=times, label=labels)
        self._dirty.update(codes.tolist())
        pending = self._pending
        candidates = self._pending_of(codes)
        hit = self._within(pending["code"][candidates], pending["time"][candidates], self._external)
        rows = candidates[hit >= 0]
        hit = hit[hit >= 0]
        out = self._emit(
            rows,
            self._external["label"][hit],
            LABEL_SOURCE_EXTERNAL,
            self._external["time"][hit],
        )
        self._prune()
        return out

    def on_predictions(
        self, predictions: Sequence[Prediction], capacity: int | None = None
    ) -> list[PredictionOutcome]:
        """Predictions of the partition in offset order: stale, filtered and sampled-out
        ones dropped, the rest resolved at once if what follows them is known already,
        kept pending otherwise (at most ``capacity`` more; None: no cap)."""
        n = len(predictions)
        if n == 0:
            return []
        times = np.fromiter((p.event_time for p in predictions), dtype=np.int64, count=n)
        before = np.maximum.accumulate(np.concatenate([[self.max_prediction_ms], times]))[:-1]
        stale = (before != NO_TIME) & (times < before - self.disorder_ms)
        self.max_prediction_ms = int(max(self.max_prediction_ms, int(times.max())))
        wanted = np.fromiter((p.trigger in self.triggers for p in predictions), bool, count=n)
        self.dropped[DROP_STALE] += int(stale.sum())
        self.dropped[DROP_TRIGGER] += int((~stale & ~wanted).sum())
        rows = np.flatnonzero(~stale & wanted)
        if rows.size == 0:
            return []
        codes = self._code_of([predictions[i].customer_id for i in rows.tolist()])
        buckets = times[rows] // self.sample_every_ms
        # Kept: the first of its customer's bucket, i.e. a bucket above every earlier one
        # of the customer (kept ones raise the marker; ones not kept never exceeded it).
        earlier = pd.Series(buckets).groupby(codes).cummax().groupby(codes).shift(1)
        marker = np.maximum(self._last_bucket[codes], earlier.fillna(NO_TIME).to_numpy(np.int64))
        admitted = buckets > marker
        self.dropped[DROP_SAMPLED] += int((~admitted).sum())
        rows, codes, buckets = rows[admitted], codes[admitted], buckets[admitted]
        np.maximum.at(self._last_bucket, codes, buckets)
        self._dirty.update(codes.tolist())
        slots = np.arange(self._next_slot, self._next_slot + len(rows), dtype=np.int64)
        self._next_slot += len(rows)
        for slot, i in zip(slots.tolist(), rows.tolist(), strict=True):
            self._payload[slot] = predictions[i]
        before_count = len(self._pending)
        self._pending.append(code=codes, time=times[rows], slot=slots)
        out = self._resolve_new(before_count)
        out += self._resolve_by_targets(np.arange(before_count, len(self._pending)))
        out += self._expire(start=before_count)
        if capacity is not None and len(self._pending) - before_count > capacity:
            over = np.zeros(len(self._pending), dtype=bool)
            over[before_count + max(capacity, 0) :] = True
            for slot in self._pending["slot"][over].tolist():
                del self._payload[slot]
            self.dropped[DROP_CAPACITY] += int(over.sum())
            self._pending.keep(~over)
        self._prune()
        return out

    # ------------------------------------------------------------------ resolution
    def _within(self, code: Int64s, time: Int64s, kept: _Columns) -> Int64s:
        """Row of ``kept`` (targets or external outcomes) that resolves each prediction:
        the first to arrive of the customer's within ``(t, t + H]``; -1: none."""
        return first_within(code, time, time + self.horizon_ms, kept["code"], kept["time"])

    def _resolve_new(self, start: int) -> list[PredictionOutcome]:
        """New pending predictions that a kept external outcome resolves."""
        pending = self._pending
        new = np.arange(start, len(pending))
        hit = self._within(pending["code"][new], pending["time"][new], self._external)
        found = hit >= 0
        rows = new[found]
        return self._emit(
            rows,
            self._external["label"][hit[found]],
            LABEL_SOURCE_EXTERNAL,
            self._external["time"][hit[found]],
        )

    def _pending_of(self, codes: Int64s) -> Int64s:
        """Rows of the pending predictions of these customers."""
        return np.flatnonzero(np.isin(self._pending["code"], codes))

    def _resolve_by_targets(self, rows: Int64s) -> list[PredictionOutcome]:
        """Pending ``rows`` with a kept target in their horizon."""
        pending = self._pending
        hit = self._within(pending["code"][rows], pending["time"][rows], self._targets)
        found = hit >= 0
        label = np.full(int(found.sum()), self.label.label_of(True), dtype=np.int64)
        return self._emit(
            rows[found], label, LABEL_SOURCE_EVENTS, self._targets["time"][hit[found]]
        )

    def _expire(self, start: int = 0) -> list[PredictionOutcome]:
        """Pending predictions whose horizon the watermark has passed: none followed."""
        watermark = self.watermark.watermark_ms
        if watermark == NO_TIME:
            return []
        times = self._pending["time"]
        rows = start + np.flatnonzero(times[start:] + self.horizon_ms < watermark)
        label = np.full(len(rows), self.label.label_of(False), dtype=np.int64)
        return self._emit(rows, label, LABEL_SOURCE_EVENTS, times[rows] + self.horizon_ms)

    def _emit(
        self, rows: Int64s, labels: Int64s, source: str, resolved_at: Int64s
    ) -> list[PredictionOutcome]:
        """Outcome records for pending ``rows``, which leave the pending set."""
        if len(rows) == 0:
            return []
        out = []
        slots = self._pending["slot"][rows].tolist()
        for slot, label, at in zip(slots, labels.tolist(), resolved_at.tolist(), strict=True):
            p = self._payload.pop(slot)
            out.append(
                PredictionOutcome(
                    event_id=p.event_id,
                    customer_id=p.customer_id,
                    prediction_time=p.event_time,
                    score=p.score,
                    decision=p.decision,
                    threshold=p.threshold,
                    model_name=p.model_name,
                    model_version=p.model_version,
                    trigger=p.trigger,
                    label=int(label),
                    label_source=source,  # type: ignore[arg-type]  # one of LabelSource
                    resolved_at=int(at),
                    horizon_ms=self.horizon_ms,
                )
            )
        self._dirty.update(self._pending["code"][rows].tolist())
        keep = np.ones(len(self._pending), dtype=bool)
        keep[rows] = False
        self._pending.keep(keep)
        return out

    def _prune(self) -> None:
        """Forget times no prediction to come can need, and customers with nothing left."""
        floor = self.floor_ms
        if floor == NO_TIME:
            return
        for columns in (self._targets, self._external):
            old = columns["time"] <= floor
            if old.any():
                self._dirty.update(np.unique(columns["code"][old]).tolist())
                columns.keep(~old)
        marked = self._last_bucket != NO_TIME
        expired = marked & (self._last_bucket < floor // self.sample_every_ms)
        if expired.any():
            self._last_bucket[expired] = NO_TIME
            self._dirty.update(np.flatnonzero(expired).tolist())

    # ------------------------------------------------------------------ changelog
    def take_dirty(self) -> list[tuple[str, CustomerSnapshot | None]]:
        """Customers whose state changed since the last call, with their state now (None:
        nothing left; their code is freed)."""
        if not self._dirty:
            return []
        dirty = np.fromiter(self._dirty, dtype=np.int64, count=len(self._dirty))
        self._dirty = set()
        pending: dict[int, list[Prediction]] = defaultdict(list)
        targets: dict[int, list[int]] = defaultdict(list)
        external: dict[int, list[tuple[int, int]]] = defaultdict(list)
        p = self._pending
        rows = np.flatnonzero(np.isin(p["code"], dirty))
        for code, slot in zip(p["code"][rows].tolist(), p["slot"][rows].tolist(), strict=True):
            pending[code].append(self._payload[slot])
        t = self._targets
        rows = np.flatnonzero(np.isin(t["code"], dirty))
        for code, time in zip(t["code"][rows].tolist(), t["time"][rows].tolist(), strict=True):
            targets[code].append(time)
        x = self._external
        rows = np.flatnonzero(np.isin(x["code"], dirty))
        for code, time, label in zip(
            x["code"][rows].tolist(), x["time"][rows].tolist(), x["label"][rows].tolist(),
            strict=True,
        ):  # fmt: skip
            external[code].append((time, label))
        out: list[tuple[str, CustomerSnapshot | None]] = []
        for code, bucket in zip(dirty.tolist(), self._last_bucket[dirty].tolist(), strict=True):
            marker = None if bucket == NO_TIME else bucket
            if marker is None and not (code in pending or code in targets or code in external):
                out.append((self._ids[code], None))  # nothing left: forget the customer
                del self._codes[self._ids[code]]
                self._free.append(code)
                continue
            snapshot = CustomerSnapshot(
                pending.get(code, []), targets.get(code, []), external.get(code, []), marker
            )
            out.append((self._ids[code], snapshot))
        return out

    def snapshot(self) -> PartitionSnapshot:
        return PartitionSnapshot(
            max_event_time_ms=self.watermark.max_event_time_ms,
            max_prediction_time_ms=self.max_prediction_ms,
        )

    def restore_partition(self, snapshot: PartitionSnapshot) -> None:
        self.watermark.max_event_time_ms = snapshot.max_event_time_ms
        self.max_prediction_ms = snapshot.max_prediction_time_ms

    def restore_customers(self, customers: Iterable[tuple[str, CustomerSnapshot]]) -> int:
        """Customers' state from the changelog (before any new input); returns how many.
        One append per column for all of them (a restore holds up to millions)."""
        items = list(customers)
        if not items:
            return 0
        codes = self._code_of([customer for customer, _ in items]).tolist()
        pending_code: list[int] = []
        pending_time: list[int] = []
        target_code: list[int] = []
        target_time: list[int] = []
        external: list[tuple[int, int, int]] = []
        for code, (_, snapshot) in zip(codes, items, strict=True):
            if snapshot.last_bucket is not None:
                self._last_bucket[code] = snapshot.last_bucket
            for p in snapshot.pending:
                self._payload[self._next_slot + len(pending_code)] = p
                pending_code.append(code)
                pending_time.append(p.event_time)
            target_code.extend([code] * len(snapshot.targets))
            target_time.extend(snapshot.targets)
            external.extend((code, t, y) for t, y in snapshot.external)
        slots = np.arange(self._next_slot, self._next_slot + len(pending_code), dtype=np.int64)
        self._next_slot += len(pending_code)
        self._pending.append(code=np.array(pending_code), time=np.array(pending_time), slot=slots)
        self._targets.append(code=np.array(target_code), time=np.array(target_time))
        self._external.append(
            code=np.array([c for c, _, _ in external]),
            time=np.array([t for _, t, _ in external]),
            label=np.array([y for _, _, y in external]),
        )
        return len(items)
