"""Building the monitor's detectors for a reference profile, and their calibration.

``DetectorSetup`` holds the configuration and, for one reference profile, every detector
(mean and spread CUSUM banks, Bernoulli rate CUSUMs, categorical window tests), the rank
score tables, the serving calibration and the PSI / JS windows, with their dynamic state
empty.  The monitor's other concerns (readings, block judging, checkpoints) build on it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from driftline.core.drift.bins import OTHER
from driftline.core.drift.blocks import OpenBlock
from driftline.core.drift.calibration import FalseAlarmBudget
from driftline.core.drift.cusum import BernoulliCusum, CusumBank, default_shift
from driftline.core.drift.divergence import EventWindow, TimeWindow, pad_shares
from driftline.core.drift.goodness_of_fit import CategoricalWindowTest
from driftline.core.drift.monitor.rank_scores import RankScores
from driftline.core.drift.monitor.thresholds import (
    CUSUM_K,
    MAX_P0,
    WINDOW_THRESHOLDS,
    bernoulli_h,
    block_h,
    vocabulary,
    warn_fraction_for,
    wilson_upper,
)
from driftline.core.drift.monitor.updates import (
    OK,
    SCORE,
    BudgetLike,
    MonitorBudget,
    reference_hash,
)
from driftline.core.drift.reference_check import ReferenceCheck
from driftline.core.drift.serial import HORIZONS, SerialCalibration


class DetectorSetup:
    """Configuration and, for one reference profile, every detector with empty state."""

    def __init__(
        self,
        reference_profile: Mapping[str, Any],
        numeric: Sequence[str],
        categorical: Sequence[str],
        budget: BudgetLike,
        importances: Mapping[str, float] | None = None,
        *,
        window_events: int = 5000,
        window_seconds: float = 300.0,
        clear_windows: int = 3,
        warn_fraction: float | None = None,
        category_window: int = 1000,
        decision_threshold: float = 0.5,
        allowed_lateness_seconds: float = 0.0,
        window_test_resamples: int = 20000,
        thresholds: Mapping[str, Any] | None = None,
        skip_thresholds: bool = False,
    ) -> None:
        if window_events < 1 or category_window < 1 or clear_windows < 1:
            raise ValueError("window sizes and clear_windows must be positive")
        if warn_fraction is not None and not 0.0 < warn_fraction <= 1.0:
            raise ValueError("warn_fraction must be in (0, 1]")
        self.numeric = [str(n) for n in numeric]
        self.categorical = [str(c) for c in categorical]
        features = [*self.numeric, *self.categorical]
        if len(set(features)) != len(features) or SCORE in features:
            raise ValueError("feature names must be unique and differ from the score name")
        self.budget = MonitorBudget(
            false_triggers=float(budget.false_triggers),
            period_days=float(budget.period_days),
            events_per_day=float(budget.events_per_day),
        )
        self.importances = None if importances is None else dict(importances)
        self.window_events = int(window_events)
        self.window_seconds = float(window_seconds)
        self.clear_windows = int(clear_windows)
        self._warn_fraction_given = None if warn_fraction is None else float(warn_fraction)
        self.warn_fraction = 0.5  # set for the budget in _setup
        self.category_window = int(category_window)
        self.decision_threshold = float(decision_threshold)
        self.allowed_lateness_seconds = float(allowed_lateness_seconds)
        self.window_test_resamples = int(window_test_resamples)
        #: Build only the reading maps (``readings``), with placeholder thresholds: for
        #: measuring a reference (:func:`driftline.core.drift.serial.calibrate_reference`).
        self._skip_thresholds = bool(skip_thresholds)
        self._setup(reference_profile, thresholds)

    # ------------------------------------------------------------------ construction

    @property
    def n_detectors(self) -> int:
        """Alarming detectors sharing the budget (see the ``monitor`` package docstring)."""
        return 3 * len(self.numeric) + 3 * len(self.categorical) + 2

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def _setup(self, profile: Mapping[str, Any], thresholds: Mapping[str, Any] | None) -> None:
        """(Re)build every detector for ``profile``; all dynamic state starts empty."""
        profile = json.loads(json.dumps(profile))  # private, JSON-normalized copy
        numeric_ref, categorical_ref = profile.get("numeric", {}), profile.get("categorical", {})
        absent = [n for n in self.numeric if n not in numeric_ref] + [
            c for c in self.categorical if c not in categorical_ref
        ]
        if absent or "score" not in profile:
            raise ValueError(f"reference profile lacks {absent or ['score']}")
        self.reference = profile
        self.reference_hash = reference_hash(profile)
        fab = FalseAlarmBudget(
            false_triggers=self.budget.false_triggers,
            period_days=self.budget.period_days,
            events_per_day=self.budget.events_per_day,
            detectors=self.n_detectors,
        )
        self.arl0 = fab.arl0
        self.window_alpha = fab.window_alpha(window_size=self.category_window)
        #: How much one served event is worth, per stream, measured on the reference
        #: stream as served (``monitor`` package docstring, "Serially dependent features").
        self.calibration = SerialCalibration.from_profile(profile)
        self.block_events = self.calibration.block_events
        self.warn_fraction = (
            self._warn_fraction_given
            if self._warn_fraction_given is not None
            else warn_fraction_for(self.arl0, self.budget.period_days, self.block_events)
        )

        # Rank scores of numeric features and of the score (last column), per reference bin.
        streams = [*self.numeric, SCORE]
        entries = [numeric_ref[n] for n in self.numeric] + [profile["score"]]
        tables = [
            RankScores.from_profile(e.get("edges") or [], e.get("shares") or []) for e in entries
        ]
        self._rank_tables = tables
        width = max((len(t.probs) for t in tables), default=0) + 1
        # Column -1 (a missing value's bin) stays NaN: the CUSUM skips the row.
        self._z_table = np.full((len(tables), width), np.nan)
        self._v_table = np.full((len(tables), width), np.nan)
        for j, table in enumerate(tables):
            if table.probs.sum() > 0:  # else: never observed, the row stays NaN (inactive)
                self._z_table[j, : len(table.probs)] = table.z
                self._v_table[j, : len(table.probs)] = table.v

        given = dict(thresholds or {})
        h_mean = given.get("mean")
        h_var = given.get("variance")
        # One standardized reading per block: ARL0 counted in blocks, normal increments.
        h_block = 1.0 if self._skip_thresholds else block_h(self.arl0 / self.block_events)
        if h_mean is None:
            h_mean = [h_block] * len(tables)
        if h_var is None:
            h_var = [h_block] * len(tables)
        calibration_names = [*self.numeric, "score"]
        self._phi_mean = np.array([self.calibration.phi(n, "mean") for n in calibration_names])
        self._phi_var = np.array([self.calibration.phi(n, "variance") for n in calibration_names])
        # The reference is a sample: its bin shares are off the truth by sampling error, and
        # a block sum turns a tiny per-event offset into a sizeable reading.  Readings within
        # ALLOWANCE_Z standard errors of that offset are tolerated (``monitor`` package docstring).
        self._n_eff_mean, self._n_eff_var = (
            self._effective_reference_size(profile, calibration_names, detector)
            for detector in ("mean", "variance")
        )
        k = CUSUM_K
        self.mean_bank = CusumBank(streams, k, h=np.asarray(h_mean, dtype=np.float64))
        self.variance_bank = CusumBank(streams, k, h=np.asarray(h_var, dtype=np.float64))

        # Bernoulli streams: numeric missing, categorical missing, categorical unseen.
        self._vocab = {
            c: vocabulary(categorical_ref[c].get("shares", {})) for c in self.categorical
        }
        self._bern_streams: list[tuple[str, str]] = (
            [(n, "missing") for n in self.numeric]
            + [(c, "missing") for c in self.categorical]
            + [(c, "unseen") for c in self.categorical]
        )
        rates = (
            [float(numeric_ref[n].get("missing_rate") or 0.0) for n in self.numeric]
            + [float(categorical_ref[c].get("missing_rate") or 0.0) for c in self.categorical]
            + [self._vocab[c][OTHER] for c in self.categorical]
        )
        # A rare reference rate is known only to within its sampling error, and events of
        # one customer are not independent: the rate is taken at its upper 97.5% Wilson
        # bound over the reference's customers (``n_customers``, else its rows), so that
        # one or two customers in the reference do not make p0 look ten times too small.
        n_ref = float(profile.get("n_customers") or profile.get("n_rows") or 0)
        rates_array = np.clip(np.array(rates, dtype=np.float64), 0.0, 1.0)
        #: Rate streams that can watch for a rise (``monitor`` package docstring, "Features missing
        #: throughout"); the others are fed NaN (no observation) on every row.
        self._bern_active = rates_array <= MAX_P0
        p0 = np.maximum(wilson_upper(np.minimum(rates_array, MAX_P0), n_ref), 1e-4)
        p1 = default_shift(p0)
        names = [f"{f}:{d}" for f, d in self._bern_streams]
        if self._skip_thresholds:
            h_bern = np.ones(len(names))
        elif given.get("bernoulli") is not None:
            h_bern = np.asarray(given["bernoulli"], dtype=np.float64)
        else:
            h_bern = np.array(
                [bernoulli_h(self.arl0, float(a), float(b)) for a, b in zip(p0, p1, strict=True)]
            )
        self._phi_rate = np.array([self.calibration.phi(f, d) for f, d in self._bern_streams])
        cal = self.calibration
        self._rho_mean = np.array(
            [[cal.rho(n, "mean", h) for n in calibration_names] for h in HORIZONS]
        )
        self._rho_var = np.array(
            [[cal.rho(n, "variance", h) for n in calibration_names] for h in HORIZONS]
        )
        self._rho_rate = np.array(
            [[cal.rho(f, d, h) for f, d in self._bern_streams] for h in HORIZONS]
        ).reshape(len(HORIZONS), len(self._bern_streams))
        self._open = OpenBlock(len(tables), len(self._bern_streams))
        #: Customer keys of the latest completed blocks (``_clustering_ratio``).
        self._recent_keys: list[np.ndarray] = []
        self.bernoulli = (
            BernoulliCusum(names, p0, p1, h=h_bern) if names else None
        )  # no stream without features

        cat_thresholds = dict(given.get("category_mix", {}))
        self.category_tests: dict[str, CategoricalWindowTest] = {}
        for c in self.categorical:
            # Resampling costs ~1 s per feature at small alpha; a new model version usually
            # keeps the vocabulary, so reuse critical values computed for the same inputs.
            key = (
                tuple(self._vocab[c].items()),
                self.category_window,
                self.window_alpha,
                self.window_test_resamples,
            )
            known = (
                (math.inf, math.inf)
                if self._skip_thresholds
                else cat_thresholds.get(c) or WINDOW_THRESHOLDS.get(key)
            )
            test = CategoricalWindowTest(
                self._vocab[c],
                self.category_window,
                self.window_alpha,
                n_resamples=self.window_test_resamples,
                thresholds=None if known is None else (float(known[0]), float(known[1])),
            )
            if not self._skip_thresholds:
                WINDOW_THRESHOLDS[key] = (test.threshold, test.chi2_threshold)
            self.category_tests[c] = test
        #: (feature, detector) pairs with nothing to test (``monitor`` package docstring, "Features
        #: missing throughout"): never alarm, left out of statistics and thresholds.
        self.inactive: frozenset[tuple[str, str]] = frozenset(
            [
                (name, detector)
                for name, table in zip(streams, tables, strict=True)
                if table.probs.sum() <= 0
                for detector in ("mean", "variance")
            ]
            + [
                stream
                for stream, active in zip(self._bern_streams, self._bern_active, strict=True)
                if not active
            ]
            + [(c, "category_mix") for c, t in self.category_tests.items() if not t.has_reference]
        )
        #: Vocabulary position of each category (a dict: one C-level lookup per value).
        self._category_code = {
            c: {str(v): i for i, v in reversed(list(enumerate(self._vocab[c])))}
            for c in self.categorical
        }

        # Binning for PSI / JS: numeric, categorical, then the score.
        self._columns = [*self.numeric, *self.categorical, SCORE]
        ref_shares: list[list[float]] = []
        self._edges: list[np.ndarray] = []
        for name in [*self.numeric, SCORE]:
            entry = profile["score"] if name == SCORE else numeric_ref[name]
            edges = np.asarray(entry.get("edges") or [], dtype=np.float64)
            self._edges.append(edges)
            shares = list(entry.get("shares") or [])
            ref_shares.append(shares if shares else [0.0] * (len(edges) + 1))
        categorical_shares = [list(self._vocab[c].values()) for c in self.categorical]
        ref_shares = ref_shares[:-1] + categorical_shares + ref_shares[-1:]
        self._ref_shares, self._ref_mask = pad_shares(ref_shares)
        self.reference_check = ReferenceCheck(
            self._columns,
            self._ref_shares,
            self._ref_mask,
            [
                name != SCORE and sum(s) > 0
                for name, s in zip(self._columns, ref_shares, strict=True)
            ],
        )
        n_bins = [len(s) for s in ref_shares]
        self.event_window = EventWindow(self.window_events, n_bins)
        self.time_window = TimeWindow(self.window_seconds, n_bins, self.allowed_lateness_seconds)

        # Dynamic state of the orchestration itself.
        tracked = [*self.features, SCORE]
        self.events_seen = 0
        self.states = dict.fromkeys(tracked, OK)
        self.clean_windows = dict.fromkeys(tracked, 0)
        self.drift_since_ms: dict[str, int] = {}
        self.drift_since_index: dict[str, int] = {}
        self._alarmed_in_window = dict.fromkeys(tracked, False)
        self._last_g = dict.fromkeys(self.categorical, 0.0)
        nan = dict.fromkeys(self._columns, math.nan)
        self._latest: dict[str, dict[str, float]] = {
            "psi": dict(nan),
            "js": dict(nan),
            "psi_time": dict(nan),
            "js_time": dict(nan),
            "missing_ratio": dict.fromkeys(self.features, math.nan),
            "unseen_ratio": dict.fromkeys(self.categorical, math.nan),
        }

    def thresholds_dict(self) -> dict[str, Any]:
        """Calibrated thresholds (JSON-able), reusable through ``thresholds=``."""
        return {
            "mean": self.mean_bank.h.tolist(),
            "variance": self.variance_bank.h.tolist(),
            "bernoulli": [] if self.bernoulli is None else self.bernoulli.h.tolist(),
            "category_mix": {  # an inert test's infinite thresholds are rebuilt, not stored
                c: [t.threshold, t.chi2_threshold]
                for c, t in self.category_tests.items()
                if t.has_reference
            },
        }

    def _effective_reference_size(
        self, profile: Mapping[str, Any], names: Sequence[str], detector: str
    ) -> np.ndarray:
        """Independent observations behind each stream's reference shares.

        The profile's ``n_rows`` were sampled from the reference period's served events,
        a fraction ``f`` of them.  Rows of one customer repeat its value as far as the
        stream's within-customer correlation ``rho`` goes, so they count as ``n_rows /
        (1 + rho f (deff - 1))`` independent ones (Kish), ``deff`` the design effect of the
        whole period: about the number of customers for a profile field, ``n_rows`` for a
        value drawn afresh on every event.  Without a measured calibration: ``n_rows``."""
        n_rows = float(profile.get("n_rows") or 0)
        sizes = np.full(len(names), max(n_rows, 1.0))
        score_rows = (profile.get("score") or {}).get("n_rows")
        if score_rows:  # the score's reference may come from fewer rows (held-out customers)
            sizes[-1] = max(float(score_rows), 1.0)
        c = self.calibration
        if not c.measured or n_rows <= 0 or c.n_events <= 0:
            return sizes
        share = min(1.0, n_rows / c.n_events)
        excess = c.whole_design_effect - 1.0
        rho = np.array([c.rho(n, detector, max(HORIZONS)) for n in names])
        return sizes / (1.0 + rho * share * excess)
