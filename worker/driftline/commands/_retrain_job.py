"""One retrain: point-in-time training set, challenger, champion vs challenger, decision.

Broker-free (an event table in, a registry and a :class:`Decision` out) so the policy path
is tested on its own; ``driftline retrain`` (``commands/retrain.py``) feeds it the events
it reads back from the input topic.

The challenger is trained by the very workflow of ``driftline train``
(:func:`driftline.commands.train.train_on_events`) on automatic cutoffs one horizon apart
ending at the latest labelled one.  That latest cutoff is the **evaluation window**:
``train_model`` holds its rows out of everything (out-of-time split), and here both the
champion and the challenger are scored on exactly those rows (same customers, same
features, same labels).  The registered challenger is the model that was judged: it is not
refitted on the evaluation window afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from driftline.commands._train_inputs import UsageError
from driftline.commands.train import auto_cutoffs, register, train_on_events
from driftline.core.drift.trigger import RetrainRequest
from driftline.core.labels import ChurnDefinition, label_definition
from driftline.core.offline import training_set
from driftline.core.retrain import (
    Decision,
    Outcome,
    PromotionPolicy,
    Trigger,
    WindowScore,
    judge,
)
from driftline.core.spec import DAY_MS, FeatureSpec
from driftline.model.evaluation import evaluate
from driftline.model.fitting import positive_scores
from driftline.model.registry import METADATA_FILE, LoadedModel, ModelRefused, ModelRegistry
from driftline.model.stages import CANDIDATE, CHAMPION

log = logging.getLogger(__name__)

TRAINED_BY = "driftline retrain"


@dataclass(frozen=True)
class RetrainConfig:
    """What a retrain needs besides the events (``driftline retrain`` flags)."""

    registry: str
    model_name: str
    spec: FeatureSpec
    #: The label; None: the spec's (``label_definition(spec)``, its ``[label]`` table).
    churn: ChurnDefinition | None = None
    policy: PromotionPolicy = field(default_factory=PromotionPolicy)
    #: Events older than this before the latest one are not used.
    history_ms: int = 400 * DAY_MS
    #: Cutoffs one horizon apart; the latest is the evaluation window, the others train.
    n_cutoffs: int = 3
    train_kwargs: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)


def retrain(
    events: pd.DataFrame,
    config: RetrainConfig,
    *,
    trigger: Trigger,
    request: RetrainRequest | None = None,
) -> Decision:
    """Train, judge and register (candidate; champion when the policy says so)."""
    registry = ModelRegistry(config.registry)
    name = config.model_name
    champion_version = registry.champion(name).version
    started = time.monotonic()
    window: list[int] = []
    evaluation: dict[str, object] = {}

    def decide(outcome: Outcome, reasons: list[str], challenger: str | None) -> Decision:
        return make_decision(
            config,
            outcome,
            reasons,
            trigger=trigger,
            request=request,
            champion=champion_version,
            challenger=challenger,
            evaluation={**evaluation, "seconds": round(time.monotonic() - started, 3)},
            window=window,
        )

    try:
        recent, cutoffs = _window(events, config)
    except UsageError as error:
        return decide("failed", [str(error)], None)
    times = recent["event_time"].to_numpy(dtype=np.int64)
    window = [int(times.min()), int(times.max())]
    churn = label_of(config)
    eval_cutoff = max(cutoffs)
    try:
        result = train_on_events(
            recent,
            config.spec,
            cutoffs_ms=cutoffs,
            **_overrides(config.spec, churn),
            **{"progress": False, **config.train_kwargs},
        )
        X, y, _ = training_set(recent, config.spec, [eval_cutoff], churn)
    except (UsageError, ValueError) as error:
        return decide("failed", [f"no challenger: {error}"], None)
    X = X[config.spec.feature_names]
    y_np = y.to_numpy()
    evaluation = {
        "cutoff_ms": eval_cutoff,
        "horizon_ms": churn.horizon_ms,
        "n_rows": len(y_np),
        "n_positive": int(y_np.sum()),
        "challenger": _score(result.pipeline, result.threshold, X, y_np),
    }
    champion, why_not = _champion(registry, name, champion_version, config.spec)
    champion_score = None
    if champion is not None:
        evaluation["champion"] = _score(champion.pipeline, champion.threshold, X, y_np)
        champion_score = WindowScore(**evaluation["champion"])  # type: ignore[arg-type]
    verdict = judge(
        config.policy,
        n_rows=len(y_np),
        n_positive=int(y_np.sum()),
        champion=champion_score,
        challenger=WindowScore(**evaluation["challenger"]),  # type: ignore[arg-type]
    )
    reasons = ([why_not] if why_not else []) + verdict.reasons
    lineage = {
        "parent_version": champion_version,
        "incident_id": request.incident_id if request else None,
        "request_id": request.request_id if request else None,
        "request_window_end_ms": request.window_end_ms if request else None,
        "trigger": trigger,
        "training_window_ms": window,
        "evaluation_cutoff_ms": eval_cutoff,
        "source": config.source,
    }
    version = register(
        result,
        registry,
        name,
        config.spec,
        stage=CANDIDATE,
        stage_reason=f"challenger ({trigger})",
        lineage=lineage,
        trained_by=TRAINED_BY,
    )
    if verdict.promote:
        registry.set_stage(
            name, version.version, CHAMPION, reason="; ".join(reasons), by=TRAINED_BY
        )
    return decide("promoted" if verdict.promote else "rejected", reasons, version.version)


def make_decision(
    config: RetrainConfig,
    outcome: Outcome,
    reasons: list[str],
    *,
    trigger: Trigger,
    request: RetrainRequest | None,
    champion: str | None,
    challenger: str | None = None,
    evaluation: dict[str, object] | None = None,
    window: list[int] | None = None,
) -> Decision:
    """The decision record (``failed`` ones too: a history that cannot be read...)."""
    return Decision(
        decision_id=uuid.uuid4().hex,
        model_name=config.model_name,
        outcome=outcome,
        trigger=trigger,
        incident_id=request.incident_id if request else None,
        request_id=request.request_id if request else None,
        champion_version=champion,
        challenger_version=challenger,
        reasons=reasons,
        policy=config.policy.describe(),
        evaluation=evaluation or {},
        training_window_ms=window or [],
        decided_at=time.time(),
    )


def recall(registry: ModelRegistry, name: str) -> tuple[set[str], int | None]:
    """Incident ids already retrained for, and the latest training window end (for the
    gate's cooldown), from the lineage of the versions ``driftline retrain`` registered."""
    incidents: set[str] = set()
    latest: int | None = None
    for version in registry.versions(name):
        try:
            metadata = json.loads((registry.path(name, version) / METADATA_FILE).read_text())
        except (OSError, ValueError):
            continue
        lineage = metadata.get("lineage") if isinstance(metadata, dict) else None
        if not isinstance(lineage, dict) or lineage.get("trained_by") != TRAINED_BY:
            continue
        if isinstance(lineage.get("incident_id"), str):
            incidents.add(lineage["incident_id"])
        if isinstance(lineage.get("request_window_end_ms"), int):
            end = lineage["request_window_end_ms"]
            latest = end if latest is None else max(latest, end)
    return incidents, latest


def _window(events: pd.DataFrame, config: RetrainConfig) -> tuple[pd.DataFrame, list[int]]:
    if events.empty:
        raise UsageError("no events in the input topic")
    end = int(events["event_time"].max())
    recent = events[events["event_time"].to_numpy(dtype=np.int64) > end - config.history_ms]
    times = recent["event_time"].to_numpy(dtype=np.int64)
    cutoffs = auto_cutoffs(times, label_of(config).horizon_ms, config.n_cutoffs)
    if len(cutoffs) < 2:
        raise UsageError(
            f"the history ({(end - int(times.min())) // DAY_MS} days) holds {len(cutoffs)} "
            "labelled cutoff(s): two are needed (one to train on, the latest to evaluate)"
        )
    return recent.reset_index(drop=True), cutoffs


def label_of(config: RetrainConfig) -> ChurnDefinition:
    """The label a retrain uses: the configured one, else the spec's."""
    return config.churn if config.churn is not None else label_definition(config.spec)


def _overrides(spec: FeatureSpec, churn: ChurnDefinition) -> dict[str, Any]:
    """``train_on_events`` arguments for the parts of ``churn`` that differ from the spec's
    label (``train_on_events`` starts from the spec's label, as ``driftline train`` does)."""
    base = label_definition(spec)
    found: dict[str, Any] = {}
    if churn.horizon_ms != base.horizon_ms:
        found["horizon_days"] = churn.horizon_ms // DAY_MS
    if churn.target_event != base.target_event:
        found["target_event"] = churn.target_event
    if churn.lookback_ms != base.lookback_ms:
        found["lookback_days"] = churn.lookback_ms // DAY_MS
    rebuilt = dataclasses.replace(
        base,
        horizon_ms=found["horizon_days"] * DAY_MS if "horizon_days" in found else base.horizon_ms,
        target_event=churn.target_event,
        lookback_ms=found["lookback_days"] * DAY_MS
        if "lookback_days" in found
        else base.lookback_ms,
    )
    if rebuilt != churn:
        raise UsageError(
            f"label {churn.describe()} differs from the spec's ({base.describe()}) in its kind, "
            "its name or by a fraction of a day: declare it in the spec's [label] table"
        )
    return found


def _champion(
    registry: ModelRegistry, name: str, version: str | None, spec: FeatureSpec
) -> tuple[LoadedModel | None, str | None]:
    if version is None:
        return None, None
    try:
        loaded = registry.load(
            name, version, expected_features=spec.feature_names, expected_spec_digest=spec.digest
        )
    except ModelRefused as refused:
        return None, f"champion {version} cannot be scored ({refused}): judged without it"
    return loaded, None


def _score(pipeline: Any, threshold: float, X: pd.DataFrame, y: np.ndarray) -> dict[str, Any]:
    metrics, _ = evaluate(y, positive_scores(pipeline, X), threshold)
    return {k: metrics[k] for k in ("roc_auc", "calibration_error", "brier")}
