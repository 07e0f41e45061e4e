"""Retraining decisions, pure: which requests to act on, and whether a challenger wins.

``driftline retrain`` (``driftline.commands.retrain``) is the Kafka adapter; everything it
decides is here so that it is tested without a broker or a model:

* :class:`RequestGate` — retrain requests are delivered at least once and several workers
  send one for the same incident: act on an ``incident_id`` once, and apply a cooldown of
  our own in **event time** (``window_end_ms``; workers whose incident start straddles a
  persistence boundary derive different ids for one real incident).  It is re-armed at
  start from what the registry already holds (the incident ids in the lineage of versions
  ``driftline retrain`` registered), so a restart does not retrain twice.
* :class:`PromotionPolicy` and :func:`judge` — the written promotion policy
  (docs/retraining.md): champion and challenger are scored on the **same** rows, the most
  recent labelled out-of-time window; the challenger is promoted only when that window is
  big enough to judge, its ROC AUC beats the champion's by ``min_auc_gain`` and its
  calibration error is not worse by more than ``max_calibration_loss``.
* :class:`Decision` — the record published on the ``model-decisions`` topic (and logged as
  one JSON line) for every retrain that ran.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from driftline.core.drift.trigger import RetrainRequest
from driftline.core.spec import DAY_MS

Outcome = Literal["promoted", "rejected", "failed"]
Trigger = Literal["request", "schedule"]
SkipReason = Literal["other_model", "stale", "duplicate", "cooldown"]


@dataclass(frozen=True, slots=True)
class WindowScore:
    """One model's figures on the evaluation window (None where undefined)."""

    roc_auc: float | None
    calibration_error: float | None
    brier: float | None


@dataclass(frozen=True, slots=True)
class PromotionPolicy:
    """The written promotion policy; every number is a flag of ``driftline retrain``."""

    #: The challenger's ROC AUC must exceed the champion's by at least this much.
    min_auc_gain: float = 0.02
    #: Its expected calibration error may exceed the champion's by at most this much.
    max_calibration_loss: float = 0.02
    #: The evaluation window must have this many rows ...
    min_rows: int = 200
    #: ... and this many of each class (AUC on a handful of positives is noise).
    min_per_class: int = 20

    def describe(self) -> dict[str, float | int]:
        return {
            "min_auc_gain": self.min_auc_gain,
            "max_calibration_loss": self.max_calibration_loss,
            "min_rows": self.min_rows,
            "min_per_class": self.min_per_class,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    promote: bool
    reasons: list[str]


def judge(
    policy: PromotionPolicy,
    *,
    n_rows: int,
    n_positive: int,
    champion: WindowScore | None,
    challenger: WindowScore,
) -> Verdict:
    """Apply the policy; ``champion=None`` when there is none (or it cannot be scored).

    Every reason is a sentence for the log and the decision record; the first failed rule
    is not the only one reported, so an operator sees all of them at once.
    """
    reasons: list[str] = []
    n_negative = n_rows - n_positive
    if n_rows < policy.min_rows or min(n_positive, n_negative) < policy.min_per_class:
        reasons.append(
            f"evaluation window too small to judge: {n_rows} rows, {n_positive} positive, "
            f"{n_negative} negative (policy: >= {policy.min_rows} rows, >= "
            f"{policy.min_per_class} of each class)"
        )
        return Verdict(False, reasons)
    if challenger.roc_auc is None:
        return Verdict(False, ["challenger has no ROC AUC on the evaluation window"])
    if champion is None or champion.roc_auc is None:
        return Verdict(True, ["no champion to compare with: the challenger becomes champion"])
    promote = True
    gain = challenger.roc_auc - champion.roc_auc
    if gain >= policy.min_auc_gain:
        reasons.append(
            f"ROC AUC {challenger.roc_auc:.4f} vs champion {champion.roc_auc:.4f}: "
            f"+{gain:.4f} >= {policy.min_auc_gain}"
        )
    else:
        promote = False
        reasons.append(
            f"ROC AUC {challenger.roc_auc:.4f} vs champion {champion.roc_auc:.4f}: "
            f"{gain:+.4f} < the required +{policy.min_auc_gain}"
        )
    ece_new, ece_old = challenger.calibration_error, champion.calibration_error
    if ece_new is not None and ece_old is not None:
        loss = ece_new - ece_old
        if loss <= policy.max_calibration_loss:
            reasons.append(
                f"calibration error {ece_new:.4f} vs champion {ece_old:.4f}: not worse by "
                f"more than {policy.max_calibration_loss}"
            )
        else:
            promote = False
            reasons.append(
                f"calibration error {ece_new:.4f} vs champion {ece_old:.4f}: worse by "
                f"{loss:.4f} > {policy.max_calibration_loss}"
            )
    return Verdict(promote, reasons)


@dataclass
class RequestGate:
    """Act once per incident, and not again within ``cooldown_ms`` of event time.

    ``accepted_end_ms`` is the latest ``window_end_ms`` acted on (None: nothing yet).
    """

    model_name: str
    cooldown_ms: int = DAY_MS
    incidents: set[str] = field(default_factory=set)
    accepted_end_ms: int | None = None

    def recall(self, incidents: Iterable[str], latest_end_ms: int | None) -> None:
        """Re-arm from what earlier runs did (the registry's lineage)."""
        self.incidents.update(incidents)
        if latest_end_ms is not None:
            self.accepted_end_ms = max(self.accepted_end_ms or latest_end_ms, latest_end_ms)

    def check(
        self, request: RetrainRequest, champion_version: str | None = None
    ) -> SkipReason | None:
        """Why ``request`` is skipped, or None to act on it (then call :meth:`accept`).

        ``stale``: the request is about a version that is no longer the champion (a
        retrain or a rollback since); if the drift persists, workers serving the current
        champion ask again.
        """
        if request.model_name != self.model_name:
            return "other_model"
        if request.incident_id in self.incidents:
            return "duplicate"
        if champion_version is not None and request.model_version != champion_version:
            return "stale"
        if (
            self.accepted_end_ms is not None
            and request.window_end_ms < self.accepted_end_ms + self.cooldown_ms
        ):
            return "cooldown"
        return None

    def accept(self, request: RetrainRequest) -> None:
        self.incidents.add(request.incident_id)
        end = request.window_end_ms
        self.accepted_end_ms = (
            end if self.accepted_end_ms is None else max(self.accepted_end_ms, end)
        )


class Decision(msgspec.Struct, frozen=True):
    """A record of the ``model-decisions`` topic (key: model name), UTF-8 JSON.

    ``outcome``: ``promoted`` (the challenger is champion now), ``rejected`` (it stays a
    candidate; ``reasons`` say which rule failed), ``failed`` (no challenger: the history
    could not give a training set; ``reasons`` say why).  Versions are null where there is
    none.  ``evaluation`` holds the window (``cutoff_ms``, ``n_rows``, ``n_positive``) and
    each model's ``roc_auc``, ``calibration_error`` and ``brier`` on it.
    """

    decision_id: str
    model_name: str
    outcome: Outcome
    trigger: Trigger
    incident_id: str | None
    request_id: str | None
    champion_version: str | None
    challenger_version: str | None
    reasons: list[str]
    policy: dict[str, float | int]
    evaluation: dict[str, Any]
    training_window_ms: list[int]
    decided_at: float
