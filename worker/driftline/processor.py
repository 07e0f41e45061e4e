"""The scoring step of one micro-batch, independent of any Kafka client.

An engine (confluent-kafka today, Faust later) hands over the raw records it consumed;
the processor decodes them, splits off the rejects, the future-dated events (see
``core.clock_skew``) and the late events, updates the
per-partition state, scores every valid event with one ``predict_proba`` call, and hands
back what to produce.  It never talks to a broker, so the same object serves any engine,
the benchmark and the tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat

import msgspec
import numpy as np
import pandas as pd

from driftline.core.clock_skew import ClockSkewPolicy, FutureVerdict, StreamClock
from driftline.core.drift.monitor import DriftMonitor, DriftUpdate
from driftline.core.drift.trigger import RetrainRequest, RetrainTrigger
from driftline.core.events import (
    DEFAULT_MAX_EVENT_BYTES,
    REASON_FUTURE,
    REASON_LATE,
    REASON_MODEL_ERROR,
    EventBatch,
    decode_batch,
)
from driftline.core.predictions import TRIGGER_EVENT, Prediction
from driftline.core.spec import FeatureSpec
from driftline.core.state import NO_TIME, FeatureBlock, FeatureState
from driftline.core.ticks import Tick, apply_with_ticks
from driftline.core.watermark import PartitionWatermark
from driftline.model.isolation import Isolated, describe, score_isolating
from driftline.model.runtimes.sklearn import Scorer
from driftline.reason_codes import ReasonCodes
from driftline.tick_predictions import TickOutput, order_with_ticks, score_ticks

_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class RawBatch:
    """What an engine consumed, as parallel sequences (one entry per record)."""

    topic: str
    values: Sequence[bytes | None]
    keys: Sequence[bytes | None]
    partitions: np.ndarray  # int32
    offsets: np.ndarray  # int64
    #: Record timestamps (epoch ms, producer create time), for end-to-end latency.
    timestamps: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record to dead-letter: ``index`` into the raw batch, and why."""

    index: int
    reason: str
    error_class: str
    message: str


@dataclass(slots=True)
class BatchResult:
    """What to produce for one batch.  Predictions are keyed by customer id."""

    prediction_keys: list[bytes]
    prediction_values: list[bytes]
    prediction_index: np.ndarray  # raw index of each prediction's source record
    rejected: list[Rejected]
    n_late: int
    scores: np.ndarray
    #: The batch's features, as the state's numpy blocks (None: no valid event).
    feature_block: FeatureBlock | None
    event_latency_seconds: np.ndarray
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: State snapshots to write: (input partition, customer id key, snapshot or None).
    changelog: list[tuple[int, bytes, bytes | None]] = field(default_factory=list)
    #: Events skipped because the restored state already held them (at-least-once replay).
    n_redelivered: int = 0
    #: What the drift monitor learned from this batch, and a retrain request if it fired.
    drift: DriftUpdate | None = None
    retrain_request: RetrainRequest | None = None
    #: Scored events the drift monitor did not see: they precede the reference period.
    drift_before_reference: int = 0
    #: The ticks this batch fired (``core.ticks``); their predictions are among the
    #: batch's, each before the event whose arrival fired it.
    ticks: TickOutput | None = None


@dataclass(slots=True)
class PreparedBatch:
    """A batch up to its scores (``ScoringProcessor.prepare``): what ``finish`` needs."""

    raw: RawBatch
    #: The events to score, in the order of ``block``'s rows.
    valid: EventBatch
    block: FeatureBlock | None
    rejected: list[Rejected]
    n_late: int
    n_redelivered: int
    changelog: list[tuple[int, bytes, bytes | None]]
    stage_seconds: dict[str, float]
    #: Events the model raised on (moved from ``valid`` to ``rejected`` by ``score``),
    #: and the extra scorer calls that isolating them took.
    model_errors: int = 0
    isolation_calls: int = 0
    #: Ticks fired by the batch's events (features as of each boundary; scored in
    #: ``finish`` by the model that scores the batch).
    ticks: list[Tick] = field(default_factory=list)


#: Changelog key of a partition's watermark record; customer ids are never empty.
WATERMARK_KEY = b""
_encode_watermark = msgspec.msgpack.Encoder().encode
_decode_watermark = msgspec.msgpack.Decoder(tuple[int, int, int, int]).decode


class ScoringProcessor:
    """Per-partition state and watermarks, plus the model, for one worker process."""

    def __init__(
        self,
        spec: FeatureSpec,
        scorer: Scorer,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        changelog: bool = True,
        drift: DriftMonitor | None = None,
        trigger: RetrainTrigger | None = None,
        clock: Callable[[], float] = time.time,
        clock_skew: ClockSkewPolicy | None = None,
        tick_ms: int | None = None,
        tick_from_ms: int | None = None,
        explain: int | None = None,
    ) -> None:
        """``tick_ms``: re-score every customer in state at each event-time boundary of
        that period (``core.ticks``), from ``tick_from_ms`` on if given; None: score on
        events only.  ``explain``: the top that many reason codes on each event
        prediction (``reason_codes``); None (default): none, and no work for them."""
        if scorer.feature_names != spec.feature_names:
            raise ValueError(
                "model and feature spec disagree on the features: "
                f"model {scorer.feature_names} vs spec {spec.feature_names}"
            )
        self.spec = spec
        self.scorer = scorer
        self.max_event_bytes = max_event_bytes
        self.changelog = changelog
        self.drift = drift
        self.trigger = trigger
        #: Event time from which drift is monitored: the start of the model's reference
        #: period (earlier events are history replayed to warm the state up), or
        #: ``NO_TIME`` to monitor every event (``--drift-from-start``).  Events skipped are
        #: counted in ``BatchResult.drift_before_reference``.
        self.drift_since_ms = NO_TIME
        self._clock = clock
        self.clock_skew = clock_skew or ClockSkewPolicy()
        self.tick_ms = tick_ms
        self.tick_from_ms = tick_from_ms
        self.reason_codes = ReasonCodes(explain) if explain is not None else None
        if self.reason_codes is not None:
            self.reason_codes.explainer(scorer)  # refuse an unexplainable model now
        self.states: dict[int, FeatureState] = {}
        self.watermarks: dict[int, PartitionWatermark] = {}
        #: Each partition's recent event times, for the future-event rule.
        self.stream_clocks: dict[int, StreamClock] = {}

    # ------------------------------------------------------------ partitions
    def assign(self, partitions: Sequence[int]) -> None:
        for p in partitions:
            self.states.setdefault(p, FeatureState(self.spec))
            self.watermarks.setdefault(p, PartitionWatermark(self.spec.allowed_lateness_ms))
            self.stream_clocks.setdefault(p, StreamClock(self.clock_skew))

    def revoke(self, partitions: Sequence[int]) -> None:
        """Forget the partitions' state: another worker owns (and rebuilds) it now."""
        for p in partitions:
            self.states.pop(p, None)
            self.watermarks.pop(p, None)
            self.stream_clocks.pop(p, None)

    @property
    def customers_in_state(self) -> int:
        return sum(len(s) for s in self.states.values())

    def evict_idle(self) -> list[tuple[int, bytes, bytes | None]]:
        """Evict idle customers; returns the changelog tombstones to write."""
        tombstones: list[tuple[int, bytes, bytes | None]] = []
        for p, state in self.states.items():
            evicted = state.evict_idle(self.watermarks[p].watermark_ms)
            tombstones.extend((p, c.encode(), None) for c in evicted)
        return tombstones

    def restore(
        self, partition: int, records: Sequence[tuple[bytes, bytes | None]], committed: int
    ) -> int:
        """Rebuild a partition's state from its changelog records, oldest first.

        ``committed`` is the partition's committed input offset.  The watermark record says
        which batch it was written by; if that batch was not committed (a crash between
        changelog and commit, at-least-once), its events come again, so the watermark as
        it stood *before* that batch is the one to restore.  Customer snapshots remember
        the offset they reflect; ``process`` skips events they already hold.
        """
        state = FeatureState(self.spec)
        watermark = PartitionWatermark(self.spec.allowed_lateness_ms)
        latest: dict[bytes, bytes | None] = {}
        for key, value in records:
            if key == WATERMARK_KEY:
                if value is not None:
                    _first, last, before, after = _decode_watermark(value)
                    watermark.max_event_time_ms = after if committed > last else before
            else:
                latest[key] = value
        live = [(k.decode(), v) for k, v in latest.items() if v is not None]
        restored = state.restore([k for k, _ in live], [v for _, v in live])
        self.states[partition] = state
        self.watermarks[partition] = watermark
        stream_clock = StreamClock(self.clock_skew)
        stream_clock.seed(watermark.max_event_time_ms, int(self._clock() * 1000))
        self.stream_clocks[partition] = stream_clock
        return restored

    # ------------------------------------------------------------ batch
    def process(self, raw: RawBatch) -> BatchResult:
        """Decode, update the state, score with this process's scorer, and encode."""
        prepared = self.prepare(raw)
        return self.finish(prepared, self.score(prepared))

    def score(self, prepared: PreparedBatch) -> np.ndarray:
        """The prepared batch's scores from this processor's model, here ("predict").

        Should the model raise, the events it raises on are isolated (bisection, see
        ``model.isolation``), moved to the batch's rejects as ``model_error`` and the
        others scored: one bad row never fails its batch.  Their state update stands (the
        event happened; only the model could not score it), so a re-driven dead letter is
        skipped as already applied unless its customer's state was reset.
        """
        t0 = time.perf_counter()
        block = prepared.block
        if block is None:
            scores = np.empty(0)
        else:
            isolated = score_isolating(self.scorer.score_block, block)
            scores = isolated.scores
            if isolated.offenders.size:
                scores = self._reject_offenders(prepared, isolated)
        prepared.stage_seconds["predict"] = time.perf_counter() - t0
        return scores

    def _reject_offenders(self, prepared: PreparedBatch, isolated: Isolated) -> np.ndarray:
        """Move the rows the model raised on from the batch to its rejects; the others'
        scores."""
        assert prepared.block is not None
        valid = prepared.valid
        keep = np.ones(len(valid), dtype=bool)
        keep[isolated.offenders] = False
        rows = np.flatnonzero(keep)
        prepared.rejected.extend(
            Rejected(int(valid.index[row]), REASON_MODEL_ERROR, "model", describe(error))
            for row, error in zip(isolated.offenders.tolist(), isolated.errors, strict=True)
        )
        prepared.valid = valid.take(rows)
        prepared.block = prepared.block.take(rows) if rows.size else None
        prepared.model_errors += int(isolated.offenders.size)
        prepared.isolation_calls += isolated.extra_calls
        return isolated.scores[rows]

    def prepare(self, raw: RawBatch) -> PreparedBatch:
        """Everything before the model: decode, late events, state update, changelog.

        Split from ``finish`` so that an engine can have the batch scored elsewhere (a
        scoring process) while it prepares the next one.  The state already holds the
        batch when this returns: an engine that drops a prepared batch must restore the
        partitions' state before it consumes those records again.
        """
        stages: dict[str, float] = {"predict": 0.0}  # set by whoever scores the batch
        t0 = time.perf_counter()
        batch, rejections = decode_batch(raw.values, raw.keys, self.max_event_bytes)
        rejected = [Rejected(r.index, r.reason, "decode", r.message) for r in rejections]
        t1 = time.perf_counter()
        stages["decode"] = t1 - t0

        partitions = raw.partitions[batch.index]
        now_ms = int(self._clock() * 1000)
        blocks: list[FeatureBlock] = []
        kept_parts: list[EventBatch] = []
        changelog: list[tuple[int, bytes, bytes | None]] = []
        ticks: list[Tick] = []
        n_late = n_redelivered = 0
        for p in np.unique(partitions).tolist():
            if p not in self.states:
                self.assign([p])
            part = batch.take(np.flatnonzero(partitions == p))
            watermark = self.watermarks[p]
            before = watermark.max_event_time_ms
            # Future-dated events first: they must never reach the watermark.
            verdict = self.stream_clocks[p].classify(part.event_time_ms, before, now_ms)
            if verdict.future.any():
                rejected.extend(_future(part, verdict, p, now_ms))
                part = part.take(np.flatnonzero(~verdict.future))
            late = watermark.classify(part.event_time_ms)
            if late.any():
                rejected.extend(self._late(part.take(np.flatnonzero(late)), p))
                n_late += int(late.sum())
                part = part.take(np.flatnonzero(~late))
            state = self.states[p]
            offsets = raw.offsets[part.index]
            applied = state.already_applied(part.customer_id, offsets)
            # Redelivered events are not applied again but move the tick clock as before.
            update = apply_with_ticks(
                state,
                part,
                offsets,
                partition=p,
                period_ms=self.tick_ms,
                high_mark_ms=before,
                skip=applied if applied.any() else None,
                from_ms=self.tick_from_ms,
            )
            if applied.any():
                n_redelivered += int(applied.sum())
                part = part.take(np.flatnonzero(~applied))
            blocks.append(update.block)
            ticks.extend(update.ticks)
            kept_parts.append(part)
            if self.changelog:
                # Each customer once, in order of first appearance, with its record key.
                touched = dict(
                    zip(part.customer_id.tolist(), part.customer_key.tolist(), strict=True)
                )
                snapshots = state.export(list(touched))
                changelog.extend(
                    zip(repeat(p, len(touched)), touched.values(), snapshots, strict=True)
                )
                span = raw.offsets[raw.partitions == p]
                record = (int(span.min()), int(span.max()), before, watermark.max_event_time_ms)
                changelog.append((p, WATERMARK_KEY, _encode_watermark(record)))
        # One feature block for the whole batch, from the partitions' numpy blocks; a
        # DataFrame only where one is needed (scikit-learn, the drift monitor).
        if kept_parts:
            valid = EventBatch.concat(kept_parts)
            block = FeatureBlock.concat(blocks)
        else:
            valid = EventBatch.empty()
            block = None
        stages["state"] = time.perf_counter() - t1
        return PreparedBatch(
            raw, valid, block, rejected, n_late, n_redelivered, changelog, stages, ticks=ticks
        )

    def finish(self, prepared: PreparedBatch, scores: np.ndarray) -> BatchResult:
        """Everything after the model: drift, decisions, predictions to produce.

        ``scores`` are the prepared block's, scored by this processor's model (an engine
        that scores elsewhere finishes a batch before it swaps the model).
        """
        raw, valid, block = prepared.raw, prepared.valid, prepared.block
        stages = prepared.stage_seconds
        rejected = prepared.rejected
        t3 = time.perf_counter()
        drift_update = retrain_request = None
        before_reference = 0
        if self.drift is not None:
            features = (
                block.frame()
                if block is not None
                else pd.DataFrame(columns=self.spec.feature_names)
            )
            # Events from before the reference period are the history the model was
            # trained on (a backfill warming the state up): not monitored.
            recent = valid.event_time_ms > self.drift_since_ms
            if recent.all():
                drift_update = self.drift.update(
                    features, scores, valid.event_time_ms, valid.customer_id
                )
            else:
                rows = np.flatnonzero(recent)
                before_reference = len(recent) - len(rows)
                drift_update = self.drift.update(
                    features.iloc[rows].reset_index(drop=True),
                    scores[rows],
                    valid.event_time_ms[rows],
                    valid.customer_id[rows],
                )
            if self.trigger is not None:
                retrain_request = self.trigger.observe(drift_update)
            t_drift = time.perf_counter()
            stages["drift"] = t_drift - t3
            t3 = t_drift
        now_ms = int(self._clock() * 1000)
        decisions = self.scorer.decide(scores)
        src = valid.index
        keys = valid.customer_key.tolist()
        name, version, threshold = self.scorer.name, self.scorer.version, self.scorer.threshold
        # Positional fields, mapped in C: a keyword call per prediction cost ~15 % more.
        fields = (
            valid.event_id.tolist(),
            valid.customer_id.tolist(),
            scores.tolist(),
            decisions.tolist(),
            repeat(threshold),
            repeat(name),
            repeat(version),
            valid.event_time_ms.tolist(),
            repeat(now_ms),
            raw.partitions[src].tolist(),
            raw.offsets[src].tolist(),
            repeat(TRIGGER_EVENT),
        )
        if self.reason_codes is not None and block is not None:
            t_explain = time.perf_counter()
            explained = self.reason_codes.fields(self.scorer, block.frame())
            stages["explain"] = time.perf_counter() - t_explain
            predictions = map(Prediction, *fields, *explained)
        else:
            predictions = map(Prediction, *fields)
        values = list(map(_encode, predictions))
        tick_output = None
        if prepared.ticks:
            # Not through the drift monitor: see ``tick_predictions``.
            tick_output = score_ticks(self.scorer, prepared.ticks, now_ms)
            keys, values, index = order_with_ticks(keys, values, src, tick_output)
        else:
            index = src
        stages["encode"] = time.perf_counter() - t3
        # Latency is measured from when the record was produced, not from the event time:
        # replays and late mobile clients have event times far in the past.
        sent_ms = raw.timestamps[src] if raw.timestamps is not None else valid.event_time_ms
        rejected.sort(key=lambda r: r.index)
        return BatchResult(
            prediction_keys=keys,
            prediction_values=values,
            prediction_index=index,
            rejected=rejected,
            n_late=prepared.n_late,
            scores=scores,
            feature_block=block,
            event_latency_seconds=(now_ms - sent_ms) / 1000.0,
            stage_seconds=stages,
            changelog=prepared.changelog,
            n_redelivered=prepared.n_redelivered,
            drift=drift_update,
            retrain_request=retrain_request,
            drift_before_reference=before_reference,
            ticks=tick_output,
        )

    def _late(self, late: EventBatch, partition: int) -> list[Rejected]:
        watermark = self.watermarks[partition].watermark_ms
        lateness = self.spec.allowed_lateness_ms
        return [
            Rejected(
                i,
                REASON_LATE,
                "watermark",
                f"event_time {t} is older than partition {partition}'s watermark {watermark}"
                f" (allowed lateness {lateness} ms)",
            )
            for i, t in zip(late.index.tolist(), late.event_time_ms.tolist(), strict=True)
        ]


def _future(
    part: EventBatch, verdict: FutureVerdict, partition: int, now_ms: int
) -> list[Rejected]:
    """Dead letters for the future events of one partition's part of a batch."""
    rows = np.flatnonzero(verdict.future)
    out = []
    for i, t, limit, by_stream in zip(
        part.index[rows].tolist(),
        part.event_time_ms[rows].tolist(),
        verdict.limit_ms[rows].tolist(),
        verdict.by_stream[rows].tolist(),
        strict=True,
    ):
        clock = f"partition {partition}'s replay clock" if by_stream else f"the clock {now_ms}"
        out.append(
            Rejected(
                i,
                REASON_FUTURE,
                "clock",
                f"event_time {t} is {(t - limit) / 3_600_000:.2f} h past {limit}, the latest "
                f"allowed by {clock}",
            )
        )
    return out
