"""Histogram divergences (PSI, Jensen-Shannon) over frozen bins, and tumbling windows of counts.

Both divergences compare the reference shares of a feature (from the reference profile,
binned with :func:`driftline.core.drift.bins.assign_bins`) with the bin counts of a live window
binned with the *same* frozen edges.  Many features are handled at once as a padded
(F, B) matrix: features have different numbers of bins (edges are deduplicated quantiles), so
a boolean ``mask`` marks the bins that exist; padded bins must hold share 0 and count 0.

Smoothing (PSI only): PSI = sum((q - p) * ln(q / p)) is infinite as soon as a bin is empty
on one side.  Both distributions are smoothed as ``s' = (s + eps) / (1 + B * eps)`` with ``B``
the feature's number of real bins (default ``eps = 1e-4``), which keeps them normalized and
changes a non-empty bin's share by at most ``B * eps`` relative.  The Jensen-Shannon
divergence is finite without smoothing (each side is compared with the mixture, which is
non-zero wherever either side is), so it is computed on the raw shares and equals
``scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2``; in base 2 it lies in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from driftline.core.drift.bins import assign_bins

DEFAULT_EPS = 1e-4
_NEVER = -(2**62)  # "no event time yet"; far below any real time, no int64 overflow


def pad_shares(shares: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Stack ragged per-feature shares into a zero-padded (F, B) matrix and its bin mask."""
    width = max((len(s) for s in shares), default=0)
    matrix = np.zeros((len(shares), width))
    mask = np.zeros((len(shares), width), dtype=bool)
    for row, values in enumerate(shares):
        matrix[row, : len(values)] = values
        mask[row, : len(values)] = True
    return matrix, mask


def smooth_shares(
    shares: np.ndarray, mask: np.ndarray | None = None, eps: float = DEFAULT_EPS
) -> np.ndarray:
    """``(s + eps) / (1 + B eps)`` on the real bins (``mask``), 0 on padding; rows sum to 1."""
    shares = np.asarray(shares, dtype=np.float64)
    mask = np.ones(shares.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    n_bins = mask.sum(axis=-1, keepdims=True)
    return np.where(mask, (shares + eps) / (1.0 + n_bins * eps), 0.0)


def _observed_shares(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        result: np.ndarray = counts / total  # NaN rows for windows without any observation
        return result


def psi(
    reference: np.ndarray,
    counts: np.ndarray,
    mask: np.ndarray | None = None,
    eps: float = DEFAULT_EPS,
) -> np.ndarray:
    """Population stability index per feature (natural log); NaN for an empty window and
    for a feature the reference never observed (all shares 0).

    ``reference`` holds shares, ``counts`` the live bin counts, both (F, B) or (B,).
    """
    p = smooth_shares(reference, mask, eps)
    q = smooth_shares(_observed_shares(counts), mask, eps)
    real = p > 0  # smoothing makes every real bin positive on both sides; padding is 0
    ratio = np.divide(q, p, out=np.ones_like(p), where=real)  # NaN stays NaN (empty window)
    value = np.where(real, (q - p) * np.log(ratio), 0.0).sum(axis=-1)
    observed_reference = np.asarray(reference, dtype=np.float64).sum(axis=-1) > 0
    return np.where(observed_reference, value, np.nan)


def g_statistic(counts: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Likelihood-ratio (G) statistic ``2 * sum(O * ln(O / E))``, ``E = n * reference``.

    Equals ``2 n KL(observed || reference)``: a scaled divergence.  Terms with ``O = 0`` are
    0; ``reference`` must be positive wherever ``O > 0`` (smooth it, see
    :func:`smooth_shares`).  Works on the last axis, for any leading shape.
    """
    counts = np.asarray(counts, dtype=np.float64)
    expected = counts.sum(axis=-1, keepdims=True) * np.asarray(reference, dtype=np.float64)
    positive = counts > 0
    ratio = np.divide(counts, expected, out=np.ones_like(counts), where=positive)
    result: np.ndarray = 2.0 * np.where(positive, counts * np.log(ratio), 0.0).sum(axis=-1)
    return result


def chi2_statistic(counts: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Pearson's ``sum((O - E)**2 / E)`` over the bins with ``E > 0`` (last axis)."""
    counts = np.asarray(counts, dtype=np.float64)
    expected = counts.sum(axis=-1, keepdims=True) * np.asarray(reference, dtype=np.float64)
    present = expected > 0
    quotient = np.divide(
        (counts - expected) ** 2, expected, out=np.zeros_like(counts), where=present
    )
    result: np.ndarray = quotient.sum(axis=-1)
    return result


def jensen_shannon(reference: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits (in [0, 1]) per feature; NaN for an empty window
    and for a feature the reference never observed (all shares 0: nothing to compare with).

    Padded bins (share 0, count 0) contribute nothing, so no mask is needed.
    """
    p = np.asarray(reference, dtype=np.float64)
    total = p.sum(axis=-1, keepdims=True)
    p = np.divide(p, total, out=np.full_like(p, np.nan), where=total > 0)
    q = _observed_shares(counts)
    m = 0.5 * (p + q)
    result: np.ndarray = 0.5 * (_kl_bits(p, m) + _kl_bits(q, m))
    return result


def _kl_bits(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """KL(a || m) in bits with 0 log 0 = 0; ``m > 0`` wherever ``a > 0``."""
    positive = a > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(positive, a / np.where(positive, m, 1.0), 1.0)
        terms = np.where(positive, a * np.log2(ratio), 0.0)
    # A NaN row (empty window) stays NaN: NaN > 0 is False, so propagate it explicitly.
    return np.where(np.isnan(a).any(axis=-1), np.nan, terms.sum(axis=-1))


# ----------------------------------------------------------------------------- binning


class FeatureBinner:
    """Bins a (n, F) matrix of raw numeric values with each feature's frozen edges.

    Returns (n, F) int bin indices with -1 for a missing value; the per-feature call to
    :func:`assign_bins` keeps the binning rule in one place (a loop over features, not
    events).
    """

    def __init__(self, edges: Sequence[Sequence[float]]) -> None:
        self.edges = [np.asarray(e, dtype=np.float64) for e in edges]
        self.n_bins = np.array([len(e) + 1 for e in self.edges], dtype=np.int64)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(self.edges):
            raise ValueError(f"expected (n, {len(self.edges)}) values, got {values.shape}")
        bins = np.full(values.shape, -1, dtype=np.int64)
        for column, edges in enumerate(self.edges):
            observed = ~np.isnan(values[:, column])
            bins[observed, column] = assign_bins(values[observed, column], edges)
        return bins


@dataclass(frozen=True)
class WindowCounts:
    """One completed window: bin counts per feature (padded to the widest feature).

    ``start``/``end`` are event ordinals ``[start, end)`` for :class:`EventWindow` and event
    times in ms ``[start, end)`` for :class:`TimeWindow`.
    """

    start: int
    end: int
    counts: np.ndarray  # (F, B) int
    n_events: int
    n_missing: np.ndarray  # (F,) int


def _count(bins: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin counts (F, width) and missing counts (F,) of a (n, F) block of bin indices."""
    n_features = bins.shape[1]
    observed = bins >= 0
    flat = (np.arange(n_features)[None, :] * width + bins)[observed]
    counts = np.bincount(flat, minlength=n_features * width).reshape(n_features, width)
    return counts, (~observed).sum(axis=0)


class EventWindow:
    """Tumbling windows of ``size`` consecutive events: counts per feature and bin.

    ``update`` takes the (n, F) bin indices of a batch (-1 = missing) and returns the
    windows it completed, oldest first; a partial window carries over to the next batch.
    The loop is over completed windows, not events.
    """

    def __init__(self, size: int, n_bins: Sequence[int]) -> None:
        if size < 1:
            raise ValueError("size must be positive")
        self.size = size
        self.n_features = len(n_bins)
        self.width = int(max(n_bins, default=1))
        self._counts = np.zeros((self.n_features, self.width), dtype=np.int64)
        self._missing = np.zeros(self.n_features, dtype=np.int64)
        self._filled = 0
        self._start = 0

    def update(self, bins: np.ndarray) -> list[WindowCounts]:
        bins = np.asarray(bins, dtype=np.int64)
        done: list[WindowCounts] = []
        position = 0
        while position < len(bins):
            take = min(self.size - self._filled, len(bins) - position)
            counts, missing = _count(bins[position : position + take], self.width)
            self._counts += counts
            self._missing += missing
            self._filled += take
            position += take
            if self._filled == self.size:
                end = self._start + self.size
                done.append(WindowCounts(self._start, end, self._counts, self.size, self._missing))
                self._counts = np.zeros_like(self._counts)
                self._missing = np.zeros_like(self._missing)
                self._filled, self._start = 0, end
        return done


class TimeWindow:
    """Tumbling event-time windows ``[j * seconds, (j + 1) * seconds)``, in ms.

    A window is emitted once the watermark (largest event time seen minus
    ``allowed_lateness_seconds``) reaches its end.  An event whose window was already emitted
    *before that event arrived* is late: it is dropped and counted in ``n_late``.  The
    watermark before each event is a running maximum over the batch in arrival order, so the
    outcome does not depend on where batch boundaries fall.
    """

    def __init__(
        self, seconds: float, n_bins: Sequence[int], allowed_lateness_seconds: float = 0.0
    ) -> None:
        self.span_ms = round(seconds * 1000)
        if self.span_ms < 1:
            raise ValueError("window must be at least 1 ms")
        self.lateness_ms = round(allowed_lateness_seconds * 1000)
        self.n_features = len(n_bins)
        self.width = int(max(n_bins, default=1))
        self._open: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
        self._max_time: int | None = None
        self._closed_below = _NEVER  # windows with index < this were emitted
        self.n_late = 0

    def update(self, bins: np.ndarray, event_time_ms: np.ndarray) -> list[WindowCounts]:
        bins = np.asarray(bins, dtype=np.int64)
        times = np.asarray(event_time_ms, dtype=np.int64)
        if len(times) == 0:
            return []
        index = np.floor_divide(times, self.span_ms)
        previous = _NEVER if self._max_time is None else self._max_time
        # Largest event time seen before each event (arrival order), across batches.
        before = np.maximum(
            np.concatenate(([previous], np.maximum.accumulate(times)[:-1])), previous
        )
        # Window j ends at (j + 1) * span; it is closed once (j + 1) * span <= watermark,
        # i.e. j < floor(watermark / span).
        closed_below = np.floor_divide(before - self.lateness_ms, self.span_ms)
        late = index < np.maximum(closed_below, self._closed_below)
        self.n_late += int(late.sum())
        kept_index, kept_bins = index[~late], bins[~late]
        for window in np.unique(kept_index):
            in_window = kept_index == window
            counts, missing = _count(kept_bins[in_window], self.width)
            n_events = int(in_window.sum())
            if int(window) in self._open:
                c, m, n = self._open[int(window)]
                counts, missing, n_events = c + counts, m + missing, n + n_events
            self._open[int(window)] = (counts, missing, n_events)
        self._max_time = max(previous, int(times.max()))
        self._closed_below = max(
            self._closed_below, (self._max_time - self.lateness_ms) // self.span_ms
        )
        return self._emit(self._closed_below)

    def flush(self) -> list[WindowCounts]:
        """Emit every open window (end of stream)."""
        return self._emit(None)

    def _emit(self, below: int | None) -> list[WindowCounts]:
        """Pop the open windows with index < ``below`` (all if None), oldest first."""
        done = []
        for window in sorted(w for w in self._open if below is None or w < below):
            counts, missing, n_events = self._open.pop(window)
            start = window * self.span_ms
            done.append(WindowCounts(start, start + self.span_ms, counts, n_events, missing))
        return done
