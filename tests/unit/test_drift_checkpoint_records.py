"""Drift checkpoint records are untrusted input: plain data, never unpickled; a record that
does not parse or does not fit the model is ignored and counted, never raised.

No broker here: the decode and restore steps of :class:`DriftCheckpoints` are pure.  The
same records go through a real broker and worker in
tests/integration/test_drift_checkpoint_safety.py.
"""

from __future__ import annotations

import base64
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftline.core.drift.monitor import DriftMonitor, MonitorBudget
from driftline.core.drift.trigger import RetrainPolicy, RetrainTrigger
from driftline.engine.kafka.drift_checkpoint import FORMAT, DriftCheckpoints
from driftline.model.profile import build_reference_profile

NUMERIC = ["x0", "x1"]
CATEGORICAL = ["plan"]


class CreatesFile:
    """Unpickling this creates ``path``: what a hostile producer would put in a pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def sample(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.DataFrame(
        {
            "x0": rng.normal(0, 1, n),
            "x1": rng.normal(5, 2, n),
            "plan": rng.choice(["basic", "pro", "team"], n, p=[0.6, 0.3, 0.1]).astype(object),
        }
    )
    return frame, rng.beta(2.0, 5.0, n)


@pytest.fixture(scope="module")
def fresh_state() -> dict[str, Any]:
    frame, scores = sample(np.random.default_rng(1), 5000)
    profile = build_reference_profile(frame, scores, NUMERIC, CATEGORICAL)
    monitor = DriftMonitor(
        profile,
        NUMERIC,
        CATEGORICAL,
        MonitorBudget(events_per_day=10_000),
        window_test_resamples=500,
        category_window=200,
        window_events=500,
    )
    return json.loads(json.dumps(monitor.state_dict(), allow_nan=False))


def new_trigger() -> RetrainTrigger:
    return RetrainTrigger(RetrainPolicy(), "churn", "v0001", "w1")


def used_monitor(fresh_state: dict[str, Any]) -> DriftMonitor:
    """A monitor that has seen 1200 events (its state differs from a fresh one)."""
    monitor = DriftMonitor.from_state_dict(fresh_state)
    rng = np.random.default_rng(2)
    for b in range(3):
        frame, scores = sample(rng, 400)
        times = 1_700_000_000_000 + (b * 400 + np.arange(400)) * 100
        keys = np.array([f"c{i % 50}" for i in range(400)], dtype=object)
        monitor.update(frame, scores, times, keys)
    return monitor


def record(monitor_state: dict[str, Any], trigger: RetrainTrigger | None = None) -> bytes:
    trigger_state = (trigger or new_trigger()).state_dict()
    document = {
        "format": FORMAT,
        "saved_at": 1.0,
        "monitor": monitor_state,
        "trigger": trigger_state,
    }
    return json.dumps(document, allow_nan=False).encode()


class Counted:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def store(self) -> DriftCheckpoints:
        return DriftCheckpoints("unused:9092", "drift-state", "w1", on_ignored=self.reasons.append)


def test_a_valid_checkpoint_restores_exactly(fresh_state: dict[str, Any]) -> None:
    used = used_monitor(fresh_state)
    counted = Counted()
    store = counted.store()
    fresh = DriftMonitor.from_state_dict(fresh_state)
    saved = store.decode(record(used.state_dict()))
    assert saved is not None
    restored = store.restore(saved, fresh, new_trigger())
    assert restored is not None and counted.reasons == []
    assert restored.monitor.events_seen == used.events_seen == 1200
    assert restored.monitor.state_dict() == used.state_dict()
    assert restored.trigger is not None and restored.trigger.model_version == "v0001"


def test_a_whole_pickle_record_is_ignored_and_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    counted = Counted()
    assert counted.store().decode(pickle.dumps(CreatesFile(marker))) is None
    assert not marker.exists()
    assert counted.reasons == ["undecodable"]


def test_a_pickle_in_a_version_2_checkpoint_is_never_unpickled(
    fresh_state: dict[str, Any], tmp_path: Path
) -> None:
    """Version 2 held river's ADWIN as a base64 pickle.  Versions before 4 judged every
    event with per-event thresholds and are not restored any more (the monitor starts
    clean, saying so), and the pickle is never unpickled on the way."""
    marker = tmp_path / "pwned"
    state = used_monitor(fresh_state).state_dict()
    state["version"] = 2
    state["config"]["adwin_delta"] = 0.002
    state["adwin"] = base64.b64encode(pickle.dumps(CreatesFile(marker))).decode()
    counted = Counted()
    store = counted.store()
    saved = store.decode(record(state))
    assert saved is not None
    restored = store.restore(saved, DriftMonitor.from_state_dict(fresh_state), new_trigger())
    assert not marker.exists()
    assert restored is None
    assert len(counted.reasons) == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\xffgarbage",
        b"{",
        b"[1, 2]",
        b'{"format": 1}',
        b'{"format": "1", "saved_at": 0}',
        b'{"format": 1, "saved_at": 0, "monitor": {"upper": NaN}}',
    ],
)
def test_corrupt_records_are_ignored_and_counted(payload: bytes) -> None:
    counted = Counted()
    assert counted.store().decode(payload) is None
    assert counted.reasons == ["undecodable"]


def test_another_format_is_ignored_and_counted() -> None:
    counted = Counted()
    payload = json.dumps({"format": FORMAT + 1, "saved_at": 0, "monitor": {}}).encode()
    assert counted.store().decode(payload) is None
    assert counted.reasons == ["format"]


def break_bank(state: dict[str, Any]) -> None:
    state["mean_bank"]["upper"] = state["mean_bank"]["upper"][:-1]  # one stream short


def break_window(state: dict[str, Any]) -> None:
    state["event_window"]["missing"] = [0]


def break_states(state: dict[str, Any]) -> None:
    state["states"]["x0"] = 7


def break_config(state: dict[str, Any]) -> None:
    state["config"]["window_test_resamples"] = 10**12  # would resample for hours


def break_type(state: dict[str, Any]) -> None:
    state["category_tests"] = "plan"


@pytest.mark.parametrize(
    "damage", [break_bank, break_window, break_states, break_config, break_type]
)
def test_a_checkpoint_that_does_not_fit_the_model_is_ignored(
    fresh_state: dict[str, Any], damage: Any
) -> None:
    state = json.loads(json.dumps(used_monitor(fresh_state).state_dict()))
    damage(state)
    counted = Counted()
    store = counted.store()
    saved = store.decode(json.dumps({"format": FORMAT, "saved_at": 1, "monitor": state}).encode())
    assert saved is not None
    fresh = DriftMonitor.from_state_dict(fresh_state)
    assert store.restore(saved, fresh, None) is None
    assert counted.reasons == ["mismatch"]


def test_a_checkpoint_of_another_model_version_starts_clean_uncounted(
    fresh_state: dict[str, Any],
) -> None:
    counted = Counted()
    store = counted.store()
    saved = store.decode(
        record(fresh_state, RetrainTrigger(RetrainPolicy(), "churn", "v0002", "w1"))
    )
    assert saved is not None
    assert store.restore(saved, DriftMonitor.from_state_dict(fresh_state), new_trigger()) is None
    assert counted.reasons == []
