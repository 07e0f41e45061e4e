"""``--mlflow URI`` for ``driftline train`` and ``driftline retrain``: log the registered
version to an MLflow tracking store.

The adapter (:mod:`driftline.model.tracking_mlflow`) and MLflow itself are imported only
when the flag is given, and the extra is checked *before* training (:func:`check_mlflow`),
so a missing ``driftline[mlflow]`` costs one line, not a training run.  The model report
is drawn here (the command layer may use the report code; the model layer may not) when
the ``report`` extra is installed, and left out of the run, saying so, when it is not.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from driftline.commands._errors import CommandError
from driftline.core.retrain import Decision
from driftline.model.registry import ModelRegistry

log = logging.getLogger(__name__)


def add_mlflow(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("experiment tracking (the mlflow extra)")
    group.add_argument(
        "--mlflow",
        metavar="URI",
        default=None,
        help="also log the registered version (params, metrics, model report, model) as a "
        "run in this MLflow tracking store, e.g. sqlite:///var/mlflow.db or "
        "http://mlflow:5000 (needs pip install 'driftline[mlflow]')",
    )
    group.add_argument(
        "--mlflow-experiment",
        metavar="NAME",
        default="driftline",
        help="MLflow experiment of the run (created if missing) (default: %(default)s)",
    )


def check_mlflow(args: argparse.Namespace) -> None:
    """Fail before any work when ``--mlflow`` is given without the extra."""
    if getattr(args, "mlflow", None) is None:
        return
    from driftline.model.tracking_mlflow import TrackingUnavailable, require_mlflow

    try:
        require_mlflow()
    except TrackingUnavailable as error:
        raise CommandError(str(error)) from None


def model_report_html(registry: ModelRegistry, name: str, version: str) -> str | None:
    """The ``driftline report model`` page of the version, or None without matplotlib."""
    try:
        import matplotlib  # noqa: F401  # the report extra
    except ImportError:
        log.warning(
            "MLflow run without the model report: drawing it needs pip install 'driftline[report]'"
        )
        return None
    from driftline.reports import model_report
    from driftline.reports.store import read_evaluation, read_metadata

    metadata = read_metadata(registry, name, version)
    arrays = read_evaluation(registry, name, version, metadata)
    return model_report.build(name, version, metadata, arrays)


def log_to_mlflow(
    args: argparse.Namespace,
    registry: ModelRegistry,
    name: str,
    version: str,
    *,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    window: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Log the version to ``args.mlflow``; the run's ids (for ``--json`` and the log).

    ``window``: a retrain decision's ``evaluation`` (both models scored on the same rows),
    logged as ``window.challenger.roc_auc``, ``window.champion.roc_auc``, ...
    """
    from driftline.model.tracking_mlflow import log_version

    report = model_report_html(registry, name, version)
    try:
        run = log_version(
            args.mlflow,
            registry,
            name,
            version,
            experiment=args.mlflow_experiment,
            params=params,
            tags=tags,
            report_html=report,
            extra_metrics=_window_metrics(window or {}),
        )
    except Exception as error:  # MLflow raises its own and library errors; say which step
        raise CommandError(
            f"registered {name} {version}, but logging it to MLflow ({args.mlflow}) failed: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    log.info("logged %s %s to MLflow run %s (%s)", name, version, run.run_id, args.mlflow)
    return {
        "tracking_uri": run.tracking_uri,
        "experiment_id": run.experiment_id,
        "run_id": run.run_id,
        "model_uri": run.model_uri,
        "report": "logged" if report is not None else "not drawn (no report extra)",
    }


def decision_tracker(args: argparse.Namespace) -> Callable[[Decision], None] | None:
    """For ``driftline retrain --mlflow``: log each decision's challenger (None without the
    flag).  The run carries the decision (outcome, trigger, champion it was judged against,
    incident) as tags and the window scores as metrics; the service calls it after the
    decision is taken, so the stage tag is the one the policy gave."""
    if getattr(args, "mlflow", None) is None:
        return None
    registry = ModelRegistry(args.registry)

    def track(decision: Decision) -> None:
        if decision.challenger_version is None:
            return
        tags = {
            "driftline.decision_id": decision.decision_id,
            "driftline.decision": decision.outcome,
            "driftline.trigger": decision.trigger,
            "driftline.judged_against": decision.champion_version or "-",
            "driftline.incident_id": decision.incident_id or "-",
        }
        log_to_mlflow(
            args,
            registry,
            decision.model_name,
            decision.challenger_version,
            params={"source": f"topic {args.input_topic}"},
            tags=tags,
            window=decision.evaluation,
        )

    return track


def _window_metrics(evaluation: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for model in ("challenger", "champion"):
        for key, value in (evaluation.get(model) or {}).items():
            if isinstance(value, int | float) and math.isfinite(float(value)):
                out[f"window.{model}.{key}"] = float(value)
    for key in ("n_rows", "n_positive"):
        if isinstance(evaluation.get(key), int | float):
            out[f"window.{key}"] = float(evaluation[key])
    return out
