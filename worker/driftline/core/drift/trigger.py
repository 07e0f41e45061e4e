"""Retrain trigger: turns a stream of :class:`DriftUpdate` into rare, deduplicated requests.

The monitor says *what* drifted, batch by batch; a retrain is expensive and slow, so the
trigger adds the operational policy on top:

* **condition** — the prediction (score) is in DRIFT, or the importance-weighted share of
  drifted input features is at least ``drifted_share``;
* **persistence** — the condition must hold continuously for ``persistence_s`` (a blip that
  clears quickly is not worth a retrain); the stretch during which it holds is an *incident*,
  and an incident fires at most once, however many batches it spans;
* **confirmation** — the incident's features (the score, for a prediction drift) must have
  alarmed at ``confirmations`` (2) distinct moments: a detector restarts after each alarm,
  so a real shift alarms again within a few blocks, while a false alarm, rare by the
  budget, is almost never followed by another before the feature clears;
* **cooldown**, **weekly cap** and **in flight** — after a request, no other one within
  ``cooldown_s``, at most ``max_per_week`` in any 7 days, and none while the previous one is
  unacknowledged (until :meth:`RetrainTrigger.acknowledge` or ``in_flight_timeout_s``).  An
  incident blocked by these gates fires later if it is still going on when they open.

Clocks.  Persistence, cooldown and weekly cap are judged in **event time**, so that a replay
at full speed, the same events at real-time speed and the live stream they came from give
the same requests.  The trigger's event clock is the largest event time of any update seen
(``event_time_max_ms``; monotone: a late batch never moves it back, and it does not move
while no events arrive).  An incident's persistence runs from the event clock when its
condition was first seen (the end of its first drifting batch: a batch is judged as a
whole, so that is when the drift is known) to the event clock now; a request's event time
is the event clock when it fired (its ``window_end_ms``), and the cooldown and weekly cap
compare those.  Only the **in-flight timeout** is wall clock: it waits for the retrain
service to answer, which happens in the service's time, not the stream's (a replay that
covers a week of events in a minute has not given the service a week), and it must expire
even when the stream stops.  ``created_at`` stays the wall-clock time the message was made.
Consequences: nothing fires while the stream is idle (:meth:`RetrainTrigger.tick` only
expires the in-flight request), and an incident that spans less than ``persistence_s`` of
event time never fires however long the wall-clock gap between its batches.

Several workers watch partitions of the same stream and may each see the incident; the
request carries a deterministic ``incident_id`` (sha256 of model name, model version,
reference hash, the sorted drifted features and the incident start bucketed to the
persistence period) so the consumer of the retrain-requests topic can deduplicate.  Workers
whose incident starts straddle a bucket boundary get different ids: the consumer should
still apply its own cooldown.

An external alert (Alertmanager's ``RetrainRequired``, see :meth:`RetrainTrigger.on_alert`)
goes through the same trigger, so it joins the incident the trigger is tracking instead of
starting a second one: the incident fires at most once, whoever asks first.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from driftline.core.drift.monitor import DRIFT, SCORE, DriftUpdate

WEEK_MS = 7 * 86_400_000
#: 2: persistence, cooldown and weekly cap in event time (``event_clock_ms``,
#: ``incident_since_ms``, ``fired_ms``); 1 had them in wall-clock seconds.
STATE_VERSION = 2


@dataclass(frozen=True, kw_only=True)
class RetrainPolicy:
    """When a drift incident is worth a retrain (see the module docstring)."""

    drifted_share: float = 0.3
    persistence_s: float = 600.0
    cooldown_s: float = 86400.0
    max_per_week: int = 3
    in_flight_timeout_s: float = 6 * 3600.0
    #: Moments at which the incident's features (the score, for a prediction drift) alarm,
    #: needed before it fires: a detector restarts after each alarm, so a real shift alarms
    #: again within a few blocks, while a false alarm, rare by the budget, is almost never
    #: followed by another one before the feature clears.
    confirmations: int = 2

    def __post_init__(self) -> None:
        if not 0.0 < self.drifted_share <= 1.0:
            raise ValueError("drifted_share must be in (0, 1]")
        if min(self.persistence_s, self.cooldown_s, self.in_flight_timeout_s) < 0:
            raise ValueError("durations must be non-negative")
        if self.max_per_week < 1:
            raise ValueError("max_per_week must be at least 1")
        if self.confirmations < 1:
            raise ValueError("confirmations must be at least 1")


class DriftedFeature(msgspec.Struct, frozen=True):
    """One drifted (feature, detector) in a request; ``psi`` of its latest event window."""

    feature: str
    detector: str
    statistic: float
    threshold: float
    psi: float | None


class RetrainRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    """Message of the retrain-requests topic (contract: field names and types are stable).

    Times: ``window_start_ms`` is the event time (epoch ms) of the incident's first drifting
    batch; ``window_end_ms`` the worker's event clock (latest event time seen) when it
    fired, which is the request's event time: cooldowns and weekly caps, here and after a
    restart (:meth:`RetrainTrigger.recall`), compare it.  ``created_at`` is the worker's wall
    clock (epoch seconds) when it fired; only the in-flight timeout uses it.  ``reason`` is
    ``alert`` when an external alert made it fire (:meth:`RetrainTrigger.on_alert`);
    ``quality`` when ``driftline retrain``'s own ``POST /alerts`` received
    ``ModelPerformanceDegraded`` (``driftline.commands._retrain_alerts``: no drift
    statistics, event times = the degraded window's start).
    ``report`` (optional, absent from what the worker sends: drawing plots has no place in
    the scoring process) is the drift report's path or URL, filled by whoever draws it
    (``driftline report drift --request``).
    """

    request_id: str
    incident_id: str
    model_name: str
    model_version: str
    reference_hash: str
    reason: Literal["prediction_drift", "feature_drift", "alert", "quality"]
    drifted_features: list[DriftedFeature]
    drifted_share: float
    window_start_ms: int
    window_end_ms: int
    worker_id: str
    created_at: float
    report: str | None = None


def incident_id(
    model_name: str,
    model_version: str,
    reference_hash: str,
    drifted: list[str],
    incident_start_ms: int,
    persistence_s: float,
) -> str:
    """Deterministic incident identity shared by every worker that sees the same incident.

    The start is bucketed to the persistence period because workers see the first drifting
    event at slightly different times; features are sorted so their order does not matter.
    """
    bucket_ms = max(1, round(persistence_s * 1000))
    payload = json.dumps(
        [
            model_name,
            str(model_version),
            reference_hash,
            sorted(drifted),
            incident_start_ms // bucket_ms,
        ],
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class RetrainTrigger:
    """Applies a :class:`RetrainPolicy` to monitor updates; at most one request per incident.

    ``clock`` is the wall clock (epoch seconds), used only for the in-flight timeout and
    ``created_at``; the ``wall_s`` arguments override it (tests, a caller that read it
    already).  Everything else runs on the event clock the updates bring (module docstring).
    """

    def __init__(
        self,
        policy: RetrainPolicy,
        model_name: str,
        model_version: str,
        worker_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.model_name = model_name
        self.model_version = str(model_version)
        self.worker_id = worker_id
        self.clock = clock
        self._reset_incident()
        #: Largest event time seen (epoch ms); None before any event.  Never moves back.
        self.event_clock_ms: int | None = None
        self.in_flight_id: str | None = None
        self.in_flight_since: float | None = None  # wall clock (epoch s) it was sent
        #: Event times (epoch ms, sorted) of past requests still able to close a gate.
        self.fired_ms: list[int] = []
        self.blocked: str | None = None  # why the last eligible incident did not fire
        self.last_update: DriftUpdate | None = None  # what an external alert is told about

    def _reset_incident(self) -> None:
        #: Event clock when the incident's condition was first seen: persistence runs from it.
        self.incident_since_ms: int | None = None
        #: Event time of the incident's first drifting event: the request's window start.
        self.incident_start_ms: int | None = None
        self.incident_fired = False
        self.incident_reference: str | None = None
        #: Distinct event ordinals at which the incident's features alarmed since it began
        #: (``policy.confirmations``; kept up to that many).
        self.incident_alarm_times: list[int] = []
        #: Ordinal of the alarm that began the incident (None: not known).
        self.incident_first_index: int | None = None

    def set_model(self, model_name: str, model_version: str) -> None:
        """A new model version is live: an incident of the old one is over (gates stay)."""
        self.model_name, self.model_version = model_name, str(model_version)
        self._reset_incident()
        self.last_update = None

    @property
    def in_flight(self) -> bool:
        """A request was sent and is neither acknowledged nor timed out (wall clock)."""
        return self._in_flight(self.clock())

    def _in_flight(self, wall_s: float) -> bool:
        if self.in_flight_id is None:
            return False
        assert self.in_flight_since is not None
        if wall_s - self.in_flight_since >= self.policy.in_flight_timeout_s:
            self.in_flight_id = self.in_flight_since = None
            return False
        return True

    def acknowledge(self, request_id: str) -> bool:
        """The retrain service took the request: allow new ones (subject to the cooldown)."""
        if request_id != self.in_flight_id:
            return False
        self.in_flight_id = self.in_flight_since = None
        return True

    def condition(self, update: DriftUpdate) -> str | None:
        """Reason if the update shows retrain-worthy drift, else None.

        Never while the monitor says the reference does not describe the stream
        (``reference_mismatch``): a retrain would learn the mismatch, not fix it; nor
        before it has said whether it does (its first few thousand events)."""
        if update.reference_mismatch is not False:
            return None
        if update.prediction.state == DRIFT:
            return "prediction_drift"
        if update.drifted and update.drifted_share >= self.policy.drifted_share:
            return "feature_drift"
        return None

    def _count_confirmations(self, update: DriftUpdate, reason: str) -> None:
        """Note the moments (event ordinals, arrival order) of alarms in ``update`` that
        confirm the incident: of the score for a prediction drift, of a drifted feature for
        a feature drift, from the alarm that began it on.  Alarms at one moment count once:
        correlated features (30- and 90-day spend) may cross together, by chance too.
        (Ordinals, not event times: the times of blocks from interleaved partitions go
        back and forth, and an alarm of a partition behind would not count.)"""
        first = self.incident_first_index if self.incident_first_index is not None else 0
        relevant = {SCORE} if reason == "prediction_drift" else set(update.drifted)
        for alarm in update.alarms:
            if len(self.incident_alarm_times) >= self.policy.confirmations:
                return
            moment = int(alarm.event_index)
            if (
                alarm.feature in relevant
                and moment >= first
                and moment not in self.incident_alarm_times
            ):
                self.incident_alarm_times.append(moment)

    @staticmethod
    def _began_index(update: DriftUpdate, reason: str, began_ms: int | None) -> int | None:
        """Ordinal of the latch that began the incident (the feature whose latch time is
        ``began_ms``)."""
        if began_ms is None:
            return None
        names = [SCORE] if reason == "prediction_drift" else list(update.drifted)
        found = [
            update.drift_since_index[f]
            for f in names
            if update.drift_since_ms.get(f) == began_ms and f in update.drift_since_index
        ]
        return min(found) if found else None

    def condition_began_ms(self, update: DriftUpdate, reason: str) -> int | None:
        """Event time at which ``reason`` started to hold, from the alarms that latched the
        drifted features (``DriftUpdate.drift_since_ms``): the score's for a prediction
        drift; for a feature drift, that of the feature whose latch brought the weighted
        share of drifted features up to the policy's share.  None if not known."""
        since = update.drift_since_ms
        if reason == "prediction_drift":
            return since.get(SCORE)
        order = sorted((since[f], f) for f in update.drifted if f in since)
        if not order or not update.share_weights:
            return None
        share = 0.0
        for time_ms, feature in order:
            share += update.share_weights.get(feature, 0.0)
            if share >= self.policy.drifted_share - 1e-12:
                return int(time_ms)
        return None

    def _advance(self, update: DriftUpdate) -> None:
        """Move the event clock to the update's latest event (never back)."""
        latest = update.event_time_max_ms
        if latest is not None and (self.event_clock_ms is None or latest > self.event_clock_ms):
            self.event_clock_ms = int(latest)
            horizon = self.event_clock_ms - WEEK_MS  # the clock never goes back below it
            if self.fired_ms and self.fired_ms[0] <= horizon:
                self.fired_ms = [t for t in self.fired_ms if t > horizon]

    def observe(self, update: DriftUpdate, wall_s: float | None = None) -> RetrainRequest | None:
        """Feed one monitor update; return a request when the policy fires, else None.

        Whether it fires depends only on the sequence of updates (their event times) and,
        through the in-flight gate, on whether the last request was answered in time.
        """
        self._advance(update)
        self.last_update = update
        reason = self.condition(update)
        if reason is None or update.reference_hash != self.incident_reference:
            # No drift, or the monitor moved to a new reference: any incident is over.
            self._reset_incident()
        if reason is None:
            self.blocked = None
            return None
        now_ms = self.event_clock_ms
        if now_ms is None:  # drift but no event time yet: no clock to measure it against
            return None
        if self.incident_since_ms is None:
            # From when the condition began, by the monitor's alarms: the same for any
            # batching of the same events (the batch's own clock otherwise).
            began = self.condition_began_ms(update, reason)
            self.incident_first_index = self._began_index(update, reason, began)
            self.incident_since_ms = now_ms if began is None else min(began, now_ms)
            self.incident_reference = update.reference_hash
            start_ms = began if began is not None else update.event_time_min_ms
            self.incident_start_ms = now_ms if start_ms is None else int(start_ms)
        self._count_confirmations(update, reason)
        held_s = (now_ms - self.incident_since_ms) / 1000.0
        if (
            self.incident_fired
            or held_s < self.policy.persistence_s
            or len(self.incident_alarm_times) < self.policy.confirmations
        ):
            return None
        wall = self.clock() if wall_s is None else float(wall_s)
        self.blocked = self._gate(now_ms, wall)
        if self.blocked is not None:
            return None
        request = self._request(update, reason, now_ms, wall)
        self._fired(request, wall)
        return request

    def tick(self, wall_s: float | None = None) -> bool:
        """Between polls with no records: expire an unanswered request, fire nothing.

        Persistence, cooldown and weekly cap run on event time, which does not advance
        while no events arrive, so idling can complete none of them: an incident still
        going on when the stream stops fires on the next batch that shows it has lasted
        long enough, as it would in a replay of the same events.  Only the in-flight
        timeout is wall clock; it is checked here so that ``retrain_required`` drops
        while idle.  True when the in-flight request timed out just now.
        """
        if self.in_flight_id is None:
            return False
        return not self._in_flight(self.clock() if wall_s is None else float(wall_s))

    def on_alert(self, wall_s: float | None = None) -> tuple[RetrainRequest | None, str]:
        """An external alert says this model needs a retrain: ``(request or None, why)``.

        Idempotent with :meth:`observe`, because both fire the same incident: one that
        already fired answers ``already_fired``, and the gates (``in_flight``,
        ``cooldown``, ``weekly_cap``, judged at the current event clock) hold an alert
        back as they hold the trigger back.  An incident going on here whose persistence
        has not run out yet fires now, with the ``incident_id`` :meth:`observe` would give
        it and reason ``alert``, and is marked fired so the trigger does not send a second
        one.  ``no_incident`` when nothing drifts here: the alert is about other
        partitions, whose worker sent the request (RetrainRequired fires on sent
        requests), and one from here, describing no drift under another id, would only be
        a second request for the same incident.  ``no_data`` while nothing was monitored
        yet.
        """
        wall = self.clock() if wall_s is None else float(wall_s)
        update = self.last_update
        if update is None:
            return None, "no_data"
        if self.incident_fired:
            return None, "already_fired"
        kind = self.condition(update)
        now_ms = self.event_clock_ms
        if kind is None or self.incident_since_ms is None or now_ms is None:
            return None, "no_incident"
        blocked = self._gate(now_ms, wall)
        if blocked is not None:
            return None, blocked
        request = self._request(update, kind, now_ms, wall)
        self._fired(request, wall)
        return msgspec.structs.replace(request, reason="alert"), "fired"

    def _fired(self, request: RetrainRequest, wall: float) -> None:
        """Book a sent request: its incident is done, the gates close behind it."""
        self.incident_fired = True
        self.in_flight_id, self.in_flight_since = request.request_id, wall
        bisect.insort(self.fired_ms, request.window_end_ms)

    def _gate(self, now_ms: int, wall: float) -> str | None:
        """Name of the gate that holds a request at event time ``now_ms`` back, or None.

        Requests recalled from the topic may lie ahead of this worker's event clock (a
        partition that is ahead, offsets committed before the request's batch), so the
        gates are distances in event time, either way: no two requests closer than the
        cooldown, and at most ``max_per_week`` in any 7-day stretch (any
        ``max_per_week + 1`` consecutive requests span at least a week).  With every
        request in the past this is the usual "since the last one" and "in the last week".
        """
        if self._in_flight(wall):
            return "in_flight"
        cooldown_ms = self.policy.cooldown_s * 1000.0
        if any(abs(now_ms - t) < cooldown_ms for t in self.fired_ms):
            return "cooldown"
        times = sorted([*self.fired_ms, now_ms])
        k = self.policy.max_per_week
        at = times.index(now_ms)
        for first in range(max(0, at - k), min(at, len(times) - 1 - k) + 1):
            if times[first + k] - times[first] < WEEK_MS:
                return "weekly_cap"
        return None

    def cooldown_remaining_s(self) -> float:
        """Event-time seconds until the cooldown lets a request through (0 when open)."""
        now_ms = self.event_clock_ms
        if now_ms is None:
            return 0.0
        cooldown_ms = self.policy.cooldown_s * 1000.0
        closing = [t for t in self.fired_ms if abs(now_ms - t) < cooldown_ms]
        return max((t + cooldown_ms - now_ms for t in closing), default=0.0) / 1000.0

    def _request(
        self, update: DriftUpdate, reason: str, now_ms: int, wall: float
    ) -> RetrainRequest:
        features = [SCORE] if reason == "prediction_drift" else list(update.drifted)
        entries = []
        for feature in features:
            stats, limits = update.statistics[feature], update.thresholds[feature]
            # The detector closest to (or past) its threshold explains the drift best; a
            # restarted CUSUM may be low again, so prefer the alarms of this batch.
            alarmed = {a.detector: a for a in update.alarms if a.feature == feature}
            for detector in sorted(stats):
                ratio = stats[detector] / limits[detector] if limits[detector] > 0 else 0.0
                if detector in alarmed or ratio >= 0.5:
                    statistic = (
                        alarmed[detector].statistic if detector in alarmed else stats[detector]
                    )
                    entries.append((feature, detector, statistic, limits[detector]))
            if not any(e[0] == feature for e in entries):
                detector = max(stats, key=lambda d: stats[d] / max(limits[d], 1e-300))
                entries.append((feature, detector, stats[detector], limits[detector]))
        assert self.incident_start_ms is not None
        return RetrainRequest(
            request_id=uuid.uuid4().hex,
            incident_id=incident_id(
                self.model_name,
                self.model_version,
                update.reference_hash,
                features,
                self.incident_start_ms,
                self.policy.persistence_s,
            ),
            model_name=self.model_name,
            model_version=self.model_version,
            reference_hash=update.reference_hash,
            reason=reason,  # type: ignore[arg-type]
            drifted_features=[
                DriftedFeature(f, d, float(s), float(t), _finite(update.psi.get(f)))
                for f, d, s, t in entries
            ],
            drifted_share=float(update.drifted_share),
            window_start_ms=self.incident_start_ms,
            window_end_ms=now_ms,
            worker_id=self.worker_id,
            created_at=wall,
        )

    def recall(self, requests: Iterable[RetrainRequest], wall_s: float | None = None) -> int:
        """Rebuild the gates from requests already on the retrain-requests topic.

        The topic is the record of what every worker has asked for, so a restarted (or
        newly started) worker reads it instead of keeping a checkpoint of its own: the
        event times (``window_end_ms``) of this model's requests feed the cooldown and
        weekly cap, judged against the event clock as the stream goes on (those more than
        a week behind the clock, when it is known, are dropped), and the latest request
        by wall clock (``created_at``), if younger than the in-flight timeout, is the
        request in flight.  Every version of the request has both fields, so requests
        written before the gates ran on event time are read the same way (their
        ``window_end_ms`` was the firing batch's latest event time, the same as the event
        clock for an in-order stream).  A drift that persists across the restart is then
        seen again, but held by those gates: the restart neither loses the incident's
        request nor sends a second one.  Returns how many requests were taken into
        account.
        """
        wall = self.clock() if wall_s is None else float(wall_s)
        horizon = None if self.event_clock_ms is None else self.event_clock_ms - WEEK_MS
        mine = [
            r
            for r in requests
            if r.model_name == self.model_name and (horizon is None or r.window_end_ms > horizon)
        ]
        self.fired_ms = sorted(set(self.fired_ms) | {int(r.window_end_ms) for r in mine})
        if mine:
            latest = max(mine, key=lambda r: r.created_at)
            if wall - latest.created_at < self.policy.in_flight_timeout_s and (
                self.in_flight_since is None or latest.created_at > self.in_flight_since
            ):
                self.in_flight_id, self.in_flight_since = latest.request_id, latest.created_at
        return len(mine)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able checkpoint: an incident that already fired must not fire again after a
        restart, and the event clock, the cooldown / weekly cap and the in-flight request
        survive it."""
        return {
            "type": "RetrainTrigger",
            "version": STATE_VERSION,
            "policy": self.policy.__dict__.copy(),
            "model_name": self.model_name,
            "model_version": self.model_version,
            "worker_id": self.worker_id,
            "event_clock_ms": self.event_clock_ms,
            "incident_since_ms": self.incident_since_ms,
            "incident_start_ms": self.incident_start_ms,
            "incident_fired": self.incident_fired,
            "incident_alarm_times": list(self.incident_alarm_times),
            "incident_first_index": self.incident_first_index,
            "incident_reference": self.incident_reference,
            "in_flight_id": self.in_flight_id,
            "in_flight_since": self.in_flight_since,
            "fired_ms": list(self.fired_ms),
        }

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], clock: Callable[[], float] = time.time
    ) -> RetrainTrigger:
        """Restore a checkpoint of this version or of version 1 (wall-clock gates).

        Version 1 kept the incident's persistence start and the past requests in wall-clock
        seconds, which cannot be turned into event times.  Its incident continues from its
        first drifting event (``incident_start_ms``, an event time: the persistence can
        only look longer than it was on the wall clock by the batch's span), whether it
        fired and the in-flight request (wall clock, as now) are kept; its past request
        times are dropped: the worker recalls them from the retrain-requests topic, with
        their event times, right after restoring (see :meth:`recall`).
        """
        version = state.get("version")
        if state.get("type") != "RetrainTrigger" or version not in (1, STATE_VERSION):
            raise ValueError(f"not a RetrainTrigger v1 or v{STATE_VERSION} state")
        trigger = cls(
            RetrainPolicy(**state["policy"]),
            state["model_name"],
            state["model_version"],
            state["worker_id"],
            clock,
        )
        start_ms = state["incident_start_ms"]
        trigger.incident_start_ms = None if start_ms is None else int(start_ms)
        trigger.incident_fired = bool(state["incident_fired"])
        trigger.incident_alarm_times = [int(t) for t in state.get("incident_alarm_times", [])]
        first = state.get("incident_first_index")
        trigger.incident_first_index = None if first is None else int(first)
        trigger.incident_reference = state["incident_reference"]
        trigger.in_flight_id = state["in_flight_id"]
        trigger.in_flight_since = state["in_flight_since"]
        if version == 1:
            trigger.incident_since_ms = (
                trigger.incident_start_ms if state["incident_start_s"] is not None else None
            )
            return trigger
        clock_ms, since_ms = state["event_clock_ms"], state["incident_since_ms"]
        trigger.event_clock_ms = None if clock_ms is None else int(clock_ms)
        trigger.incident_since_ms = None if since_ms is None else int(since_ms)
        trigger.fired_ms = sorted(int(t) for t in state["fired_ms"])
        return trigger


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)
