"""The drift monitor's reference for a model: what the worker will see once it serves it.

Apart from training because it answers a serving question, not a fitting one: the
distribution of per-event features (and scores) in the days after the last cutoff, in
the order the worker sees them, with the serial-dependence calibration the monitor uses.
``driftline train`` records it with every model trained on an event log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from driftline.core.drift.serial import calibrate_reference
from driftline.core.offline import history_features
from driftline.core.spec import DAY_MS, FeatureSpec
from driftline.model.profile import build_reference_profile, numeric_profile
from driftline.model.training import positive_scores


class NoReferenceEvents(ValueError):
    """No on-time event in the reference window: there is nothing to build it from."""


def serving_reference_profile(
    events: pd.DataFrame,
    spec: FeatureSpec,
    pipeline: Any,
    *,
    start_ms: int,
    days: int = 30,
    max_rows: int = 50_000,
    max_calibration_rows: int = 500_000,
    seed: int = 0,
    score_customers: set[str] | None = None,
    profiled: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The drift monitor's reference: what the worker sees in the days after ``start_ms``.

    The worker scores every event with the customer's features as of that event, so its
    input distribution is per event (active customers weigh more), not the per customer
    distribution of the training rows.  A reference built from training rows would report
    drift on the first day.  So the profile is built from the point-in-time features of
    every on-time event in ``(start, start + days]``: events after the last cutoff, which
    are no training rows (a forest's scores on its own training rows are overconfident).

    They are near copies of training rows, though: a customer's features a few days after
    the cutoff are nearly its training row's, and the label of that row was learned.  On a
    stationary stream the mean score of those days sat 0.06 below the steady level (0.676
    against 0.737).  So with ``score_customers`` (customers whose rows were held out of the
    fit) the *score* reference comes from their events only; the features' from all.

    ``profiled`` (default: all the spec's features) are the features profiled: a feature the model
    left out (constant or entirely missing in training) has no reference, and the drift
    monitor then does not watch it.
    """
    kept = set(spec.feature_names if profiled is None else profiled)
    numeric = [f for f in spec.numeric_features if f in kept]
    categorical = [f for f in spec.categorical_features if f in kept]
    ordered = events.sort_values("event_time", kind="stable").reset_index(drop=True)
    features, late = history_features(ordered, spec)
    times = ordered["event_time"].to_numpy(dtype=np.int64)
    window = (times > start_ms) & (times <= start_ms + days * DAY_MS) & ~late
    rows = np.flatnonzero(window)
    if rows.size == 0:
        raise NoReferenceEvents(
            f"no events in the {days} days after the cutoff to build a reference"
        )
    customers = ordered["customer_id"].astype(str).to_numpy(dtype=object)
    scored = (
        np.ones(len(ordered), dtype=bool)
        if not score_customers
        else np.isin(customers, np.array(sorted(score_customers), dtype=object))
    )
    if not scored[rows].any():
        scored[:] = True  # no held-out customer active in the period: all of them
    served = rows[:max_calibration_rows]  # contiguous, in event order
    served_frame = features.iloc[served][spec.feature_names].reset_index(drop=True)
    served_scores = np.where(scored[served], positive_scores(pipeline, served_frame), np.nan)
    if rows.size > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
    frame = features.iloc[rows][spec.feature_names].reset_index(drop=True)
    scores = positive_scores(pipeline, frame)
    profile = build_reference_profile(frame, scores, numeric, categorical)
    score_rows = np.flatnonzero(scored[rows])
    score_profile = numeric_profile(scores[score_rows])
    score_profile["n_rows"] = int(score_rows.size)
    profile["score"] = score_profile
    profile["score_basis"] = (
        "customers held out of the fit" if score_customers else "every customer of the period"
    )
    # How much one served event is worth, per feature (docs/drift-detection.md, "Serially
    # dependent features"): measured on the same period, in the order the worker sees it.
    profile["serving_calibration"] = calibrate_reference(
        profile,
        numeric,
        categorical,
        served_frame,
        served_scores,
        customers[served],
    ).to_dict()
    profile["basis"] = (
        f"point-in-time features of on-time events in the {days} days after the last cutoff"
    )
    profile["window_ms"] = [int(start_ms), int(start_ms + days * DAY_MS)]
    # Distinct customers behind the rows: the effective size of a clustered sample.
    profile["n_customers"] = int(ordered["customer_id"].iloc[rows].nunique())
    profile["events_per_day"] = float(window.sum()) / days
    return profile
