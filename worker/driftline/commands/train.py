"""``driftline train``: build a training set, fit the churn model, register it.

Two sources, because they answer different questions:

* an **event log** (``--events``): the features are computed by replaying the log through
  the same engine the worker runs (``core.offline.training_set``), so the model is trained
  on exactly what it will be served, and it is registered with the feature spec's digest;
  the worker refuses it under any other spec.  Labels come from a churn definition (no
  ``target_event`` within ``horizon`` after a cutoff).
* a **customer table** (``--table``): one row per customer with a label column, e.g. the
  Telco sample.  Useful to exercise the training workflow on a classic tabular problem; the
  model's inputs are the table's columns, not the spec's features, so the worker cannot
  serve it (no spec digest is recorded).

The library functions :func:`train_on_events` and :func:`register` are what the demo and
the tests call; :func:`run` adds file reading, argument checking and printing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftline.commands._mapping import mapping_kind
from driftline.commands._mlflow import check_mlflow, log_to_mlflow

# The CLI takes every subcommand's add_arguments from its module (driftline.cli).
from driftline.commands._train_flags import add_arguments as add_arguments
from driftline.commands._train_inputs import (
    REQUIRED_EVENT_COLUMNS,
    UsageError,
    dataset_summary,
    parse_cutoff,
    read_event_file,
    read_table,
    recency_days,
)
from driftline.core.events import EVENT_TYPES
from driftline.core.labels import ChurnDefinition, label_definition
from driftline.core.offline import training_set
from driftline.core.spec import DAY_MS, FeatureSpec, load_default_spec, load_spec
from driftline.model.evaluation_arrays import EVALUATION_FILE, to_bytes
from driftline.model.registry import ModelRegistry, ModelVersion
from driftline.model.serving_profile import NoReferenceEvents, serving_reference_profile
from driftline.model.tables import infer_positive_label, train_from_table
from driftline.model.training import (
    TrainResult,
    _jsonable,
    train_model,
)

HELP = """Train a churn model on an event log or a customer table, and register it.

Event log (--events): CSV or Parquet with event-field columns (customer_id, event_time,
event_type, amount, ...); event_time as epoch millis or ISO dates/datetimes (naive = UTC).
The mapping flags are replay's: --mapping cdnow reads the raw CDNOW master file (its dates
are replayed 28 years later, in 2025-26; --cutoff dates are given in the file's own
calendar); --column FIELD=COLUMN / --constant FIELD=VALUE map any other log.  Labels are the
feature spec's [label] (default: churned = no purchase within 90 days, rows for customers
active within 90 days before a cutoff); --target-event, --horizon-days and
--lookback-days override its parts.  Without --cutoff, the latest date whose horizon fits
in the history is used, plus --cutoffs - 1 earlier ones, one horizon apart.  A cutoff DATE
is 00:00 UTC of that day; events stamped exactly then count as history.

Customer table (--table): one row per customer, label in --label-column.  The model reads the
table's columns, not the feature spec, so the worker will not serve it.

Evaluation is honest: no customer is in both the training and the test rows, and with two
or more cutoffs every row of the latest cutoff is an out-of-time test set.  Scores are
calibrated (--calibration) on the out-of-fold cross-validation scores of the training
part, and the decision threshold (--threshold auto, the default) is chosen there for
--threshold-objective, never on a test set.  The report sets the model beside two
baselines: always the majority class, and (event logs) days since the last target event.
"""

TELCO_NOTE = "Note: IBM describes the Telco company of this sample data as fictional."


# --- library ------------------------------------------------------------------------------


def auto_cutoffs(
    event_time_ms: np.ndarray, horizon_ms: int, count: int = 1, *, calendar_shift_ms: int = 0
) -> list[int]:
    """The latest midnight (UTC) whose horizon fits in the history, and earlier ones.

    Earlier cutoffs step back one horizon each, so their label windows do not overlap;
    those at or before the first event (nobody could be active yet) are left out.
    ``calendar_shift_ms`` only changes how dates read in error messages (see
    :func:`train_on_events`).
    """
    if count < 1:
        raise UsageError(f"--cutoffs must be at least 1, got {count}")
    start, end = int(np.min(event_time_ms)), int(np.max(event_time_ms))
    latest = (end - horizon_ms) // DAY_MS * DAY_MS
    cutoffs = [latest - i * horizon_ms for i in range(count)]
    kept = sorted(c for c in cutoffs if c > start)
    if not kept:
        raise UsageError(
            f"the history ({_day(start, calendar_shift_ms)} .. {_day(end, calendar_shift_ms)}) "
            f"is shorter than the "
            f"{horizon_ms // DAY_MS}-day horizon: no cutoff has a complete label window"
        )
    return kept


def train_on_events(
    events: pd.DataFrame,
    spec: FeatureSpec,
    *,
    cutoffs_ms: Sequence[int] | None = None,
    n_cutoffs: int = 1,
    horizon_days: int | None = None,
    target_event: str | None = None,
    lookback_days: int | None = None,
    calendar_shift_ms: int = 0,
    **train_kwargs: Any,
) -> TrainResult:
    """Point-in-time training set from an event table, then :func:`train_model`.

    ``events`` has the event-field columns with ``event_time`` in epoch millis (what
    ``replay.load_events`` and ``simulate.generate_history`` return).  ``cutoffs_ms=None``
    picks them with :func:`auto_cutoffs`.  The model's features are ``spec.feature_names``
    in spec order, which is what the worker feeds it.  ``train_kwargs`` go to
    :func:`train_model` (``n_estimators``, ``cv_folds``, ``threshold``, ``progress``...).
    Raises :class:`UsageError` (a ``ValueError``) for inputs that cannot give labels.

    The label is the spec's (``core.labels.label_definition``: its ``[label]`` table, or
    no purchase within 90 days); ``horizon_days``, ``target_event`` and ``lookback_days``
    override its parts when given.

    ``calendar_shift_ms`` is how far a loader moved the times (``CDNOW_MAPPING`` moves
    1997 to 2025): dates in messages and in ``result.dataset`` are shifted back by it, so
    they read as in the source file.  ``cutoffs_ms`` are in the shifted (loaded) time.
    """
    missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise UsageError(f"events lack column(s) {missing}")
    if events.empty:
        raise UsageError("no events")
    churn = _churn_definition(spec, horizon_days, target_event, lookback_days)
    target_event = churn.target_event
    if not (events["event_type"] == target_event).any():
        raise UsageError(
            f"no {target_event!r} events in the history: every customer would be labelled "
            f"{churn.label_of(False)}"
        )
    times = events["event_time"].to_numpy(dtype=np.int64)
    horizon_days = max(1, churn.horizon_ms // DAY_MS)
    if cutoffs_ms is None:
        cutoffs = auto_cutoffs(
            times, churn.horizon_ms, n_cutoffs, calendar_shift_ms=calendar_shift_ms
        )
    else:
        cutoffs = sorted({int(c) for c in cutoffs_ms})
        _check_cutoffs(cutoffs, times, churn.horizon_ms, calendar_shift_ms)

    X, y, keys = training_set(events, spec, cutoffs, churn)
    X = X[spec.feature_names]
    by_cutoff = y.groupby(keys["cutoff_ms"].to_numpy()).agg(["size", "mean"])
    if y.nunique() < 2:
        raise UsageError(
            f"every one of the {len(y)} rows is labelled {'churned' if y.iloc[0] else 'retained'}"
            ": nothing to learn; try another horizon, cutoff or target event"
        )
    result = train_model(
        X,
        y,
        spec.numeric_features,
        spec.categorical_features,
        groups=keys["customer_id"].astype(str),
        times=keys["cutoff_ms"],
        recency=recency_days(events, keys, target_event),
        **train_kwargs,
    )
    # Customers the model never saw: their scores after the cutoff are what live scores
    # look like (module docstring of ``serving_reference_profile``).
    fitted = np.zeros(len(keys), dtype=bool)
    fitted[result.train_rows] = True
    unseen = set(keys.loc[~fitted, "customer_id"].astype(str)) - set(
        keys.loc[fitted, "customer_id"].astype(str)
    )
    try:
        result.reference_profile = serving_reference_profile(
            events,
            spec,
            result.pipeline,
            # The latest days of the history: closest to what will be served (features age
            # with the population); never before the last cutoff (rows the model was fit on).
            start_ms=max(max(cutoffs), int(times.max()) - min(horizon_days, 30) * DAY_MS),
            days=min(horizon_days, 30),
            score_customers=unseen or None,
            profiled=[*result.used_numeric, *result.used_categorical],
        )
    except NoReferenceEvents as error:
        raise UsageError(str(error)) from None

    def day(ms: int) -> str:
        return _day(ms, calendar_shift_ms)

    result.dataset = _jsonable(
        {
            "source": "events",
            "n_events": len(events),
            "n_rows": len(X),
            "n_customers": int(keys["customer_id"].nunique()),
            "history": [day(int(times.min())), day(int(times.max()))],
            "cutoffs": [day(c) for c in cutoffs],
            "cutoffs_ms": cutoffs,
            "rows_by_cutoff": {day(int(c)): int(r["size"]) for c, r in by_cutoff.iterrows()},
            "churn_rate_by_cutoff": {
                day(int(c)): float(r["mean"]) for c, r in by_cutoff.iterrows()
            },
            "churn_rate": float(y.mean()),
            "churn_definition": {
                "name": churn.name,
                "kind": churn.kind,
                "target_event": target_event,
                "horizon_days": churn.horizon_ms / DAY_MS,
                "lookback_days": churn.lookback_ms / DAY_MS,
            },
            "spec_digest": spec.digest,
            "calendar_shift_days": calendar_shift_ms // DAY_MS,
        }
    )
    return result


def _churn_definition(
    spec: FeatureSpec,
    horizon_days: int | None,
    target_event: str | None,
    lookback_days: int | None,
) -> ChurnDefinition:
    """The spec's label, with the parts given as arguments (the train flags) replaced."""
    if target_event is not None and target_event not in EVENT_TYPES:
        raise UsageError(f"unknown target event {target_event!r}; known: {', '.join(EVENT_TYPES)}")
    if (horizon_days is not None and horizon_days <= 0) or (
        lookback_days is not None and lookback_days <= 0
    ):
        raise UsageError("horizon and lookback must be positive numbers of days")
    churn = label_definition(spec)  # label: spec
    overrides: dict[str, Any] = {}
    if horizon_days is not None:
        overrides["horizon_ms"] = int(horizon_days) * DAY_MS
    if target_event is not None:
        overrides["target_event"] = target_event
    if lookback_days is not None:
        overrides["lookback_ms"] = int(lookback_days) * DAY_MS
    return dataclasses.replace(churn, **overrides)


def register(
    result: TrainResult,
    registry: ModelRegistry | str | Path,
    name: str,
    spec: FeatureSpec | None,
    *,
    stage: str | None = "champion",
    stage_reason: str = "trained by hand (driftline train)",
    lineage: dict[str, Any] | None = None,
    trained_by: str = "driftline train",
) -> ModelVersion:
    """Save the fitted pipeline with everything the worker and the drift monitor check.

    With a ``spec``, the model must read exactly its features in its order (the worker
    builds its frames that way) and records the spec digest; ``None`` is for table models,
    which no spec describes.  ``stage`` defaults to ``champion``: a human training by hand
    is deploying on purpose (``driftline train --stage candidate`` registers without
    serving it; ``driftline retrain`` registers candidates and promotes by its policy).
    """
    if spec is not None and result.feature_names != spec.feature_names:
        raise ValueError(
            "the model's features are not the spec's (in order): "
            f"{result.feature_names} vs {spec.feature_names}"
        )
    if not isinstance(registry, ModelRegistry):
        registry = ModelRegistry(registry)
    dataset = result.dataset or {}
    window = dataset.get("history")
    return registry.save(
        name,
        result.pipeline,
        feature_names=result.feature_names,
        feature_types=result.feature_types,
        spec_digest=spec.digest if spec is not None else None,
        metrics=result.metrics,
        data_hash=result.data_hash,
        reference_profile=result.reference_profile,
        threshold=result.threshold,
        extra={
            "trained_by": trained_by,
            "dataset": _jsonable(result.dataset),
            "dropped_features": list(result.dropped_features),
        },
        files={EVALUATION_FILE: to_bytes(result.evaluation)} if result.evaluation else None,
        lineage=_jsonable(
            {
                "parent_version": None,
                "incident_id": None,
                "training_window": window,
                "cutoffs_ms": dataset.get("cutoffs_ms"),
                "trained_by": trained_by,
                **(lineage or {}),
            }
        ),
        stage=stage,
        stage_reason=stage_reason,
    )


# --- CLI -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    check_mlflow(args)  # before training: a missing extra costs one line, not a run
    try:
        result, spec = _train(args)
        version = register(
            result,
            args.registry,
            args.model_name,
            spec,
            stage=args.stage if spec is not None else "candidate",
        )
    except (UsageError, FileNotFoundError, ValueError) as error:
        print(f"driftline train: error: {error}", file=sys.stderr)
        return 2
    tracked = None
    if args.mlflow is not None:
        params = {"feature_spec": args.features or "default", "source": result.dataset.get("path")}
        registry = ModelRegistry(args.registry)
        tracked = log_to_mlflow(args, registry, version.name, version.version, params=params)
    if args.json:
        payload = {
            **result.metrics,
            "dataset": result.dataset,
            "model": {
                "registry": str(Path(args.registry)),
                "name": version.name,
                "version": version.version,
                "path": str(version.path),
                "sha256": version.sha256,
                "stage": args.stage if spec is not None else "candidate",
            },
            **({"mlflow": tracked} if tracked is not None else {}),
        }
        print(json.dumps(_jsonable(payload), indent=2, allow_nan=False))
    else:
        print(dataset_summary(result.dataset))
        print()
        print(result.report)
        print()
        stage = args.stage if spec is not None else "candidate"
        print(f"Registered {version.name} {version.version} ({stage}) at {version.path}")
        print(f"  sha256 {version.sha256}")
        if spec is not None:
            print(f"  feature spec {spec.digest[:12]} ({len(spec.feature_names)} features)")
        else:
            print("  no feature spec: a table model, not servable by the worker")
        if tracked is not None:
            print(f"  MLflow run {tracked['run_id']} in {tracked['tracking_uri']}")
    return 0


def _train(args: argparse.Namespace) -> tuple[TrainResult, FeatureSpec | None]:
    train_kwargs: dict[str, Any] = {
        "class_weight_balanced": args.balanced,
        "grid_search": args.grid_search,
        "n_estimators": args.n_estimators,
        "test_size": args.test_size,
        "cv_folds": args.cv_folds,
        "seed": args.seed,
        "progress": not args.no_progress,
        "threshold": args.threshold,
        "threshold_objective": args.threshold_objective,
        "calibration": args.calibration,
    }
    if args.n_estimators < 1:
        raise UsageError("--n-estimators must be at least 1")
    if args.table is not None:
        if args.mapping is not None or args.column or args.constant or args.time_format:
            raise UsageError("the mapping flags apply to --events, not --table")
        table = read_table(args.table)
        if args.label_column not in table.columns:
            raise UsageError(
                f"{args.table}: no label column {args.label_column!r} "
                f"(columns: {list(table.columns)})"
            )
        positive = _positive_label(table[args.label_column], args.positive_label)
        labels = table[args.label_column]
        if labels.isna().any():
            raise UsageError(f"{int(labels.isna().sum())} rows have no {args.label_column!r} label")
        if labels.nunique() < 2:
            raise UsageError(
                f"label column {args.label_column!r} has a single value "
                f"{labels.iloc[0]!r}: nothing to learn"
            )
        if positive is None:
            positive = infer_positive_label(labels)
        result = train_from_table(table, args.label_column, positive, **train_kwargs)
        result.dataset = _jsonable(
            {
                "source": "table",
                "path": str(args.table),
                "n_rows": len(table),
                "n_customers": len(table),
                "label_column": args.label_column,
                "positive_label": str(positive),
                "churn_rate": float((labels == positive).mean()),
                **({"note": TELCO_NOTE} if _looks_like_telco(args.table, table) else {}),
            }
        )
        return result, None

    spec = load_spec(args.features) if args.features else load_default_spec()
    events, shift_ms = read_event_file(args.events, args)
    cutoffs = (
        [parse_cutoff(text) + shift_ms for text in args.cutoff] if args.cutoff is not None else None
    )
    result = train_on_events(
        events,
        spec,
        cutoffs_ms=cutoffs,
        n_cutoffs=args.cutoffs,
        horizon_days=args.horizon_days,
        target_event=args.target_event,
        lookback_days=args.lookback_days,
        calendar_shift_ms=shift_ms,
        **train_kwargs,
    )
    result.dataset["path"] = str(args.events)
    result.dataset["mapping"] = (
        None if mapping_kind(args) == "events" else (args.mapping or "custom")
    )
    return result, spec


def _check_cutoffs(cutoffs: list[int], times: np.ndarray, horizon_ms: int, shift_ms: int) -> None:
    """Refuse cutoffs whose labels are unknown (horizon past the end) or empty (too early)."""
    start, end = int(times.min()), int(times.max())
    latest = (end - horizon_ms) // DAY_MS * DAY_MS
    for cutoff in cutoffs:
        if cutoff + horizon_ms > end:
            raise UsageError(
                f"cutoff {_day(cutoff, shift_ms)} + {horizon_ms // DAY_MS}-day horizon runs "
                f"past the end of the history ({_day(end, shift_ms)}): labels would be "
                f"unknown; the latest usable cutoff is {_day(latest, shift_ms)}"
            )
        if cutoff <= start:
            raise UsageError(
                f"cutoff {_day(cutoff, shift_ms)} is not after the first event "
                f"({_day(start, shift_ms)}): nobody is a customer yet"
            )


def _positive_label(labels: pd.Series, text: str | None) -> object:
    """The label value the user meant: ``"1"`` on the command line matches an int 1 column."""
    if text is None:
        return None
    values = pd.unique(labels.dropna()).tolist()
    for value in values:
        if str(value).strip() == text.strip():
            return value
    raise UsageError(
        f"--positive-label {text!r} never occurs in the label column; values: {values}"
    )


def _looks_like_telco(path: str | Path, table: pd.DataFrame) -> bool:
    ibm_columns = {"customerID", "Contract", "MonthlyCharges", "TotalCharges", "Churn"}
    return "telco" in Path(path).name.lower() or ibm_columns <= set(table.columns)


def _day(ms: int, shift_ms: int = 0) -> str:
    """Epoch millis (minus ``shift_ms``) as a UTC date, or a datetime when not midnight."""
    ms = int(ms) - shift_ms
    stamp = pd.Timestamp(ms, unit="ms", tz="UTC")
    return str(stamp.strftime("%Y-%m-%d" if ms % DAY_MS == 0 else "%Y-%m-%dT%H:%M:%SZ"))
