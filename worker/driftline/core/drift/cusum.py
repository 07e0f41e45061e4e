"""Banks of CUSUM detectors, updated one micro-batch at a time without a per-event loop.

Why CUSUM: for a shift of known size it is the optimal sequential test (Lorden/Moustakides),
it has one state number per stream (trivially checkpointed), and its false-alarm rate has a
good closed-form approximation (:func:`driftline.core.drift.calibration.cusum_threshold`), so
thresholds come from an operational budget instead of being hand-tuned.

Vectorized Lindley recursion
----------------------------
A one-sided CUSUM is the Lindley recursion ``S_t = max(0, S_{t-1} + x_t)`` with increments
``x_t`` (``z_t - k`` for the upper side).  With ``C_0 = 0``, ``C_t = x_1 + ... + x_t`` and
``m_t = min(-S_0, C_1, ..., C_t)`` it has the closed form::

    S_t = C_t - m_t                      (t >= 0; m_0 = -S_0, so S_0 = 0 - (-S_0))

Proof by induction: true at ``t = 0``.  If ``S_{t-1} = C_{t-1} - m_{t-1}`` then
``S_t = max(0, C_{t-1} - m_{t-1} + x_t) = max(0, C_t - m_{t-1}) = C_t - min(C_t, m_{t-1})
= C_t - m_t``.  Because ``S_0 >= 0`` we have ``-S_0 <= C_0 = 0``, so this is the same as
``C_t - min(min_{0<=j<=t} C_j, -S_0)``.  A cumulative sum and a cumulative minimum
(``np.minimum.accumulate``) over the batch axis therefore give the whole path of every stream
in a few array passes.  ``C_t - m_t`` is never negative in floating point (``m_t <= C_t`` is a
comparison of the same stored numbers), so no clipping is needed.

Missing observations (NaN) get the increment 0, which leaves the state unchanged
(``max(0, S + 0) = S`` for ``S >= 0``): the stream simply skips that row, it is not reset.

Restart after an alarm
----------------------
With ``restart_on_alarm=True`` (the default) a stream that crosses ``h`` at row ``r`` starts
again from 0 at row ``r + 1`` — so every alarm is one *trigger* and the false-alarm budget
(triggers per period) is a count of renewals.  The batch is re-scanned only for the streams
that alarmed, from their restart row, so the cost grows with the number of alarms within a
batch (almost always 0 or 1), never with the number of events.

Variance detection
------------------
For ``z ~ N(0, 1)``, ``v = (z**2 - 1) / sqrt(2)`` has mean 0 and variance 1, and its mean
becomes ``(sigma**2 - 1) / sqrt(2)`` when the standard deviation becomes ``sigma``.  Feeding
:func:`variance_increments` of the standardized values to a *second* :class:`CusumBank`
detects a change of spread that leaves the mean alone.  ``v`` is skewed (a shifted chi-square),
so the upper side false-alarms more often than a normal stream at the same ``h``: calibrate
that bank with ``cusum_threshold(..., increments="chi2")``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

_cusum_kernel: ModuleType | None
try:  # built at install time when a C compiler is there (an optional extension)
    _cusum_kernel = importlib.import_module("driftline.core.drift._cusum_kernel")
except ImportError:  # pragma: no cover - depends on the install
    _cusum_kernel = None

STATE_VERSION = 1
#: Whether ``_scan`` runs the per-event recursion in C (``_cusum_kernel.c``); without it the
#: numpy closed form below, whose cost grows with the alarms in a batch.
NATIVE_SCAN = _cusum_kernel is not None


@dataclass(frozen=True)
class CusumResult:
    """Outcome of one :meth:`CusumBank.update` / :meth:`BernoulliCusum.update`, per stream.

    ``first_alarm`` is the row index (within the batch) of the first crossing, -1 if none, so
    an alarm raised and cleared inside one batch is still reported with its position.
    ``direction`` is +1 when the first crossing was on the upper side, -1 on the lower side,
    0 without an alarm.
    """

    statistic: np.ndarray  # (K,) max over sides of the state after the batch
    peak: np.ndarray  # (K,) largest statistic reached within the batch
    alarm: np.ndarray  # (K,) bool: above h at some row of the batch
    first_alarm: np.ndarray  # (K,) int: first such row, -1 if none
    n_alarms: np.ndarray  # (K,) int: alarms (restarts) in the batch; without restart 0 or 1
    direction: np.ndarray  # (K,) int8: +1 upper, -1 lower, 0 none


def lindley_path(x: np.ndarray, s0: np.ndarray) -> np.ndarray:
    """Path of ``S_t = max(0, S_{t-1} + x_t)`` for every column of ``x`` (n, K), from ``s0``.

    Closed form ``S_t = C_t - min(-S_0, C_1, ..., C_t)`` (see the module docstring).
    """
    c = np.cumsum(x, axis=0)
    m = np.minimum.accumulate(c, axis=0)
    np.minimum(m, -s0[None, :], out=m)
    return c - m


def _first_true(mask: np.ndarray) -> np.ndarray:
    """Row index of the first True of each column, -1 for columns without one."""
    if mask.shape[0] == 0:
        return np.full(mask.shape[1], -1, dtype=np.int64)
    first = mask.argmax(axis=0).astype(np.int64)
    first[~mask.any(axis=0)] = -1
    result: np.ndarray = first
    return result


def _scan(
    sides: Sequence[np.ndarray],
    states: Sequence[np.ndarray],
    h: np.ndarray,
    restart: bool,
) -> tuple[list[np.ndarray], CusumResult]:
    """Run one or two one-sided CUSUMs (the "sides") over a batch and detect crossings.

    ``sides[i]`` holds the (n, K) increments of side ``i``, ``states[i]`` its (K,) state.
    Returns the new states and the per-stream result.  A restart resets every side.
    """
    if NATIVE_SCAN:
        return _native_scan(sides, states, h, restart)
    n, k = sides[0].shape
    paths = [lindley_path(x, s) for x, s in zip(sides, states, strict=True)]
    crossed = [p > h[None, :] for p in paths]
    any_crossed = np.logical_or.reduce(crossed) if len(crossed) > 1 else crossed[0]
    first = _first_true(any_crossed)
    direction = np.zeros(k, dtype=np.int8)
    hit = np.flatnonzero(first >= 0)
    if hit.size:
        direction[hit] = np.where(crossed[0][first[hit], hit], 1, -1)
    finals = [p[-1].copy() if n else s.copy() for p, s in zip(paths, states, strict=True)]
    # With restarts, rows past an alarm are re-scanned below: leave them out of the peak.
    peak = _peak(paths, first if restart else None) if n else np.maximum.reduce(list(states))
    n_alarms = (first >= 0).astype(np.int64)

    if restart:
        last = first.copy()
        active = hit
        rows = np.arange(n)[:, None]
        while active.size:
            # Streams that alarmed at their last row restart after the batch: state 0.
            for f in finals:
                f[active[last[active] == n - 1]] = 0.0
            active = active[last[active] < n - 1]
            if not active.size:
                break
            # Rescan from the earliest restart row; rows before a stream's own restart get
            # increment 0 from state 0, so its path is 0 there and cannot cross.
            begin = int(last[active].min()) + 1
            keep = rows[begin:] >= (last[active] + 1)[None, :]
            zero = np.zeros(active.size)
            sub = [lindley_path(np.where(keep, x[begin:, active], 0.0), zero) for x in sides]
            sub_crossed = np.logical_or.reduce([p > h[None, active] for p in sub])
            again = _first_true(sub_crossed)
            peak[active] = np.maximum(peak[active], _peak(sub, again))
            again[again >= 0] += begin
            for f, p in zip(finals, sub, strict=True):
                f[active] = p[-1]
            n_alarms[active] += again >= 0
            last[active] = again
            active = active[again >= 0]

    statistic = np.maximum.reduce(finals) if len(finals) > 1 else finals[0].copy()
    result = CusumResult(
        statistic=statistic,
        peak=peak,
        alarm=first >= 0,
        first_alarm=first,
        n_alarms=n_alarms,
        direction=direction,
    )
    return finals, result


def _native_scan(
    sides: Sequence[np.ndarray],
    states: Sequence[np.ndarray],
    h: np.ndarray,
    restart: bool,
) -> tuple[list[np.ndarray], CusumResult]:
    """``_scan`` by the C recursion: one pass over the rows per stream, restarts included."""
    k = len(h)
    finals = np.array(states, dtype=np.float64)  # (sides, K), updated in place
    peak = np.empty(k)
    first = np.empty(k, dtype=np.int64)
    n_alarms = np.empty(k, dtype=np.int64)
    direction = np.empty(k, dtype=np.int8)
    assert _cusum_kernel is not None  # callers check NATIVE_SCAN
    _cusum_kernel.scan(
        np.ascontiguousarray(np.stack(sides), dtype=np.float64),
        finals,
        np.ascontiguousarray(h, dtype=np.float64),
        len(sides),
        restart,
        peak,
        first,
        n_alarms,
        direction,
    )
    result = CusumResult(
        statistic=finals.max(axis=0),
        peak=peak,
        alarm=first >= 0,
        first_alarm=first,
        n_alarms=n_alarms,
        direction=direction,
    )
    return list(finals), result


def _peak(paths: Sequence[np.ndarray], stop: np.ndarray | None) -> np.ndarray:
    """Largest statistic over the rows of each column, up to row ``stop`` where ``stop >= 0``.

    With restarts, the path computed past an alarm is not what the stream went through (it
    restarted there), so those rows are left out.
    """
    statistic = np.maximum.reduce(list(paths))
    if stop is not None:
        rows = np.arange(statistic.shape[0])[:, None]
        statistic = np.where((stop[None, :] >= 0) & (rows > stop[None, :]), 0.0, statistic)
    result: np.ndarray = statistic.max(axis=0)
    return result


def _per_stream(value: float | np.ndarray | Sequence[float], k: int, what: str) -> np.ndarray:
    """Broadcast a scalar or per-stream parameter to a float array of shape (K,)."""
    array = np.broadcast_to(np.asarray(value, dtype=np.float64), (k,)).copy()
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} must be finite")
    return array


def _as_batch(values: np.ndarray, k: int) -> np.ndarray:
    """A float (n, K) view of the batch; a 1-D array is one row per stream only if K == 1."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1 and k == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] != k:
        raise ValueError(f"expected a batch of shape (n, {k}), got {array.shape}")
    return array


def variance_increments(z: np.ndarray) -> np.ndarray:
    """``(z**2 - 1) / sqrt(2)``: mean 0, variance 1 for N(0, 1) input; NaN stays NaN."""
    z = np.asarray(z, dtype=np.float64)
    result: np.ndarray = (z * z - 1.0) / math.sqrt(2.0)
    return result


class CusumBank:
    """K independent two-sided CUSUMs on standardized values (N(0, 1) while in control).

    ``S+_t = max(0, S+_{t-1} + z_t - k)`` and ``S-_t = max(0, S-_{t-1} - z_t - k)``; a stream
    alarms when ``max(S+, S-) > h``.  ``k`` is half the shift (in standard deviations) the
    detector is tuned for: ``k = 0.5`` targets a 1-sigma shift.  Per-stream ``k`` and ``h``
    are allowed (scalars broadcast).
    """

    def __init__(
        self,
        names: Sequence[str],
        k: float | np.ndarray = 0.5,
        *,
        h: float | np.ndarray,
        restart_on_alarm: bool = True,
    ) -> None:
        self.names = [str(n) for n in names]
        if len(set(self.names)) != len(self.names):
            raise ValueError("stream names must be unique")
        size = len(self.names)
        self.k = _per_stream(k, size, "k")
        self.h = _per_stream(h, size, "h")
        if np.any(self.k < 0) or np.any(self.h <= 0):
            raise ValueError("need k >= 0 and h > 0")
        self.restart_on_alarm = restart_on_alarm
        self.upper = np.zeros(size)
        self.lower = np.zeros(size)
        self.n_alarms = np.zeros(size, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def statistic(self) -> np.ndarray:
        """Current ``max(S+, S-)`` per stream."""
        return np.maximum(self.upper, self.lower)

    @property
    def threshold(self) -> np.ndarray:
        return self.h.copy()

    def update(self, z: np.ndarray, weight: float = 1.0) -> CusumResult:
        """Advance every stream over the rows of ``z`` (n, K); NaN = no observation.

        ``weight`` scales whole increments ``+-z - k``: ``1 / deff`` for clustered rows, so
        that ``n`` rows count as ``n / deff`` independent ones (their sum then has the mean
        ``-k n / deff`` and variance ``n / deff`` of that many, in control).  Scaling ``z``
        alone would leave ``k`` at full weight and, past ``deff ~ (max|z| / k)**2``, make
        the detector unable to alarm at all."""
        if not weight > 0:
            raise ValueError("weight must be positive")
        batch = _as_batch(z, len(self))
        observed = ~np.isnan(batch)
        up = np.where(observed, weight * (batch - self.k[None, :]), 0.0)
        down = np.where(observed, weight * (-batch - self.k[None, :]), 0.0)
        (self.upper, self.lower), result = _scan(
            (up, down), (self.upper, self.lower), self.h, self.restart_on_alarm
        )
        self.n_alarms += result.n_alarms
        return result

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Zero the state of the streams selected by the boolean ``mask`` (all if None)."""
        selected = slice(None) if mask is None else np.asarray(mask, dtype=bool)
        self.upper[selected] = 0.0
        self.lower[selected] = 0.0

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able checkpoint (lists of floats), restored by :meth:`from_state_dict`."""
        return {
            "type": "CusumBank",
            "version": STATE_VERSION,
            "names": list(self.names),
            "k": self.k.tolist(),
            "h": self.h.tolist(),
            "restart_on_alarm": self.restart_on_alarm,
            "upper": self.upper.tolist(),
            "lower": self.lower.tolist(),
            "n_alarms": self.n_alarms.tolist(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> CusumBank:
        _check_state(state, "CusumBank")
        bank = cls(
            state["names"],
            np.asarray(state["k"]),
            h=np.asarray(state["h"]),
            restart_on_alarm=bool(state["restart_on_alarm"]),
        )
        bank.upper = np.asarray(state["upper"], dtype=np.float64)
        bank.lower = np.asarray(state["lower"], dtype=np.float64)
        bank.n_alarms = np.asarray(state["n_alarms"], dtype=np.int64)
        return bank


def kish_design_effect(keys: np.ndarray | None) -> float:
    """Kish's design effect ``sum(m_i**2) / n`` of rows grouped by key (customer).

    Events of one customer repeat its state (a missing field, a plan), so ``n`` clustered
    rows carry about ``n / deff`` independent observations when the within-customer
    correlation is 1 (an upper bound otherwise).  1 without keys or with distinct keys.
    """
    if keys is None or len(keys) == 0:
        return 1.0
    codes, _ = pd.factorize(np.asarray(keys, dtype=object), use_na_sentinel=True)
    counts = np.bincount(codes[codes >= 0]).astype(np.float64)  # missing keys not counted
    n = counts.sum()
    return max(1.0, float(np.sum(counts * counts)) / n) if n > 0 else 1.0


def default_shift(p0: np.ndarray) -> np.ndarray:
    """Designed out-of-control rate ``max(2 p0, p0 + 0.02)``, kept below 1."""
    return np.minimum(np.maximum(2.0 * p0, p0 + 0.02), 0.5 * (1.0 + p0))


class BernoulliCusum:
    """One-sided (upward) rate CUSUMs for 0/1 streams, e.g. "value missing", "unseen category".

    The increment is the log-likelihood ratio of Bernoulli(p1) against Bernoulli(p0):
    ``log(p1/p0)`` for a 1 and ``log((1-p1)/(1-p0))`` for a 0, which is the optimal CUSUM for
    a rate jump from ``p0`` to ``p1``.  A reference rate of exactly 0 (no missing value ever
    seen in training) would make a single 1 an infinite alarm, so ``p0`` is floored at
    ``min_p0``.  Thresholds: :func:`driftline.core.drift.calibration.bernoulli_cusum_threshold`.
    """

    def __init__(
        self,
        names: Sequence[str],
        p0: float | np.ndarray,
        p1: float | np.ndarray | None = None,
        *,
        h: float | np.ndarray,
        min_p0: float = 1e-4,
        restart_on_alarm: bool = True,
    ) -> None:
        self.names = [str(n) for n in names]
        size = len(self.names)
        self.p0 = np.maximum(_per_stream(p0, size, "p0"), min_p0)
        self.p1 = default_shift(self.p0) if p1 is None else _per_stream(p1, size, "p1")
        if np.any(self.p0 >= 1) or np.any(self.p1 <= self.p0) or np.any(self.p1 >= 1):
            raise ValueError("need 0 < p0 < p1 < 1")
        self.h = _per_stream(h, size, "h")
        if np.any(self.h <= 0):
            raise ValueError("need h > 0")
        self.min_p0 = min_p0
        self.restart_on_alarm = restart_on_alarm
        self.step_one = np.log(self.p1 / self.p0)
        self.step_zero = np.log1p(-self.p1) - np.log1p(-self.p0)
        self.state = np.zeros(size)
        self.n_alarms = np.zeros(size, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def statistic(self) -> np.ndarray:
        return self.state.copy()

    @property
    def threshold(self) -> np.ndarray:
        return self.h.copy()

    def update(self, x: np.ndarray, weight: float = 1.0) -> CusumResult:
        """Advance over the rows of ``x`` (n, K) of 0/1 (or bool); NaN = no observation.

        ``weight`` scales the log-likelihood increments of these rows: ``1 / deff`` when the
        rows are clustered (several events of one customer carry the information of fewer
        independent observations; see :func:`kish_design_effect`)."""
        if not weight > 0:
            raise ValueError("weight must be positive")
        batch = _as_batch(x, len(self))
        increments = weight * np.where(
            np.isnan(batch),
            0.0,
            np.where(batch > 0.5, self.step_one[None, :], self.step_zero[None, :]),
        )
        (self.state,), result = _scan((increments,), (self.state,), self.h, self.restart_on_alarm)
        self.n_alarms += result.n_alarms
        return result

    def update_counts(
        self, ones: np.ndarray, zeros: np.ndarray, weight: np.ndarray | float = 1.0
    ) -> CusumResult:
        """Advance by one block per stream: ``ones`` 1s and ``zeros`` 0s, as one increment.

        The block's log-likelihood ratio ``ones * log(p1/p0) + zeros * log((1-p1)/(1-p0))``
        is added at once, scaled per stream by ``weight`` (``1 / phi``: see
        :mod:`driftline.core.drift.serial`).  Judging only at block ends never alarms more
        often than the per-event recursion over the same rows (the per-event path is at
        least as high at every block end), so per-event thresholds stay valid, if cautious.
        """
        weight = np.broadcast_to(np.asarray(weight, dtype=np.float64), (len(self),))
        if not np.all(weight > 0):
            raise ValueError("weight must be positive")
        ones = np.asarray(ones, dtype=np.float64).reshape(len(self))
        zeros = np.asarray(zeros, dtype=np.float64).reshape(len(self))
        increment = weight * (ones * self.step_one + zeros * self.step_zero)
        (self.state,), result = _scan(
            (increment[None, :],), (self.state,), self.h, self.restart_on_alarm
        )
        self.n_alarms += result.n_alarms
        return result

    def reset(self, mask: np.ndarray | None = None) -> None:
        selected = slice(None) if mask is None else np.asarray(mask, dtype=bool)
        self.state[selected] = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "type": "BernoulliCusum",
            "version": STATE_VERSION,
            "names": list(self.names),
            "p0": self.p0.tolist(),
            "p1": self.p1.tolist(),
            "h": self.h.tolist(),
            "min_p0": self.min_p0,
            "restart_on_alarm": self.restart_on_alarm,
            "state": self.state.tolist(),
            "n_alarms": self.n_alarms.tolist(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> BernoulliCusum:
        _check_state(state, "BernoulliCusum")
        detector = cls(
            state["names"],
            np.asarray(state["p0"]),
            np.asarray(state["p1"]),
            h=np.asarray(state["h"]),
            min_p0=float(state["min_p0"]),
            restart_on_alarm=bool(state["restart_on_alarm"]),
        )
        detector.state = np.asarray(state["state"], dtype=np.float64)
        detector.n_alarms = np.asarray(state["n_alarms"], dtype=np.int64)
        return detector


def _check_state(state: dict[str, Any], kind: str) -> None:
    if state.get("type") != kind or state.get("version") != STATE_VERSION:
        raise ValueError(
            f"not a {kind} v{STATE_VERSION} state: {state.get('type')} v{state.get('version')}"
        )
