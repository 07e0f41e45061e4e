"""RetrainTrigger: one request per incident after persistence, cooldown / weekly cap / in-flight
gates, the request contract, checkpoints, and the same incident_id from two workers.

Persistence, cooldown and weekly cap run on the event times the updates carry; only the
in-flight timeout runs on the wall clock.  ``feed`` delivers updates as a live stream would
(each at the wall-clock time of its latest event); the event-time tests at the end deliver
the same updates at other wall-clock times and expect the same requests."""

from __future__ import annotations

import itertools
import json
import math

import msgspec
import numpy as np
import pandas as pd
import pytest

from driftline.core.drift.monitor import (
    DRIFT,
    OK,
    SCORE,
    Alarm,
    DriftMonitor,
    DriftUpdate,
    MonitorBudget,
    PredictionDrift,
)
from driftline.core.drift.trigger import RetrainPolicy, RetrainRequest, RetrainTrigger
from driftline.model.profile import build_reference_profile

FEATURES = ["a", "b", "c", "d"]
T0 = 1_700_000_400.0  # a multiple of the 600 s persistence bucket


def fake_update(
    drifted: list[str], now_s: float, score_state: int = OK, alarming: bool = True
) -> DriftUpdate:
    """A monitor update with the given features in DRIFT (equal importances); with
    ``alarming``, each of them (and the score in DRIFT) alarms in it again, as a shift that
    lasts does (a detector restarts after each alarm)."""
    states = {f: (DRIFT if f in drifted else OK) for f in FEATURES}
    states[SCORE] = score_state
    names = [*FEATURES, SCORE]
    return DriftUpdate(
        reference_hash="ref",
        n_events=100,
        events_seen=0,
        event_time_min_ms=round(now_s * 1000) - 1000,
        event_time_max_ms=round(now_s * 1000),
        states=states,
        statistics={f: {"mean": 10.0 if states[f] == DRIFT else 1.0} for f in names},
        thresholds={f: {"mean": 17.0} for f in names},
        psi=dict.fromkeys(names, 0.2),
        js=dict.fromkeys(names, 0.05),
        psi_time=dict.fromkeys(names, math.nan),
        js_time=dict.fromkeys(names, math.nan),
        missing_ratio=dict.fromkeys(FEATURES, 0.0),
        unseen_ratio={},
        alarms=[
            Alarm(f, "mean", 20.0, 17.0, round(now_s * 1000), round(now_s * 1000))
            for f in names
            if alarming and states[f] == DRIFT
        ],
        drifted=[f for f in FEATURES if f in drifted],
        drifted_share=len([f for f in FEATURES if f in drifted]) / len(FEATURES),
        prediction=PredictionDrift(0.3, 0.1, score_state),
    )


def make_trigger(worker: str = "w1", **policy: float) -> RetrainTrigger:
    return RetrainTrigger(RetrainPolicy(**policy), "churn", "7", worker, clock=lambda: T0)


def feed(
    trigger: RetrainTrigger, drifted: list[str], start: float, seconds: float, step: float = 10.0
) -> list[RetrainRequest]:
    """Observe one update every ``step`` seconds of event time, each arriving at the wall
    clock of its latest event (a live stream); return the requests fired."""
    fired = []
    for now in np.arange(start, start + seconds, step):
        request = trigger.observe(fake_update(drifted, float(now)), float(now))
        if request is not None:
            fired.append(request)
    return fired


def test_fires_once_per_incident_after_persistence() -> None:
    trigger = make_trigger()
    assert feed(trigger, ["a"], T0, 3600) == []  # 1 of 4 = 0.25 < 0.3: never
    fired = feed(trigger, ["a", "b"], T0 + 3600, 3600)
    assert len(fired) == 1
    request = fired[0]
    assert request.created_at - (T0 + 3600) == pytest.approx(600, abs=10)
    assert request.reason == "feature_drift"
    assert [(d.feature, d.detector) for d in request.drifted_features] == [
        ("a", "mean"),
        ("b", "mean"),
    ]
    assert request.window_start_ms == round((T0 + 3600) * 1000) - 1000
    assert trigger.in_flight
    # The contract round-trips through the topic encoding.
    decoded = msgspec.json.decode(msgspec.json.encode(request), type=RetrainRequest)
    assert decoded == request and len(request.request_id) == 32


def test_short_blip_does_not_fire() -> None:
    trigger = make_trigger()
    for start in (T0, T0 + 1000, T0 + 2000):  # 500 s incidents separated by OK updates
        assert feed(trigger, ["a", "b"], start, 500) == []
        assert feed(trigger, [], start + 500, 100) == []


def test_prediction_drift_fires_regardless_of_share() -> None:
    trigger = make_trigger()
    fired = [
        r
        for now in np.arange(T0, T0 + 700, 10.0)
        if (r := trigger.observe(fake_update([], float(now), score_state=DRIFT), float(now)))
    ]
    assert len(fired) == 1 and fired[0].reason == "prediction_drift"
    assert [d.feature for d in fired[0].drifted_features] == [SCORE]


def test_in_flight_blocks_then_acknowledge_and_cooldown() -> None:
    trigger = make_trigger(cooldown_s=3600, in_flight_timeout_s=10**9)
    first = feed(trigger, ["a", "b"], T0, 700)
    assert len(first) == 1
    feed(trigger, [], T0 + 700, 20)  # incident over
    # A new incident after the cooldown is still held back while the request is in flight.
    assert feed(trigger, ["c", "d"], T0 + 5000, 2000) == []
    assert trigger.blocked == "in_flight"
    assert not trigger.acknowledge("not-the-id")
    assert trigger.acknowledge(first[0].request_id) and not trigger.in_flight
    # The same incident goes on: it fires now that the gate is open, once.
    second = feed(trigger, ["c", "d"], T0 + 7000, 2000)
    assert len(second) == 1 and second[0].incident_id != first[0].incident_id
    trigger.acknowledge(second[0].request_id)
    feed(trigger, [], T0 + 9000, 20)
    # Within the cooldown of the second request: blocked.
    assert feed(trigger, ["a", "b"], T0 + 9100, 700) == []
    assert trigger.blocked == "cooldown"


def test_in_flight_times_out() -> None:
    trigger = make_trigger(cooldown_s=0, in_flight_timeout_s=1800)
    assert len(feed(trigger, ["a", "b"], T0, 700)) == 1
    feed(trigger, [], T0 + 700, 20)
    fired = feed(trigger, ["a", "b", "c"], T0 + 800, 3000)
    assert len(fired) == 1 and fired[0].created_at >= T0 + 600 + 1800


def test_weekly_cap() -> None:
    trigger = make_trigger(cooldown_s=3600, in_flight_timeout_s=60, max_per_week=3)
    fired = []
    for hour in range(0, 24 * 8, 2):  # an incident every 2 hours for 8 days
        start = T0 + hour * 3600
        fired += feed(trigger, ["a", "b"], start, 1200, step=60)
        feed(trigger, [], start + 1200, 60)
    times = [r.created_at for r in fired]
    assert all(b - a >= 3600 for a, b in itertools.pairwise(times))
    for t in times:
        assert sum(1 for u in times if t <= u < t + 7 * 86400) <= 3
    # 3 in the first hours, then nothing until the first ages out a week later, then the
    # next 3 as each of the earlier ones leaves the 7-day window.
    assert len(fired) == 6
    assert times[3] >= times[0] + 7 * 86400 and times[2] < T0 + 86400


def test_state_dict_round_trip_keeps_gates() -> None:
    trigger = make_trigger()
    fired = feed(trigger, ["a", "b"], T0, 700)
    restored = RetrainTrigger.from_state_dict(
        json.loads(json.dumps(trigger.state_dict())), clock=lambda: T0 + 700
    )
    # Same incident after a restart: no duplicate; in flight survives.
    assert feed(restored, ["a", "b"], T0 + 700, 1000) == []
    assert restored.in_flight and restored.in_flight_id == fired[0].request_id


# ------------------------------------------------------------------ with real monitors

NUMERIC = [f"x{i}" for i in range(6)]
CATEGORICAL = ["plan"]
PLANS, PLAN_P = ["basic", "plus", "pro"], [0.5, 0.3, 0.2]


def sample(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    data: dict[str, object] = {f"x{i}": rng.normal(0.0, 1.0, n) for i in range(6)}
    data["plan"] = rng.choice(PLANS, n, p=PLAN_P).astype(object)
    return pd.DataFrame(data), rng.beta(2.0, 5.0, n)


@pytest.fixture(scope="module")
def calibrated() -> dict:
    frame, scores = sample(np.random.default_rng(0), 10_000)
    profile = build_reference_profile(frame, scores, NUMERIC, CATEGORICAL)
    monitor = DriftMonitor(
        profile, NUMERIC, CATEGORICAL, MonitorBudget(events_per_day=50_000), category_window=500
    )
    return monitor.state_dict()


def test_two_workers_same_incident_same_id(calibrated: dict) -> None:
    """Two workers see different rows (partitions) of the same drifted stream."""
    shift_ms = round((T0 + 60) * 1000)  # event time of the shift: early in its bucket
    requests = []
    for worker, seed in (("w1", 1), ("w2", 2)):
        monitor = DriftMonitor.from_state_dict(calibrated)
        trigger = RetrainTrigger(RetrainPolicy(), "churn", "7", worker)
        rng = np.random.default_rng(seed)
        fired = []
        for b in range(120):  # 1000 events per 10 s batch: 20 minutes of event time
            times = round(T0 * 1000) + b * 10_000 + np.arange(1000) * 10
            frame, scores = sample(rng, 1000)
            after = times >= shift_ms
            for name in ("x0", "x1", "x2"):  # 3 of 7 features: share 0.43 >= 0.3
                frame[name] = frame[name] + np.where(after, 1.0, 0.0)
            update = monitor.update(frame, scores, times)
            request = trigger.observe(update)  # persistence in the batches' event time
            if request is not None:
                fired.append(request)
        assert len(fired) == 1, worker  # once per incident, not per batch
        requests.append(fired[0])
    a, b = requests
    assert a.incident_id == b.incident_id
    assert a.request_id != b.request_id and {a.worker_id, b.worker_id} == {"w1", "w2"}
    assert {d.feature for d in a.drifted_features} == {"x0", "x1", "x2"}  # + detectors
    assert a.window_start_ms >= shift_ms - 10_000


def test_stationary_monitor_never_triggers(calibrated: dict) -> None:
    monitor = DriftMonitor.from_state_dict(calibrated)
    trigger = RetrainTrigger(RetrainPolicy(persistence_s=0), "churn", "7", "w1")
    rng = np.random.default_rng(3)
    for b in range(50):
        times = round(T0 * 1000) + b * 10_000 + np.arange(2000) * 5
        frame, scores = sample(rng, 2000)
        update = monitor.update(frame, scores, times)
        assert trigger.observe(update) is None


def test_new_reference_ends_the_incident() -> None:
    trigger = make_trigger()
    feed(trigger, ["a", "b"], T0, 500)  # 500 s of a 600 s persistence
    update = fake_update(["a", "b"], T0 + 500)
    moved = DriftUpdate(**{**update.__dict__, "reference_hash": "new"})
    assert trigger.observe(moved, T0 + 500) is None
    # The persistence restarted with the new model, at the event clock.
    assert trigger.incident_since_ms == round((T0 + 500) * 1000)


# ------------------------------------------------------------------ external alerts


def test_alert_after_the_trigger_fired_sends_nothing() -> None:
    trigger = make_trigger()
    assert len(feed(trigger, ["a", "b"], T0, 700)) == 1
    request, why = trigger.on_alert(T0 + 700)
    assert (request, why) == (None, "already_fired")
    # A new incident while the first request is still in flight: the gate answers.
    feed(trigger, [], T0 + 700, 20)
    assert trigger.on_alert(T0 + 720) == (None, "no_incident")
    feed(trigger, ["c", "d"], T0 + 800, 100)
    assert trigger.on_alert(T0 + 900) == (None, "in_flight")


def test_alert_during_an_incident_fires_it_once_with_the_triggers_incident_id() -> None:
    """An alert before the persistence ran out: the request the trigger would have sent,
    reason ``alert``, and the trigger does not send its own afterwards."""
    twin, trigger = make_trigger(), make_trigger()
    (own,) = feed(twin, ["a", "b"], T0, 700)
    assert feed(trigger, ["a", "b"], T0, 300) == []
    request, why = trigger.on_alert(T0 + 300)
    assert why == "fired" and request is not None
    assert request.reason == "alert" and request.incident_id == own.incident_id
    assert request.window_start_ms == own.window_start_ms  # the incident's, not the alert's
    assert [d.feature for d in request.drifted_features] == ["a", "b"]
    assert feed(trigger, ["a", "b"], T0 + 300, 2000) == []
    assert trigger.in_flight_id == request.request_id
    assert msgspec.json.decode(msgspec.json.encode(request), type=RetrainRequest) == request


def test_alert_without_drift_here_sends_nothing_and_leaves_the_trigger_alone() -> None:
    """The drift is on other partitions, whose worker already sent the request."""
    trigger = make_trigger()
    feed(trigger, ["a"], T0, 100)  # a drifted feature, below the share: no incident
    assert trigger.on_alert(T0 + 100) == (None, "no_incident")
    assert not trigger.incident_fired and trigger.fired_ms == []
    assert len(feed(trigger, ["a", "b"], T0 + 100, 700)) == 1  # its own incident fires


def test_alert_before_any_monitored_batch_and_after_a_model_swap_has_no_data() -> None:
    trigger = make_trigger()
    assert trigger.on_alert(T0) == (None, "no_data")
    feed(trigger, ["a", "b"], T0, 100)
    trigger.set_model("churn", "8")
    assert trigger.on_alert(T0 + 100) == (None, "no_data")


def test_one_alarm_alone_is_not_confirmed_and_sends_nothing() -> None:
    """A false alarm latches DRIFT until the feature clears, however long that takes in
    event time; without a second alarm of the incident's features it never fires."""
    trigger = make_trigger(confirmations=2)
    assert trigger.observe(fake_update(["a", "b"], T0), T0) is None  # the alarms
    quiet = [
        trigger.observe(fake_update(["a", "b"], T0 + t, alarming=False), T0 + t)
        for t in range(10, 7200, 10)
    ]
    assert quiet == [None] * len(quiet)
    # A second alarm of a drifted feature confirms it: the incident fires.
    assert trigger.observe(fake_update(["a", "b"], T0 + 7200), T0 + 7200) is not None


def test_confirmations_of_one_fires_on_the_first_alarm_after_persistence() -> None:
    trigger = make_trigger(confirmations=1, persistence_s=60.0)
    assert trigger.observe(fake_update(["a", "b"], T0), T0) is None
    later = trigger.observe(fake_update(["a", "b"], T0 + 60, alarming=False), T0 + 60)
    assert later is not None
