"""Detector thresholds from a false-alarm budget stated in operational units.

Operators think in "at most one false page a month", not in ``h = 4.77``.  This module turns
such a budget into a per-detector in-control average run length (ARL0, in observations) and
then into each detector's threshold.  The formulas are collected in ``docs/drift-detection.md``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import sparse
from scipy.optimize import brentq
from scipy.sparse.linalg import MatrixRankWarning, spsolve
from scipy.stats import chi2, norm

from driftline.core.drift.divergence import chi2_statistic, g_statistic, smooth_shares

#: Siegmund's correction for the overshoot of a normal-increment CUSUM over its threshold
#: (2 * 0.583, 0.583 = -zeta(1/2) / sqrt(2 pi)).
SIEGMUND_OVERSHOOT = 1.166


@dataclass(frozen=True, kw_only=True)
class FalseAlarmBudget:
    """At most ``false_triggers`` false alarms per ``period_days``, over all ``detectors``.

    ``events_per_day`` is the number of observations each detector sees per day.  Splitting
    the budget evenly, each detector may false-alarm ``false_triggers / detectors`` times per
    period.  With restart after an alarm, a detector's alarms form a renewal process, so its
    expected count over ``T = period_days * events_per_day`` observations is ``T / ARL0``;
    summing over detectors (linearity of expectation: no independence needed) gives
    ``detectors * T / ARL0 <= false_triggers``, hence
    ``ARL0 = detectors * period_days * events_per_day / false_triggers``.  For a budget of
    one trigger this is the union bound ``P(any alarm) <= sum_i P(alarm_i) <= sum_i E[N_i]``.
    It is conservative when detectors are correlated or see fewer events (missing values).
    """

    false_triggers: float = 1.0
    period_days: float = 30.0
    events_per_day: float
    detectors: int

    def __post_init__(self) -> None:
        if min(self.false_triggers, self.period_days, self.events_per_day) <= 0:
            raise ValueError("budget, period and event rate must be positive")
        if self.detectors < 1:
            raise ValueError("need at least one detector")

    @property
    def arl0(self) -> float:
        """Per-detector in-control average run length, in observations."""
        return self.detectors * self.period_days * self.events_per_day / self.false_triggers

    def window_alpha(
        self, *, window_size: int | None = None, windows_per_day: float | None = None
    ) -> float:
        """Per-window false-alarm probability of a windowed test drawing on the same budget.

        A detector evaluating ``W`` windows per period at level ``alpha`` expects
        ``alpha * W`` false alarms; setting that to ``false_triggers / detectors`` gives
        ``alpha = false_triggers / (detectors * W)``.  Pass ``window_size`` (events) for event
        windows or ``windows_per_day`` for time windows.
        """
        if (window_size is None) == (windows_per_day is None):
            raise ValueError("pass exactly one of window_size and windows_per_day")
        per_day = self.events_per_day / window_size if window_size else windows_per_day
        assert per_day is not None
        return min(1.0, self.false_triggers / (self.detectors * self.period_days * per_day))


# ------------------------------------------------------------------ normal-increment CUSUM


def siegmund_arl(h: float, drift: float) -> float:
    """Siegmund's ARL of a one-sided CUSUM whose increments have mean ``drift``, variance 1.

    ``ARL(h) ~ (exp(-2 d b) + 2 d b - 1) / (2 d**2)`` with ``b = h + 1.166``; ``b**2`` at
    ``d = 0``.  In control ``d = mu - k = -k``.
    """
    b = h + SIEGMUND_OVERSHOOT
    if abs(drift) < 1e-12:
        return b * b
    x = 2.0 * drift * b
    return (math.exp(-x) + x - 1.0) / (2.0 * drift * drift)


def cusum_threshold(
    arl0: float,
    k: float = 0.5,
    two_sided: bool = True,
    increments: Literal["normal", "chi2"] = "normal",
) -> float:
    """Threshold ``h`` giving an in-control ARL of ``arl0`` observations.

    ``increments="normal"``: Siegmund's approximation for N(0, 1) input.  Two-sided, the
    in-control rates add (``1/ARL = 1/ARL+ + 1/ARL-``, the usual approximation for the
    combined scheme); the sides are symmetric, so each needs ``2 * arl0``.

    ``increments="chi2"``: the variance CUSUM fed ``(z**2 - 1) / sqrt(2)``; its increments are
    skewed, so Siegmund (a normal approximation) would give too many false alarms on the
    upper side.  ARLs come from the Brook-Evans Markov chain (:func:`markov_chain_arl`) with
    the exact shifted chi-square law, sides combined the same way.
    """
    if arl0 <= 1:
        raise ValueError("arl0 must exceed 1")
    if increments == "normal":
        target = 2.0 * arl0 if two_sided else arl0

        def log_gap(h: float) -> float:
            return math.log(siegmund_arl(h, -k)) - math.log(target)

    elif increments == "chi2":
        scale = math.sqrt(2.0)
        upper = _chi2_increment_cdf(k, scale, upper=True)
        lower = _chi2_increment_cdf(k, scale, upper=False)

        def log_gap(h: float) -> float:
            rate = 1.0 / markov_chain_arl(h, upper)
            if two_sided:
                rate += 1.0 / markov_chain_arl(h, lower)
            return -math.log(rate) - math.log(arl0)

    else:
        raise ValueError(f"unknown increments {increments!r}")
    return _solve_increasing(log_gap)


def _solve_increasing(gap: Callable[[float], float]) -> float:
    """Root of an increasing ``gap(h)`` on ``h >= 0`` (0 if already non-negative at 0)."""
    if gap(0.0) >= 0:
        return 0.0
    high = 1.0
    while gap(high) < 0:
        high *= 2.0
        if high > 1e4:
            raise ValueError("no threshold below 1e4 reaches the target ARL")
    return float(brentq(gap, 0.0, high, xtol=1e-6))


def _chi2_increment_cdf(k: float, scale: float, upper: bool) -> Callable[[np.ndarray], np.ndarray]:
    """CDF of the increment ``+-(z**2 - 1) / scale - k`` of the variance CUSUM, z ~ N(0, 1)."""
    if upper:
        return lambda y: chi2.cdf(1.0 + scale * (y + k), df=1)
    return lambda y: chi2.sf(1.0 - scale * (y + k), df=1)


def normal_increment_cdf(k: float, mu: float = 0.0) -> Callable[[np.ndarray], np.ndarray]:
    """CDF of ``z - k`` for ``z ~ N(mu, 1)`` (for :func:`markov_chain_arl`)."""
    return lambda y: norm.cdf(y + k - mu)


def markov_chain_arl(
    h: float, increment_cdf: Callable[[np.ndarray], np.ndarray], n_states: int = 400
) -> float:
    """ARL of ``S = max(0, S + Y)``, alarm at ``S > h``, from 0 (Brook & Evans, 1972).

    ``[0, h]`` is cut into ``n_states`` cells of width ``w = 2h / (2 n - 1)``: cell 0 is
    ``[0, w/2)`` (it holds the atom at 0), cell ``i`` is ``[(i - 1/2) w, (i + 1/2) w)``,
    represented by its centre ``i w``.  The transition probabilities come from the increment
    CDF; ``(I - Q) L = 1`` gives the run lengths, ``L[0]`` the ARL.  The discretization
    error is O(w); 400 cells are within about 1% for the thresholds used here.
    """
    if h <= 0:
        return 1.0 / max(1e-300, 1.0 - float(increment_cdf(np.array(0.0))))
    width = 2.0 * h / (2 * n_states - 1)
    centres = np.arange(n_states) * width
    upper_edges = (np.arange(n_states) + 0.5) * width  # upper edge of each cell
    cdf = increment_cdf(upper_edges[None, :] - centres[:, None])  # P(next < edge j | i)
    # Cell 0 gets everything below w/2, including the reset to 0.
    q = np.diff(np.concatenate([np.zeros((n_states, 1)), cdf], axis=1), axis=1)
    run = np.linalg.solve(np.eye(n_states) - q, np.ones(n_states))
    return float(run[0])


def _discrete_chain_arl(h: float, jumps: np.ndarray, probs: np.ndarray, n_states: int) -> float:
    """Brook-Evans ARL of ``S = max(0, S + Y)`` for a discrete increment law (sparse).

    Same cells as :func:`markov_chain_arl`; a discrete ``Y`` moves each cell to at most
    ``len(jumps)`` cells, so the chain is solved as a sparse system (~1 ms for 400 cells).
    """
    width = 2.0 * h / (2 * n_states - 1)
    rows, cols, vals = [], [], []
    centres = np.arange(n_states) * width
    for jump, prob in zip(jumps.tolist(), probs.tolist(), strict=True):
        target = centres + jump
        # Cell of the next state: cell 0 holds [0, w/2) and the reset to 0; beyond h: alarm.
        cell = np.where(target < 0.5 * width, 0, np.floor(target / width + 0.5)).astype(np.int64)
        inside = cell < n_states
        rows.append(np.flatnonzero(inside))
        cols.append(cell[inside])
        vals.append(np.full(int(inside.sum()), prob))
    q = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_states, n_states),
    )
    system = (sparse.identity(n_states, format="csr") - q).tocsc()
    with warnings.catch_warnings():
        # Singular: some cells can never reach the alarm on this grid (jumps too small to
        # leave the cell), i.e. no false alarm from there: an infinite run length.
        warnings.simplefilter("error", MatrixRankWarning)
        try:
            run = spsolve(system, np.ones(n_states))
        except MatrixRankWarning:
            return math.inf
    arl = float(run[0])
    return arl if math.isfinite(arl) and arl > 0 else math.inf


#: Threshold of a stream whose in-control increments can never be positive (a feature
#: constant in the reference): no false alarm is possible, and 3 outliers of the maximal
#: rank score (3) close together alarm.
DEGENERATE_H = 7.0


def discrete_cusum_threshold(
    values: np.ndarray, probs: np.ndarray, arl0: float, k: float = 0.5, n_states: int = 400
) -> float:
    """Two-sided CUSUM threshold for increments with a known *discrete* in-control law.

    The monitor feeds CUSUMs rank scores: each reference bin maps to one value, and under
    the reference a value occurs with its bin's share.  That law is exact, bounded and
    often skewed (the variance stream is), so no normal approximation is needed: both
    sides' ARLs come from the Brook-Evans chain of that law, combined as
    ``1/ARL = 1/ARL+ + 1/ARL-``, and ``h`` is solved for ``arl0``.
    """
    if arl0 <= 1:
        raise ValueError("arl0 must exceed 1")
    x = np.asarray(values, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    keep = p > 0
    if not keep.any():
        return DEGENERATE_H
    x, p = x[keep], p[keep] / p[keep].sum()
    sides = [(x - k, p), (-x - k, p)]
    live = [(jumps, probs) for jumps, probs in sides if np.any(jumps > 0)]
    if not live:
        return DEGENERATE_H

    def log_gap(h: float) -> float:
        if h <= 0:
            return -math.inf
        rate = sum(1.0 / _discrete_chain_arl(h, j, q, n_states) for j, q in live)
        if rate <= 0:
            return 1e3  # no false alarm possible at this h
        return max(-1e3, min(1e3, -math.log(rate) - math.log(arl0)))

    high = 1.0
    while log_gap(high) < 0:
        high *= 2.0
        if high > 1e4:
            raise ValueError("no threshold below 1e4 reaches the target ARL")
    return float(brentq(log_gap, high / 2 if high > 1 else 1e-6, high, xtol=1e-4))


# ---------------------------------------------------------------------- Bernoulli CUSUM


def _bernoulli_steps(p0: float, p1: float) -> tuple[float, float]:
    """Log-likelihood-ratio increments (for a 1, for a 0) of the Bernoulli CUSUM."""
    if not 0 < p0 < p1 < 1:
        raise ValueError("need 0 < p0 < p1 < 1")
    return math.log(p1 / p0), math.log1p(-p1) - math.log1p(-p0)


def _lattice_arl(top: int, up: int, down: int, p: float) -> float:
    """ARL from state 0 of the integer chain ``max(0, i + up)`` w.p. ``p``, else ``max(0, i -
    down)``, alarm when the state exceeds ``top``.  Exact for the lattice chain."""
    size = top + 1
    states = np.arange(size)
    rows = np.concatenate([states, states, states])
    cols = np.concatenate([states, np.maximum(states - down, 0), states + up])
    values = np.concatenate([np.ones(size), np.full(size, -(1.0 - p)), np.full(size, -p)])
    inside = cols <= top  # jumps beyond ``top`` are absorbed (alarm): no column
    matrix = sparse.csc_matrix((values[inside], (rows[inside], cols[inside])), shape=(size, size))
    return float(spsolve(matrix, np.ones(size))[0])


def bernoulli_cusum_arl(
    h: float, p0: float, p1: float, p: float | None = None, n_states: int = 4000
) -> float:
    """ARL of the Bernoulli LLR CUSUM (alarm at ``S > h``) when the true rate is ``p``.

    Deterministic, simulation-free: the state is put on a lattice of step
    ``delta = |log((1-p1)/(1-p0))| / j`` so that a 0 moves exactly ``j`` steps down; a 1
    moves ``round(log(p1/p0) / delta)`` steps up (error at most ``delta / 2`` per 1).
    ``j`` is chosen so ``[0, h]`` holds about ``n_states`` lattice points; the resulting
    Markov chain is solved exactly (sparse linear system).
    """
    up_step, down_step = _bernoulli_steps(p0, p1)
    delta = _lattice_step(-down_step, h, n_states)
    return _lattice_arl(
        math.floor(h / delta),
        round(up_step / delta),
        round(-down_step / delta),
        p0 if p is None else p,
    )


def _lattice_step(down: float, h: float, n_states: int) -> float:
    return down / max(1, round(n_states * down / h))


def bernoulli_cusum_threshold(arl0: float, p0: float, p1: float, n_states: int = 8000) -> float:
    """Threshold of the Bernoulli CUSUM with in-control ARL ``arl0`` (at least), rate ``p0``.

    On a fixed lattice (see :func:`bernoulli_cusum_arl`) the ARL is a non-decreasing step
    function of the number of lattice points in ``[0, h]``; the smallest count reaching
    ``arl0`` is found by doubling then bisection.  The true chain is not on the lattice: its
    ARL jumps where ``h`` meets a reachable value ``n1 log(p1/p0) - n0 |log((1-p1)/(1-p0))|``,
    and the lattice places such a value off by up to ``n1`` times the rounding of the up-step.
    So ``h`` is moved above the lattice jump by that error for the ``ceil(h / up) + 1``
    up-steps a path needs to climb to ``h``, plus half a step.
    """
    if arl0 <= 1:
        raise ValueError("arl0 must exceed 1")
    up_step, down_step = _bernoulli_steps(p0, p1)
    # Rough size from Wald's approximation ARL0 ~ exp(h) / KL(p0 || p1), only to size the grid.
    kl = -(p0 * up_step + (1.0 - p0) * down_step)
    h_rough = max(1.0, math.log(arl0 * kl + 1.0) + 1.0)
    delta = _lattice_step(-down_step, 2.0 * h_rough, n_states)
    up, down = round(up_step / delta), round(-down_step / delta)

    def arl(top: int) -> float:
        return _lattice_arl(top, up, down, p0)

    low, high = -1, 1  # arl(low) < arl0 <= arl(high) once the doubling stops
    while arl(high) < arl0:
        low, high = high, high * 2
        if high > 50 * n_states:
            raise ValueError("arl0 too large for the lattice")
    while high - low > 1:
        middle = (low + high) // 2
        if arl(middle) >= arl0:
            high = middle
        else:
            low = middle
    h = (high + 0.5) * delta
    rounding = abs(up * delta - up_step)
    return h + (math.ceil(h / up_step) + 1) * rounding


# ------------------------------------------------------------------ windowed categorical test


@dataclass(frozen=True)
class WindowThreshold:
    """(1 - alpha) quantiles of the G and chi-squared statistics under the reference."""

    g: float
    chi2: float
    alpha: float
    window_size: int
    n_resamples: int


def window_test_threshold(
    reference_shares: np.ndarray,
    window_size: int,
    alpha: float,
    n_resamples: int = 20000,
    seed: int | None = 0,
    eps: float = 1e-4,
    *,
    min_exceedances: int = 100,
    max_resamples: int = 500_000,
) -> WindowThreshold:
    """Resampled critical values of the G and chi-squared tests for one window size.

    Windows of ``window_size`` counts are drawn from the multinomial of the (smoothed, see
    :func:`smooth_shares`) reference shares, the statistics are computed against those same
    shares, and the empirical (1 - alpha) quantiles (numpy's ``method="higher"``: an actual
    order statistic) are returned.  Alarm on ``statistic > threshold``: the resampled
    false-alarm rate is then at most ``alpha``.  Unlike the chi2(B - 1) asymptotic, this is
    right for small windows and rare bins, where the asymptotic is badly off.

    The level's Monte Carlo error is relative ``~ 1 / sqrt(alpha * R)`` for ``R`` resamples,
    so ``R`` is raised from ``n_resamples`` until about ``min_exceedances`` resamples lie above
    the quantile (±10% for 100), up to ``max_resamples``.  Resamples are drawn in chunks and
    only each chunk's largest values are kept, so memory stays small for tiny ``alpha``
    (time is ~4 s per million resamples of 21 bins: compute once per model version).
    """
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    if window_size < 1:
        raise ValueError("window_size must be positive")
    shares = smooth_shares(np.asarray(reference_shares, dtype=np.float64), eps=eps)
    total = int(min(max(n_resamples, math.ceil(min_exceedances / alpha)), max_resamples))
    total = max(total, n_resamples)
    # numpy's "higher" quantile is the order statistic at index ceil((R - 1) q), ascending;
    # it is the ``top``-th largest value.
    top = total - math.ceil((total - 1) * (1.0 - alpha))
    rng = np.random.default_rng(seed)
    g_tops, pearson_tops = [], []
    chunk = 100_000
    for begin in range(0, total, chunk):
        counts = rng.multinomial(window_size, shares, size=min(chunk, total - begin))
        g_tops.append(_largest(g_statistic(counts, shares), top))
        pearson_tops.append(_largest(chi2_statistic(counts, shares), top))
    return WindowThreshold(
        g=float(_largest(np.concatenate(g_tops), top)[0]),
        chi2=float(_largest(np.concatenate(pearson_tops), top)[0]),
        alpha=alpha,
        window_size=window_size,
        n_resamples=total,
    )


def _largest(values: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` largest values, ascending (all of them if there are fewer)."""
    if values.size <= count:
        return np.sort(values)
    return np.sort(np.partition(values, values.size - count)[values.size - count :])
