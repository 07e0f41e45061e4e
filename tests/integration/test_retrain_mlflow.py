"""``driftline retrain --once --mlflow URI`` on a real broker: the challenger it registered
is a run in a real MLflow store, tagged with the decision and carrying the window scores
both models were judged on."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_retrain_loop import champion_registry

from driftline import cli
from driftline.core.spec import FeatureSpec
from driftline.event_producer import produce
from driftline.simulate import frame_to_events
from support.regime_history import regime_history

pytestmark = pytest.mark.integration
mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (make install installs it)")


def test_retrain_logs_its_challenger_with_the_decision(
    kafka_bootstrap: str,
    spec: FeatureSpec,
    topic_factory: Callable[..., str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    history = regime_history(n_customers=800, flip=True, seed=1)
    registry = champion_registry(history, spec, tmp_path / "models")
    events = topic_factory(2, "events")
    produce(kafka_bootstrap, events, frame_to_events(history))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [
        "retrain",
        "--once",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--input-topic",
        events,
        "--decisions-topic",
        "",
        "--registry",
        str(registry.root),
        *("--history-days", "150", "--horizon-days", "30", "--lookback-days", "30"),
        *("--min-auc-gain", "0.05", "--n-estimators", "40", "--cv-folds", "3"),
        *("--mlflow", uri, "--mlflow-experiment", "retrains"),
    ]
    assert cli.main(argv) == 0  # promoted
    decision: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert decision["challenger_version"] == "v0002"

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("retrains")
    [run] = client.search_runs([experiment.experiment_id])
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["driftline.model_version"] == "v0002"
    assert tags["driftline.stage"] == "champion"  # logged after the promotion
    assert tags["driftline.decision"] == "promoted"
    assert tags["driftline.decision_id"] == decision["decision_id"]
    assert tags["driftline.judged_against"] == "v0001"
    assert tags["driftline.trained_by"] == "driftline retrain"
    window = decision["evaluation"]
    for model in ("challenger", "champion"):
        for key in ("roc_auc", "calibration_error", "brier"):
            assert metrics[f"window.{model}.{key}"] == pytest.approx(window[model][key])
    assert metrics["window.n_rows"] == window["n_rows"]
    assert run.data.params["source"] == f"topic {events}"
    loaded = registry.load("churn", "v0002")
    assert metrics["test.roc_auc"] == pytest.approx(loaded.metadata["metrics"]["test"]["roc_auc"])
    names = {f.path for f in client.list_artifacts(run.info.run_id, "registry")}
    assert names >= {"registry/model.joblib", "registry/metadata.json"}
