"""``driftline retrain`` without a broker: the request gate, the promotion policy, and one
retrain on a history whose churn mechanism changed (challenger promoted) or did not
(challenger stays a candidate)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pandas as pd
import pytest
from jsonschema import Draft202012Validator

from driftline.commands._retrain_job import RetrainConfig, recall, retrain
from driftline.commands.train import register, train_on_events
from driftline.core.drift.trigger import RetrainRequest
from driftline.core.offline import ChurnDefinition
from driftline.core.retrain import Decision, PromotionPolicy, RequestGate, WindowScore, judge
from driftline.core.spec import DAY_MS, FeatureSpec, load_default_spec
from driftline.model.registry import ModelRegistry
from support.regime_history import regime_history

POLICY = PromotionPolicy(min_auc_gain=0.05, max_calibration_loss=0.02, min_rows=200)
CHURN = ChurnDefinition(horizon_ms=30 * DAY_MS, target_event="purchase", lookback_ms=30 * DAY_MS)
FAST = {"n_estimators": 40, "cv_folds": 3}


def request(
    incident: str = "i1", end_ms: int = 10 * DAY_MS, model: str = "churn"
) -> RetrainRequest:
    return RetrainRequest(
        request_id="r" + incident,
        incident_id=incident,
        model_name=model,
        model_version="v0001",
        reference_hash="h",
        reason="feature_drift",
        drifted_features=[],
        drifted_share=0.5,
        window_start_ms=end_ms - DAY_MS,
        window_end_ms=end_ms,
        worker_id="w",
        created_at=0.0,
    )


# --------------------------------------------------------------------------- gate


def test_gate_acts_once_per_incident_and_keeps_its_own_cooldown() -> None:
    gate = RequestGate("churn", cooldown_ms=DAY_MS)
    first = request("a", end_ms=10 * DAY_MS)
    assert gate.check(first) is None
    gate.accept(first)
    assert gate.check(first) == "duplicate"  # redelivered, or a second worker's copy
    assert gate.check(request("b", end_ms=10 * DAY_MS + DAY_MS // 2)) == "cooldown"
    assert gate.check(request("c", end_ms=11 * DAY_MS)) is None
    assert gate.check(request("d", model="other")) == "other_model"
    assert gate.check(request("e", end_ms=20 * DAY_MS), champion_version="v0001") is None
    assert gate.check(request("e", end_ms=20 * DAY_MS), champion_version="v0002") == "stale"


def test_gate_recalls_what_the_registry_holds() -> None:
    gate = RequestGate("churn", cooldown_ms=DAY_MS)
    gate.recall({"a"}, 10 * DAY_MS)
    assert gate.check(request("a", end_ms=20 * DAY_MS)) == "duplicate"
    assert gate.check(request("b", end_ms=10 * DAY_MS + 1)) == "cooldown"


# --------------------------------------------------------------------------- policy


def score(auc: float, ece: float = 0.05) -> WindowScore:
    return WindowScore(roc_auc=auc, calibration_error=ece, brier=0.1)


def test_policy_promotes_only_a_clear_and_calibrated_gain() -> None:
    ok = judge(POLICY, n_rows=500, n_positive=100, champion=score(0.80), challenger=score(0.86))
    assert ok.promote and "+0.0600 >= 0.05" in ok.reasons[0]
    small = judge(POLICY, n_rows=500, n_positive=100, champion=score(0.80), challenger=score(0.84))
    assert not small.promote and "< the required +0.05" in small.reasons[0]
    worse = judge(
        POLICY, n_rows=500, n_positive=100, champion=score(0.80), challenger=score(0.9, ece=0.08)
    )
    assert not worse.promote and "worse by 0.0300 > 0.02" in worse.reasons[1]


def test_policy_does_not_judge_on_a_window_too_small() -> None:
    for rows, positives in ((150, 50), (500, 10), (500, 495)):
        verdict = judge(
            POLICY, n_rows=rows, n_positive=positives, champion=score(0.5), challenger=score(0.99)
        )
        assert not verdict.promote and "too small to judge" in verdict.reasons[0]


def test_without_a_champion_the_challenger_is_promoted() -> None:
    verdict = judge(POLICY, n_rows=500, n_positive=100, champion=None, challenger=score(0.7))
    assert verdict.promote and "no champion" in verdict.reasons[0]


# --------------------------------------------------------------------------- one retrain


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return load_default_spec()


def champion_on_the_old_regime(history: pd.DataFrame, spec: FeatureSpec, root: Path) -> None:
    old = history[history["event_time"] < history["event_time"].min() + 180 * DAY_MS]
    result = train_on_events(
        old, spec, n_cutoffs=3, horizon_days=30, lookback_days=30, progress=False, **FAST
    )
    register(result, ModelRegistry(root), "churn", spec)  # stage champion, as `train` does


def config(root: Path, spec: FeatureSpec) -> RetrainConfig:
    return RetrainConfig(
        registry=str(root),
        model_name="churn",
        spec=spec,
        churn=CHURN,
        policy=POLICY,
        history_ms=150 * DAY_MS,
        n_cutoffs=3,
        train_kwargs=FAST,
    )


def test_a_changed_mechanism_gets_a_promoted_challenger_with_lineage(
    tmp_path: Path, spec: FeatureSpec
) -> None:
    history = regime_history(flip=True, seed=1)
    champion_on_the_old_regime(history, spec, tmp_path)
    incident = request("incident-1", end_ms=int(history["event_time"].max()))
    decision = retrain(history, config(tmp_path, spec), trigger="request", request=incident)

    assert decision.outcome == "promoted", decision.reasons
    assert (decision.champion_version, decision.challenger_version) == ("v0001", "v0002")
    evaluation = decision.evaluation
    challenger, champion = evaluation["challenger"], evaluation["champion"]
    assert isinstance(challenger, dict) and isinstance(champion, dict)
    assert challenger["roc_auc"] >= champion["roc_auc"] + 0.05
    registry = ModelRegistry(tmp_path)
    assert registry.champion("churn").version == "v0002"
    assert registry.stages("churn").stages == {"v0001": "retired", "v0002": "champion"}
    lineage = registry.load("churn", "v0002").metadata["lineage"]
    assert lineage["parent_version"] == "v0001"
    assert lineage["incident_id"] == "incident-1"
    assert lineage["training_window_ms"] == decision.training_window_ms
    assert lineage["evaluation_cutoff_ms"] == evaluation["cutoff_ms"]
    assert len(lineage["data_hash"]) == 64
    assert recall(registry, "churn") == ({"incident-1"}, incident.window_end_ms)
    valid_decision(decision)


def test_no_change_leaves_the_challenger_a_candidate(tmp_path: Path, spec: FeatureSpec) -> None:
    history = regime_history(flip=False, seed=1)
    champion_on_the_old_regime(history, spec, tmp_path)
    decision = retrain(history, config(tmp_path, spec), trigger="schedule")

    assert decision.outcome == "rejected", decision.reasons
    assert "< the required +0.05" in decision.reasons[0]
    registry = ModelRegistry(tmp_path)
    assert registry.champion("churn").version == "v0001"
    assert registry.stages("churn").stages == {"v0001": "champion", "v0002": "candidate"}
    valid_decision(decision)


def test_a_history_too_short_fails_without_registering(tmp_path: Path, spec: FeatureSpec) -> None:
    history = regime_history(n_customers=200, days=50, seed=2)
    decision = retrain(history, config(tmp_path, spec), trigger="schedule")
    assert decision.outcome == "failed" and decision.challenger_version is None
    assert "two are needed" in decision.reasons[0] or "horizon" in decision.reasons[0]
    assert ModelRegistry(tmp_path).versions("churn") == []
    valid_decision(decision)


def valid_decision(decision: Decision) -> None:
    """What the service publishes validates against the committed schema."""
    root = Path(__file__).resolve().parents[2]
    schema = json.loads((root / "schemas" / "model-decision.schema.json").read_text())
    Draft202012Validator(schema).validate(json.loads(msgspec.json.encode(decision)))


def test_the_label_is_the_specs_and_flags_override_its_parts(spec: FeatureSpec) -> None:
    import argparse
    import dataclasses

    from driftline.commands import retrain as retrain_command
    from driftline.commands._retrain_job import _overrides, label_of
    from driftline.commands._train_inputs import UsageError
    from driftline.core.labels import label_definition

    parser = argparse.ArgumentParser()
    retrain_command.add_arguments(parser)
    assert label_of(retrain_command.job_config(parser.parse_args([]))) == label_definition(spec)
    args = parser.parse_args(["--horizon-days", "30", "--lookback-days", "45"])
    label = label_of(retrain_command.job_config(args))
    assert (label.horizon_ms, label.lookback_ms) == (30 * DAY_MS, 45 * DAY_MS)
    assert (label.kind, label.target_event) == (label_definition(spec).kind, "purchase")
    assert _overrides(spec, label) == {"horizon_days": 30, "lookback_days": 45}
    assert _overrides(spec, label_definition(spec)) == {}
    with pytest.raises(UsageError, match="declare it in the spec"):
        _overrides(spec, dataclasses.replace(label, kind="occurrence"))
