"""Does a restored drift monitor fit the model it is about to watch?

A checkpoint comes from a Kafka topic, so it is untrusted input: it may be corrupt, from
another Driftline version, or crafted.  :meth:`DriftMonitor.from_state_dict` rejects what
does not parse; this check rejects what parses but would fail later, in the hot path,
on the first batch (a CUSUM bank with fewer streams than the model has features, a
window of another width, a feature the model does not have).  It compares the restored
monitor with a fresh one built for the model: same features, same reference, and every
numpy array of every detector the same shape and kind.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from driftline.core.drift.monitor import DRIFT, OK, WARN, DriftMonitor

__all__ = ["mismatches"]


def mismatches(fresh: DriftMonitor, restored: DriftMonitor) -> list[str]:
    """What differs between ``restored`` and ``fresh`` in structure (empty: it fits)."""
    found: list[str] = []
    if restored.numeric != fresh.numeric or restored.categorical != fresh.categorical:
        found.append("other features")
    if restored.reference_hash != fresh.reference_hash:
        found.append("other reference profile")
    pairs: list[tuple[str, Any, Any]] = [
        ("mean_bank", fresh.mean_bank, restored.mean_bank),
        ("variance_bank", fresh.variance_bank, restored.variance_bank),
        ("bernoulli", fresh.bernoulli, restored.bernoulli),
        ("event_window", fresh.event_window, restored.event_window),
    ]
    if set(restored.category_tests) != set(fresh.category_tests):
        found.append("other categorical tests")
    else:
        pairs += [
            (f"category_tests[{c}]", t, restored.category_tests[c])
            for c, t in fresh.category_tests.items()
        ]
    for name, want, got in pairs:
        found += _shape_mismatches(name, want, got)
    for window_index, (counts, missing, _n) in restored.time_window._open.items():
        shape = (fresh.time_window.n_features, fresh.time_window.width)
        if counts.shape != shape or missing.shape != (shape[0],):
            found.append(f"time_window[{window_index}] shape")
    tracked = set(fresh.states)
    for field in ("states", "clean_windows", "_alarmed_in_window", "_last_g"):
        if set(getattr(restored, field)) != set(getattr(fresh, field)):
            found.append(f"{field.lstrip('_')} keys")
    if any(state not in (OK, WARN, DRIFT) for state in restored.states.values()):
        found.append("state values")
    if restored.events_seen < 0 or not tracked:
        found.append("events_seen")
    if not all(math.isfinite(x) for x in restored._last_g.values()):
        found.append("non-finite statistics")
    return found


def _shape_mismatches(name: str, want: Any, got: Any) -> list[str]:
    """Every ndarray attribute of ``want`` present in ``got`` with the same shape and kind,
    and finite where ``want``'s is (a NaN CUSUM sum never alarms again)."""
    if want is None or got is None:
        return [] if want is got else [f"{name} missing"]
    found = []
    for attribute, array in vars(want).items():
        if not isinstance(array, np.ndarray):
            continue
        other = getattr(got, attribute, None)
        if not isinstance(other, np.ndarray) or other.shape != array.shape:
            found.append(f"{name}.{attribute} shape")
        elif other.dtype.kind != array.dtype.kind:
            found.append(f"{name}.{attribute} type")
        elif array.dtype.kind == "f" and (
            np.isfinite(array).all() and not np.isfinite(other).all()
        ):
            found.append(f"{name}.{attribute} not finite")
    return found
