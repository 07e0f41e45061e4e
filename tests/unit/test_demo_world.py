"""The demo's live stream is its training history going on, and serves what the reference
profile describes (offline: the worker's own ``FeatureState`` through ``history_features``).

The model's drift reference is built from the point-in-time features of the 30 days after
its last training cutoff.  The demo warms the worker on the history, then streams live
events; so the features served live are those of the history followed by the live
events, replayed through one state.  Their distribution must match the reference (PSI
below 0.1 per feature and for the score), or the demo reports drift nobody injected.
The controls show what the test catches: the closed ``Population`` the demo used before
(everyone first seen on the history's first day: ``active_streak_months`` is a clock), and a
cold state (windowed counts all small).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftline.commands.train import train_on_events
from driftline.core.drift.divergence import psi
from driftline.core.offline import history_features
from driftline.core.spec import FeatureSpec, load_default_spec
from driftline.demo_world import DemoWorld, Injection, headroom_days, history_end_ms
from driftline.model.profile import OTHER, numeric_shares
from driftline.model.serving_profile import serving_reference_profile
from driftline.model.training import positive_scores
from driftline.simulate import DAY_MS, Population

CUSTOMERS = 600
END_MS = 19_675 * DAY_MS  # 2023-11-14T00:00Z: a history end in the past
LIVE_DAYS = 120
NEVER = 1e13  # a wall clock far ahead: the live stream never waits for the present


def _live(world: DemoWorld, days: int, injection: Injection | None = None) -> pd.DataFrame:
    frames = []
    for frame in world.live_frames(injection=injection, wall=lambda: NEVER):
        frames.append(frame)
        if world.population.clock_ms >= world.end_ms + days * DAY_MS:
            break
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return load_default_spec()


@pytest.fixture(scope="module")
def demo(spec: FeatureSpec) -> dict[str, Any]:
    world = DemoWorld(CUSTOMERS, seed=5, end_ms=END_MS)
    history = world.history()
    live = _live(world, LIVE_DAYS)
    result = train_on_events(
        history, spec, horizon_days=60, n_estimators=30, cv_folds=2, progress=False
    )
    return {"world": world, "history": history, "live": live, "result": result}


def _served(events: pd.DataFrame, spec: FeatureSpec) -> tuple[pd.DataFrame, np.ndarray]:
    """Point-in-time features of every on-time event and their times, as the worker
    computes them (one ``FeatureState`` over the events in order)."""
    ordered = events.sort_values("event_time", kind="stable").reset_index(drop=True)
    features, late = history_features(ordered, spec)
    assert not late.any()
    return features, ordered["event_time"].to_numpy(dtype=np.int64)


def _psi_by_feature(
    profile: dict[str, Any], frame: pd.DataFrame, scores: np.ndarray | None = None
) -> dict[str, float]:
    """PSI of ``frame`` against the reference profile, with the monitor's own formula."""
    out: dict[str, float] = {}
    for name, ref in profile["numeric"].items():
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
        shares = numeric_shares(values, ref["edges"])
        counts = np.asarray(shares) * np.count_nonzero(~np.isnan(values))
        out[name] = float(psi(np.asarray(ref["shares"]), counts))
    for name, ref in profile["categorical"].items():
        values = frame[name].dropna().astype(str)
        keys = list(ref["shares"])
        known = [k for k in keys if k != OTHER]
        counts = np.array(
            [(~values.isin(known)).sum() if k == OTHER else (values == k).sum() for k in keys],
            dtype=np.float64,
        )
        out[name] = float(psi(np.asarray([ref["shares"][k] for k in keys]), counts))
    if scores is not None:
        shares = numeric_shares(scores, profile["score"]["edges"])
        out["__score__"] = float(
            psi(np.asarray(profile["score"]["shares"]), np.asarray(shares) * len(scores))
        )
    return out


def test_the_live_stream_continues_the_history(demo: dict[str, Any]) -> None:
    world, history, live = demo["world"], demo["history"], demo["live"]
    h_times = history["event_time"].to_numpy(dtype=np.int64)
    l_times = live["event_time"].to_numpy(dtype=np.int64)
    # The clock goes on from where the history ended: no gap, no jump, never backwards.
    assert h_times.max() < END_MS <= l_times.min() < END_MS + 3_600_000
    assert (np.diff(l_times) >= 0).all()
    # The same customers: nearly every customer active in the history's last 30 days is
    # in the first 30 live days; the others in the live stream are newcomers (who replace
    # customers gone), none of the first customers comes back.
    first30 = live[l_times < END_MS + 30 * DAY_MS]
    active = set(history.loc[h_times >= END_MS - 30 * DAY_MS, "customer_id"])
    kept = active & set(first30["customer_id"])
    assert len(kept) >= 0.9 * len(active), (len(kept), len(active))
    newcomers = set(first30["customer_id"]) - set(history["customer_id"])
    assert all(int(c[1:]) >= CUSTOMERS for c in newcomers), sorted(newcomers)[:5]
    assert len(newcomers) < 0.1 * len(kept)
    # The same mix: the live per-day event rate within 5 % of the history's last 30 days.
    hist_rate = np.count_nonzero(h_times >= END_MS - 30 * DAY_MS) / 30
    live_rate = len(first30) / 30
    assert abs(live_rate / hist_rate - 1) < 0.05, (live_rate, hist_rate)
    later = live[l_times >= END_MS + (LIVE_DAYS - 30) * DAY_MS]
    assert abs(len(later) / 30 / hist_rate - 1) < 0.05, (len(later) / 30, hist_rate)
    assert world.population.clock_ms >= END_MS + LIVE_DAYS * DAY_MS


@pytest.mark.parametrize("days", [(0, 30), (30, LIVE_DAYS)])
def test_served_features_match_the_reference_profile(
    demo: dict[str, Any], spec: FeatureSpec, days: tuple[int, int]
) -> None:
    """At the default rate (2000 events/s, 2000 customers: ~0.8 simulated days per
    second) the first 30 live days are the demo's first ~40 s, 30-120 the next ~2 min."""
    result = demo["result"]
    features, times = _served(pd.concat([demo["history"], demo["live"]]), spec)
    window = (times >= END_MS + days[0] * DAY_MS) & (times < END_MS + days[1] * DAY_MS)
    frame = features[window][spec.feature_names].reset_index(drop=True)
    scores = positive_scores(result.pipeline, frame)
    values = _psi_by_feature(result.reference_profile, frame, scores)
    assert set(values) == {*spec.feature_names, "__score__"}
    worst = sorted(values.items(), key=lambda kv: -kv[1])[:5]
    assert max(values.values()) < 0.1, worst


def test_a_closed_population_or_a_cold_state_would_not_match(
    demo: dict[str, Any], spec: FeatureSpec
) -> None:
    """The controls: what the demo served before (a closed population, a cold worker)
    fails the same check, on the features the lead saw drifting."""
    pipeline = demo["result"].pipeline
    closed = Population(CUSTOMERS, seed=5, start_ms=END_MS - 365 * DAY_MS)
    history = closed.generate_history(365)
    live = pd.concat(
        list(closed.stream_frames(DAY_MS, until_ms=END_MS + 30 * DAY_MS, profile_first=False))
    )
    cutoff = (END_MS - 60 * DAY_MS) // DAY_MS * DAY_MS
    reference = serving_reference_profile(history, spec, pipeline, start_ms=cutoff)
    warm, times = _served(pd.concat([history, live]), spec)
    frame = warm[times >= END_MS][spec.feature_names].reset_index(drop=True)
    assert _psi_by_feature(reference, frame)["active_streak_months"] > 1.0
    # Cold: the worker starts on the live stream alone.
    steady = demo["result"].reference_profile
    cold, _ = _served(demo["live"][demo["live"]["event_time"] < END_MS + 30 * DAY_MS], spec)
    cold_psi = _psi_by_feature(steady, cold[spec.feature_names])
    assert cold_psi["purchases_90d"] > 0.1 and cold_psi["active_streak_months"] > 0.1, cold_psi


@pytest.mark.parametrize(
    ("scenario", "feature"),
    [
        ("age", "age"),
        ("spend", "last_order_value"),
        ("new-region", "region"),
        ("rate-drop", "purchases_30d"),
    ],
)
def test_each_injected_change_moves_its_feature(
    spec: FeatureSpec, demo: dict[str, Any], scenario: str, feature: str
) -> None:
    """From the injection on, the generator changes: the scenario's feature leaves the
    reference (PSI over 0.25 within 30 days of event time) while before it, it held."""
    world = DemoWorld(CUSTOMERS, seed=5, end_ms=END_MS)
    history = world.history()
    injection = Injection(scenario, at_s=0.0)
    live = _live(world, 30, injection)
    assert injection.applied_at_ms == END_MS
    features, times = _served(pd.concat([history, live]), spec)
    frame = features[times >= END_MS + 10 * DAY_MS][spec.feature_names]
    values = _psi_by_feature(demo["result"].reference_profile, frame)
    assert values[feature] > 0.25, sorted(values.items(), key=lambda kv: -kv[1])[:5]


def test_the_history_ends_early_enough_for_the_run() -> None:
    # 10 minutes at 2000 events/s over 2000 customers: at most 1 day/s, 600 days + 25 %.
    assert headroom_days(2000, 2000, 600, minimum=0) == 751
    assert headroom_days(2000, 2000, None) >= 1000
    end = history_end_ms(751, now_s=END_MS / 1000 + 3600)
    assert end == END_MS - 751 * DAY_MS


def test_the_live_stream_waits_for_the_present() -> None:
    world = DemoWorld(500, seed=1, end_ms=END_MS)
    world.history()
    now = END_MS / 1000 + 2 * 3600  # two hours of event time are in the past
    frames = world.live_frames(wall=lambda: now, clock=lambda: 0.0)
    got = [next(frames) for _ in range(2)]
    assert all(f["event_time"].max() < now * 1000 for f in got)
    assert world.population.clock_ms == END_MS + 2 * 3_600_000
    # The third hour would end in the future: the generator waits until stopped.
    stop = threading.Event()
    waiting = world.live_frames(wall=lambda: now, stop=stop, clock=lambda: 0.0)
    stop.set()
    assert list(waiting) == []
