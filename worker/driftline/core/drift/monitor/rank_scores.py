"""Rank scores: what the CUSUMs see of a numeric stream, one score per frozen reference bin."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

#: Rank score given to values in a bin the reference never saw, when the reference is
#: constant (one bin holds everything): outside the reference, on the side it lies.
OUTLIER_SCORE = 3.0


@dataclass(frozen=True)
class RankScores:
    """What the CUSUMs see of one numeric stream: a score per frozen reference bin.

    Raw standardized values ``(x - mean) / std`` are the textbook CUSUM input, but per-event
    features are skewed, heavy-tailed counts and sums: one big spender is a z of 10, a few
    of them cross any threshold derived for normal data, and ``z**2`` is worse.  Measured on
    a stationary simulated stream, that raised alarms on nearly every feature.  So each
    value is replaced by the normal score of its reference bin,
    ``q_b = PhiInv(C_{b-1} + s_b / 2)`` (``s_b`` the bin's reference share, ``C`` the
    cumulative share: the bin's mid-rank), then standardized *under the reference law of the
    bins*: ``z_b = (q_b - sum s q) / sd``.  Under the reference, ``z`` has mean 0 and variance
    1 exactly (ties and discrete features included, as bins hold them), it is bounded, and
    its law (values ``z_b`` with probabilities ``s_b``) is known exactly, so thresholds come
    from a Markov chain of that law, not from a normal approximation.  The spread stream is
    ``v_b = (z_b**2 - E z**2) / sd(z**2)``, also mean 0, variance 1.  The price: values
    beyond the reference range all get the extreme bin's score, so a shift is seen through
    the share of events it moves across bin edges, which is what PSI measures too.
    """

    probs: np.ndarray
    z: np.ndarray
    v: np.ndarray

    @classmethod
    def from_profile(cls, edges: Sequence[float], shares: Sequence[float]) -> RankScores:
        n_bins = len(edges) + 1
        s = np.asarray(shares, dtype=np.float64)
        if s.size != n_bins or not np.isfinite(s).all() or s.sum() <= 0:
            # Never observed in the reference: any observed value is outside it.
            s = np.zeros(n_bins)
            return cls(s, np.zeros(n_bins), np.zeros(n_bins))
        s = s / s.sum()
        cumulative = np.cumsum(s)
        q = norm.ppf(np.clip(cumulative - s / 2, 1e-9, 1 - 1e-9))
        mean = float(s @ q)
        sd = math.sqrt(float(s @ (q - mean) ** 2))
        if sd < 1e-9:
            # Constant reference: bins below the occupied one score -3, above +3.
            occupied = int(np.argmax(s))
            z = np.where(np.arange(n_bins) < occupied, -OUTLIER_SCORE, OUTLIER_SCORE)
            z[occupied] = 0.0
            return cls(s, z.astype(np.float64), np.abs(z))
        z = (q - mean) / sd
        w = z * z
        w_mean = float(s @ w)
        w_sd = math.sqrt(float(s @ (w - w_mean) ** 2))
        v = (w - w_mean) / w_sd if w_sd > 1e-9 else np.zeros(n_bins)
        return cls(s, z, v)

    def probs_key(self) -> tuple[float, ...]:
        return tuple(round(float(p), 12) for p in self.probs)

    def z_key(self) -> tuple[float, ...]:
        return tuple(round(float(x), 12) for x in self.z)

    def v_key(self) -> tuple[float, ...]:
        return tuple(round(float(x), 12) for x in self.v)
