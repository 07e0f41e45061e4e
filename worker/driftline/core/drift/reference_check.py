"""Does the reference describe what is served?  One look at the first events of a model.

A reference taken from a differently shaped stream (another product's events, a model
trained on a sample of another period, a mapping that fills fields differently) puts most
features in DRIFT at the first look.  That is right, but the operator sees a wall of red
and, worse, the retrain trigger asks for a retrain that would learn the same mismatch.  So
the monitor compares the histogram of the first ``n_events`` monitored events of each
input feature with the reference (PSI over the frozen reference bins).  If at least
``share`` of the features are off by more than ``psi_limit`` (0.25: the usual "significant
shift" level of PSI, far above the ~(bins - 1) / n of sampling noise) at once, it reports a
**reference mismatch**: a flag on every update, a metric and a log line, and the trigger
sends no retrain request for that model.  Fewer features off is drift as usual.

The verdict depends on the first ``n_events`` rows only, whatever the batching.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from driftline.core.drift.divergence import psi

#: Events looked at before the verdict.
DEFAULT_EVENTS = 2000
#: PSI above which a feature is off ("significant shift").
DEFAULT_PSI_LIMIT = 0.25
#: Share of the input features that must be off at once for a mismatch.
DEFAULT_SHARE = 0.5


class ReferenceCheck:
    """Histograms of the first events against the reference, then one verdict."""

    def __init__(
        self,
        names: Sequence[str],
        reference_shares: np.ndarray,
        mask: np.ndarray,
        judged: Sequence[bool],
        *,
        n_events: int = DEFAULT_EVENTS,
        psi_limit: float = DEFAULT_PSI_LIMIT,
        share: float = DEFAULT_SHARE,
    ) -> None:
        """``names``/``reference_shares``/``mask``: the monitor's binned columns (padded
        shares, as for its PSI); ``judged``: which columns count (input features whose
        reference observed values; the score is reported but not counted)."""
        self.names = list(names)
        self.reference_shares = reference_shares
        self.mask = mask
        self.judged = np.asarray(judged, dtype=bool)
        self.n_events = int(n_events)
        self.psi_limit = float(psi_limit)
        self.share = float(share)
        self.counts: np.ndarray = np.zeros(reference_shares.shape, dtype=np.int64)
        self.seen = 0
        #: None until decided; then whether the reference does not fit.
        self.mismatch: bool | None = None
        #: Columns off by more than ``psi_limit`` at the verdict, with their PSI.
        self.off: dict[str, float] = {}

    def update(self, bins: np.ndarray) -> bool:
        """Add rows (bins per column, -1 = missing); True when this call made the verdict."""
        if self.mismatch is not None or self.seen >= self.n_events:
            return False
        rows = bins[: self.n_events - self.seen]
        width = self.counts.shape[1]
        for j in range(self.counts.shape[0]):
            column = rows[:, j]
            column = column[(column >= 0) & (column < width)]
            self.counts[j] += np.bincount(column, minlength=width)[:width]
        self.seen += len(rows)
        if self.seen < self.n_events:
            return False
        values = psi(self.reference_shares, self.counts, self.mask)
        observed = self.counts.sum(axis=1) > 0
        off = (values > self.psi_limit) & observed & np.isfinite(values)
        self.off = {self.names[j]: float(values[j]) for j in np.flatnonzero(off)}
        judged = int(self.judged.sum())
        self.mismatch = bool(judged and (off & self.judged).sum() >= self.share * judged)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts.tolist(),
            "seen": self.seen,
            "mismatch": self.mismatch,
            "off": dict(self.off),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.counts = np.asarray(state["counts"], dtype=np.int64).reshape(self.counts.shape)
        self.seen = int(state["seen"])
        self.mismatch = None if state["mismatch"] is None else bool(state["mismatch"])
        self.off = {str(k): float(v) for k, v in dict(state["off"]).items()}
