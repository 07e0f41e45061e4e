"""Reference profile: a small, frozen summary of the training-time data for drift monitoring.

The drift monitor compares live feature values (and live scores) against what the model saw
when it was evaluated.  Rather than keeping a sample of rows, the registry stores this
summary in ``metadata.json``: it is a few kilobytes, JSON, human-readable, and it pins the
*bin edges* so that the live histogram is binned exactly like the reference one (a PSI
computed with edges re-derived from live data would measure nothing).

Layout (``PROFILE_FORMAT`` = 1)::

    {
      "format": 1,
      "n_rows": 1409,
      "n_bins": 10,
      "top_k": 20,
      "numeric": {
        "<feature>": {
          "mean": 12.3 | null,        # over observed (non-missing) values
          "std": 4.5 | null,          # population std (ddof=0), observed values
          "missing_rate": 0.01,       # share of all rows that are missing
          "edges": [e1, ..., ek],     # interior edges: frozen quantiles, deduplicated
          "shares": [s0, ..., sk]     # share of observed rows per bin; len = len(edges) + 1
        }
      },
      "categorical": {
        "<feature>": {
          "missing_rate": 0.0,
          "shares": {"gold": 0.4, ..., "__other__": 0.05}   # share of observed rows
        }
      },
      "score": { same as a numeric feature, for the model's positive-class score }
    }

Binning rule (:func:`driftline.core.drift.bins.assign_bins`, which the drift monitor uses
too, so the rule lives in one place, in core): bins are right-closed, ``(-inf, e1], (e1,
e2], ..., (ek, +inf)``.  The outer bins are open, so a live value beyond the training range
still lands in a bin instead of being dropped.  Right-closed bins suit deduplicated quantile
edges of discrete features (counts with many zeros): the edge ``0`` is an attained value
and ``(-inf, 0]`` holds the zeros.

Shares are over *observed* rows and sum to 1 (or the list/dict is empty when a column has
no observed value at all); missingness is tracked separately in ``missing_rate`` so that a
rise in nulls is visible on its own rather than smeared over the bins.  JSON has no NaN, so
undefined statistics are ``null``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from driftline.core.drift.bins import OTHER, assign_bins

PROFILE_FORMAT = 1


def numeric_shares(values: np.ndarray, edges: Sequence[float]) -> list[float]:
    """Share of the observed (non-NaN) ``values`` in each bin; empty if none is observed."""
    observed = np.asarray(values, dtype=np.float64)
    observed = observed[~np.isnan(observed)]
    if observed.size == 0:
        return []
    counts = np.bincount(assign_bins(observed, edges), minlength=len(edges) + 1)
    return [float(c) for c in counts / observed.size]


def numeric_profile(values: np.ndarray | pd.Series, n_bins: int = 10) -> dict[str, object]:
    """Mean, std, missing rate, frozen quantile edges and per-bin shares of one column."""
    array = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    array = np.where(np.isinf(array), np.nan, array)
    n = array.size
    missing = np.isnan(array)
    observed = array[~missing]
    if observed.size:
        quantiles = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
        edges = [float(e) for e in np.unique(np.quantile(observed, quantiles))]
        mean: float | None = float(observed.mean())
        std: float | None = float(observed.std())
    else:
        edges, mean, std = [], None, None
    return {
        "mean": mean,
        "std": std,
        "missing_rate": float(missing.mean()) if n else 0.0,
        "edges": edges,
        "shares": numeric_shares(observed, edges),
    }


def categorical_profile(values: pd.Series, top_k: int = 20) -> dict[str, object]:
    """Missing rate and the shares of the ``top_k`` most frequent values plus ``__other__``.

    Values are compared as strings (the pipeline encodes them that way too).  Ties in
    frequency are broken by value, so the profile is deterministic.  ``__other__`` is always
    present (possibly 0.0) so the monitor can rely on the key.
    """
    series = pd.Series(values, dtype=object)
    missing = series.isna()
    observed = series[~missing].map(str)
    n = len(series)
    if observed.empty:
        return {"missing_rate": float(missing.mean()) if n else 0.0, "shares": {}}
    ranked = sorted(observed.value_counts().items(), key=lambda item: (-item[1], item[0]))
    # A literal "__other__" category is never listed on its own: it falls into the bucket.
    top = [(str(value), int(count)) for value, count in ranked if value != OTHER][:top_k]
    total = len(observed)
    shares = {value: count / total for value, count in top}
    shares[OTHER] = (total - sum(count for _, count in top)) / total
    return {"missing_rate": float(missing.mean()), "shares": shares}


def build_reference_profile(
    X: pd.DataFrame,
    scores: np.ndarray,
    numeric: Sequence[str],
    categorical: Sequence[str],
    n_bins: int = 10,
    top_k: int = 20,
) -> dict[str, object]:
    """Summarize held-out features ``X`` and the model's ``scores`` on them.

    Pass the *test-set* rows and scores: a random forest's scores on its own training rows
    are overconfident, so they would make a poor reference for live scores.
    """
    if len(X) != len(scores):
        raise ValueError(f"{len(X)} rows but {len(scores)} scores")
    if n_bins < 2:
        raise ValueError("n_bins must be at least 2")
    absent = [c for c in (*numeric, *categorical) if c not in X.columns]
    if absent:
        raise ValueError(f"columns not in the frame: {absent}")
    return {
        "format": PROFILE_FORMAT,
        "n_rows": len(X),
        "n_bins": n_bins,
        "top_k": top_k,
        "numeric": {name: numeric_profile(X[name], n_bins) for name in numeric},
        "categorical": {name: categorical_profile(X[name], top_k) for name in categorical},
        "score": numeric_profile(np.asarray(scores, dtype=np.float64), n_bins),
    }


def profiled_features(
    profile: Mapping[str, Any], numeric: Sequence[str], categorical: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The features of ``numeric`` / ``categorical`` that ``profile`` has a reference for.

    A model trained without some spec features (constant or entirely missing in its
    training part) has no reference for them: the drift monitor watches the rest.
    """
    numeric_ref, categorical_ref = profile.get("numeric", {}), profile.get("categorical", {})
    kept_numeric = [f for f in numeric if f in numeric_ref]
    return kept_numeric, [f for f in categorical if f in categorical_ref]
