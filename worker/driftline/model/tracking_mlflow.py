"""Log a registered model version to an MLflow tracking store (the ``mlflow`` extra).

Why a separate, lazily imported module: MLflow is optional (``pip install
'driftline[mlflow]'``), and the worker, the trainer without ``--mlflow`` and every test
that does not ask for it must neither need nor load it (``import mlflow`` costs ~1.5 s and
~110 MB installed).  ``driftline train --mlflow URI`` and ``driftline retrain --mlflow URI``
import this module only when the flag is given; :func:`require_mlflow` turns a missing
extra into one clear line.

What a run holds, all read back from the **registry version** (the source of truth), so the
run and the registry cannot disagree:

* params: the feature spec digest, the label definition, the split, the seed and the
  hyperparameters (``metadata.metrics.params``, calibration, threshold, cross-validation);
* metrics: every number of the test and out-of-time evaluations and of the baselines
  (``test.roc_auc``, ``out_of_time.pr_auc``, ``baselines.test.recency.roc_auc``, ...);
* tags: ``driftline.registry``, ``driftline.model_name``, ``driftline.model_version``,
  ``driftline.stage``, ``driftline.sha256`` (join keys between the two systems);
* artifacts: ``model/`` (an MLflow sklearn model of the same pipeline, cloudpickle:
  ``mlflow.sklearn.load_model`` gives back what the worker serves), ``registry/`` (the
  version's own files, byte for byte: ``model.joblib``, ``metadata.json``,
  ``evaluation.npz``) and ``reports/model.html`` when the caller drew it.

The store: MLflow 3.x keeps ``file:`` stores in maintenance mode and refuses them unless
``MLFLOW_ALLOW_FILE_STORE=true``; its local store is a database, ``sqlite:///PATH.db``
(SQLAlchemy and Alembic, part of the extra).  For a sqlite store the artifacts go beside
the database (``<dir>/mlartifacts/``) instead of MLflow's default ``./mlruns`` under
whatever directory the command ran in.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

from driftline.model.registry import ModelRegistry

INSTALL_HINT = "pip install 'driftline[mlflow]'"
DEFAULT_EXPERIMENT = "driftline"
#: Metric groups of ``metadata["metrics"]`` logged as MLflow metrics (numbers only).
METRIC_GROUPS = ("test", "out_of_time", "baseline", "baselines", "cv")
#: Per-part sub-dicts that are tables, not single figures.
_NOT_METRICS = frozenset({"classification_report", "confusion_matrix", "roc_auc_folds"})
_PARAM_MAX = 6000  # MLflow's limit on a param value's length


class TrackingUnavailable(RuntimeError):
    """The ``mlflow`` extra is not installed; the message says how to install it."""


@dataclass(frozen=True, slots=True)
class TrackedRun:
    """Where a version was logged."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    model_uri: str


def require_mlflow() -> ModuleType:
    """``mlflow``, or :class:`TrackingUnavailable` naming the extra to install.

    Telemetry is off unless the caller's environment says otherwise: a training command
    should not phone home, and machines without a network (CI) would wait on it.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow
        import mlflow.sklearn  # the flavour log_version uses
    except ImportError as error:
        raise TrackingUnavailable(
            f"--mlflow needs the MLflow extra ({error}): {INSTALL_HINT}"
        ) from None
    return mlflow


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric leaves of the evaluation groups as ``group.sub.name`` -> float.

    None and non-finite values (a baseline without probabilities has no Brier score) are
    left out: MLflow stores a metric as a number, and a missing one reads as missing.
    """
    out: dict[str, float] = {}
    for group in METRIC_GROUPS:
        value = metrics.get(group)
        if isinstance(value, Mapping):
            out.update(_numeric_leaves(value, group))
    return out


def _numeric_leaves(tree: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, float]]:
    for key, value in tree.items():
        if key in _NOT_METRICS:
            continue
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            yield from _numeric_leaves(value, name)
        elif isinstance(value, int | float) and math.isfinite(float(value)):  # bools too
            yield name, float(value)


def run_params(
    metadata: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """What was trained and how: spec, label definition, split, seed, hyperparameters."""
    metrics = metadata.get("metrics") or {}
    dataset = (metadata.get("extra") or {}).get("dataset") or {}
    params: dict[str, Any] = {
        "spec_digest": metadata.get("spec_digest"),
        "n_features": len(metadata.get("feature_names") or []),
        "threshold": metadata.get("threshold"),
        "data_hash": metadata.get("data_hash"),
    }
    for key, value in (metrics.get("params") or {}).items():
        params[f"model.{key}"] = value
    for key, value in (dataset.get("churn_definition") or {}).items():
        params[f"label.{key}"] = value
    split = metrics.get("split") or {}
    for key in ("method", "by_customer", "out_of_time_cutoff_ms"):
        if key in split:
            params[f"split.{key}"] = split[key]
    params["split.cutoffs"] = dataset.get("cutoffs")
    params["split.n_train"] = metrics.get("n_train")
    params["split.n_test"] = metrics.get("n_test")
    params["split.n_out_of_time"] = metrics.get("n_out_of_time")
    calibration = metrics.get("calibration") or {}
    params["calibration.method"] = calibration.get("method")
    threshold = metrics.get("threshold") or {}
    params["threshold.objective"] = threshold.get("objective")
    params["threshold.method"] = threshold.get("method")
    params["cv.folds"] = (metrics.get("cv") or {}).get("folds")
    params["grid_search"] = metrics.get("grid_search")
    params["dropped_features"] = (metadata.get("extra") or {}).get("dropped_features")
    params.update(extra or {})
    return {key: _param_text(value) for key, value in params.items() if value is not None}


def _param_text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _PARAM_MAX else text[: _PARAM_MAX - 3] + "..."


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment of a sqlite store keeps its artifacts: beside the database.

    None for other stores (a file store keeps them inside itself; a server decides)."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite" or not parsed.path or parsed.path == "/:memory:":
        return None
    database = Path(parsed.path)
    return (database.parent / "mlartifacts" / experiment).resolve().as_uri()


def log_version(
    tracking_uri: str,
    registry: ModelRegistry,
    name: str,
    version: str,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    report_html: str | None = None,
    extra_metrics: Mapping[str, float] | None = None,
) -> TrackedRun:
    """Log one registered version (params, metrics, tags, model, files, report) as a run.

    The pipeline is loaded through :meth:`ModelRegistry.load`, so its checksum is verified
    before it is unpickled and logged again.
    """
    mlflow = require_mlflow()
    loaded = registry.load(name, version)
    metadata = loaded.metadata
    folder = registry.path(name, loaded.version)
    stage = registry.stages(name).stages.get(loaded.version) or "-"
    client_tags = {
        "driftline.registry": str(registry.root.resolve()),
        "driftline.model_name": name,
        "driftline.model_version": loaded.version,
        "driftline.stage": stage,
        "driftline.sha256": loaded.sha256,
        "driftline.trained_by": str((metadata.get("lineage") or {}).get("trained_by") or ""),
        **(tags or {}),
    }
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(
            experiment, artifact_location=artifact_location(tracking_uri, experiment)
        )
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"{name}-{loaded.version}", tags=client_tags) as run:
        mlflow.log_params(run_params(metadata, params))
        mlflow.log_metrics({**flat_metrics(metadata.get("metrics") or {}), **(extra_metrics or {})})
        for path in sorted(folder.iterdir()):  # the version's files, byte for byte
            if path.is_file():
                mlflow.log_artifact(str(path), artifact_path="registry")
        if report_html is not None:
            mlflow.log_text(report_html, "reports/model.html")
        info = mlflow.sklearn.log_model(
            loaded.pipeline,
            name="model",
            serialization_format="cloudpickle",
            signature=_signature(mlflow, metadata),
            pip_requirements=_requirements(metadata),
        )
    return TrackedRun(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        tracking_uri=tracking_uri,
        model_uri=str(info.model_uri),
    )


def _signature(mlflow: ModuleType, metadata: Mapping[str, Any]) -> Any:
    """Input columns in the model's order: numeric as double (NaN = missing), categorical
    as string, as the worker builds its frames."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    types = metadata.get("feature_types") or {}
    columns = [
        ColSpec("string" if types.get(feature) == "categorical" else "double", feature)
        for feature in metadata.get("feature_names") or []
    ]
    return ModelSignature(inputs=Schema(columns))  # type: ignore[arg-type]  # ColSpec list


def _requirements(metadata: Mapping[str, Any]) -> list[str]:
    """The versions the registry recorded (scikit-learn decides whether a pickle loads),
    plus driftline itself: the pipeline's calibration wrapper is a driftline class.
    Explicit, so MLflow does not infer them by loading the model in a subprocess."""
    from importlib.metadata import version as installed

    libraries = metadata.get("libraries") or {}
    names = {"sklearn": "scikit-learn", "numpy": "numpy", "pandas": "pandas", "joblib": "joblib"}
    pins = [f"{pip}=={libraries[key]}" for key, pip in names.items() if key in libraries]
    return [
        f"driftline=={installed('driftline')}",
        *pins,
        f"cloudpickle=={installed('cloudpickle')}",
    ]
