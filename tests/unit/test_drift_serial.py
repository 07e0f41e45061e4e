"""Variance inflation of served feature streams, and the monitor calibrated with it.

Served features are serially dependent: a customer's windowed count barely moves between
its events, its profile fields repeat on every event, heavy users dominate.  Thresholds for
independent events cry wolf on such a stream; measured on the reference as served, the
inflation ``phi`` puts them right (docs/drift-detection.md, "Serially dependent features").
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftline.core.drift.monitor import DriftMonitor, MonitorBudget
from driftline.core.drift.serial import (
    SerialCalibration,
    block_size_for,
    calibrate_reference,
    intraclass_correlation,
    mean_design_effect,
    rate_inflation,
    score_inflation,
)
from driftline.model.profile import build_reference_profile

NUMERIC = ["activity", "age", "spend"]
CATEGORICAL = ["plan"]
PLANS = np.array(["basic", "plus", "pro", "team"], dtype=object)


class DependentStream:
    """A stationary stream of served events with the dependence of windowed features.

    600 customers with lognormal activity rates; each event belongs to a customer drawn by
    rate.  ``activity`` is an AR(1) per customer over its own events (rho 0.97: a windowed
    count), ``age`` and ``plan`` are persistent per customer, ``spend`` is independent.
    """

    def __init__(self, seed: int, customers: int = 600) -> None:
        self.rng = np.random.default_rng(seed)
        rates = self.rng.lognormal(0, 1.0, customers)
        self.p = rates / rates.sum()
        self.level = self.rng.normal(0, 1, customers)
        self.state = self.rng.normal(0, 1, customers)
        self.age = np.round(self.rng.normal(45, 12, customers))
        self.plan = PLANS[self.rng.integers(0, len(PLANS), customers)]
        self.t = 1_700_000_000_000

    def take(self, n: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
        customer = self.rng.choice(len(self.p), n, p=self.p)
        activity = np.empty(n)
        noise = self.rng.normal(0, 1, n)
        # Per-customer AR(1) along its own events (a Python loop: test data, not product).
        for i, c in enumerate(customer):
            self.state[c] = 0.97 * self.state[c] + np.sqrt(1 - 0.97**2) * noise[i]
            activity[i] = self.level[c] + self.state[c]
        frame = pd.DataFrame(
            {
                "activity": activity,
                "age": np.where(self.rng.random(n) < 0.1, np.nan, self.age[customer]),
                "spend": self.rng.lognormal(3, 0.6, n),
                "plan": self.plan[customer],
            }
        )
        scores = 1 / (1 + np.exp(-(0.8 * activity - 1)))
        times = self.t + np.arange(n, dtype=np.int64) * 800
        self.t = int(times[-1]) + 800
        keys = np.array([f"c{c}" for c in customer], dtype=object)
        return frame, scores, times, keys


def test_independent_readings_are_not_inflated() -> None:
    rng = np.random.default_rng(0)
    phi = score_inflation(rng.normal(0, 1, (64_000, 3)), 500)
    # The largest of noisy estimates over the levels: near 1, somewhat above it.
    assert np.all(phi < 1.8), phi


def test_ar1_readings_are_inflated_by_their_long_run_variance() -> None:
    rng = np.random.default_rng(1)
    rho, n = 0.9, 200_000
    x = np.empty(n)
    x[0] = rng.normal()
    shocks = rng.normal(0, np.sqrt(1 - rho**2), n)
    for i in range(1, n):
        x[i] = rho * x[i - 1] + shocks[i]
    phi = score_inflation(x[:, None], 500)[0]
    assert 15 < phi < 27, phi  # long-run variance ratio (1 + rho) / (1 - rho) = 19


def test_rate_inflation_sees_customers_that_always_miss_a_field() -> None:
    rng = np.random.default_rng(2)
    # Customers arrive in runs of 20 events (a session); 5 of 50 never fill the field.
    customer = np.repeat(rng.integers(0, 50, 5_000), 20)
    clustered = (customer < 5).astype(float)[:, None]
    independent = (rng.random(100_000) < 0.1).astype(float)[:, None]
    assert rate_inflation(independent, 500)[0] < 1.8
    assert rate_inflation(clustered, 500)[0] > 10
    keys = np.array([f"c{c}" for c in customer], dtype=object)
    assert mean_design_effect(keys, 500) > 15
    rho = intraclass_correlation(np.column_stack([clustered, independent]), keys, 500, centre=True)
    assert rho[0] > 0.99 and rho[1] < 0.05, rho


def test_block_size_follows_the_reference_length() -> None:
    assert block_size_for(1_000) == 50
    assert block_size_for(32_000) == 500
    assert block_size_for(10_000_000) == 1000


def _monitor(profile: dict[str, Any]) -> DriftMonitor:
    monitor = DriftMonitor(
        profile, NUMERIC, CATEGORICAL, MonitorBudget(events_per_day=100_000, period_days=30)
    )
    return DriftMonitor.from_state_dict(json.loads(json.dumps(monitor.state_dict())))


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, Any], DependentStream]:
    stream = DependentStream(seed=5)
    stream.take(20_000)  # burn-in: every customer's AR state at its stationary law
    frame, scores, _, keys = stream.take(64_000)
    profile = build_reference_profile(frame, scores, NUMERIC, CATEGORICAL)
    calibration = calibrate_reference(profile, NUMERIC, CATEGORICAL, frame, scores, keys)
    profile["serving_calibration"] = calibration.to_dict()
    return profile, stream


def test_persistent_features_are_inflated_and_independent_ones_are_not(
    reference: tuple[dict[str, Any], DependentStream],
) -> None:
    calibration = SerialCalibration.from_profile(reference[0])
    assert calibration.block_events == 1000
    assert calibration.phi("activity", "mean") > 3
    assert calibration.rho("age", "mean", 8) > 0.95  # a profile field: the same every event
    assert calibration.rho("activity", "mean", 1) > 0.8
    assert calibration.rho("spend", "mean", 8) < 0.05
    assert calibration.phi("spend", "mean") < 1.6
    assert calibration.phi("age", "missing") < 1.6  # missing at random, per event
    assert calibration.design_effect[1] > 2


def _false_alarms(
    profile: dict[str, Any], stream_seed: int, *, keys: bool = True
) -> list[tuple[str, str]]:
    monitor = _monitor(profile)
    stream = DependentStream(seed=5)
    stream.take(84_000)  # the reference's stretch; the live stream continues after it
    stream.rng = np.random.default_rng(stream_seed)
    alarms = []
    for _ in range(25):
        frame, scores, times, customer = stream.take(8_000)
        update = monitor.update(frame, scores, times, customer if keys else None)
        alarms += [(a.feature, a.detector) for a in update.alarms]
    return alarms


def test_a_stationary_dependent_stream_raises_no_alarm_when_calibrated(
    reference: tuple[dict[str, Any], DependentStream],
) -> None:
    """200,000 events of the same process after the reference: no alarm."""
    assert _false_alarms(reference[0], stream_seed=11) == []


def test_the_same_stream_cries_wolf_under_the_independence_assumption(
    reference: tuple[dict[str, Any], DependentStream],
) -> None:
    """Independent events assumed (no serving calibration, no customer keys: phi = 1), the
    persistent features alarm: the dependence is what the calibration accounts for."""
    uncalibrated = {k: v for k, v in reference[0].items() if k != "serving_calibration"}
    alarms = _false_alarms(uncalibrated, stream_seed=11, keys=False)
    assert {f for f, _ in alarms} & {"activity", "age", "__score__"}, alarms
