"""``DriftMonitor``: every detector wired to one reference profile, a batch at a time.

The concerns live in their own modules and meet here: the detectors and their calibration
(``detectors``), the rows' readings (``readings``), block and window judging
(``judging``), the checkpoint (``checkpoint``) and what an update reports (``updates``).
See the ``monitor`` package docstring for the method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from driftline.core.drift.monitor.checkpoint import monitor_state, restore_monitor
from driftline.core.drift.monitor.judging import BlockJudging
from driftline.core.drift.monitor.readings import Readings, string_keys
from driftline.core.drift.monitor.updates import DRIFT, SCORE, Alarm, DriftUpdate, PredictionDrift


class DriftMonitor(BlockJudging, Readings):
    """Drift detectors of all features and of the score against one reference profile.

    ``thresholds`` (optional) are calibrated values from :meth:`thresholds_dict` of a monitor
    with the same reference and budget; they skip the calibration (used by checkpoints).
    """

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
            keys = string_keys(keys)
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

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict[str, Any]:
        """JSON-able checkpoint: config, calibrated thresholds and every detector's state.

        Restoring it continues exactly where the monitor stopped: a latched DRIFT stays
        latched (the restarted worker must neither raise a duplicate nor lose an alarm).
        """
        return monitor_state(self)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> DriftMonitor:
        return restore_monitor(cls, state)
