"""Drift monitor: every detector of :mod:`driftline.core.drift` wired to one reference profile.

Pure orchestration (no Kafka, no metrics): the worker calls :meth:`DriftMonitor.update` with
each scored micro-batch and exports the returned :class:`DriftUpdate`; the retrain trigger
(:mod:`driftline.core.drift.trigger`) consumes the same object.

Detectors, per feature (names used in :attr:`DriftUpdate.statistics` and alarms):

=============== ===================== ================================================
feature kind    detector              what it watches
=============== ===================== ================================================
numeric         ``mean``              CUSUM on one reading per block: sum of rank scores
numeric         ``variance``          the same on spread scores
numeric         ``missing``           Bernoulli CUSUM on the block's missing count
categorical     ``category_mix``      G test per window of observed values
categorical     ``unseen``            Bernoulli CUSUM on "value outside the vocabulary"
categorical     ``missing``           Bernoulli CUSUM on the missing indicator
score           ``mean``/``variance`` the model score treated as a numeric feature
=============== ===================== ================================================

Rank scores
-----------
CUSUMs see the mid-rank normal score of each value's frozen reference bin, standardized
under the reference (:class:`RankScores`), not ``(x - mean) / std``: per-event features are
skewed counts and sums whose tails broke the normal-theory thresholds.

Blocks and the serving calibration
----------------------------------
Served features are serially dependent and clustered by customer, so the mean, spread and
rate detectors judge fixed blocks of ``block_events`` events cut on the event index (never
on batches: the same events give the same verdicts however batched).  A block's reading
per stream is ``sum(z) / sqrt(n * phi_eff)``: ``phi`` measured on the reference period as
served (:mod:`driftline.core.drift.serial`), or ``1 + rho (deff - 1)`` of the latest 1-8
blocks' customers when larger (a partition's backlog read in a row).  ``k`` grows by
:data:`ALLOWANCE_Z` standard errors of the reference's own sampling error.  Categorical
window tests divide G by the window's design effect.  docs/drift-detection.md derives it.

False-alarm budget (union bound)
--------------------------------
All ``D = 3 * numeric + 3 * categorical + 2`` alarming detectors draw on one budget of
``false_triggers`` per ``period_days``.  By linearity of expectation the expected number of
false alarms summed over the detectors is ``D * period_days * events_per_day / ARL0``, so
every CUSUM gets ``ARL0 = D * period_days * events_per_day / false_triggers`` and every
windowed test the level ``alpha = false_triggers / (D * windows per period)``
(:class:`~driftline.core.drift.calibration.FalseAlarmBudget`).  For one trigger this is the
union bound on "any detector false-alarms"; it is conservative because detectors of one row
are positively correlated and missing values are skipped.

States
------
``OK (0) -> WARN (1)`` while any current statistic of the feature exceeds
``warn_fraction * threshold`` (not latched: WARN follows the statistics).  ``DRIFT (2)`` as
soon as a detector alarms; the alarmed CUSUM restarts from 0 (so a persisting shift alarms
again, which keeps the latch closed) and the feature stays in DRIFT until ``clear_windows``
consecutive completed event windows were *clean*: no alarm of the feature inside the window
and, at the window's last event, every statistic of the feature below half its threshold.
A batch is cut at event-window boundaries before the CUSUMs run so that "at the window's
last event" is exact whatever the batch size.

Features missing throughout
---------------------------
A field the reference never observed (``age`` or ``plan_type`` on a purchase-only log)
leaves some detectors nothing to test, and they are *inactive* (:attr:`DriftMonitor.inactive`):
they are fed nothing, never alarm and are left out of ``statistics`` and ``thresholds``.
The value detectors (``mean``, ``variance``, ``category_mix``) need reference values.  A
rate detector (``missing``, ``unseen``) watches for a *rise* above its reference rate and
needs room above it: with a rate above :data:`MAX_P0` (1.0 for a field never observed) a
missing value is what the reference expects, and no calibrated CUSUM fits between the rate
and 1 (the Bernoulli threshold's lattice breaks down there: measured at ``p0 = 0.999``,
thousands of false alarms per 200k events).  A ``p0`` capped at 0.99 below such a rate
would make every missing value evidence of drift.  A field missing in the
reference that takes values live is still seen, for a categorical field, by ``unseen``
(its vocabulary is empty).

PSI and Jensen-Shannon per feature over tumbling event windows (``window_events``) and
event-time windows (``window_seconds``) against the frozen reference bins are reported for
dashboards; they never alarm.

The checkpoint (:meth:`DriftMonitor.state_dict`) is plain JSON data: numbers, strings and
lists, never a pickle, because it is read back from a Kafka topic that anyone allowed to
produce to it could write.  (Version 2 also held river's ADWIN on the score stream as a
pickle; ADWIN's flag was never exported or used, so version 3 dropped it, and a version-2
checkpoint is restored without ever unpickling that field.)
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import repeat
from typing import Any, Protocol

import numpy as np
import pandas as pd
from scipy.stats import norm

from driftline.core.drift.bins import OTHER, assign_bins
from driftline.core.drift.blocks import Block, OpenBlock
from driftline.core.drift.calibration import (
    FalseAlarmBudget,
    bernoulli_cusum_threshold,
    cusum_threshold,
)
from driftline.core.drift.cusum import (
    BernoulliCusum,
    CusumBank,
    CusumResult,
    default_shift,
    kish_design_effect,
)
from driftline.core.drift.divergence import (
    EventWindow,
    TimeWindow,
    WindowCounts,
    jensen_shannon,
    pad_shares,
    psi,
)
from driftline.core.drift.goodness_of_fit import CategoricalWindowTest
from driftline.core.drift.reference_check import ReferenceCheck
from driftline.core.drift.serial import HORIZONS, SerialCalibration

OK, WARN, DRIFT = 0, 1, 2
#: Pseudo-feature name of the model score in statistics, alarms and states.
SCORE = "__score__"
STATE_VERSION = 4
#: Checkpoint versions :meth:`DriftMonitor.from_state_dict` reads.  Versions 2 and 3 judged
#: every event with per-event thresholds: their sums mean something else, so they are not
#: read (the worker then starts the monitor clean, saying so).
READABLE_VERSIONS = (4,)
#: CUSUM reference value in rank-score standard deviations: half the shift it is tuned for
#: (1 sigma).  Smaller shifts are still found, later (see ``driftline bench drift``).
CUSUM_K = 0.5
#: Reference sampling error tolerated by the block CUSUMs, in standard errors: the offset
#: of a block reading caused by the reference's finite sample has a standard deviation of
#: ``sqrt(block_events / n_rows)``; ``k`` grows by this many of them.
ALLOWANCE_Z = 2.0
#: Rank score given to values in a bin the reference never saw, when the reference is
#: constant (one bin holds everything): outside the reference, on the side it lies.
OUTLIER_SCORE = 3.0
#: Highest reference rate a Bernoulli CUSUM is calibrated for; a rate detector whose
#: reference rate is above it is inactive (module docstring, "Features missing throughout").
MAX_P0 = 0.99


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


class BudgetLike(Protocol):
    """The three operator numbers of a false-alarm budget (a ``FalseAlarmBudget`` fits)."""

    false_triggers: float
    period_days: float
    events_per_day: float


@dataclass(frozen=True, kw_only=True)
class MonitorBudget:
    """Budget without a detector count: the monitor counts its own detectors."""

    false_triggers: float = 1.0
    period_days: float = 30.0
    events_per_day: float


@dataclass(frozen=True)
class Alarm:
    """One detector crossing its threshold.  ``event_index`` is the ordinal of the event (since
    the monitor started on this reference) at which it crossed, for measuring delays."""

    feature: str
    detector: str
    statistic: float
    threshold: float
    event_index: int
    event_time_ms: int


@dataclass(frozen=True)
class PredictionDrift:
    """Score-stream summary of one batch; ``state`` is the score's latched state."""

    mean_score: float
    positive_rate: float
    state: int


@dataclass(frozen=True)
class DriftUpdate:
    """Everything one :meth:`DriftMonitor.update` learned; JSON-able via :meth:`to_dict`."""

    reference_hash: str
    n_events: int  # events in this batch
    events_seen: int  # events since the monitor (re)started on this reference
    event_time_min_ms: int | None
    event_time_max_ms: int | None
    states: dict[str, int]  # per feature, score included under SCORE
    statistics: dict[str, dict[str, float]]  # feature -> detector -> current statistic
    thresholds: dict[str, dict[str, float]]
    psi: dict[str, float]  # latest completed event window
    js: dict[str, float]
    psi_time: dict[str, float]  # latest completed time window
    js_time: dict[str, float]
    missing_ratio: dict[str, float]  # latest completed event window
    unseen_ratio: dict[str, float]  # categorical features, latest completed event window
    alarms: list[Alarm]
    drifted: list[str]  # input features in DRIFT (score excluded: see ``prediction``)
    drifted_share: float  # importance-weighted share of input features in DRIFT
    prediction: PredictionDrift
    late_events: int = 0  # events dropped by the time window so far
    windows_closed: int = 0  # event windows completed in this batch
    #: Event time of the alarm that latched each feature now in DRIFT (score included):
    #: when its drift began, whatever the batching (the retrain trigger's incident start).
    drift_since_ms: dict[str, int] = field(default_factory=dict)
    #: Event ordinal (``Alarm.event_index``) of those latching alarms: arrival order, which
    #: event times across interleaved partitions are not.
    drift_since_index: dict[str, int] = field(default_factory=dict)
    #: Weight of each input feature in ``drifted_share`` (they sum to 1).
    share_weights: dict[str, float] = field(default_factory=dict)
    #: The first events' verdict (``reference_check``): None until made, then True when
    #: most features are off the reference at once; ``reference_off``: PSI of those off.
    reference_mismatch: bool | None = False
    reference_off: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-able; NaN stays a float NaN, which ``json`` writes as NaN)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("alarms", "prediction")}
        out["alarms"] = [a.__dict__.copy() for a in self.alarms]
        out["prediction"] = self.prediction.__dict__.copy()
        return out


def reference_hash(profile: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace) of a reference profile: the
    identity of "what we compare against", shared by every worker serving the same model."""
    canonical = json.dumps(profile, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# Thresholds depend only on (ARL0, rates): cache them so that a restart, a second monitor on
# the same model (tests, several partitions) or a reset does not pay the lattice solve again.
@lru_cache(maxsize=256)
def _block_h(arl0_blocks: float) -> float:
    return cusum_threshold(max(arl0_blocks, 2.0), k=CUSUM_K, two_sided=True)


@lru_cache(maxsize=1024)
def _bernoulli_h(arl0: float, p0: float, p1: float) -> float:
    """The lattice threshold; past what the lattice can resolve (a budget of 10^8 events a
    day and more), ``log(arl0)``: a log-likelihood-ratio CUSUM's in-control ARL is at least
    ``exp(h)``, so that bound is conservative, never short of the budget."""
    try:
        return bernoulli_cusum_threshold(arl0, p0, p1)
    except ValueError:
        return math.log(arl0)


#: Critical values of categorical window tests by (vocabulary, window, alpha, resamples).
_WINDOW_THRESHOLDS: dict[tuple[Any, ...], tuple[float, float]] = {}


def wilson_upper(rate: np.ndarray, n: float, z: float = 1.96) -> np.ndarray:
    """Upper end of the Wilson score interval of a proportion observed on ``n`` units
    (the rate itself when ``n`` is unknown), at most :data:`MAX_P0`."""
    rate = np.clip(rate, 0.0, 1.0)
    if n <= 0:
        return rate
    centre = rate + z * z / (2 * n)
    spread = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return np.minimum((centre + spread) / (1 + z * z / n), MAX_P0)


def _vocabulary(shares: Mapping[str, float]) -> dict[str, float]:
    """Category -> share with ``__other__`` present, in the order CategoricalWindowTest uses."""
    vocabulary = {str(c): float(v) for c, v in shares.items()}
    vocabulary.setdefault(OTHER, 0.0)
    return vocabulary


class DriftMonitor:
    """Drift detectors of all features and of the score against one reference profile.

    ``thresholds`` (optional) are calibrated values from :meth:`thresholds_dict` of a monitor
    with the same reference and budget; they skip the calibration (used by checkpoints).
    """

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
        warn_fraction: float = 0.5,
        category_window: int = 1000,
        decision_threshold: float = 0.5,
        allowed_lateness_seconds: float = 0.0,
        window_test_resamples: int = 20000,
        thresholds: Mapping[str, Any] | None = None,
        skip_thresholds: bool = False,
    ) -> None:
        if window_events < 1 or category_window < 1 or clear_windows < 1:
            raise ValueError("window sizes and clear_windows must be positive")
        if not 0.0 < warn_fraction <= 1.0:
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
        self.warn_fraction = float(warn_fraction)
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
        """Alarming detectors sharing the budget (see the module docstring)."""
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
        #: stream as served (module docstring, "Serially dependent features").
        self.calibration = SerialCalibration.from_profile(profile)
        self.block_events = self.calibration.block_events

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
        h_block = 1.0 if self._skip_thresholds else _block_h(self.arl0 / self.block_events)
        if h_mean is None:
            h_mean = [h_block] * len(tables)
        if h_var is None:
            h_var = [h_block] * len(tables)
        calibration_names = [*self.numeric, "score"]
        self._phi_mean = np.array([self.calibration.phi(n, "mean") for n in calibration_names])
        self._phi_var = np.array([self.calibration.phi(n, "variance") for n in calibration_names])
        # The reference is a sample: its bin shares are off the truth by sampling error, and
        # a block sum turns a tiny per-event offset into a sizeable reading.  Readings within
        # ALLOWANCE_Z standard errors of that offset are tolerated (module docstring).
        self._n_eff_mean, self._n_eff_var = (
            self._effective_reference_size(profile, calibration_names, detector)
            for detector in ("mean", "variance")
        )
        k = CUSUM_K
        self.mean_bank = CusumBank(streams, k, h=np.asarray(h_mean, dtype=np.float64))
        self.variance_bank = CusumBank(streams, k, h=np.asarray(h_var, dtype=np.float64))

        # Bernoulli streams: numeric missing, categorical missing, categorical unseen.
        self._vocab = {
            c: _vocabulary(categorical_ref[c].get("shares", {})) for c in self.categorical
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
        #: Rate streams that can watch for a rise (module docstring, "Features missing
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
                [_bernoulli_h(self.arl0, float(a), float(b)) for a, b in zip(p0, p1, strict=True)]
            )
        self._phi_rate = np.array([self.calibration.phi(f, d) for f, d in self._bern_streams])
        c = self.calibration
        self._rho_mean = np.array(
            [[c.rho(n, "mean", h) for n in calibration_names] for h in HORIZONS]
        )
        self._rho_var = np.array(
            [[c.rho(n, "variance", h) for n in calibration_names] for h in HORIZONS]
        )
        self._rho_rate = np.array(
            [[c.rho(f, d, h) for f, d in self._bern_streams] for h in HORIZONS]
        ).reshape(len(HORIZONS), len(self._bern_streams))
        self._open = OpenBlock(len(tables), len(self._bern_streams))
        #: Customer keys of the latest completed blocks (``_clustering_ratio``).
        self._recent_keys: list[np.ndarray] = []
        self.bernoulli = (
            BernoulliCusum(names, p0, p1, h=h_bern) if names else None
        )  # no stream without features

        cat_thresholds = dict(given.get("category_mix", {}))
        self.category_tests = {}
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
                else cat_thresholds.get(c) or _WINDOW_THRESHOLDS.get(key)
            )
            test = CategoricalWindowTest(
                self._vocab[c],
                self.category_window,
                self.window_alpha,
                n_resamples=self.window_test_resamples,
                thresholds=None if known is None else (float(known[0]), float(known[1])),
            )
            if not self._skip_thresholds:
                _WINDOW_THRESHOLDS[key] = (test.threshold, test.chi2_threshold)
            self.category_tests[c] = test
        #: (feature, detector) pairs with nothing to test (module docstring, "Features
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

    def reset_for(self, new_reference: Mapping[str, Any]) -> None:
        """Swap the reference (a new model version) and restart every detector and window.

        Statistics accumulated against the old reference say nothing about the new model, and
        a latched DRIFT of the old model must not trigger a retrain of the new one.
        """
        self._setup(new_reference, None)

    # ------------------------------------------------------------------ update

    def update(
        self,
        features: pd.DataFrame,
        scores: np.ndarray,
        event_time_ms: np.ndarray,
        keys: np.ndarray | None = None,
    ) -> DriftUpdate:
        """Advance every detector over one batch (rows in arrival order).

        ``keys`` (the customer id of each row) lets the categorical window tests discount
        repeated events of one customer (design effect, see ``goodness_of_fit``)."""
        n = len(features)
        if keys is not None:
            if len(keys) != n:
                raise ValueError(f"{n} feature rows but {len(keys)} keys")
            keys = _string_keys(keys)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        times = np.asarray(event_time_ms, dtype=np.int64).reshape(-1)
        if len(scores) != n or len(times) != n:
            raise ValueError(f"{n} feature rows, {len(scores)} scores, {len(times)} times")

        z, v, bern, cat_bins, numeric_bins = self.readings(features, scores)
        bins = np.column_stack([numeric_bins[:, :-1], cat_bins, numeric_bins[:, -1:]])
        self.reference_check.update(bins)

        alarms: list[Alarm] = []
        windows_closed = 0
        start = 0
        for stop in self._segment_ends(n):
            segment_keys = None if keys is None else keys[start:stop]
            self._open.add(
                z[start:stop], v[start:stop], bern[start:stop], segment_keys, times[start:stop]
            )
            alarms += self._run_category_tests(cat_bins, times, segment_keys, start, stop)
            self.events_seen += stop - start
            start = stop
            if stop > 0 and self.events_seen % self.block_events == 0:
                alarms += self._close_block(self._open.complete())
            if stop > 0 and self.events_seen % self.window_events == 0:
                self._close_event_window()
                windows_closed += 1

        # Only the latest closed window of each kind is reported: a replay (event times
        # far apart) closes dozens per batch, and scoring each cost ~4 us per event.
        if event_windows := self.event_window.update(bins):
            self._record_window(event_windows[-1], "psi", "js", with_ratios=True)
        if time_windows := self.time_window.update(bins, times):
            self._record_window(time_windows[-1], "psi_time", "js_time", with_ratios=False)

        self._refresh_warn()
        statistics, thresholds = self._statistics()
        drifted = [f for f in self.features if self.states[f] == DRIFT]
        observed_scores = scores[~np.isnan(scores)]
        prediction = PredictionDrift(
            mean_score=float(observed_scores.mean()) if observed_scores.size else math.nan,
            positive_rate=float((observed_scores >= self.decision_threshold).mean())
            if observed_scores.size
            else math.nan,
            state=self.states[SCORE],
        )
        return DriftUpdate(
            reference_hash=self.reference_hash,
            n_events=n,
            events_seen=self.events_seen,
            event_time_min_ms=int(times.min()) if n else None,
            event_time_max_ms=int(times.max()) if n else None,
            states=dict(self.states),
            statistics=statistics,
            thresholds=thresholds,
            psi=dict(self._latest["psi"]),
            js=dict(self._latest["js"]),
            psi_time=dict(self._latest["psi_time"]),
            js_time=dict(self._latest["js_time"]),
            missing_ratio=dict(self._latest["missing_ratio"]),
            unseen_ratio=dict(self._latest["unseen_ratio"]),
            alarms=alarms,
            drifted=drifted,
            drifted_share=self.drifted_share(drifted),
            prediction=prediction,
            late_events=int(self.time_window.n_late),
            windows_closed=windows_closed,
            drift_since_ms=dict(self.drift_since_ms),
            drift_since_index=dict(self.drift_since_index),
            share_weights=self.share_weights(),
            reference_mismatch=self.reference_check.mismatch,
            reference_off=dict(self.reference_check.off),
        )

    def readings(
        self, features: pd.DataFrame, scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What the detectors see of rows: rank scores ``z`` and spread scores ``v`` (n,
        numeric + score; NaN = missing), rate indicators (n, rate streams; NaN = not
        applicable), categorical and numeric bins (-1 = missing)."""
        numeric = _numeric_matrix(features, self.numeric)
        bern, cat_bins = self._indicators(features, numeric)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        numeric_bins = np.column_stack(
            [self._bin_numeric(numeric), self._bin_values(scores, self._edges[-1])[:, None]]
        )
        streams = np.arange(numeric_bins.shape[1])[None, :]
        z = self._z_table[streams, numeric_bins]  # bin -1 (missing) -> the NaN column
        v = self._v_table[streams, numeric_bins]
        return z, v, bern, cat_bins, numeric_bins

    @property
    def rate_streams(self) -> list[tuple[str, str]]:
        """(feature, detector) of each rate stream, in the column order of ``readings``."""
        return list(self._bern_streams)

    def share_weights(self) -> dict[str, float]:
        """Weight of each input feature in :meth:`drifted_share`, summing to 1: its
        importance share, or equal weights without importances (or if they sum to 0)."""
        weights = {f: 1.0 for f in self.features}
        if self.importances is not None:
            given = {f: max(0.0, float(self.importances.get(f, 0.0))) for f in self.features}
            if sum(given.values()) > 0:
                weights = given
        total = sum(weights.values())
        return {f: w / total for f, w in weights.items()} if total > 0 else {}

    def drifted_share(self, drifted: Sequence[str]) -> float:
        """Importance-weighted share of features in DRIFT: a drifted feature the model barely
        uses should not trigger a retrain the way a top feature does."""
        weights = self.share_weights()
        return float(sum(weights.get(f, 0.0) for f in drifted))

    # ------------------------------------------------------------------ batch helpers

    def _segment_ends(self, n: int) -> list[int]:
        """Row offsets where the batch is cut: every block and event-window end, then ``n``."""
        ends: set[int] = {n}
        for size in (self.window_events, self.block_events):
            first = size - self.events_seen % size
            ends.update(range(first, n, size))
        return sorted(e for e in ends if e > 0) or [n]

    def _indicators(
        self, features: pd.DataFrame, numeric: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """0/1 Bernoulli inputs (n, streams; NaN = not applicable) and categorical bins."""
        n = len(features)
        numeric_missing = np.isnan(numeric).astype(np.float64)
        cat_missing = np.zeros((n, len(self.categorical)))
        unseen = np.zeros((n, len(self.categorical)))
        cat_bins = np.full((n, len(self.categorical)), -1, dtype=np.int64)
        for j, name in enumerate(self.categorical):
            values = features[name].to_numpy(dtype=object)
            missing = pd.isna(values)
            codes = np.fromiter(
                map(self._category_code[name].get, map(str, values), repeat(-1)),
                dtype=np.int64,
                count=n,
            )
            other = self._category_code[name][str(OTHER)]
            outside = (codes < 0) | (codes == other)
            cat_missing[:, j] = missing
            unseen[:, j] = np.where(missing, np.nan, outside)
            cat_bins[:, j] = np.where(missing, -1, np.where(codes < 0, other, codes))
        bern = np.column_stack([numeric_missing, cat_missing, unseen])
        if not self._bern_active.all():
            bern[:, ~self._bern_active] = np.nan  # inactive rate streams observe nothing
        return bern, cat_bins

    def _bin_numeric(self, numeric: np.ndarray) -> np.ndarray:
        columns = [self._bin_values(numeric[:, j], self._edges[j]) for j in range(numeric.shape[1])]
        return np.column_stack(columns) if columns else np.zeros((len(numeric), 0), np.int64)

    @staticmethod
    def _bin_values(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
        """Frozen right-closed bins (``assign_bins``), -1 for a missing value."""
        out = np.full(len(values), -1, dtype=np.int64)
        observed = ~np.isnan(values)
        out[observed] = assign_bins(values[observed], edges)
        return out

    def _close_block(self, block: Block) -> list[Alarm]:
        """Judge a completed block: one standardized reading per stream (mean, spread) and
        one log-likelihood increment per rate stream (module docstring)."""
        # Inflation now: the reference's, or that of the customers' repetition in the
        # latest blocks, 1 + rho (deff - 1), whichever is larger (module docstring).
        excess = np.maximum(self._live_design_effects(block) - 1.0, 0.0)[:, None]
        phi_mean = np.maximum(self._phi_mean, (1.0 + self._rho_mean * excess).max(axis=0))
        phi_var = np.maximum(self._phi_var, (1.0 + self._rho_var * excess).max(axis=0))
        phi_rate = np.maximum(self._phi_rate, (1.0 + self._rho_rate * excess).max(axis=0))
        observed = block.observed.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            u_mean = np.where(observed > 0, block.z_sum / np.sqrt(observed * phi_mean), np.nan)
            u_var = np.where(observed > 0, block.v_sum / np.sqrt(observed * phi_var), np.nan)
        # The reference is a sample: its shares are off the truth by sampling error, which
        # shifts every block reading alike by up to ``sqrt(n / (phi n_eff))`` standard
        # errors.  That much is tolerated (``k`` grows by ALLOWANCE_Z of them).
        self.mean_bank.k = CUSUM_K + ALLOWANCE_Z * np.sqrt(observed / (phi_mean * self._n_eff_mean))
        self.variance_bank.k = CUSUM_K + ALLOWANCE_Z * np.sqrt(
            observed / (phi_var * self._n_eff_var)
        )
        index, time_ms = self.events_seen - 1, block.last_time_ms
        alarms: list[Alarm] = []

        def collect(result: CusumResult, streams: Sequence[tuple[str, str]], h: np.ndarray) -> None:
            for j in np.flatnonzero(result.n_alarms > 0):
                feature, detector = streams[j]
                alarms.append(
                    Alarm(
                        feature,
                        detector,
                        float(max(result.peak[j], h[j])),
                        float(h[j]),
                        index,
                        time_ms,
                    )
                )

        columns = [*self.numeric, SCORE]
        collect(
            self.mean_bank.update(u_mean[None, :]),
            [(c, "mean") for c in columns],
            self.mean_bank.h,
        )
        collect(
            self.variance_bank.update(u_var[None, :]),
            [(c, "variance") for c in columns],
            self.variance_bank.h,
        )
        if self.bernoulli is not None:
            collect(
                self.bernoulli.update_counts(block.ones, block.zeros, 1.0 / phi_rate),
                self._bern_streams,
                self.bernoulli.h,
            )
        self._latch(alarms)
        return alarms

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

    def _live_design_effects(self, block: Block) -> np.ndarray:
        """Kish design effect of the latest 1, 2, 4, 8 blocks (``HORIZONS``; 1 where fewer
        blocks were seen or keys are unknown): how clustered by customer the stream is now.
        A worker catching up on a backlog reads one partition's events in a row, far more
        clustered than anything the reference showed."""
        effects = np.ones(len(HORIZONS))
        if not block.keyed:
            self._recent_keys.clear()
            return effects
        self._recent_keys.append(block.keys)
        del self._recent_keys[: -max(HORIZONS)]
        for i, horizon in enumerate(HORIZONS):
            if horizon <= len(self._recent_keys):
                effects[i] = kish_design_effect(np.concatenate(self._recent_keys[-horizon:]))
        return effects

    def _run_category_tests(
        self,
        cat_bins: np.ndarray,
        times: np.ndarray,
        segment_keys: np.ndarray | None,
        start: int,
        stop: int,
    ) -> list[Alarm]:
        """Advance the categorical window tests over rows ``[start, stop)``."""
        alarms: list[Alarm] = []
        base = self.events_seen - start  # global ordinal of row 0 of the batch
        for j, (name, test) in enumerate(self.category_tests.items()):
            codes = cat_bins[start:stop, j]  # vocabulary index, -1 when missing
            # Observed values still needed to complete the open window (``_filled`` is the
            # test's fill level): the i-th window completed here ends at observed value
            # ``need - 1 + i * window_size``, which is where its alarm becomes known.
            need = test.window_size - test._filled
            observed = np.flatnonzero(codes >= 0)
            for i, result in enumerate(test.update_codes(codes, segment_keys)):
                self._last_g[name] = result.statistic
                if result.alarm:
                    row = start + int(observed[need - 1 + i * test.window_size])
                    alarms.append(
                        Alarm(
                            name,
                            "category_mix",
                            result.statistic,
                            result.threshold,
                            base + row,
                            int(times[row]),
                        )
                    )
        self._latch(alarms)
        return alarms

    def _latch(self, alarms: Sequence[Alarm]) -> None:
        for alarm in alarms:
            if self.states[alarm.feature] != DRIFT:
                self.drift_since_ms[alarm.feature] = alarm.event_time_ms
                self.drift_since_index[alarm.feature] = alarm.event_index
            self.states[alarm.feature] = DRIFT
            self.clean_windows[alarm.feature] = 0
            self._alarmed_in_window[alarm.feature] = True

    def _close_event_window(self) -> None:
        """End of an event window: count it clean or not for every latched feature."""
        statistics, thresholds = self._statistics()
        for feature, state in self.states.items():
            if state == DRIFT:
                below = all(
                    statistics[feature][d] < 0.5 * thresholds[feature][d]
                    for d in statistics[feature]
                )
                if below and not self._alarmed_in_window[feature]:
                    self.clean_windows[feature] += 1
                    if self.clean_windows[feature] >= self.clear_windows:
                        self.states[feature] = OK
                        self.drift_since_ms.pop(feature, None)
                        self.drift_since_index.pop(feature, None)
                        self.clean_windows[feature] = 0
                else:
                    self.clean_windows[feature] = 0
            self._alarmed_in_window[feature] = False

    def _record_window(
        self, window: WindowCounts, psi_key: str, js_key: str, *, with_ratios: bool
    ) -> None:
        counts = window.counts[:, : self._ref_shares.shape[1]]
        psi_values = psi(self._ref_shares, counts, self._ref_mask)
        js_values = jensen_shannon(self._ref_shares, counts)
        for j, name in enumerate(self._columns):
            self._latest[psi_key][name] = float(psi_values[j])
            self._latest[js_key][name] = float(js_values[j])
        if not with_ratios:
            return
        for j, name in enumerate(self.features):
            self._latest["missing_ratio"][name] = float(window.n_missing[j] / window.n_events)
        for j, name in enumerate(self.categorical):
            column = len(self.numeric) + j
            observed = int(window.counts[column].sum())
            other = list(self._vocab[name]).index(OTHER)
            self._latest["unseen_ratio"][name] = (
                float(window.counts[column, other] / observed) if observed else math.nan
            )

    def _statistics(self) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
        """Current statistic and threshold of every (feature, detector)."""
        stats: dict[str, dict[str, float]] = {f: {} for f in [*self.features, SCORE]}
        limits: dict[str, dict[str, float]] = {f: {} for f in [*self.features, SCORE]}
        for bank, detector in ((self.mean_bank, "mean"), (self.variance_bank, "variance")):
            for j, name in enumerate(bank.names):
                stats[name][detector] = float(bank.statistic[j])
                limits[name][detector] = float(bank.h[j])
        if self.bernoulli is not None:
            for j, (name, detector) in enumerate(self._bern_streams):
                stats[name][detector] = float(self.bernoulli.state[j])
                limits[name][detector] = float(self.bernoulli.h[j])
        for name, test in self.category_tests.items():
            stats[name]["category_mix"] = float(self._last_g[name])
            limits[name]["category_mix"] = float(test.threshold)
        for feature, detector in self.inactive:
            del stats[feature][detector], limits[feature][detector]
        return stats, limits

    def _refresh_warn(self) -> None:
        """WARN follows the current statistics for features not latched in DRIFT."""
        statistics, thresholds = self._statistics()
        for feature, state in self.states.items():
            if state == DRIFT:
                continue
            high = any(
                statistics[feature][d] > self.warn_fraction * thresholds[feature][d]
                for d in statistics[feature]
            )
            self.states[feature] = WARN if high else OK

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict[str, Any]:
        """JSON-able checkpoint: config, calibrated thresholds and every detector's state.

        Restoring it continues exactly where the monitor stopped: a latched DRIFT stays
        latched (the restarted worker must neither raise a duplicate nor lose an alarm).
        """
        return {
            "type": "DriftMonitor",
            "version": STATE_VERSION,
            "reference": self.reference,
            "reference_hash": self.reference_hash,
            "numeric": self.numeric,
            "categorical": self.categorical,
            "budget": self.budget.__dict__.copy(),
            "importances": self.importances,
            "config": {
                "window_events": self.window_events,
                "window_seconds": self.window_seconds,
                "clear_windows": self.clear_windows,
                "warn_fraction": self.warn_fraction,
                "category_window": self.category_window,
                "decision_threshold": self.decision_threshold,
                "allowed_lateness_seconds": self.allowed_lateness_seconds,
                "window_test_resamples": self.window_test_resamples,
            },
            "thresholds": self.thresholds_dict(),
            "mean_bank": self.mean_bank.state_dict(),
            "variance_bank": self.variance_bank.state_dict(),
            "bernoulli": None if self.bernoulli is None else self.bernoulli.state_dict(),
            "category_tests": {c: t.state_dict() for c, t in self.category_tests.items()},
            "open_block": self._open.state_dict(),
            "reference_check": self.reference_check.state_dict(),
            "recent_keys": [k.tolist() for k in self._recent_keys],
            "event_window": _event_window_state(self.event_window),
            "time_window": _time_window_state(self.time_window),
            "events_seen": self.events_seen,
            "states": dict(self.states),
            "clean_windows": dict(self.clean_windows),
            "drift_since_ms": dict(self.drift_since_ms),
            "drift_since_index": dict(self.drift_since_index),
            "alarmed_in_window": dict(self._alarmed_in_window),
            "last_g": dict(self._last_g),
            "latest": {
                k: {n: _json_float(x) for n, x in v.items()} for k, v in self._latest.items()
            },
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> DriftMonitor:
        if state.get("type") != "DriftMonitor" or state.get("version") not in READABLE_VERSIONS:
            raise ValueError(f"not a DriftMonitor v{STATE_VERSION} state")
        config = dict(state["config"])
        monitor = cls(
            state["reference"],
            state["numeric"],
            state["categorical"],
            MonitorBudget(**state["budget"]),
            state["importances"],
            thresholds=state["thresholds"],
            **config,
        )
        if monitor.reference_hash != state["reference_hash"]:
            raise ValueError("checkpoint reference does not match its hash")
        monitor.mean_bank = CusumBank.from_state_dict(state["mean_bank"])
        monitor.variance_bank = CusumBank.from_state_dict(state["variance_bank"])
        if state["bernoulli"] is not None:
            monitor.bernoulli = BernoulliCusum.from_state_dict(state["bernoulli"])
        monitor.category_tests = {
            c: CategoricalWindowTest.from_state_dict(s) for c, s in state["category_tests"].items()
        }
        monitor._open.load_state_dict(state["open_block"])
        monitor.reference_check.load_state_dict(state["reference_check"])
        monitor._recent_keys = [np.asarray(k, dtype=object) for k in state["recent_keys"]]
        _load_event_window(monitor.event_window, state["event_window"])
        _load_time_window(monitor.time_window, state["time_window"])
        monitor.events_seen = int(state["events_seen"])
        monitor.states = {k: int(v) for k, v in state["states"].items()}
        monitor.clean_windows = {k: int(v) for k, v in state["clean_windows"].items()}
        monitor.drift_since_ms = {k: int(v) for k, v in state["drift_since_ms"].items()}
        monitor.drift_since_index = {k: int(v) for k, v in state["drift_since_index"].items()}
        monitor._alarmed_in_window = {k: bool(v) for k, v in state["alarmed_in_window"].items()}
        monitor._last_g = {k: float(v) for k, v in state["last_g"].items()}
        monitor._latest = {
            k: {n: math.nan if x is None else float(x) for n, x in v.items()}
            for k, v in state["latest"].items()
        }
        return monitor


# ---------------------------------------------------------------------- helpers


def _json_float(value: float) -> float | None:
    """NaN (no window yet) as null: strict JSON has no NaN."""
    return None if math.isnan(value) else float(value)


def _or(value: float | None, default: float) -> float:
    return default if value is None else float(value)


def _string_keys(keys: np.ndarray | Sequence[object]) -> np.ndarray:
    """Keys as an object array of str (what checkpoints store), converted only if needed."""
    array = np.asarray(keys, dtype=object)
    if (
        all(isinstance(k, str) for k in array[:1])
        and pd.api.types.infer_dtype(array, skipna=False) == "string"
    ):
        return array
    return pd.Series(array, dtype=object).astype(str).to_numpy(dtype=object)


def _numeric_matrix(features: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """(n, F) float matrix of the numeric features; non-numeric and inf become NaN."""
    if not names:
        return np.zeros((len(features), 0))
    frame = features[list(names)]
    if not all(pd.api.types.is_numeric_dtype(t) for t in frame.dtypes):
        frame = frame.apply(pd.to_numeric, errors="coerce")  # the worker's frames never need it
    matrix = frame.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isinf(matrix), np.nan, matrix)


# EventWindow / TimeWindow have no checkpoint API of their own; their state is a handful of
# attributes, read and written here so the monitor's checkpoint is complete.
def _event_window_state(window: EventWindow) -> dict[str, Any]:
    return {
        "counts": window._counts.tolist(),
        "missing": window._missing.tolist(),
        "filled": window._filled,
        "start": window._start,
    }


def _load_event_window(window: EventWindow, state: Mapping[str, Any]) -> None:
    window._counts = np.asarray(state["counts"], dtype=np.int64).reshape(window._counts.shape)
    window._missing = np.asarray(state["missing"], dtype=np.int64)
    window._filled = int(state["filled"])
    window._start = int(state["start"])


def _time_window_state(window: TimeWindow) -> dict[str, Any]:
    return {
        "open": [
            [index, counts.tolist(), missing.tolist(), n]
            for index, (counts, missing, n) in window._open.items()
        ],
        "max_time": window._max_time,
        "closed_below": window._closed_below,
        "n_late": window.n_late,
    }


def _load_time_window(window: TimeWindow, state: Mapping[str, Any]) -> None:
    window._open = {
        int(index): (
            np.asarray(counts, dtype=np.int64).reshape(window.n_features, window.width),
            np.asarray(missing, dtype=np.int64),
            int(n),
        )
        for index, counts, missing, n in state["open"]
    }
    window._max_time = None if state["max_time"] is None else int(state["max_time"])
    window._closed_below = int(state["closed_below"])
    window.n_late = int(state["n_late"])
