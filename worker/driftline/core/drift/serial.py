"""How much one served event is worth: variance inflation of feature streams, measured on the
reference stream as the worker serves it.

The drift detectors were first calibrated for independent events.  Served features are not
independent: a customer's 90-day count barely moves between its events (serial dependence),
a customer's profile fields repeat on every event (clustering), and rates follow the week.
On such streams a sum of ``n`` standardized readings has a variance of ``phi * n`` with
``phi`` well above 1, and thresholds derived for ``phi = 1`` cry wolf on stationary traffic.

So the reference period is replayed in event order through the same state engine (training
does it, :func:`driftline.commands.train.serving_reference_profile`), every reading is mapped
to what its detector sees (rank score ``z``, spread score ``v``, 0/1 rate indicator), and
``phi`` is estimated per stream by **batch means**: for block sizes ``L = B, 2B, 4B, ...``
(while at least :data:`MIN_BLOCKS` blocks fit), the mean square of the block sums around the
in-control mean, over the mean number of readings per block.  For a stationary stream this
converges to the long-run variance ratio ``1 + 2 sum_l rho_l`` as ``L`` grows; the estimate
kept is the largest over the levels (never below 1), which errs towards fewer false alarms
when the dependence reaches further than the first level.  The monitor then judges
fixed blocks of ``B`` events (cut on the event index, never on batch boundaries) with the
block sum divided by ``sqrt(n * phi)``: an approximately standard normal reading per block
in control, whatever the dependence within the reference's reach.

``design_effect[h]`` is the mean Kish design effect ``sum(m_i**2) / n`` of the reference's
spans of ``h`` consecutive blocks (``h`` in :data:`HORIZONS`).  A worker catching up on a
backlog reads one partition's events in a row: many events of few customers, over several
blocks, more clustered than anything the reference showed.  The live monitor measures the
same design effects on its latest ``h`` blocks and scales ``phi`` by the largest ratio
live / reference (never below 1).

Pure numpy; the caller gives the readings (the monitor's own rank tables make them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Fewest blocks a batch-means level may use: fewer give a variance estimate too noisy
#: (relative sd ``sqrt(2 / blocks)``, 35 % at 16) to be trusted as a level.
MIN_BLOCKS = 16
#: Block size bounds: a block must hold enough events for its sum to be near normal, and
#: be small enough that a shift is judged within minutes on a busy stream.
MIN_BLOCK_EVENTS = 50
MAX_BLOCK_EVENTS = 1000
#: Block size of a reference that says nothing about dependence (older models).
DEFAULT_BLOCK_EVENTS = 500
#: Blocks the reference should hold at the first level when it is long enough.
TARGET_BLOCKS = 64
#: Spans of consecutive blocks over which live clustering is compared with the reference's.
HORIZONS = (1, 2, 4, 8)


def block_size_for(n_events: int) -> int:
    """Block size for a reference of ``n_events``: about :data:`TARGET_BLOCKS` blocks,
    within [MIN_BLOCK_EVENTS, MAX_BLOCK_EVENTS]."""
    return int(min(MAX_BLOCK_EVENTS, max(MIN_BLOCK_EVENTS, n_events // TARGET_BLOCKS)))


def _levels(n: int, block: int) -> list[int]:
    sizes = []
    size = block
    while n // size >= MIN_BLOCKS:
        sizes.append(size)
        size *= 2
    return sizes or [block]


def score_inflation(readings: np.ndarray, block: int) -> np.ndarray:
    """``phi`` of each column of ``readings`` (N, S): standardized scores, mean 0 and
    variance 1 per reading in control, NaN where there is no reading (missing value)."""
    readings = np.atleast_2d(np.asarray(readings, dtype=np.float64))
    n, streams = readings.shape
    phi = np.ones(streams)
    if n < 2 * block:
        return phi
    observed = ~np.isnan(readings)
    values = np.where(observed, readings, 0.0)
    for size in _levels(n, block):
        blocks = n // size
        sums = values[: blocks * size].reshape(blocks, size, streams).sum(axis=1)
        counts = observed[: blocks * size].reshape(blocks, size, streams).sum(axis=1)
        mean_count = counts.mean(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            level = np.where(mean_count > 0, (sums * sums).mean(axis=0) / mean_count, 1.0)
        phi = np.maximum(phi, np.nan_to_num(level, nan=1.0))
    return phi


def rate_inflation(indicators: np.ndarray, block: int) -> np.ndarray:
    """``phi`` of each 0/1 column of ``indicators`` (N, R; NaN = not applicable) against a
    Bernoulli of the column's own rate: 1 for a rate of 0 or 1 (nothing varies)."""
    indicators = np.atleast_2d(np.asarray(indicators, dtype=np.float64))
    n, streams = indicators.shape
    phi = np.ones(streams)
    if n < 2 * block:
        return phi
    applicable = ~np.isnan(indicators)
    ones = np.where(applicable, indicators, 0.0)
    totals = applicable.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(totals > 0, ones.sum(axis=0) / np.maximum(totals, 1), 0.0)
    bernoulli_var = rate * (1.0 - rate)
    for size in _levels(n, block):
        blocks = n // size
        c = ones[: blocks * size].reshape(blocks, size, streams).sum(axis=1)
        m = applicable[: blocks * size].reshape(blocks, size, streams).sum(axis=1)
        deviation = c - m * rate[None, :]
        denominator = m.mean(axis=0) * bernoulli_var
        with np.errstate(invalid="ignore", divide="ignore"):
            level = np.where(denominator > 0, (deviation**2).mean(axis=0) / denominator, 1.0)
        phi = np.maximum(phi, np.nan_to_num(level, nan=1.0))
    return phi


def intraclass_correlation(
    readings: np.ndarray, keys: np.ndarray | None, span: int, *, centre: bool = False
) -> np.ndarray:
    """Correlation of two readings of one customer within ``span`` consecutive events, per
    column of ``readings`` (N, S; NaN = no reading), in [0, 1].

    With ``S_i``, ``Q_i``, ``m_i`` the sum, sum of squares and count of customer ``i``'s
    readings inside one span: ``rho = sum(S_i**2 - Q_i) / (sigma**2 * sum(m_i (m_i - 1)))``,
    the average product of two distinct readings of one customer over their variance.  It is
    what the design effect formula needs: the variance of a sum of readings is ``n sigma**2
    (1 + rho (sum(m_i**2) / n - 1))``.  ``centre`` subtracts each column's mean first (0/1
    indicators); rank scores already have mean 0 in control.  Without keys: 1 (the worst
    case, every customer's readings alike)."""
    readings = np.atleast_2d(np.asarray(readings, dtype=np.float64))
    n, streams = readings.shape
    if keys is None or n < 2:
        return np.ones(streams)
    import pandas as pd

    observed = ~np.isnan(readings)
    if centre:
        totals = observed.sum(axis=0)
        means = np.where(observed, readings, 0.0).sum(axis=0) / np.maximum(totals, 1)
        readings = readings - means[None, :]
    values = np.where(observed, readings, 0.0)
    codes, _ = pd.factorize(np.asarray(keys, dtype=object))
    group = (np.arange(n) // span) * (int(codes.max()) + 2) + codes + 1
    cells, inverse = np.unique(group, return_inverse=True)
    sums = np.zeros((cells.size, streams))
    squares = np.zeros((cells.size, streams))
    counts = np.zeros((cells.size, streams))
    np.add.at(sums, inverse, values)
    np.add.at(squares, inverse, values * values)
    np.add.at(counts, inverse, observed.astype(np.float64))
    pairs = (counts * (counts - 1)).sum(axis=0)
    sigma2 = squares.sum(axis=0) / np.maximum(counts.sum(axis=0), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (sums * sums - squares).sum(axis=0) / (sigma2 * pairs)
    # No pair of readings of one customer (or no variance): nothing measured, assume 1.
    return np.clip(np.where((pairs > 0) & (sigma2 > 0), rho, 1.0), 0.0, 1.0)


def mean_design_effect(keys: np.ndarray | None, block: int) -> float:
    """Mean Kish design effect ``sum(m_i**2) / n`` of consecutive ``block``-event blocks."""
    if keys is None or len(keys) < block:
        return 1.0
    import pandas as pd

    codes, _ = pd.factorize(np.asarray(keys, dtype=object))
    width = int(codes.max()) + 2  # code -1 (a missing key) shifted to 0
    blocks = len(codes) // block
    pairs = np.repeat(np.arange(blocks), block) * width + codes[: blocks * block] + 1
    cells, counts = np.unique(pairs, return_counts=True)
    squares = np.bincount(cells // width, weights=counts.astype(np.float64) ** 2, minlength=blocks)
    return max(1.0, float(np.mean(squares / block)))


@dataclass(frozen=True)
class SerialCalibration:
    """Per-stream inflation ``phi`` of a reference, by detector, and the block size.

    ``inflation[feature][detector]``: ``detector`` is ``mean`` / ``variance`` (numeric
    features and the score, key ``score``) or ``missing`` / ``unseen``.  ``measured`` is
    False for a reference without a serving calibration (a model of an older release or a
    table model): every ``phi`` is then 1, the independent-events assumption.
    """

    block_events: int
    design_effect: Mapping[int, float] = field(default_factory=dict)
    inflation: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    correlation: Mapping[str, Mapping[str, Mapping[int, float]]] = field(default_factory=dict)
    n_events: int = 0
    #: ``sum(m_i**2) / n`` over the whole calibrated stretch: how many events a customer
    #: has in it, weighted (``1 +`` the excess is the worst-case inflation of its mean).
    whole_design_effect: float = 1.0
    measured: bool = False

    def reference_design_effect(self, horizon: int) -> float:
        """Mean design effect of the reference over ``horizon`` blocks (1: not measured)."""
        return max(1.0, float(self.design_effect.get(horizon, 1.0)))

    def rho(self, feature: str, detector: str, horizon: int) -> float:
        """Within-customer correlation of the readings over ``horizon`` blocks (1 when not
        measured: the worst case)."""
        value = self.correlation.get(feature, {}).get(detector, {}).get(horizon)
        return 1.0 if value is None or not math.isfinite(value) else min(1.0, max(0.0, value))

    def phi(self, feature: str, detector: str) -> float:
        value = self.inflation.get(feature, {}).get(detector)
        return 1.0 if value is None or not math.isfinite(value) else max(1.0, float(value))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": (
                "batch means: largest mean-square block sum per reading over block sizes "
                f"B, 2B, 4B, ... with at least {MIN_BLOCKS} blocks"
            ),
            "block_events": self.block_events,
            "design_effect": {str(h): d for h, d in self.design_effect.items()},
            "n_events": self.n_events,
            "whole_design_effect": self.whole_design_effect,
            "inflation": {f: dict(d) for f, d in self.inflation.items()},
            "correlation": {
                f: {d: {str(h): r for h, r in by.items()} for d, by in detectors.items()}
                for f, detectors in self.correlation.items()
            },
        }

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any]) -> SerialCalibration:
        """The profile's ``serving_calibration``, or the independent-events default."""
        entry = profile.get("serving_calibration")
        if not isinstance(entry, Mapping):
            return cls(block_events=DEFAULT_BLOCK_EVENTS)
        return cls(
            block_events=int(entry.get("block_events") or DEFAULT_BLOCK_EVENTS),
            design_effect={
                int(h): max(1.0, float(d))
                for h, d in dict(entry.get("design_effect") or {}).items()
            },
            inflation={
                str(f): {str(d): float(x) for d, x in detectors.items()}
                for f, detectors in dict(entry.get("inflation") or {}).items()
            },
            correlation={
                str(f): {
                    str(d): {int(h): float(r) for h, r in dict(by).items()}
                    for d, by in dict(detectors).items()
                }
                for f, detectors in dict(entry.get("correlation") or {}).items()
            },
            n_events=int(entry.get("n_events") or 0),
            whole_design_effect=max(1.0, float(entry.get("whole_design_effect") or 1.0)),
            measured=True,
        )


def calibrate(
    z: np.ndarray,
    v: np.ndarray,
    rates: np.ndarray,
    *,
    score_streams: Sequence[str],
    rate_streams: Sequence[tuple[str, str]],
    keys: np.ndarray | None,
    block_events: int,
) -> SerialCalibration:
    """:class:`SerialCalibration` from the reference's readings in event order.

    ``z``/``v`` (N, S) are rank and spread scores of the streams named ``score_streams``
    (numeric features, then the score as ``score``); ``rates`` (N, R) the 0/1 indicators of
    ``rate_streams`` ((feature, detector) pairs)."""
    inflation: dict[str, dict[str, float]] = {}
    for name, phi_mean, phi_var in zip(
        score_streams,
        score_inflation(z, block_events),
        score_inflation(v, block_events),
        strict=True,
    ):
        inflation.setdefault(name, {}).update(
            mean=round(float(phi_mean), 6), variance=round(float(phi_var), 6)
        )
    if rate_streams:
        for (name, detector), phi in zip(
            rate_streams, rate_inflation(rates, block_events), strict=True
        ):
            inflation.setdefault(name, {})[detector] = round(float(phi), 6)
    correlation: dict[str, dict[str, dict[int, float]]] = {}
    for horizon in HORIZONS:
        span = block_events * horizon
        for detector, readings in (("mean", z), ("variance", v)):
            for name, rho in zip(
                score_streams, intraclass_correlation(readings, keys, span), strict=True
            ):
                correlation.setdefault(name, {}).setdefault(detector, {})[horizon] = round(
                    float(rho), 6
                )
        if rate_streams:
            rhos = intraclass_correlation(rates, keys, span, centre=True)
            for (name, detector), rho in zip(rate_streams, rhos, strict=True):
                correlation.setdefault(name, {}).setdefault(detector, {})[horizon] = round(
                    float(rho), 6
                )
    return SerialCalibration(
        block_events=int(block_events),
        correlation=correlation,
        design_effect={h: round(mean_design_effect(keys, block_events * h), 6) for h in HORIZONS},
        inflation=inflation,
        n_events=len(z),
        whole_design_effect=round(mean_design_effect(keys, len(z)), 6) if len(z) else 1.0,
        measured=True,
    )


def calibrate_reference(
    profile: Mapping[str, Any],
    numeric: Sequence[str],
    categorical: Sequence[str],
    features: Any,
    scores: np.ndarray,
    keys: np.ndarray | None,
    *,
    block_events: int | None = None,
) -> SerialCalibration:
    """:func:`calibrate` on the reference period's served rows, in event order, mapped to
    readings by a monitor on ``profile`` itself (the same rank tables and vocabularies the
    live monitor will use).  ``features`` is a DataFrame with the feature columns."""
    from driftline.core.drift.monitor import DriftMonitor, MonitorBudget

    # Placeholder thresholds: only the reading maps are used, nothing is judged.
    probe = DriftMonitor(
        profile,
        numeric,
        categorical,
        MonitorBudget(events_per_day=1.0),
        thresholds={"mean": None, "variance": None, "bernoulli": None, "category_mix": {}},
        window_test_resamples=1,
        skip_thresholds=True,
    )
    z, v, rates, _, _ = probe.readings(features, scores)
    block = block_size_for(len(z)) if block_events is None else int(block_events)
    return calibrate(
        z,
        v,
        rates,
        score_streams=[*numeric, "score"],
        rate_streams=probe.rate_streams,
        keys=keys,
        block_events=block,
    )
