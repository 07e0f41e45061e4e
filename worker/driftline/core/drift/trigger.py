"""Retrain trigger: turns a stream of :class:`DriftUpdate` into rare, deduplicated requests.

The monitor says *what* drifted, batch by batch; a retrain is expensive and slow, so the
trigger adds the operational policy on top:

* **condition** — the prediction (score) is in DRIFT, or the importance-weighted share of
  drifted input features is at least ``drifted_share``;
* **persistence** — the condition must hold continuously for ``persistence_s`` (a blip that
  clears quickly is not worth a retrain); the stretch during which it holds is an *incident*,
  and an incident fires at most once, however many batches it spans;
* **cooldown**, **weekly cap** and **in flight** — after a request, no other one for
  ``cooldown_s``, at most ``max_per_week`` in any 7 days, and none while the previous one is
  unacknowledged (until :meth:`RetrainTrigger.acknowledge` or ``in_flight_timeout_s``).  An
  incident blocked by these gates fires later if it is still going on when they open.

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

WEEK_S = 7 * 86400.0
STATE_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class RetrainPolicy:
    """When a drift incident is worth a retrain (see the module docstring)."""

    drifted_share: float = 0.3
    persistence_s: float = 600.0
    cooldown_s: float = 86400.0
    max_per_week: int = 3
    in_flight_timeout_s: float = 6 * 3600.0

    def __post_init__(self) -> None:
        if not 0.0 < self.drifted_share <= 1.0:
            raise ValueError("drifted_share must be in (0, 1]")
        if min(self.persistence_s, self.cooldown_s, self.in_flight_timeout_s) < 0:
            raise ValueError("durations must be non-negative")
        if self.max_per_week < 1:
            raise ValueError("max_per_week must be at least 1")


class DriftedFeature(msgspec.Struct, frozen=True):
    """One drifted (feature, detector) in a request; ``psi`` of its latest event window."""

    feature: str
    detector: str
    statistic: float
    threshold: float
    psi: float | None


class RetrainRequest(msgspec.Struct, frozen=True):
    """Message of the retrain-requests topic (contract: field names and types are stable).

    Times: ``window_start_ms``/``window_end_ms`` are event times (epoch ms) of the incident
    from its first drifting batch to the firing batch; ``created_at`` is the worker's wall
    clock (epoch seconds) when it fired.  ``reason`` is ``alert`` when an external alert
    made it fire (:meth:`RetrainTrigger.on_alert`).
    """

    request_id: str
    incident_id: str
    model_name: str
    model_version: str
    reference_hash: str
    reason: Literal["prediction_drift", "feature_drift", "alert"]
    drifted_features: list[DriftedFeature]
    drifted_share: float
    window_start_ms: int
    window_end_ms: int
    worker_id: str
    created_at: float


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
    """Applies a :class:`RetrainPolicy` to monitor updates; at most one request per incident."""

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
        self.in_flight_id: str | None = None
        self.in_flight_since: float | None = None
        self.fired_at: list[float] = []  # wall-clock seconds of past requests (last week)
        self.blocked: str | None = None  # why the last eligible incident did not fire
        self.last_update: DriftUpdate | None = None  # what an external alert is told about

    def _reset_incident(self) -> None:
        self.incident_start_s: float | None = None
        self.incident_start_ms: int | None = None
        self.incident_fired = False
        self.incident_reference: str | None = None

    def set_model(self, model_name: str, model_version: str) -> None:
        """A new model version is live: an incident of the old one is over (gates stay)."""
        self.model_name, self.model_version = model_name, str(model_version)
        self._reset_incident()
        self.last_update = None

    @property
    def in_flight(self) -> bool:
        """A request was sent and is neither acknowledged nor timed out."""
        return self._in_flight(self.clock())

    def _in_flight(self, now_s: float) -> bool:
        if self.in_flight_id is None:
            return False
        assert self.in_flight_since is not None
        if now_s - self.in_flight_since >= self.policy.in_flight_timeout_s:
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
        """Reason if the update shows retrain-worthy drift, else None."""
        if update.prediction.state == DRIFT:
            return "prediction_drift"
        if update.drifted and update.drifted_share >= self.policy.drifted_share:
            return "feature_drift"
        return None

    def observe(self, update: DriftUpdate, now_s: float | None = None) -> RetrainRequest | None:
        """Feed one monitor update; return a request when the policy fires, else None."""
        now = self.clock() if now_s is None else float(now_s)
        self.last_update = update
        reason = self.condition(update)
        if reason is None or update.reference_hash != self.incident_reference:
            # No drift, or the monitor moved to a new reference: any incident is over.
            self._reset_incident()
        if reason is None:
            self.blocked = None
            return None
        if self.incident_start_s is None:
            self.incident_start_s = now
            self.incident_reference = update.reference_hash
            start_ms = update.event_time_min_ms
            self.incident_start_ms = round(now * 1000) if start_ms is None else int(start_ms)
        if self.incident_fired or now - self.incident_start_s < self.policy.persistence_s:
            return None
        self.blocked = self._gate(now)
        if self.blocked is not None:
            return None
        request = self._request(update, reason, now)
        self._fired(request, now)
        return request

    def tick(self, now_s: float | None = None) -> RetrainRequest | None:
        """Re-judge the latest update at ``now``: an incident that persists while no batch
        arrives (the stream paused or ended) still fires once its persistence elapsed.

        Time passing is evidence only of persistence: nothing new was monitored, so the
        update is the last one seen and the gates apply as in :meth:`observe`.
        """
        if self.last_update is None or self.incident_start_s is None or self.incident_fired:
            return None
        return self.observe(self.last_update, now_s)

    def on_alert(self, now_s: float | None = None) -> tuple[RetrainRequest | None, str]:
        """An external alert says this model needs a retrain: ``(request or None, why)``.

        Idempotent with :meth:`observe`, because both fire the same incident: one that
        already fired answers ``already_fired``, and the gates (``in_flight``,
        ``cooldown``, ``weekly_cap``) hold an alert back as they hold the trigger back.
        An incident going on here whose persistence has not run out yet fires now, with
        the ``incident_id`` :meth:`observe` would give it and reason ``alert``, and is
        marked fired so the trigger does not send a second one.  ``no_incident`` when
        nothing drifts here: the alert is about other partitions, whose worker sent the
        request (RetrainRequired fires on sent requests), and one from here, describing no
        drift under another id, would only be a second request for the same incident.
        ``no_data`` while nothing was monitored yet.
        """
        now = self.clock() if now_s is None else float(now_s)
        update = self.last_update
        if update is None:
            return None, "no_data"
        if self.incident_fired:
            return None, "already_fired"
        kind = self.condition(update)
        if kind is None or self.incident_start_s is None:
            return None, "no_incident"
        blocked = self._gate(now)
        if blocked is not None:
            return None, blocked
        request = self._request(update, kind, now)
        self._fired(request, now)
        return msgspec.structs.replace(request, reason="alert"), "fired"

    def _fired(self, request: RetrainRequest, now: float) -> None:
        """Book a sent request: its incident is done, the gates close behind it."""
        self.incident_fired = True
        self.in_flight_id, self.in_flight_since = request.request_id, now
        self.fired_at.append(now)

    def _gate(self, now: float) -> str | None:
        """Name of the gate that holds the request back, or None."""
        if self._in_flight(now):
            return "in_flight"
        self.fired_at = [t for t in self.fired_at if now - t < WEEK_S]
        if self.fired_at and now - self.fired_at[-1] < self.policy.cooldown_s:
            return "cooldown"
        if len(self.fired_at) >= self.policy.max_per_week:
            return "weekly_cap"
        return None

    def _request(self, update: DriftUpdate, reason: str, now: float) -> RetrainRequest:
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
        end_ms = update.event_time_max_ms
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
            window_end_ms=round(now * 1000) if end_ms is None else int(end_ms),
            worker_id=self.worker_id,
            created_at=now,
        )

    def recall(self, requests: Iterable[RetrainRequest], now_s: float | None = None) -> int:
        """Rebuild the gates from requests already on the retrain-requests topic.

        The topic is the record of what every worker has asked for, so a restarted (or
        newly started) worker reads it instead of keeping a checkpoint of its own: requests
        for this model in the last week count against the weekly cap, the latest one starts
        the cooldown and, if it is younger than the in-flight timeout, is the request in
        flight.  A drift that persists across the restart is then seen again, but held by
        those gates: the restart neither loses the incident's request nor sends a second
        one.  Returns how many requests were taken into account.
        """
        now = self.clock() if now_s is None else float(now_s)
        mine = sorted(
            (
                r
                for r in requests
                if r.model_name == self.model_name and now - r.created_at < WEEK_S
            ),
            key=lambda r: r.created_at,
        )
        known = set(self.fired_at)
        self.fired_at = sorted(known | {float(r.created_at) for r in mine})
        if mine:
            latest = mine[-1]
            if now - latest.created_at < self.policy.in_flight_timeout_s and (
                self.in_flight_since is None or latest.created_at > self.in_flight_since
            ):
                self.in_flight_id, self.in_flight_since = latest.request_id, latest.created_at
        return len(mine)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able checkpoint: an incident that already fired must not fire again after a
        restart, and the cooldown / weekly cap / in-flight request survive it."""
        return {
            "type": "RetrainTrigger",
            "version": STATE_VERSION,
            "policy": self.policy.__dict__.copy(),
            "model_name": self.model_name,
            "model_version": self.model_version,
            "worker_id": self.worker_id,
            "incident_start_s": self.incident_start_s,
            "incident_start_ms": self.incident_start_ms,
            "incident_fired": self.incident_fired,
            "incident_reference": self.incident_reference,
            "in_flight_id": self.in_flight_id,
            "in_flight_since": self.in_flight_since,
            "fired_at": list(self.fired_at),
        }

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], clock: Callable[[], float] = time.time
    ) -> RetrainTrigger:
        if state.get("type") != "RetrainTrigger" or state.get("version") != STATE_VERSION:
            raise ValueError("not a RetrainTrigger v1 state")
        trigger = cls(
            RetrainPolicy(**state["policy"]),
            state["model_name"],
            state["model_version"],
            state["worker_id"],
            clock,
        )
        trigger.incident_start_s = state["incident_start_s"]
        trigger.incident_start_ms = state["incident_start_ms"]
        trigger.incident_fired = bool(state["incident_fired"])
        trigger.incident_reference = state["incident_reference"]
        trigger.in_flight_id = state["in_flight_id"]
        trigger.in_flight_since = state["in_flight_since"]
        trigger.fired_at = [float(t) for t in state["fired_at"]]
        return trigger


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)
