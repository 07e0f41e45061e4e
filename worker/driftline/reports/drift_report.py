"""``driftline report drift``: reference vs live distributions for a drift incident.

For a retrain request (or any window on demand), the page shows, for each drifted feature
and for the model's score, the reference profile's shares beside the live window's shares
on the profile's own frozen bins (the bins the drift monitor compares), with the PSI of the
whole window, and the detector readings the request carried.  A table lists every
monitored feature's PSI and missing rates, so a drift the request did not name is visible
too.  On demand (no request) every monitored feature is drawn, largest PSI first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from driftline.core.drift.monitor import SCORE
from driftline.core.drift.trigger import RetrainRequest
from driftline.reports import render
from driftline.reports.data import Histogram, compare
from driftline.reports.live import LiveWindow

REFERENCE = "reference"
LIVE = "live window"
#: Below this many live events, the page says the live shares are noisy.
FEW_EVENTS = 500


@dataclass
class DriftReportData:
    """What the page shows: one histogram per monitored feature, and the score's."""

    score: Histogram | None
    features: list[Histogram]
    #: Features the request named as drifted (empty on demand).
    drifted: list[str] = field(default_factory=list)


def compare_window(
    profile: dict[str, Any],
    feature_types: dict[str, str],
    window: LiveWindow,
    scores: np.ndarray,
    drifted: list[str] | None = None,
) -> DriftReportData:
    """Reference vs live shares of every profiled feature and of the score."""
    histograms = []
    for kind in ("numeric", "categorical"):
        for feature, entry in (profile.get(kind) or {}).items():
            if feature not in window.features.columns or feature_types.get(feature, kind) != kind:
                continue
            column = window.features[feature]
            mask = None if kind == "numeric" else pd.Series(column, dtype=object).isna().to_numpy()
            values = (
                column.to_numpy(dtype=np.float64, na_value=np.nan)
                if kind == "numeric"
                else column.to_numpy(dtype=object)
            )
            histograms.append(
                compare(feature, kind, entry, {LIVE: (values, mask)}, reference_name=REFERENCE)
            )
    score = None
    if profile.get("score"):
        score = compare(
            SCORE, "numeric", profile["score"], {LIVE: (scores, None)}, reference_name=REFERENCE
        )
    return DriftReportData(score=score, features=histograms, drifted=list(drifted or []))


def build(
    name: str,
    version: str,
    metadata: dict[str, Any],
    data: DriftReportData,
    window: LiveWindow,
    scores: np.ndarray,
    start_ms: int,
    end_ms: int,
    request: RetrainRequest | None,
    source: str,
) -> str:
    """The page's HTML."""
    profile = metadata.get("reference_profile") or {}
    threshold = float(metadata.get("threshold", 0.5))
    rows: list[list[Any]] = [
        ["model", f"{name} {version}"],
        ["window (event time, UTC)", f"{_utc(start_ms)} .. {_utc(end_ms)}"],
        [
            "live events compared",
            f"{len(scores)} on time ({window.n_late} late left out, as the worker does)",
        ],
        [
            "events read",
            f"{window.n_events_read} from {source} ({window.n_rejected} rejected records skipped)",
        ],
        ["reference", profile.get("basis", "held-out rows at training time")],
        ["reference rows", profile.get("n_rows")],
    ]
    if len(scores):
        ref_mean = (profile.get("score") or {}).get("mean")
        rows.append(
            ["mean score (reference / live)", f"{_num(ref_mean)} / {float(np.mean(scores)):.3f}"]
        )
        rows.append(
            [
                f"live share at or above the threshold {threshold:.3f}",
                f"{float(np.mean(scores >= threshold)):.1%}",
            ]
        )
    sections: list[tuple[str, str]] = []
    few = (
        f'<p class="warn">Only {len(scores)} live events in this window: the live shares are '
        "noisy. --from/--to/--last widen the window (e.g. --to a day after the request).</p>"
        if 0 < len(scores) < FEW_EVENTS
        else ""
    )
    if request is not None:
        rows[:0] = [
            ["reason", request.reason],
            ["incident", request.incident_id],
            ["request", f"{request.request_id} from worker {request.worker_id}"],
            ["drifted share (importance-weighted)", f"{request.drifted_share:.3f}"],
        ]
        readings = render.table(
            ["feature", "detector", "statistic", "alarm threshold", "PSI of its last window"],
            [
                [d.feature, d.detector, d.statistic, d.threshold, d.psi]
                for d in request.drifted_features
            ],
        )
        sections.append(("Summary", render.table(["", "value"], rows, "kv") + few))
        sections.append(("Detector readings when the request was made", readings))
    else:
        sections.append(("Summary", render.table(["", "value"], rows, "kv") + few))
    if not len(scores):
        sections.append(
            (
                "No live events",
                '<p class="warn">No on-time event in this window: nothing to compare.</p>',
            )
        )
        return render.page(
            f"Drift report: {name} {version}", "Driftline: reference vs live", sections
        )
    plots = []
    if data.score is not None:
        plots.append(render.figure("score", render.histogram_plot(data.score, "model score")))
    by_name = {h.feature: h for h in data.features}
    shown = (
        [f for f in data.drifted if f in by_name]
        if data.drifted
        else sorted(by_name, key=lambda f: -(by_name[f].psi or 0.0))
    )
    for feature in shown:
        plots.append(render.figure(f"feature-{feature}", render.histogram_plot(by_name[feature])))
    heading = (
        "Drifted features and the score"
        if data.drifted
        else "Every monitored feature and the score, largest PSI first"
    )
    note = (
        '<p class="note">Shares of observed rows per bin of the reference profile (numeric bins '
        "right-closed, as the drift monitor bins them); PSI of the whole window against the "
        "reference; missing shares in the legend.</p>"
    )
    sections.append((heading, note + f'<div class="grid">{"".join(plots)}</div>'))
    table_rows = [
        [
            h.feature + (" (drifted)" if h.feature in data.drifted else ""),
            h.kind,
            h.psi,
            h.missing.get(REFERENCE),
            h.missing.get(LIVE),
        ]
        for h in sorted(data.features, key=lambda h: -(h.psi or 0.0))
    ]
    sections.append(
        (
            "All monitored features",
            render.table(
                ["feature", "kind", "PSI", "missing (reference)", "missing (live)"], table_rows
            ),
        )
    )
    subtitle = "Driftline: reference vs live, " + (
        f"retrain request {request.request_id}" if request is not None else "on demand"
    )
    return render.page(f"Drift report: {name} {version}", subtitle, sections)


def _utc(ms: int) -> str:
    return str(pd.Timestamp(int(ms), unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M:%S"))


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"
