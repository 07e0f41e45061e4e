"""What the drift monitor reports: states, alarms, the per-batch ``DriftUpdate``, budgets.

Plain data, no detector: the retrain trigger, the metrics exporter and the worker read
these without needing the monitor itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

OK, WARN, DRIFT = 0, 1, 2
#: Pseudo-feature name of the model score in statistics, alarms and states.
SCORE = "__score__"


class BudgetLike(Protocol):
    """The three operator numbers of a false-alarm budget (a ``FalseAlarmBudget`` fits)."""

    @property
    def false_triggers(self) -> float: ...
    @property
    def period_days(self) -> float: ...
    @property
    def events_per_day(self) -> float: ...


@dataclass(frozen=True, kw_only=True)
class MonitorBudget:
    """Budget without a detector count: the monitor counts its own detectors."""

    false_triggers: float = 1.0
    period_days: float = 30.0
    events_per_day: float


@dataclass(frozen=True)
class Alarm:
    """One detector crossing its threshold.  ``event_index`` is the ordinal of the event (since
    the monitor started on this reference) at which it crossed, for measuring delays."""

    feature: str
    detector: str
    statistic: float
    threshold: float
    event_index: int
    event_time_ms: int


@dataclass(frozen=True)
class PredictionDrift:
    """Score-stream summary of one batch; ``state`` is the score's latched state."""

    mean_score: float
    positive_rate: float
    state: int


@dataclass(frozen=True)
class DriftUpdate:
    """Everything one :meth:`DriftMonitor.update` learned; JSON-able via :meth:`to_dict`."""

    reference_hash: str
    n_events: int  # events in this batch
    events_seen: int  # events since the monitor (re)started on this reference
    event_time_min_ms: int | None
    event_time_max_ms: int | None
    states: dict[str, int]  # per feature, score included under SCORE
    statistics: dict[str, dict[str, float]]  # feature -> detector -> current statistic
    thresholds: dict[str, dict[str, float]]
    psi: dict[str, float]  # latest completed event window
    js: dict[str, float]
    psi_time: dict[str, float]  # latest completed time window
    js_time: dict[str, float]
    missing_ratio: dict[str, float]  # latest completed event window
    unseen_ratio: dict[str, float]  # categorical features, latest completed event window
    alarms: list[Alarm]
    drifted: list[str]  # input features in DRIFT (score excluded: see ``prediction``)
    drifted_share: float  # importance-weighted share of input features in DRIFT
    prediction: PredictionDrift
    late_events: int = 0  # events dropped by the time window so far
    windows_closed: int = 0  # event windows completed in this batch
    #: Event time of the alarm that latched each feature now in DRIFT (score included):
    #: when its drift began, whatever the batching (the retrain trigger's incident start).
    drift_since_ms: dict[str, int] = field(default_factory=dict)
    #: Event ordinal (``Alarm.event_index``) of those latching alarms: arrival order, which
    #: event times across interleaved partitions are not.
    drift_since_index: dict[str, int] = field(default_factory=dict)
    #: Weight of each input feature in ``drifted_share`` (they sum to 1).
    share_weights: dict[str, float] = field(default_factory=dict)
    #: The first events' verdict (``reference_check``): None until made, then True when
    #: most features are off the reference at once; ``reference_off``: PSI of those off.
    reference_mismatch: bool | None = False
    reference_off: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-able; NaN stays a float NaN, which ``json`` writes as NaN)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("alarms", "prediction")}
        out["alarms"] = [a.__dict__.copy() for a in self.alarms]
        out["prediction"] = self.prediction.__dict__.copy()
        return out


def reference_hash(profile: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace) of a reference profile: the
    identity of "what we compare against", shared by every worker serving the same model."""
    canonical = json.dumps(profile, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
