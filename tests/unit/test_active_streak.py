"""``active_streak_months`` (formerly ``months_active``): the name says what it measures.

The state forgets a customer silent for longer than the idle eviction, so the "tenure"
aggregate is the time since the first event of the current activity streak, not since the
customer's first event ever; the README called it the latter.  The feature is named for
what it is, and it is the same offline (training) and online (the worker's state, batch by
batch), so training still equals serving.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier

from driftline.core.events import EventBatch
from driftline.core.offline import history_features
from driftline.core.spec import DAY_MS, load_default_spec
from driftline.core.state import FeatureState
from driftline.model.registry import ModelRegistry

START_MS = 1_767_225_600_000  # 2026-01-01


def purchases(days: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(days))],
            "customer_id": "c1",
            "event_time": [START_MS + int(d * DAY_MS) for d in days],
            "event_type": "purchase",
            "amount": 10.0,
        }
    )


def test_the_default_spec_names_the_streak_not_a_lifetime() -> None:
    spec = load_default_spec()
    assert "active_streak_months" in spec.feature_names
    assert "months_active" not in spec.feature_names


def test_a_silence_longer_than_the_idle_eviction_starts_a_new_streak() -> None:
    spec = load_default_spec()
    gap_days = spec.eviction_after_ms / DAY_MS  # 90 days + 1 hour by default
    # Day 0, 60, 120 (gaps of 60: one streak), then back after a silence of gap + 5 days.
    back = 120 + gap_days + 5
    events = purchases([0, 60, 120, back, back + 45])
    features, _ = history_features(events, spec)
    streak = features["active_streak_months"].to_numpy()
    # 30-day months, floored at 1: 60 days -> 2, 120 days -> 4; then a new streak.
    np.testing.assert_allclose(streak, [1.0, 2.0, 4.0, 1.0, 1.5])


def test_the_worker_state_computes_the_same_streak_batch_by_batch() -> None:
    spec = load_default_spec()
    back = 120 + spec.eviction_after_ms / DAY_MS + 5
    events = purchases([0, 60, 120, back, back + 45])
    offline, _ = history_features(events, spec)
    state = FeatureState(spec)
    online = [
        state.update(EventBatch.from_frame(events.iloc[[i]].reset_index(drop=True)))[
            "active_streak_months"
        ].iloc[0]
        for i in range(len(events))
    ]
    np.testing.assert_allclose(online, offline["active_streak_months"].to_numpy())


def test_the_demo_retrains_a_model_registered_under_the_old_spec(tmp_path: Path) -> None:
    """The rename changes the spec digest: a demo model of the same history registered
    before it would be refused by the worker, so the demo must train anew."""
    from driftline.commands.demo import _trained_on
    from driftline.commands.train import _day

    history = purchases([0, 30, 60])
    frame = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
    dummy = DummyClassifier().fit(frame, [0, 1, 0, 1])
    registry = ModelRegistry(tmp_path)
    dataset = {
        "n_events": len(history),
        "history": [_day(int(history["event_time"].min())), _day(int(history["event_time"].max()))],
    }
    for digest in ("digest-of-the-old-spec", load_default_spec().digest):
        registry.save(
            "churn",
            dummy,
            feature_names=["x"],
            feature_types={"x": "numeric"},
            spec_digest=digest,
            metrics={},
            data_hash="h",
            reference_profile={},
            threshold=0.5,
            extra={"dataset": dataset},
        )
    assert not _trained_on(registry, "v0001", history)
    assert _trained_on(registry, "v0002", history)
