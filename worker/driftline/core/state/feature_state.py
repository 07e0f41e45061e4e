"""``FeatureState``: per-customer windowed state of one partition, a micro-batch at a time.

One ``FeatureState`` holds the customers of one input partition (so that a partition's
state can be restored, moved or dropped on its own).  The concerns live in their own
modules and meet here: the record layout (``layout``), the slots (``store``), the two
update paths (``update``: numpy rounds; ``native``: the C kernel), the features derived from
their readings (``features``), the features as of a later time (``as_of``: ticks) and the
changelog snapshots (``snapshot``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from driftline.core.events import EventBatch
from driftline.core.spec import FeatureSpec
from driftline.core.state.as_of import AsOfReader
from driftline.core.state.features import FeatureBlock, FeatureDerivation
from driftline.core.state.native import NATIVE_KERNEL, NativeKernel
from driftline.core.state.snapshot import Snapshots, snapshot_prefix
from driftline.core.state.update import NumpyRounds


class FeatureState(Snapshots, NativeKernel, NumpyRounds, AsOfReader, FeatureDerivation):
    """Windowed aggregates and latest profile values for the customers of one partition."""

    def __init__(
        self, spec: FeatureSpec, capacity: int = 1024, *, native: bool | None = None
    ) -> None:
        """``native``: apply events with the C kernel (None: whenever it is built)."""
        if native and not NATIVE_KERNEL:
            raise RuntimeError("the C state kernel is not built (driftline.core._state_kernel)")
        self.native = NATIVE_KERNEL if native is None else native
        super().__init__(spec, capacity)
        self._feature_steps = self._compile_features()
        self._snapshot_prefix = snapshot_prefix(self._layout, self._record.itemsize)
        self._kernel_tables = self._describe_for_kernel()

    def update(self, batch: EventBatch, offsets: np.ndarray | None = None) -> pd.DataFrame:
        """Apply the events in order; return each event's features (rows in batch order).

        ``offsets`` (input offsets, one per event) are remembered per customer so that a
        restore can tell which redelivered events it already holds.
        """
        return self.update_block(batch, offsets).frame()

    def update_block(self, batch: EventBatch, offsets: np.ndarray | None = None) -> FeatureBlock:
        """``update``, with the features as numpy blocks: several partitions' blocks
        concatenate into one frame per micro-batch, built once (a DataFrame per partition
        and a ``pd.concat`` cost more than the whole state update)."""
        n_events = len(batch)
        if n_events == 0:
            return FeatureBlock.empty(self._frame_layout)
        slots = self._slots_for(batch.customer_id.tolist())
        if self.native:
            self._check_batch_headroom(slots)
            numeric, categorical = self._features(self._apply_native(batch, slots, offsets))
            if offsets is not None:
                self._applied_bound = max(self._applied_bound, int(offsets.max()))
            return FeatureBlock(self._frame_layout, numeric, categorical)
        rounds = self._plan_rounds(slots, batch.event_time_ms)
        readings = self._apply(batch, rounds)
        if offsets is not None:
            # After the rounds: an eviction inside the batch clears the offset too.
            self.applied_offset[rounds.customers] = offsets[rounds.last]
            self._applied_bound = max(self._applied_bound, int(offsets.max()))
        numeric, categorical = self._features(readings)
        # Back to batch order: the rounds permuted the events.
        if rounds.bounds.size > 2:
            arrival = np.empty_like(numeric)
            arrival[:, rounds.order] = numeric
            numeric = arrival
            back = np.empty_like(categorical)
            back[:, rounds.order] = categorical
            categorical = back
        return FeatureBlock(self._frame_layout, numeric, categorical)
