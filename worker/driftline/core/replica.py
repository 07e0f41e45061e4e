"""A read replica of the workers' live state: what ``driftline serve`` answers from.

The workers already publish everything a per-customer lookup needs: each input
partition's customer state as snapshots on the compacted changelog topic (one record per
customer a batch touched, tombstones for evictions) and every score on the predictions
topic (keyed by customer).  A replica that follows both topics, as Kafka Streams' standby
replicas follow a store's changelog, answers for every customer without asking the
workers, and no worker serves reads on its scoring loop.

This module is the replica's pure part: records in (bytes, as read), answers out.  It
knows nothing of Kafka; ``driftline.engine.kafka.replica_follower`` reads the topics and
hands the records over.  The features are not re-implemented: a partition's snapshots are
restored into a :class:`~driftline.core.state.FeatureState` (the worker's own class, the
worker's own snapshot format) and read as of each customer's clock with
:meth:`~driftline.core.state.as_of.AsOfReader.features_of`.

Which prediction is "latest": the one of the latest input record.  A customer's
predictions are keyed by it, so they stay in input order on one partition, but an
at-least-once redelivery publishes an older event's prediction again after a newer one;
ordering by ``source_offset`` (the scored input record; a tick carries the offset of the
event that fired it and comes right before that event's prediction, so ties go to the
later arrival) keeps such a replay from moving the answer back.

Not thread-safe: the caller holds one lock around applying and reading.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from driftline.core.predictions import Prediction
from driftline.core.spec import FeatureSpec
from driftline.core.state import FeatureState, SnapshotError

#: A feature's value in an answer: a number, a category, or None (missing).
FeatureValue = float | str | None

_PREDICTION = msgspec.json.Decoder(Prediction)


@dataclass(frozen=True, slots=True)
class CustomerView:
    """What the replica holds for one customer: its features as of its clock, the input
    offset of the latest event its state holds, and its latest prediction (if any)."""

    customer_id: str
    partition: int
    #: The customer's clock: its latest event time (epoch ms); the features are as of it.
    as_of_ms: int
    #: Input offset of the latest event the replicated state holds.
    state_offset: int
    features: dict[str, FeatureValue]
    prediction: Prediction | None


@dataclass(slots=True)
class ApplyCounts:
    """What one call to an ``apply_*`` method did (for metrics and logs)."""

    records: int = 0
    customers: int = 0
    tombstones: int = 0
    rejected: int = 0
    #: Predictions: each applied record's ``processed_at`` (for the staleness metric).
    processed_at: list[int] = field(default_factory=list)


class StateReplica:
    """Customer state and latest predictions of every input partition, from their topics.

    ``apply_changelog`` takes one changelog partition's records in offset order (latest
    per customer wins, a tombstone forgets the customer); ``apply_predictions`` takes
    predictions-topic values.  A record that cannot be read (a snapshot of another
    layout, a prediction that does not decode) is counted as rejected and skipped: one
    bad record must not stop the replica.
    """

    def __init__(self, spec: FeatureSpec, *, max_cached_views: int = 100_000) -> None:
        self.spec = spec
        self.max_cached_views = max_cached_views
        self._states: dict[int, FeatureState] = {}
        #: customer id -> the partition whose state holds it.
        self._partition_of: dict[str, int] = {}
        self._predictions: dict[str, Prediction] = {}
        self._numeric = list(spec.numeric_features)
        self._categorical = list(spec.categorical_features)
        self._names = list(spec.feature_names)
        #: Views already built, dropped when a record about the customer is applied: a
        #: lookup of an unchanged customer (most of them, most of the time) costs a dict
        #: hit instead of a feature derivation (~0.1-0.2 ms).
        self._views: dict[str, CustomerView] = {}

    # ------------------------------------------------------------------ apply
    def apply_changelog(
        self, partition: int, records: Sequence[tuple[bytes, bytes | None]]
    ) -> ApplyCounts:
        """Apply one changelog partition's records (oldest first).

        The worker's partition watermark record (empty key) is not a customer: skipped.
        Snapshots are restored in one batch per call, the latest per customer.
        """
        counts = ApplyCounts(records=len(records))
        latest: dict[str, bytes | None] = {}
        for key, value in records:
            if not key:  # the worker's watermark record; customer ids are never empty
                continue
            try:
                latest[key.decode()] = value
            except UnicodeDecodeError:
                counts.rejected += 1
        if not latest:
            return counts
        views = self._views
        for customer in latest:
            views.pop(customer, None)
        state = self._states.get(partition)
        if state is None:
            state = self._states[partition] = FeatureState(self.spec)
        gone = [customer for customer, value in latest.items() if value is None]
        if gone:
            held = [c for c in gone if c in state]
            state.forget(held)
            for customer in held:
                if self._partition_of.get(customer) == partition:
                    del self._partition_of[customer]
                    self._predictions.pop(customer, None)
            counts.tombstones = len(gone)
        live = [(c, v) for c, v in latest.items() if v is not None]
        if live:
            ids = [c for c, _ in live]
            snapshots = [v for _, v in live]
            try:
                applied = state.restore(ids, snapshots)
            except SnapshotError:  # one at a time, to keep the readable ones
                applied = sum(_restore_one(state, c, v) for c, v in live)
            counts.customers = applied
            # Not applied: another layout's snapshots (another feature spec), unreadable ones.
            counts.rejected += len(live) - applied
            for customer in ids:
                if customer in state:
                    self._partition_of[customer] = partition
        return counts

    def apply_predictions(self, values: Sequence[bytes]) -> ApplyCounts:
        """Apply predictions-topic values in topic order: a customer's latest is the one
        of the greatest ``source_offset`` (ties: the later record; module docstring)."""
        counts = ApplyCounts(records=len(values))
        held = self._predictions
        for value in values:
            try:
                prediction = _PREDICTION.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                counts.rejected += 1
                continue
            current = held.get(prediction.customer_id)
            if current is None or prediction.source_offset >= current.source_offset:
                held[prediction.customer_id] = prediction
                self._views.pop(prediction.customer_id, None)
                counts.customers += 1
            counts.processed_at.append(prediction.processed_at)
        return counts

    # ------------------------------------------------------------------ read
    def customer(self, customer_id: str) -> CustomerView | None:
        """The customer's view, or None if no partition's state holds it.  The same object
        is returned until a record about the customer is applied (callers may cache what
        they derive from it by identity)."""
        view = self._views.get(customer_id)
        if view is not None:
            return view
        partition = self._partition_of.get(customer_id)
        if partition is None:
            return None
        state = self._states[partition]
        found = state.features_of(customer_id)
        if found is None:  # pragma: no cover - _partition_of follows the states
            return None
        clock, state_offset, block = found
        features: dict[str, FeatureValue] = {}
        for name, value in zip(self._numeric, block.numeric[:, 0].tolist(), strict=True):
            features[name] = None if math.isnan(value) else float(value)
        for name, category in zip(self._categorical, block.categorical[:, 0], strict=True):
            features[name] = None if category is None else str(category)
        ordered = {name: features[name] for name in self._names}
        if len(self._views) >= self.max_cached_views:
            self._views.clear()  # bounded memory; rebuilt on the next lookups
        view = self._views[customer_id] = CustomerView(
            customer_id=customer_id,
            partition=partition,
            as_of_ms=clock,
            state_offset=state_offset,
            features=ordered,
            prediction=self._predictions.get(customer_id),
        )
        return view

    def __len__(self) -> int:
        """Customers held (with state)."""
        return len(self._partition_of)

    @property
    def predictions_held(self) -> int:
        return len(self._predictions)


def _restore_one(state: FeatureState, customer: str, snapshot: bytes) -> int:
    try:
        return state.restore([customer], [snapshot])
    except SnapshotError:
        return 0
