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
``OK (0) -> WARN (1)`` while any current statistic of the feature exceeds ``warn_fraction *
threshold`` (not latched: WARN follows the statistics). WARN has a budget of its own, about
one onset a day over all detectors on an unchanged stream: the fraction is the ratio of the
block CUSUM's thresholds for run lengths ``ARL0 / period_days`` and ``ARL0``
(``thresholds.warn_fraction_for``; 0.55-0.8 for usual budgets). ``DRIFT (2)`` as soon as a
detector alarms; the alarmed CUSUM restarts from 0 (so a persisting shift alarms again,
which keeps the latch closed) and the feature stays in DRIFT until ``clear_windows``
consecutive completed event windows were *clean*: no alarm of the feature inside the window
and, at the window's last event, every statistic of the feature below half its threshold. A
batch is cut at event-window boundaries before the CUSUMs run so that "at the window's last
event" is exact whatever the batch size.

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

from driftline.core.drift.monitor.checkpoint import READABLE_VERSIONS, STATE_VERSION
from driftline.core.drift.monitor.drift_monitor import DriftMonitor
from driftline.core.drift.monitor.rank_scores import OUTLIER_SCORE, RankScores
from driftline.core.drift.monitor.thresholds import ALLOWANCE_Z, CUSUM_K, MAX_P0, wilson_upper
from driftline.core.drift.monitor.updates import (
    DRIFT,
    OK,
    SCORE,
    WARN,
    Alarm,
    BudgetLike,
    DriftUpdate,
    MonitorBudget,
    PredictionDrift,
    reference_hash,
)

__all__ = [
    "ALLOWANCE_Z",
    "CUSUM_K",
    "DRIFT",
    "MAX_P0",
    "OK",
    "OUTLIER_SCORE",
    "READABLE_VERSIONS",
    "SCORE",
    "STATE_VERSION",
    "WARN",
    "Alarm",
    "BudgetLike",
    "DriftMonitor",
    "DriftUpdate",
    "MonitorBudget",
    "PredictionDrift",
    "RankScores",
    "reference_hash",
    "wilson_upper",
]
