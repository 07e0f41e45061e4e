"""Per-customer windowed state, updated and read a micro-batch at a time.

One ``FeatureState`` holds the customers of one input partition (so that a partition's
state can be restored, moved or dropped on its own).  Each customer owns a *slot*, a row of
one packed numpy record (``layout``: what a record holds, and the accumulator blocks and
rings; ``store``: the slots), plus a row of an object array for categorical profile values.

A batch is applied by a C kernel (``native``: ``_state_kernel.c``, built at install when a
compiler is there): one pass over the events in arrival order, each straight into its
customer's record, with the features as of each event read on the way.  The numpy path
(``update``) is the fallback without it, and the oracle the tests hold the kernel to (same
records, same features).  It applies a batch in *rounds*: round ``r`` holds the ``r``-th
event of every customer in the batch, so inside a round every customer appears at most
once and numpy fancy indexing updates all of them at once.  Either way every event gets the
features as of itself (its customer's events up to and including it), whatever the batch
boundaries are: a prediction does not depend on how the stream was cut into batches.  Only
the raw totals are read per event; the features are derived from them once per batch
(``features``).  A changelog snapshot is a record's bytes (``snapshot``).

Semantics (the tests' oracle, ``tests/support/feature_oracle.py``, implements the same,
independently):

- The customer's *clock* is the latest event time seen for it; windows end at the clock.
- An event newer than ``clock + eviction_after`` starts the customer afresh (it was idle
  long enough to be evicted, whether or not the eviction sweep had run yet).
- An event older than its window (its bucket already slid out) updates lifetime values
  only (first seen, profile fields, last-of-type if newer), never a window.
- ``last`` / ``time_since_last`` / profile fields follow the greatest event time (ties:
  the later arrival wins).

This package re-exports the public names; the modules hold one concern each.
"""

from driftline.core.state.as_of import AsOf
from driftline.core.state.feature_state import FeatureState
from driftline.core.state.features import FeatureBlock
from driftline.core.state.layout import COUNT_MAX, NO_TIME
from driftline.core.state.native import NATIVE_KERNEL
from driftline.core.state.snapshot import SNAPSHOT_VERSION, SnapshotError
from driftline.core.state.store import CountOverflowError

__all__ = [
    "COUNT_MAX",
    "NATIVE_KERNEL",
    "NO_TIME",
    "SNAPSHOT_VERSION",
    "AsOf",
    "CountOverflowError",
    "FeatureBlock",
    "FeatureState",
    "SnapshotError",
]
