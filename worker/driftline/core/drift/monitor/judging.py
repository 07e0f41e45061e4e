"""Judging the stream: blocks, categorical windows, latches, and the states they drive.

The mean, spread and rate detectors judge fixed blocks of ``block_events`` events cut on
the event index; the categorical window tests judge windows of observed values.  An alarm
latches its feature in DRIFT until ``clear_windows`` clean event windows have passed; WARN
follows the current statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from driftline.core.drift.bins import OTHER
from driftline.core.drift.blocks import Block
from driftline.core.drift.cusum import CusumResult, kish_design_effect
from driftline.core.drift.divergence import WindowCounts, jensen_shannon, psi
from driftline.core.drift.monitor.detectors import DetectorSetup
from driftline.core.drift.monitor.thresholds import ALLOWANCE_Z, CUSUM_K
from driftline.core.drift.monitor.updates import DRIFT, OK, SCORE, WARN, Alarm
from driftline.core.drift.serial import HORIZONS


class BlockJudging(DetectorSetup):
    """Mixin of ``DriftMonitor``: close blocks and windows, latch and clear states."""

    def _segment_ends(self, n: int) -> list[int]:
        """Row offsets where the batch is cut: every block and event-window end, then ``n``."""
        ends: set[int] = {n}
        for size in (self.window_events, self.block_events):
            first = size - self.events_seen % size
            ends.update(range(first, n, size))
        return sorted(e for e in ends if e > 0) or [n]

    def _close_block(self, block: Block) -> list[Alarm]:
        """Judge a completed block: one standardized reading per stream (mean, spread) and
        one log-likelihood increment per rate stream (``monitor`` package docstring)."""
        # Inflation now: the reference's, or that of the customers' repetition in the
        # latest blocks, 1 + rho (deff - 1), whichever is larger (``monitor`` package docstring).
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
                feature, detector = streams[int(j)]
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
