"""``driftline train --mlflow URI``: the registered version, logged to a real MLflow store.

A real tracking store (MLflow's local one: a sqlite database, artifacts beside it), written
by the real command line, read back with MLflow's own client: the params say what was
trained, the metrics are the registry's numbers, the run is tagged with the registry's
name, version and stage, and the logged model is the registry's pipeline (same scores).
Without the extra, ``--mlflow`` fails in one line naming it, before any training: shown in
a subprocess whose ``sys.path`` cannot see mlflow (the real import failure, no mock).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftline.core.labels import label_definition
from driftline.core.offline import training_set
from driftline.core.spec import load_default_spec
from driftline.model.registry import ModelRegistry
from support.regime_history import regime_history

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (make install installs it)")

FAST = ["--n-estimators", "30", "--cv-folds", "3", "--no-progress", "--seed", "7"]
TRAIN = ["--cutoffs", "2", "--horizon-days", "30", "--lookback-days", "90"]


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("events") / "events.parquet"
    regime_history(n_customers=400, days=200, switch_day=400, flip=False, seed=5).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def trained(
    events_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path, str]:
    """One ``driftline train --mlflow sqlite:///...`` run: its JSON, registry and URI."""
    root = tmp_path_factory.mktemp("mlflow")
    registry, uri = root / "models", f"sqlite:///{root / 'mlflow.db'}"
    argv = ["train", "--events", str(events_file), "--registry", str(registry), *TRAIN, *FAST]
    result = subprocess.run(
        [sys.executable, "-m", "driftline.cli", *argv, "--json", "--mlflow", uri],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout), registry, uri


def test_the_run_holds_the_registry_versions_params_metrics_and_tags(
    trained: tuple[dict[str, Any], Path, str],
) -> None:
    out, registry, uri = trained
    loaded = ModelRegistry(registry).load("churn", out["model"]["version"])
    metrics = loaded.metadata["metrics"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(out["mlflow"]["run_id"])

    tags = run.data.tags
    assert tags["driftline.model_name"] == "churn"
    assert tags["driftline.model_version"] == loaded.version == "v0001"
    assert tags["driftline.stage"] == "champion"
    assert tags["driftline.sha256"] == loaded.sha256
    assert tags["driftline.registry"] == str(registry.resolve())

    params = run.data.params
    assert params["spec_digest"] == load_default_spec().digest
    assert params["model.seed"] == "7"
    assert params["model.n_estimators"] == "30"
    assert params["label.horizon_days"] == "30.0"
    assert params["label.target_event"] == "purchase"
    assert params["label.lookback_days"] == "90.0"
    assert params["split.by_customer"] == "True"
    assert params["split.out_of_time_cutoff_ms"] == str(metrics["split"]["out_of_time_cutoff_ms"])
    assert params["calibration.method"] == metrics["calibration"]["method"]
    assert params["cv.folds"] == "3"
    assert params["feature_spec"] == "default"

    logged = run.data.metrics
    for part in ("test", "out_of_time"):
        for key in ("roc_auc", "pr_auc", "brier", "calibration_error", "f1", "threshold"):
            assert logged[f"{part}.{key}"] == pytest.approx(metrics[part][key], rel=1e-12)
    recency = metrics["baselines"]["out_of_time"]["recency"]["roc_auc"]
    assert logged["baselines.out_of_time.recency.roc_auc"] == pytest.approx(recency, rel=1e-12)
    assert logged["baselines.test.majority.roc_auc"] == 0.5
    assert logged["cv.roc_auc_mean"] == pytest.approx(metrics["cv"]["roc_auc_mean"], rel=1e-12)
    # a baseline without probabilities has no Brier score: absent, not a made-up number
    assert "baselines.test.recency.brier" not in logged


def test_the_logged_model_and_files_are_the_registrys(
    trained: tuple[dict[str, Any], Path, str], events_file: Path, tmp_path: Path
) -> None:
    out, registry, uri = trained
    version = out["model"]["version"]
    loaded = ModelRegistry(registry).load("churn", version)
    run_id = out["mlflow"]["run_id"]
    client = mlflow.MlflowClient(tracking_uri=uri)

    files = client.download_artifacts(run_id, "registry", str(tmp_path))
    folder = registry / "churn" / version
    for name in ("model.joblib", "metadata.json", "evaluation.npz"):
        assert (Path(files) / name).read_bytes() == (folder / name).read_bytes(), name

    report = Path(client.download_artifacts(run_id, "reports/model.html", str(tmp_path)))
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text and version in text

    mlflow.set_tracking_uri(uri)
    model = mlflow.sklearn.load_model(f"runs:/{run_id}/model")
    spec = load_default_spec()
    events = pd.read_parquet(events_file)
    cutoff = int(events["event_time"].max()) - 100 * 86_400_000  # the spec's 90-day label fits
    X, _, _ = training_set(events, spec, [cutoff], label_definition(spec))
    X = X[loaded.feature_names]
    assert len(X) > 100
    np.testing.assert_array_equal(model.predict_proba(X), loaded.pipeline.predict_proba(X))
    assert model.predict_proba(X)[:, 1].std() > 0  # a fitted model, not a constant


def test_artifacts_go_beside_the_sqlite_database(trained: tuple[dict[str, Any], Path, str]) -> None:
    """Not into ``./mlruns`` of whatever directory the command ran in."""
    out, registry, uri = trained
    root = registry.parent
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(out["mlflow"]["run_id"])
    assert run.info.artifact_uri.startswith((root / "mlartifacts").resolve().as_uri())
    assert not (root / "mlruns").exists()


HIDE_MLFLOW = textwrap.dedent(
    """
    import sys

    class HideMlflow:
        # An installation without the extra: the import system finds no mlflow.
        def find_spec(self, name, path=None, target=None):
            if name == "mlflow" or name.startswith("mlflow."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, HideMlflow())
    from driftline.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_without_the_extra_mlflow_fails_in_one_line_before_training(
    events_file: Path, tmp_path: Path
) -> None:
    registry = tmp_path / "models"
    argv = ["train", "--events", str(events_file), "--registry", str(registry), *TRAIN, *FAST]
    result = subprocess.run(
        [sys.executable, "-c", HIDE_MLFLOW, *argv, "--mlflow", f"sqlite:///{tmp_path}/m.db"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'driftline[mlflow]'" in lines[0]
    assert not registry.exists()  # nothing trained, nothing registered


def test_train_without_mlflow_does_not_import_it(events_file: Path, tmp_path: Path) -> None:
    """The extra stays optional: a plain ``driftline train`` never loads mlflow."""
    code = (
        "import sys\n"
        "from driftline.cli import main\n"
        "status = main(sys.argv[1:])\n"
        "assert 'mlflow' not in sys.modules, 'mlflow was imported'\n"
        "sys.exit(status)\n"
    )
    argv = ["train", "--events", str(events_file), "--registry", str(tmp_path / "m"), *TRAIN]
    result = subprocess.run(
        [sys.executable, "-c", code, *argv, *FAST], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
