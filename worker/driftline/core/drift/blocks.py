"""The open block of the drift monitor: sums of the readings since the last block end.

The mean, spread and rate detectors judge fixed blocks of ``block_events`` events, cut on
the event index since the monitor started (not on micro-batch boundaries), so the same
events in the same order give the same verdicts however they were batched.  A block's rows
may arrive in several batches; this holds what they add up to until the block is complete:
per stream the sum of rank scores, of spread scores and their count, per rate stream the
count of 1s and of 0s, and the customer keys (for the block's design effect).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Block:
    """A completed block: sums per stream, its customers' keys, where it ended."""

    z_sum: np.ndarray
    v_sum: np.ndarray
    observed: np.ndarray
    ones: np.ndarray
    zeros: np.ndarray
    keys: np.ndarray
    keyed: bool
    last_time_ms: int


class OpenBlock:
    """Accumulates the rows of the block being filled (see the module docstring)."""

    def __init__(self, n_score_streams: int, n_rate_streams: int) -> None:
        self.n_score_streams = n_score_streams
        self.n_rate_streams = n_rate_streams
        self.clear()

    def clear(self) -> None:
        self.rows = 0
        self.z_sum = np.zeros(self.n_score_streams)
        self.v_sum = np.zeros(self.n_score_streams)
        self.observed = np.zeros(self.n_score_streams, dtype=np.int64)
        self.ones = np.zeros(self.n_rate_streams)
        self.zeros = np.zeros(self.n_rate_streams)
        self.keys: list[str] = []
        self.keyed = True
        self.last_time_ms = 0

    def add(
        self,
        z: np.ndarray,
        v: np.ndarray,
        rates: np.ndarray,
        keys: np.ndarray | None,
        times: np.ndarray,
    ) -> None:
        """Add rows (a slice of a batch inside this block); NaN = no reading."""
        if len(z) == 0:
            return
        observed = ~np.isnan(z)
        self.z_sum += np.where(observed, z, 0.0).sum(axis=0)
        self.v_sum += np.where(observed, v, 0.0).sum(axis=0)
        self.observed += observed.sum(axis=0)
        if self.n_rate_streams:
            applicable = ~np.isnan(rates)
            ones = (rates > 0.5) & applicable
            self.ones += ones.sum(axis=0)
            self.zeros += (applicable & ~ones).sum(axis=0)
        if keys is None:
            self.keyed = False
        elif self.keyed:
            self.keys.extend(keys.tolist())
        self.rows += len(z)
        self.last_time_ms = int(times[-1])

    def complete(self) -> Block:
        """The block as it stands (called at its last event), then an empty one."""
        block = Block(
            z_sum=self.z_sum,
            v_sum=self.v_sum,
            observed=self.observed,
            ones=self.ones,
            zeros=self.zeros,
            keys=np.asarray(self.keys, dtype=object),
            keyed=self.keyed,
            last_time_ms=self.last_time_ms,
        )
        self.clear()
        return block

    def state_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "z_sum": self.z_sum.tolist(),
            "v_sum": self.v_sum.tolist(),
            "observed": self.observed.tolist(),
            "ones": self.ones.tolist(),
            "zeros": self.zeros.tolist(),
            "keys": list(self.keys),
            "keyed": self.keyed,
            "last_time_ms": self.last_time_ms,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rows = int(state["rows"])
        self.z_sum = np.asarray(state["z_sum"], dtype=np.float64).reshape(self.n_score_streams)
        self.v_sum = np.asarray(state["v_sum"], dtype=np.float64).reshape(self.n_score_streams)
        self.observed = np.asarray(state["observed"], dtype=np.int64).reshape(self.n_score_streams)
        self.ones = np.asarray(state["ones"], dtype=np.float64).reshape(self.n_rate_streams)
        self.zeros = np.asarray(state["zeros"], dtype=np.float64).reshape(self.n_rate_streams)
        self.keys = [str(k) for k in state["keys"]]
        self.keyed = bool(state["keyed"])
        self.last_time_ms = int(state["last_time_ms"])
