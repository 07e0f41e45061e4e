"""The monitor's calibration constants and cached thresholds.

Thresholds depend only on their inputs (ARL0, rates, vocabulary, window), so they are
cached across monitors: a restart, a second monitor on the same model (tests, several
partitions) or a reset does not pay the lattice solve or the resampling again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from driftline.core.drift.bins import OTHER
from driftline.core.drift.calibration import bernoulli_cusum_threshold, cusum_threshold

#: CUSUM reference value in rank-score standard deviations: half the shift it is tuned for
#: (1 sigma).  Smaller shifts are still found, later (see ``driftline bench drift``).
CUSUM_K = 0.5
#: Reference sampling error tolerated by the block CUSUMs, in standard errors: the offset
#: of a block reading caused by the reference's finite sample has a standard deviation of
#: ``sqrt(block_events / n_rows)``; ``k`` grows by this many of them.
ALLOWANCE_Z = 2.0
#: Highest reference rate a Bernoulli CUSUM is calibrated for; a rate detector whose
#: reference rate is above it is inactive (``monitor`` package docstring, "Features
#: missing throughout").
MAX_P0 = 0.99


@lru_cache(maxsize=256)
def block_h(arl0_blocks: float) -> float:
    return cusum_threshold(max(arl0_blocks, 2.0), k=CUSUM_K, two_sided=True)


@lru_cache(maxsize=1024)
def bernoulli_h(arl0: float, p0: float, p1: float) -> float:
    """The lattice threshold; past what the lattice can resolve (a budget of 10^8 events a
    day and more), ``log(arl0)``: a log-likelihood-ratio CUSUM's in-control ARL is at least
    ``exp(h)``, so that bound is conservative, never short of the budget."""
    try:
        return bernoulli_cusum_threshold(arl0, p0, p1)
    except ValueError:
        return math.log(arl0)


#: Critical values of categorical window tests by (vocabulary, window, alpha, resamples).
WINDOW_THRESHOLDS: dict[tuple[Any, ...], tuple[float, float]] = {}


def wilson_upper(rate: np.ndarray, n: float, z: float = 1.96) -> np.ndarray:
    """Upper end of the Wilson score interval of a proportion observed on ``n`` units
    (the rate itself when ``n`` is unknown), at most :data:`MAX_P0`."""
    rate = np.clip(rate, 0.0, 1.0)
    if n <= 0:
        return rate
    centre = rate + z * z / (2 * n)
    spread = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    upper: np.ndarray = np.minimum((centre + spread) / (1 + z * z / n), MAX_P0)
    return upper


def vocabulary(shares: Mapping[str, float]) -> dict[str, float]:
    """Category -> share with ``__other__`` present, in the order CategoricalWindowTest uses."""
    vocabulary = {str(c): float(v) for c, v in shares.items()}
    vocabulary.setdefault(OTHER, 0.0)
    return vocabulary


def warn_fraction_for(arl0: float, period_days: float, block_events: int) -> float:
    """The share of each threshold past which a feature shows WARN, from the budget.

    ``arl0`` (events) spends the budget's false alarms over ``period_days``; WARN gets a
    budget of its own, about one onset a day over all detectors: a run length
    ``period_days`` times shorter.  The fraction is the ratio of the block CUSUM's
    thresholds for the two run lengths (exact for the mean and spread detectors, which
    carry most of the weight; the same share is used for the others).  A fixed half of
    the threshold, as before, is crossed by a stationary stream about every
    ``sqrt(arl0)`` blocks: WARN for minutes at a time on traffic that never changed.
    """
    if period_days <= 1.0:
        return 0.5
    blocks = max(float(block_events), 1.0)
    full = block_h(arl0 / blocks)
    warn = block_h(arl0 / period_days / blocks)
    return float(min(max(warn / full, 0.5), 0.95))
