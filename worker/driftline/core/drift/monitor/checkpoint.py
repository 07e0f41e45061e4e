"""The drift monitor's checkpoint (version 4): plain JSON data, never a pickle.

It is read back from a Kafka topic that anyone allowed to produce to it could write, so it
holds numbers, strings and lists only.  Restoring it continues exactly where the monitor
stopped: a latched DRIFT stays latched (the restarted worker must neither raise a duplicate
nor lose an alarm).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from driftline.core.drift.cusum import BernoulliCusum, CusumBank
from driftline.core.drift.divergence import EventWindow, TimeWindow
from driftline.core.drift.goodness_of_fit import CategoricalWindowTest
from driftline.core.drift.monitor.updates import MonitorBudget

if TYPE_CHECKING:
    from driftline.core.drift.monitor.drift_monitor import DriftMonitor

STATE_VERSION = 4
#: Checkpoint versions :meth:`DriftMonitor.from_state_dict` reads.  Versions 2 and 3 judged
#: every event with per-event thresholds: their sums mean something else, so they are not
#: read (the worker then starts the monitor clean, saying so).
READABLE_VERSIONS = (4,)

M = TypeVar("M", bound="DriftMonitor")


def monitor_state(monitor: DriftMonitor) -> dict[str, Any]:
    """JSON-able checkpoint: config, calibrated thresholds and every detector's state.

    Restoring it continues exactly where the monitor stopped: a latched DRIFT stays
    latched (the restarted worker must neither raise a duplicate nor lose an alarm).
    """
    return {
        "type": "DriftMonitor",
        "version": STATE_VERSION,
        "reference": monitor.reference,
        "reference_hash": monitor.reference_hash,
        "numeric": monitor.numeric,
        "categorical": monitor.categorical,
        "budget": monitor.budget.__dict__.copy(),
        "importances": monitor.importances,
        "config": {
            "window_events": monitor.window_events,
            "window_seconds": monitor.window_seconds,
            "clear_windows": monitor.clear_windows,
            "warn_fraction": monitor.warn_fraction,
            "category_window": monitor.category_window,
            "decision_threshold": monitor.decision_threshold,
            "allowed_lateness_seconds": monitor.allowed_lateness_seconds,
            "window_test_resamples": monitor.window_test_resamples,
        },
        "thresholds": monitor.thresholds_dict(),
        "mean_bank": monitor.mean_bank.state_dict(),
        "variance_bank": monitor.variance_bank.state_dict(),
        "bernoulli": None if monitor.bernoulli is None else monitor.bernoulli.state_dict(),
        "category_tests": {c: t.state_dict() for c, t in monitor.category_tests.items()},
        "open_block": monitor._open.state_dict(),
        "reference_check": monitor.reference_check.state_dict(),
        "recent_keys": [k.tolist() for k in monitor._recent_keys],
        "event_window": _event_window_state(monitor.event_window),
        "time_window": _time_window_state(monitor.time_window),
        "events_seen": monitor.events_seen,
        "states": dict(monitor.states),
        "clean_windows": dict(monitor.clean_windows),
        "drift_since_ms": dict(monitor.drift_since_ms),
        "drift_since_index": dict(monitor.drift_since_index),
        "alarmed_in_window": dict(monitor._alarmed_in_window),
        "last_g": dict(monitor._last_g),
        "latest": {
            k: {n: _json_float(x) for n, x in v.items()} for k, v in monitor._latest.items()
        },
    }


def restore_monitor(cls: type[M], state: Mapping[str, Any]) -> M:
    """A monitor of class ``cls`` from :func:`monitor_state`'s checkpoint."""
    if state.get("type") != "DriftMonitor" or state.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"not a DriftMonitor v{STATE_VERSION} state")
    config = dict(state["config"])
    monitor = cls(
        state["reference"],
        state["numeric"],
        state["categorical"],
        MonitorBudget(**state["budget"]),
        state["importances"],
        thresholds=state["thresholds"],
        **config,
    )
    if monitor.reference_hash != state["reference_hash"]:
        raise ValueError("checkpoint reference does not match its hash")
    monitor.mean_bank = CusumBank.from_state_dict(state["mean_bank"])
    monitor.variance_bank = CusumBank.from_state_dict(state["variance_bank"])
    if state["bernoulli"] is not None:
        monitor.bernoulli = BernoulliCusum.from_state_dict(state["bernoulli"])
    monitor.category_tests = {
        c: CategoricalWindowTest.from_state_dict(s) for c, s in state["category_tests"].items()
    }
    monitor._open.load_state_dict(state["open_block"])
    monitor.reference_check.load_state_dict(state["reference_check"])
    monitor._recent_keys = [np.asarray(k, dtype=object) for k in state["recent_keys"]]
    _load_event_window(monitor.event_window, state["event_window"])
    _load_time_window(monitor.time_window, state["time_window"])
    monitor.events_seen = int(state["events_seen"])
    monitor.states = {k: int(v) for k, v in state["states"].items()}
    monitor.clean_windows = {k: int(v) for k, v in state["clean_windows"].items()}
    monitor.drift_since_ms = {k: int(v) for k, v in state["drift_since_ms"].items()}
    monitor.drift_since_index = {k: int(v) for k, v in state["drift_since_index"].items()}
    monitor._alarmed_in_window = {k: bool(v) for k, v in state["alarmed_in_window"].items()}
    monitor._last_g = {k: float(v) for k, v in state["last_g"].items()}
    monitor._latest = {
        k: {n: math.nan if x is None else float(x) for n, x in v.items()}
        for k, v in state["latest"].items()
    }
    return monitor


def _json_float(value: float) -> float | None:
    """NaN (no window yet) as null: strict JSON has no NaN."""
    return None if math.isnan(value) else float(value)


# EventWindow / TimeWindow have no checkpoint API of their own; their state is a handful of
# attributes, read and written here so the monitor's checkpoint is complete.
def _event_window_state(window: EventWindow) -> dict[str, Any]:
    return {
        "counts": window._counts.tolist(),
        "missing": window._missing.tolist(),
        "filled": window._filled,
        "start": window._start,
    }


def _load_event_window(window: EventWindow, state: Mapping[str, Any]) -> None:
    window._counts = np.asarray(state["counts"], dtype=np.int64).reshape(window._counts.shape)
    window._missing = np.asarray(state["missing"], dtype=np.int64)
    window._filled = int(state["filled"])
    window._start = int(state["start"])


def _time_window_state(window: TimeWindow) -> dict[str, Any]:
    return {
        "open": [
            [index, counts.tolist(), missing.tolist(), n]
            for index, (counts, missing, n) in window._open.items()
        ],
        "max_time": window._max_time,
        "closed_below": window._closed_below,
        "n_late": window.n_late,
    }


def _load_time_window(window: TimeWindow, state: Mapping[str, Any]) -> None:
    window._open = {
        int(index): (
            np.asarray(counts, dtype=np.int64).reshape(window.n_features, window.width),
            np.asarray(missing, dtype=np.int64),
            int(n),
        )
        for index, counts, missing, n in state["open"]
    }
    window._max_time = None if state["max_time"] is None else int(state["max_time"])
    window._closed_below = int(state["closed_below"])
    window.n_late = int(state["n_late"])
