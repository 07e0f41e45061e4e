"""Windowed goodness-of-fit test of a categorical feature against its reference shares.

A CUSUM watches one rate; a categorical feature's drift can move mass between any of its
~20 categories, so each tumbling window of ``window_size`` observed values is tested as a
whole with the G (likelihood-ratio) statistic.  The critical value is resampled from the
reference multinomial at exactly that window size
(:func:`driftline.core.drift.calibration.window_test_threshold`), because the chi2(B - 1)
asymptotic is wrong for small windows and rare categories.

The multinomial critical value assumes independent observations.  A stream of events is
not: a customer with five events in a window contributes five copies of its plan or region
(profile fields are constant per customer), which inflates G by up to the number of copies.
Measured on a stationary simulated stream of 400 customers (about 2.5 events per customer
per window of 1000), that alone raised false alarms.  With the customer key of each value
(``update(values, keys)``) a closed window divides G by Kish's design effect for cluster
samples, ``deff = sum(m_i**2) / n`` (``m_i`` the values of customer ``i`` in the window,
``n`` their total): the first-order Rao-Scott correction for a within-customer correlation
of 1, which is the case for profile fields and an upper bound otherwise.  Without keys,
``deff = 1``.

A reference without any observed value (the feature was missing in every reference row,
e.g. ``plan_type`` on a purchase-only log) gives no shares to test against: the test is
then *inert* (:attr:`CategoricalWindowTest.has_reference` false).  It still counts
windows, never alarms, and its threshold is infinite; values that do appear are all
outside the vocabulary, which is the ``unseen`` detector's business.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from driftline.core.drift.bins import OTHER
from driftline.core.drift.calibration import window_test_threshold
from driftline.core.drift.cusum import kish_design_effect
from driftline.core.drift.divergence import chi2_statistic, g_statistic, smooth_shares


@dataclass(frozen=True)
class WindowTestResult:
    """One completed window: its counts, statistics and whether G exceeded the threshold."""

    index: int  # ordinal of the window (0, 1, ...)
    counts: dict[str, int]
    g: float  # raw G statistic
    chi2: float
    threshold: float  # critical value of G
    chi2_threshold: float
    alarm: bool  # statistic > threshold
    design_effect: float = 1.0  # Kish's deff of the window (1 without customer keys)
    statistic: float = 0.0  # g / design_effect: what is compared with the threshold


class CategoricalWindowTest:
    """G test of consecutive windows of ``window_size`` observed values vs the reference.

    ``reference_shares`` is the profile's category -> share mapping including ``"__other__"``;
    values outside the vocabulary count as ``"__other__"``; missing values (None/NaN) are
    skipped (their rate has its own detector).  Categories are compared as strings, like the
    profile.  Shares are smoothed (:func:`smooth_shares`) so that a category with reference
    share 0 — typically ``"__other__"`` — gives a large but finite statistic.
    """

    def __init__(
        self,
        reference_shares: Mapping[str, float],
        window_size: int,
        alpha: float,
        *,
        n_resamples: int = 20000,
        seed: int | None = 0,
        thresholds: tuple[float, float] | None = None,
    ) -> None:
        """``thresholds`` = (G, chi2) critical values already calibrated (checkpoint restore);
        otherwise they are resampled here with ``n_resamples`` and ``seed``.  Shares that
        are all 0 (no observed reference value) make an inert test (module docstring)."""
        shares = {str(c): float(v) for c, v in reference_shares.items()}
        shares.setdefault(OTHER, 0.0)
        self.reference_shares = shares
        self.categories = list(shares)
        raw = np.array([shares[c] for c in self.categories], dtype=np.float64)
        if not np.isfinite(raw).all() or (raw < 0).any():
            raise ValueError(f"reference shares must be finite and non-negative: {shares}")
        #: False when the reference observed no value: nothing to test, never alarms.
        self.has_reference = bool(raw.sum() > 0)
        if not self.has_reference:
            raw = np.ones_like(raw)  # any law will do: G is never compared with anything
            thresholds = (math.inf, math.inf)
        self.reference = smooth_shares(raw / raw.sum())
        self.window_size = window_size
        self.alpha = alpha
        if thresholds is None:
            calibrated = window_test_threshold(
                self.reference, window_size, alpha, n_resamples=n_resamples, seed=seed, eps=0.0
            )
            thresholds = (calibrated.g, calibrated.chi2)
        self.threshold, self.chi2_threshold = (float(t) for t in thresholds)
        self._index = pd.Index(self.categories)
        self._other = self.categories.index(OTHER)
        self._counts = np.zeros(len(self.categories), dtype=np.int64)
        self._filled = 0
        self._keys: list[np.ndarray] = []  # customer keys of the open window's values
        self.n_windows = 0

    def category_codes(self, values: Sequence[object] | np.ndarray | pd.Series) -> np.ndarray:
        """Category index of each observed value (unknown -> ``"__other__"``), missing dropped."""
        series = pd.Series(values, dtype=object)
        observed = series[series.notna()].map(str)
        codes = self._index.get_indexer(observed)
        return np.where(codes < 0, self._other, codes)

    def update(
        self,
        values: Sequence[object] | np.ndarray | pd.Series,
        keys: Sequence[object] | np.ndarray | None = None,
    ) -> list[WindowTestResult]:
        """Add a batch of values (and their customer keys, aligned); return the windows it
        completed (usually none or one)."""
        codes = self.category_codes(values)
        observed_keys = None
        if keys is not None:
            key_array = np.asarray(keys, dtype=object)
            if len(key_array) != len(values):
                raise ValueError(f"{len(values)} values but {len(key_array)} keys")
            # Keys as strings, as the checkpoint stores them: customer 3 and "3" are one.
            observed = pd.notna(pd.Series(values, dtype=object)).to_numpy()
            observed_keys = pd.Series(key_array[observed], dtype=object).astype(str).to_numpy()
        return self._add(codes, observed_keys)

    def _add(self, codes: np.ndarray, observed_keys: np.ndarray | None) -> list[WindowTestResult]:
        results: list[WindowTestResult] = []
        position = 0
        while position < codes.size:
            take = min(self.window_size - self._filled, codes.size - position)
            chunk = codes[position : position + take]
            self._counts += np.bincount(chunk, minlength=len(self.categories))
            if observed_keys is not None:
                self._keys.append(observed_keys[position : position + take])
            self._filled += take
            position += take
            if self._filled == self.window_size:
                results.append(self._close())
        return results

    def update_codes(
        self, codes: np.ndarray, keys: np.ndarray | None = None
    ) -> list[WindowTestResult]:
        """:meth:`update` with values already coded (index into :attr:`categories`, -1 for
        missing) and keys already strings: the monitor codes each batch once for all its
        detectors."""
        codes = np.asarray(codes, dtype=np.int64)
        observed = codes >= 0
        observed_keys = None if keys is None else np.asarray(keys, dtype=object)[observed]
        return self._add(codes[observed], observed_keys)

    def _design_effect(self) -> float:
        """Kish's ``sum(m_i**2) / n`` over the window's customers; 1 without (all) keys."""
        keys = np.concatenate(self._keys) if self._keys else np.empty(0, dtype=object)
        if keys.size != self._filled:
            return 1.0
        return kish_design_effect(keys)

    def _close(self) -> WindowTestResult:
        g = float(g_statistic(self._counts, self.reference))
        pearson = float(chi2_statistic(self._counts, self.reference))
        deff = self._design_effect()
        result = WindowTestResult(
            index=self.n_windows,
            counts={c: int(n) for c, n in zip(self.categories, self._counts, strict=True)},
            g=g,
            chi2=pearson,
            threshold=self.threshold,
            chi2_threshold=self.chi2_threshold,
            alarm=self.has_reference and g / deff > self.threshold,
            design_effect=deff,
            statistic=g / deff,
        )
        self._counts = np.zeros_like(self._counts)
        self._filled = 0
        self._keys = []
        self.n_windows += 1
        return result

    def state_dict(self) -> dict[str, Any]:
        """JSON-able checkpoint, thresholds included (no resampling on restore)."""
        return {
            "type": "CategoricalWindowTest",
            "version": 1,
            "reference_shares": dict(self.reference_shares),
            "window_size": self.window_size,
            "alpha": self.alpha,
            # An inert test's infinite thresholds are not JSON: rebuilt on restore.
            "thresholds": [self.threshold, self.chi2_threshold] if self.has_reference else None,
            "counts": self._counts.tolist(),
            "filled": self._filled,
            "keys": [str(k) for part in self._keys for k in part.tolist()],
            "n_windows": self.n_windows,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> CategoricalWindowTest:
        if state.get("type") != "CategoricalWindowTest" or state.get("version") != 1:
            raise ValueError("not a CategoricalWindowTest v1 state")
        thresholds = state["thresholds"]
        test = cls(
            state["reference_shares"],
            int(state["window_size"]),
            float(state["alpha"]),
            thresholds=None if thresholds is None else (thresholds[0], thresholds[1]),
        )
        test._counts = np.asarray(state["counts"], dtype=np.int64)
        test._filled = int(state["filled"])
        keys = state.get("keys") or []
        test._keys = [np.asarray(keys, dtype=object)] if keys else []
        test.n_windows = int(state["n_windows"])
        return test
