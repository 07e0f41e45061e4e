"""RetrainTrigger clocks: persistence, cooldown and weekly cap in event time, in flight in wall
clock, nothing fired while idle, and checkpoints (new and version 1) that keep them.

A replay of recorded events at full speed, the same events at real-time speed and the live
stream they came from are one sequence of monitor updates with different wall-clock arrival
times; the trigger must send the same requests for all of them.  The updates here are the
synthetic ones of ``test_retrain_trigger.py`` (``fake_update``: the given features in DRIFT,
event times ending at ``now_s``), so each case states its event times exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import msgspec
import numpy as np
from test_retrain_trigger import FEATURES, T0, fake_update

from driftline.core.drift.monitor import DriftUpdate
from driftline.core.drift.trigger import RetrainPolicy, RetrainRequest, RetrainTrigger

HOUR, DAY = 3600.0, 86400.0


def stream(pattern: Iterable[tuple[list[str], float, float]], step: float) -> list[DriftUpdate]:
    """Updates every ``step`` s of event time: ``(drifted, start, seconds)`` stretches."""
    return [
        fake_update(drifted, float(t))
        for drifted, start, seconds in pattern
        for t in np.arange(start, start + seconds, step)
    ]


def eight_days() -> list[DriftUpdate]:
    """An incident of 20 minutes every 2 hours for 8 days, quiet in between: enough to hit
    the persistence, the cooldown and the weekly cap, every minute of event time."""
    pattern = []
    for hour in range(0, 24 * 8, 2):
        start = T0 + hour * HOUR
        pattern += [(["a", "b"], start, 1200.0), ([], start + 1200.0, 60.0)]
    return stream(pattern, step=60.0)


def run(
    updates: list[DriftUpdate], arrival: Callable[[int, DriftUpdate], float], **policy: float
) -> list[RetrainRequest]:
    """Feed ``updates``, the i-th arriving at wall clock ``arrival(i, update)``; the retrain
    service acknowledges each request at once, so the in-flight gate (wall clock, by design)
    never holds one back.  Returns the requests sent."""
    trigger = RetrainTrigger(RetrainPolicy(**policy), "churn", "7", "w1", clock=lambda: 0.0)
    sent = []
    for i, update in enumerate(updates):
        request = trigger.observe(update, arrival(i, update))
        if request is not None:
            sent.append(request)
            assert trigger.acknowledge(request.request_id)
    return sent


def what(requests: list[RetrainRequest]) -> list[tuple[str, str, int, int]]:
    """What a request says, without its per-send identity (request id, created_at)."""
    return [(r.incident_id, r.reason, r.window_start_ms, r.window_end_ms) for r in requests]


def live(i: int, update: DriftUpdate) -> float:
    assert update.event_time_max_ms is not None
    return update.event_time_max_ms / 1000  # arrives when its latest event happened


def test_the_same_updates_give_the_same_requests_whatever_their_wall_clock_arrival() -> None:
    """Live, a replay at full speed (all 11,000 updates within ~1 s of wall clock), a replay
    started much later at real-time speed, and arrivals with random stalls of up to an hour:
    the same requests (incident ids, windows).  The wall-clock trigger sent none at full
    speed (persistence never elapsed) and cooled down differently when stalled."""
    updates = eight_days()
    policy = {"persistence_s": 600.0, "cooldown_s": 3 * HOUR, "max_per_week": 3}
    stalls = np.cumsum(np.random.default_rng(7).uniform(0.0, HOUR, len(updates)))
    expected = what(run(updates, live, **policy))
    # Persistence, cooldown and weekly cap all shaped it: 3 in the first 9 hours (2-hourly
    # incidents, 3 h cooldown), then none until the first request is a week old.
    assert len(expected) == 6
    assert expected[2][3] - expected[0][3] < 9 * HOUR * 1000
    assert expected[3][3] - expected[0][3] >= 7 * DAY * 1000
    arrivals = {
        "full speed": lambda i, u: 1_800_000_000.0 + i * 1e-4,
        "real time, a year later": lambda i, u: live(i, u) + 365 * DAY,
        "stalled": lambda i, u: T0 + float(stalls[i]),
    }
    for name, arrival in arrivals.items():
        assert what(run(updates, arrival, **policy)) == expected, name


def test_nothing_fires_while_idle_after_a_replay_ends_drifting() -> None:
    """A replay ends 5 minutes into an incident (persistence 10 minutes): the worker idles
    for days of wall clock, ticking; no request.  When events resume and the incident has
    lasted 10 minutes of event time, it fires on that batch."""
    wall = [T0]
    trigger = RetrainTrigger(RetrainPolicy(), "churn", "7", "w1", clock=lambda: wall[0])
    for update in stream([(["a", "b"], T0, 300.0)], step=1.0):  # 300 updates in a second
        assert trigger.observe(update) is None
        wall[0] += 1 / 300
    for _ in range(3 * 24 * 60):  # three days of a poll every minute, no records
        wall[0] += 60.0
        assert not trigger.tick()  # (it used to return the request it fired)
    assert trigger.fired_ms == [] and not trigger.incident_fired and not trigger.in_flight
    assert trigger.event_clock_ms == round((T0 + 299) * 1000)  # idling did not move it
    # Events resume where the replay stopped: the incident fires once 600 s are reached.
    sent = [r for u in stream([(["a", "b"], T0 + 300, 400.0)], 1.0) if (r := trigger.observe(u))]
    assert len(sent) == 1 and sent[0].window_end_ms == round((T0 + 600) * 1000)


def test_an_incident_shorter_than_the_persistence_in_event_time_never_fires() -> None:
    """Updates 2 minutes of event time apart arrive a day of wall clock apart: an incident
    of 9 minutes of event time (persistence 10) does not fire, however long it took."""
    for gap in (0.0, 60.0, DAY):
        updates = stream([(["a", "b"], T0, 541.0), ([], T0 + 600, 1.0)], step=60.0)
        updates += stream([(["c", "d"], T0 + 700, 541.0)], step=60.0)
        assert run(updates, lambda i, u, gap=gap: T0 + i * gap) == [], gap


def test_a_late_batch_never_moves_the_event_clock_back() -> None:
    """A batch of older events (a lagging partition) in the middle of an incident: the event
    clock stays at the latest event, the persistence is not reset or shortened, and a
    request fired on such a batch carries the clock, not the old batch's times."""
    trigger = RetrainTrigger(
        RetrainPolicy(cooldown_s=0), "churn", "7", "w1", clock=lambda: T0 + 10 * DAY
    )
    assert trigger.observe(fake_update(["a", "b"], T0)) is None
    assert trigger.observe(fake_update(["a", "b"], T0 + 500)) is None
    assert trigger.observe(fake_update(["a", "b"], T0 - 3600)) is None  # an hour late
    assert trigger.event_clock_ms == round((T0 + 500) * 1000)
    first = trigger.observe(fake_update(["a", "b"], T0 + 600))
    assert first is not None and first.window_end_ms == round((T0 + 600) * 1000)
    trigger.observe(fake_update([], T0 + 610))  # over
    # The next incident is held while the first request is in flight, then goes on
    # through a late batch when the service answers.
    assert trigger.observe(fake_update(["c", "d"], T0 + 700)) is None
    assert trigger.observe(fake_update(["c", "d"], T0 + 1400)) is None
    assert trigger.blocked == "in_flight"
    assert trigger.acknowledge(first.request_id)
    late = trigger.observe(fake_update(["c", "d"], T0 + 900))
    assert late is not None and late.window_end_ms == round((T0 + 1400) * 1000)
    assert late.window_start_ms == round((T0 + 700) * 1000) - 1000


def test_tick_only_expires_the_request_in_flight_on_the_wall_clock() -> None:
    """The retrain service answers in its own time: an unanswered request stops holding the
    gate after ``in_flight_timeout_s`` of wall clock, also while the stream is idle (tick
    says so once, for the gauge), and the held incident fires on its next batch."""
    wall = [T0]
    trigger = RetrainTrigger(
        RetrainPolicy(cooldown_s=0, in_flight_timeout_s=HOUR),
        "churn",
        "7",
        "w1",
        clock=lambda: wall[0],
    )
    first = [r for u in stream([(["a", "b"], T0, 700.0)], 10.0) if (r := trigger.observe(u))]
    assert len(first) == 1 and trigger.in_flight
    trigger.observe(fake_update([], T0 + 700))
    for u in stream([(["c", "d"], T0 + 800, 700.0)], 10.0):
        assert trigger.observe(u) is None
    assert trigger.blocked == "in_flight"
    wall[0] += HOUR - 1
    assert trigger.tick() is False and trigger.in_flight
    wall[0] += 1
    assert trigger.tick() is True and not trigger.in_flight
    assert trigger.tick() is False  # said once
    second = trigger.observe(fake_update(["c", "d"], T0 + 1500))
    assert second is not None and second.created_at == wall[0]


def test_recall_gates_on_the_requests_event_times() -> None:
    """The topic's requests close the cooldown around their event time (``window_end_ms``,
    in every version of the request), whichever wall clock they were made at, and in
    either direction (a request ahead of this worker's events still holds it); the latest
    one by wall clock, if young, is in flight."""
    made = T0 + 30 * DAY  # wall clock: a replay of a month-old stretch
    sender = RetrainTrigger(RetrainPolicy(), "churn", "7", "w0", clock=lambda: made)
    (request,) = [r for u in stream([(["a", "b"], T0, 700.0)], 10.0) if (r := sender.observe(u))]
    # A request as a worker before this change wrote it: the same fields, decoded.
    old = msgspec.json.decode(msgspec.json.encode(request), type=RetrainRequest)
    other_model = msgspec.structs.replace(old, model_name="other", window_end_ms=0)
    trigger = RetrainTrigger(RetrainPolicy(), "churn", "7", "w1", clock=lambda: made + 60)
    assert trigger.recall([old, other_model]) == 1
    assert trigger.fired_ms == [round((T0 + 600) * 1000)]
    assert trigger.in_flight_id == request.request_id
    assert trigger.acknowledge(request.request_id)
    # Another partition's events, a bit behind the request: the cooldown holds them.
    for u in stream([(["a", "b"], T0 + 100, 1000.0)], 10.0):
        assert trigger.observe(u) is None
    assert trigger.blocked == "cooldown" and trigger.cooldown_remaining_s() > 0
    trigger.observe(fake_update([], T0 + 1100))
    # A day of event time after the request: it fires (the wall clock has not moved).
    later = [
        r for u in stream([(["a", "b"], T0 + DAY + 600, 700.0)], 10.0) if (r := trigger.observe(u))
    ]
    assert len(later) == 1 and later[0].window_end_ms == round((T0 + DAY + 1200) * 1000)
    assert (
        trigger.cooldown_remaining_s()
        == DAY - (trigger.event_clock_ms - later[0].window_end_ms) / 1000
    )


def test_weekly_cap_counts_requests_either_side_of_the_event_clock() -> None:
    """Three recalled requests 2, 4 and 6 days ahead of this worker's events (other
    partitions are ahead): a request now would make four within a week, so the incident
    waits until a week after the first of them, 9 days on."""
    trigger = RetrainTrigger(RetrainPolicy(cooldown_s=HOUR), "churn", "7", "w1", clock=lambda: 0)
    ahead = [
        RetrainRequest(
            f"r{i}",
            "i",
            "churn",
            "7",
            "ref",
            "feature_drift",
            [],
            0.5,
            0,
            round((T0 + (2 + 2 * i) * DAY) * 1000),
            "w0",
            0.0,
        )
        for i in range(3)
    ]
    trigger.recall(ahead, wall_s=10 * DAY)  # made long ago: none in flight
    assert not trigger.in_flight
    blocked = set()
    sent = []
    for update in stream([(FEATURES, T0, 14 * DAY)], step=HOUR):
        request = trigger.observe(update)
        blocked.add(trigger.blocked)
        if request is not None:
            sent.append(request)
    assert [r.window_end_ms for r in sent] == [round((T0 + 9 * DAY) * 1000)]
    assert {"weekly_cap", "cooldown"} <= blocked
    times = sorted([*(r.window_end_ms for r in ahead), *(r.window_end_ms for r in sent)])
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u < t + 7 * DAY * 1000) <= 3


# ------------------------------------------------------------------ checkpoints


def test_checkpoint_keeps_the_event_clock_the_incident_and_the_gates() -> None:
    trigger = RetrainTrigger(RetrainPolicy(cooldown_s=DAY), "churn", "7", "w1", clock=lambda: T0)
    (first,) = [r for u in stream([(["a", "b"], T0, 700.0)], 10.0) if (r := trigger.observe(u))]
    trigger.acknowledge(first.request_id)
    trigger.observe(fake_update([], T0 + 700))
    trigger.observe(fake_update(["c", "d"], T0 + 800))  # a new incident, held by the cooldown
    state = json.loads(json.dumps(trigger.state_dict()))
    assert state["version"] == 2
    restored = RetrainTrigger.from_state_dict(state, clock=lambda: T0)
    for key in ("event_clock_ms", "incident_since_ms", "incident_start_ms", "fired_ms"):
        assert getattr(restored, key) == getattr(trigger, key), key
    assert restored.cooldown_remaining_s() == trigger.cooldown_remaining_s() > 0
    # The cooldown, in event time, still holds after the restart.
    for u in stream([(["c", "d"], T0 + 810, 3 * HOUR)], 60.0):
        assert restored.observe(u) is None
    assert restored.blocked == "cooldown"


V1_STATE = {  # what version 1 wrote (wall-clock persistence and request times)
    "type": "RetrainTrigger",
    "version": 1,
    "policy": {
        "drifted_share": 0.3,
        "persistence_s": 600.0,
        "cooldown_s": 86400.0,
        "max_per_week": 3,
        "in_flight_timeout_s": 21600.0,
    },
    "model_name": "churn",
    "model_version": "7",
    "worker_id": "w1",
    "incident_start_s": T0 + 5 * DAY,  # wall clock: not an event time
    "incident_start_ms": round(T0 * 1000) - 1000,
    "incident_fired": False,
    "incident_reference": "ref",
    "in_flight_id": "abc",
    "in_flight_since": T0 + 5 * DAY - 60,
    "fired_at": [T0 + 5 * DAY - 60],
}


def test_a_version_1_checkpoint_restores() -> None:
    """Its incident goes on from its first drifting event, the request in flight stays (wall
    clock, as before); its wall-clock request times are left to ``recall``."""
    wall = T0 + 5 * DAY
    restored = RetrainTrigger.from_state_dict(json.loads(json.dumps(V1_STATE)), lambda: wall)
    assert restored.incident_since_ms == round(T0 * 1000) - 1000
    assert restored.in_flight and restored.in_flight_id == "abc"
    assert restored.fired_ms == [] and restored.event_clock_ms is None
    assert restored.observe(fake_update(["a", "b"], T0 + 300)) is None
    assert restored.blocked is None  # 301 s of event time since its first drifting event
    assert restored.observe(fake_update(["a", "b"], T0 + 600)) is None
    assert restored.blocked == "in_flight"  # the persistence of 600 s did elapse
    assert restored.acknowledge("abc")
    request = restored.observe(fake_update(["a", "b"], T0 + 610))
    assert request is not None and request.window_start_ms == V1_STATE["incident_start_ms"]
    # A version-1 incident that had fired does not fire again.
    fired = RetrainTrigger.from_state_dict({**V1_STATE, "incident_fired": True}, lambda: wall)
    fired.acknowledge("abc")
    assert all(fired.observe(u) is None for u in stream([(["a", "b"], T0, DAY)], 600.0))
