"""Offline training: the classic tabular workflow, as a library the CLI (and tests) call.

Why each step is there:

* **an honest split** (:mod:`driftline.model.splits`) — by customer (no customer on both
  sides: a customer labelled at several cutoffs would otherwise be partly memorized), plus
  an out-of-time test set, every row of the latest cutoff, held out of everything.
* **one Pipeline** (preprocessing + forest + calibration) — the worker loads *one* object
  and calls ``predict_proba`` on raw feature frames; imputation, scaling, one-hot encoding
  and the calibration map travel with the model, so serving cannot apply a different
  transformation than training did.
* **features that cannot inform** (constant, or entirely missing, in the training part)
  are named in a warning and left out of the model and of the drift reference.  The model
  still takes every spec feature as input (the worker feeds them all); it ignores those.
* **cross-validation on the training part, grouped by customer** — the spread across
  folds says how much to trust the test figures, and the out-of-fold scores are the
  validation data: they fit the calibration (:mod:`driftline.model.calibration`) and
  choose the decision threshold for a stated objective (never on a test set).
* **baselines** — an ROC AUC of 0.8 means little on its own: the report shows what
  "always the majority class" and, for event logs, "days since the last purchase" alone
  score on the same rows, and says so when a baseline does as well as the model.
* **reference profile on the held-out rows** — the drift monitor compares live data with
  it; held-out scores are used because a forest's scores on its own training rows are
  overconfident.

The two small casting steps at the head of each column branch (:func:`as_float`,
:func:`as_category_strings`) are there because scikit-learn's imputers do not treat
``None`` as missing and refuse a string fill value on an all-NaN (float) column — both happen
in practice (the worker's state holds ``None`` for an unseen category; a category never
observed in a training window is all-missing).  They are module-level functions so the
pipeline pickles; their import path is therefore part of the saved-model format.

The metrics, the baseline comparison and the printed report are in
:mod:`driftline.model.evaluation`; training on a plain customer table in
:mod:`driftline.model.tables`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from driftline.model.calibration import CalibratedPipeline, fit_calibrator, resolve_method
from driftline.model.evaluation import (
    THRESHOLD_OBJECTIVES,
    baseline_verdicts,
    choose_threshold,
    evaluate,
    expected_calibration_error,
    objective_text,
    report_text,
    top_importances,
)
from driftline.model.evaluation_arrays import feature_arrays, scored_arrays
from driftline.model.fitting import cross_validate_oof, fit_with_progress, search_grid
from driftline.model.fitting import positive_scores as positive_scores  # callers import it here
from driftline.model.profile import build_reference_profile
from driftline.model.splits import grouped_folds, honest_split

log = logging.getLogger(__name__)

#: ``threshold=AUTO_THRESHOLD`` picks the threshold best for the objective (max F1 by
#: default) on the calibrated out-of-fold scores of the training part (never on a test
#: set, whose numbers would then be optimistic).  The default: 0.5 is right for no
#: particular model, and with a 77 % churn rate it is wrong for most.
AUTO_THRESHOLD = "auto"
DEFAULT_THRESHOLD: float | str = AUTO_THRESHOLD
TOP_IMPORTANCES = 20


# --- pipeline ---------------------------------------------------------------------------


def as_float(frame: pd.DataFrame) -> pd.DataFrame:
    """Numeric columns as float64; unparseable values, ``None`` and ``pd.NA`` become NaN."""
    frame = pd.DataFrame(frame)
    return frame.apply(lambda col: pd.to_numeric(col, errors="coerce")).astype(np.float64)


def as_category_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as object dtype holding ``str`` values or ``np.nan``.

    Missing (``None``, NaN, ``pd.NA``) becomes ``np.nan`` so that the imputer sees it; every
    other value becomes its string form, so ``1`` and ``"1"`` are the same category online
    and offline.
    """
    frame = pd.DataFrame(frame)
    columns: dict[str, np.ndarray] = {}
    for name in frame.columns:  # per column, vectorized: this runs on every scored batch
        column = frame[name]
        values = column.astype(object).astype(str).to_numpy(dtype=object)
        values[column.isna().to_numpy()] = np.nan
        columns[name] = values
    return pd.DataFrame(columns, index=frame.index, columns=frame.columns, dtype=object)


def build_pipeline(
    numeric: Sequence[str],
    categorical: Sequence[str],
    *,
    class_weight_balanced: bool = False,
    n_estimators: int = 100,
    seed: int = 42,
) -> CalibratedPipeline:
    """Preprocessing + random forest as one estimator (unfitted, not yet calibrated).

    The forest uses ``n_jobs=1``: the worker runs one process per core, so parallelism comes
    from processes, not from threads inside one prediction call.
    """
    branches: list[tuple[str, Pipeline, list[str]]] = []
    if numeric:
        numeric_branch = Pipeline(
            [
                ("cast", FunctionTransformer(as_float, feature_names_out="one-to-one")),
                (
                    "impute",
                    # keep_empty_features (both branches): an all-missing column stays a
                    # (constant) column instead of silently narrowing the feature matrix.
                    SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                ),
                ("scale", StandardScaler()),
            ]
        )
        branches.append(("num", numeric_branch, list(numeric)))
    if categorical:
        categorical_branch = Pipeline(
            [
                ("cast", FunctionTransformer(as_category_strings, feature_names_out="one-to-one")),
                (
                    "impute",
                    SimpleImputer(
                        strategy="constant", fill_value="missing", keep_empty_features=True
                    ),
                ),
                ("onehot", OneHotEncoder(handle_unknown="ignore")),
            ]
        )
        branches.append(("cat", categorical_branch, list(categorical)))
    model = RandomForestClassifier(
        n_estimators=n_estimators,
        class_weight="balanced" if class_weight_balanced else None,
        n_jobs=1,
        random_state=seed,
    )
    # Input columns not in a branch (features left out) are dropped: the model still takes
    # them, as the worker sends every spec feature, and reads nothing from them.
    return CalibratedPipeline(
        [("features", ColumnTransformer(branches, remainder="drop")), ("model", model)]
    )


# --- results ------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """Everything the CLI needs to register a model and print what it is worth."""

    pipeline: CalibratedPipeline
    #: JSON-serializable: split sizes, parameters, CV, grid search, test and baseline metrics.
    metrics: dict[str, Any]
    #: Human-readable multi-line summary, model vs baseline.
    report: str
    #: Top feature importances, ``[{"feature": "num__tenure", "importance": 0.18}, ...]``.
    importances: list[dict[str, Any]]
    #: Positive-class scores of the held-out rows (the reference for score drift).
    test_scores: np.ndarray
    X_test: pd.DataFrame
    y_test: pd.Series
    numeric: list[str]
    categorical: list[str]
    #: The model's input columns, in order (what the worker must feed it).
    feature_names: list[str]
    #: :func:`driftline.model.profile.build_reference_profile` of the held-out rows.
    reference_profile: dict[str, Any]
    #: :func:`dataset_hash` of the full training table (features and labels).
    data_hash: str
    threshold: float = 0.5
    #: Row positions the model was fitted on (everything else was held out).
    train_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.intp))
    #: Features left out of the model (constant or entirely missing in the training part).
    dropped_features: list[str] = field(default_factory=list)
    #: Where the rows came from (source, cutoffs, churn definition...): filled by callers
    #: that build the table (``driftline train``), stored with the model as provenance.
    dataset: dict[str, Any] = field(default_factory=dict)
    #: Held-out labels, scores and feature samples for ``driftline report model``
    #: (:mod:`driftline.model.evaluation_arrays`), saved beside the model.
    evaluation: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def used_numeric(self) -> list[str]:
        return [c for c in self.numeric if c not in self.dropped_features]

    @property
    def used_categorical(self) -> list[str]:
        return [c for c in self.categorical if c not in self.dropped_features]

    @property
    def feature_types(self) -> dict[str, str]:
        """``{"feature": "numeric" | "categorical"}`` in feature order, as the registry wants."""
        cats = set(self.categorical)
        return {n: "categorical" if n in cats else "numeric" for n in self.feature_names}


# --- training -----------------------------------------------------------------------------


def train_model(
    X: pd.DataFrame,
    y: pd.Series,
    numeric: list[str],
    categorical: list[str],
    *,
    groups: pd.Series | Sequence[Any] | None = None,
    times: pd.Series | Sequence[int] | None = None,
    recency: pd.Series | Sequence[float] | None = None,
    class_weight_balanced: bool = False,
    grid_search: bool = False,
    n_estimators: int = 100,
    test_size: float = 0.2,
    cv_folds: int = 5,
    seed: int = 42,
    progress: bool = True,
    threshold: float | str = DEFAULT_THRESHOLD,
    threshold_objective: str = "f1",
    calibration: str = "auto",
) -> TrainResult:
    """Split honestly, cross-validate (or grid-search), calibrate, choose the threshold, fit,
    evaluate against the baselines, profile.

    ``X`` must hold exactly the ``numeric`` and ``categorical`` columns (any order); the
    model's input columns are ``X``'s, in order (what the worker feeds it), though features
    constant or entirely missing in the training part are left out of the model itself.
    ``y`` is binary: bool, or 0/1.  ``groups`` (customer id per row) keep each customer on
    one side of every split; ``times`` (the row's cutoff) with two or more values hold out
    the latest cutoff as an out-of-time test (:mod:`driftline.model.splits`).  ``recency``
    (days since the customer's last target event, per row) is the one-feature baseline.
    ``threshold`` is ``"auto"`` (best ``threshold_objective`` on the calibrated
    out-of-fold scores of the training part) or a fixed number; ``calibration`` is
    ``auto``, ``isotonic``, ``sigmoid`` or ``none`` (:mod:`driftline.model.calibration`).
    """
    numeric, categorical = list(numeric), list(categorical)
    feature_names = _check_features(X, numeric, categorical)
    X = X.reset_index(drop=True)
    y = _binary_target(y, len(X))
    groups_s = _aligned(groups, len(X), "groups")
    times_s = _aligned(times, len(X), "times")
    recency_s = _aligned(recency, len(X), "recency")
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be within (0, 1), got {test_size}")
    if cv_folds < 2:
        raise ValueError(f"cv_folds must be at least 2, got {cv_folds}")
    if threshold_objective not in THRESHOLD_OBJECTIVES:
        raise ValueError(f"threshold_objective must be one of {THRESHOLD_OBJECTIVES}")
    auto_threshold = threshold == AUTO_THRESHOLD
    if not auto_threshold:
        if isinstance(threshold, str):
            raise ValueError(f"threshold must be a number or {AUTO_THRESHOLD!r}, got {threshold!r}")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")

    split = honest_split(y, groups_s, times_s, test_size=test_size, seed=seed)
    X_train, y_train = X.iloc[split.train], y.iloc[split.train]
    X_test, y_test = X.iloc[split.test], y.iloc[split.test]
    train_groups = None if groups_s is None else groups_s.iloc[split.train]
    dropped = unusable_features(X_train, feature_names)
    if dropped:
        log.warning(
            "%d feature(s) constant or entirely missing in the training part, left out of "
            "the model and the drift reference: %s",
            len(dropped),
            ", ".join(f"{d['feature']} ({d['reason']})" for d in dropped),
        )
    unused = {d["feature"] for d in dropped}
    used_numeric = [c for c in numeric if c not in unused]
    used_categorical = [c for c in categorical if c not in unused]
    if not used_numeric and not used_categorical:
        raise ValueError("every feature is constant or entirely missing in the training part")
    pipeline = build_pipeline(
        used_numeric,
        used_categorical,
        class_weight_balanced=class_weight_balanced,
        n_estimators=n_estimators,
        seed=seed,
    )
    folds = grouped_folds(train_groups, cv_folds, seed)

    grid_summary = (
        search_grid(pipeline, X_train, y_train, folds, train_groups, progress=progress)
        if grid_search
        else None
    )
    # The out-of-fold scores are the validation data: each row scored by a fold model that
    # did not see its customer.  They fit the calibration and choose the threshold.
    cv_scores, oof_raw = cross_validate_oof(
        pipeline, X_train, y_train, folds, progress=progress, groups=train_groups
    )
    y_train_np = y_train.to_numpy()
    method = resolve_method(calibration, len(y_train))
    calibrator = None if method == "none" else fit_calibrator(y_train_np, oof_raw, method)
    oof = oof_raw if calibrator is None else calibrator(oof_raw)
    if auto_threshold:
        chosen = choose_threshold(y_train_np, oof, threshold_objective)
        threshold_info = {
            "value": chosen,
            "objective": threshold_objective,
            "method": f"{objective_text(threshold_objective)} on the "
            f"{'' if calibrator is None else 'calibrated '}out-of-fold scores of the "
            "training part",
        }
    else:
        chosen = float(threshold)
        threshold_info = {"value": chosen, "objective": None, "method": "fixed"}

    fit_with_progress(pipeline, X_train, y_train, progress=progress)
    pipeline.calibrator_ = calibrator
    majority = DummyClassifier(strategy="most_frequent").fit(X_train, y_train)
    recency_threshold = (
        None
        if recency_s is None
        else choose_threshold(
            y_train_np, _recency_scores(recency_s.iloc[split.train]), threshold_objective
        )
    )
    prior = float(y_train.mean())

    def judge(rows: np.ndarray) -> tuple[dict[str, Any], dict[str, Any], str]:
        X_part, y_part = X.iloc[rows], y.iloc[rows]
        raw = positive_scores(pipeline[-1], pipeline[:-1].transform(X_part))
        scores = raw if calibrator is None else calibrator(raw)  # = pipeline.predict_proba
        model_metrics, text = evaluate(y_part, scores, chosen)
        y_np = y_part.to_numpy()
        model_metrics["brier_uncalibrated"] = float(np.mean((raw - y_np) ** 2))
        model_metrics["calibration_error_uncalibrated"] = expected_calibration_error(y_np, raw)
        model_metrics["roc_auc_uncalibrated"] = (
            float(roc_auc_score(y_np, raw)) if len(np.unique(y_np)) == 2 else None
        )
        base: dict[str, Any] = {
            "majority": {
                "strategy": "most_frequent",
                **evaluate(y_part, positive_scores(majority, X_part), chosen)[0],
            },
            "recency": None,
            "prior_brier": float(np.mean((y_part.to_numpy() - prior) ** 2)),
        }
        if recency_s is not None and recency_threshold is not None:
            base["recency"] = evaluate(
                y_part,
                _recency_scores(recency_s.iloc[rows]),
                recency_threshold,
                probabilities=False,
            )[0]
        return model_metrics, base, text

    model_metrics, test_baselines, model_text = judge(split.test)
    oot_metrics, oot_baselines = (None, None)
    if split.oot.size:
        oot_metrics, oot_baselines, _ = judge(split.oot)
    verdicts = baseline_verdicts("Test", model_metrics, _comparable(test_baselines))
    if oot_metrics is not None and oot_baselines is not None:
        verdicts += baseline_verdicts("Out-of-time", oot_metrics, _comparable(oot_baselines))
    test_scores = positive_scores(pipeline, X_test)

    importances = top_importances(pipeline, TOP_IMPORTANCES)
    forest: RandomForestClassifier = pipeline[-1]
    metrics = _jsonable(
        {
            "n_rows": len(X),
            "n_train": len(split.train),
            "n_test": len(split.test),
            "n_out_of_time": len(split.oot),
            "n_features": len(feature_names),
            "n_features_used": len(used_numeric) + len(used_categorical),
            "dropped_features": dropped,
            "positive_rate_train": float(y_train.mean()),
            "positive_rate_test": float(y_test.mean()),
            "split": {
                "method": split.method,
                "by_customer": groups_s is not None,
                "out_of_time_cutoff_ms": split.oot_cutoff,
            },
            "params": {
                "n_estimators": forest.n_estimators,
                "class_weight": forest.class_weight,
                "max_depth": forest.max_depth,
                "min_samples_leaf": forest.min_samples_leaf,
                "seed": seed,
                "test_size": test_size,
            },
            "cv": {
                "folds": cv_folds,
                "grouping": "grouped by customer" if train_groups is not None else "stratified",
                "roc_auc_mean": float(np.mean(cv_scores)),
                "roc_auc_std": float(np.std(cv_scores)),
                "roc_auc_folds": [float(s) for s in cv_scores],
            },
            "grid_search": grid_summary,
            "calibration": {
                **({"method": "none"} if calibrator is None else calibrator.describe()),
                "fitted_on": f"out-of-fold scores of the {len(y_train)} training rows",
            },
            "threshold": threshold_info,
            "test": model_metrics,
            "baseline": test_baselines["majority"],
            "out_of_time": oot_metrics,
            "baselines": {"test": test_baselines, "out_of_time": oot_baselines},
            "verdicts": verdicts,
            "top_importances": importances,
        }
    )
    profile = build_reference_profile(X_test, test_scores, used_numeric, used_categorical)
    report = report_text(metrics, model_text, importances)
    evaluation = _evaluation_arrays(
        X,
        y,
        split.test,
        split.oot,
        split.train,
        test_scores,
        pipeline,
        recency_s,
        used_numeric,
        used_categorical,
    )
    return TrainResult(
        pipeline=pipeline,
        metrics=metrics,
        report=report,
        importances=importances,
        test_scores=test_scores,
        X_test=X_test,
        y_test=y_test,
        numeric=numeric,
        categorical=categorical,
        feature_names=feature_names,
        reference_profile=profile,
        data_hash=dataset_hash(X, y),
        threshold=chosen,
        train_rows=split.train,
        dropped_features=sorted(unused, key=feature_names.index),
        evaluation=evaluation,
    )


# --- helpers --------------------------------------------------------------------------------


def dataset_hash(X: pd.DataFrame, y: pd.Series | None = None) -> str:
    """sha256 over column names, dtypes and cell values (row order matters, index doesn't).

    Recorded with a model so that "which data was this trained on" has an answer that two
    runs on the same table agree on.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps([[str(c), str(t)] for c, t in X.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(X, index=False).to_numpy().tobytes())
    if y is not None:
        digest.update(pd.util.hash_pandas_object(pd.Series(y), index=False).to_numpy().tobytes())
    return digest.hexdigest()


def unusable_features(X: pd.DataFrame, names: Sequence[str]) -> list[dict[str, str]]:
    """Features that cannot inform a model trained on ``X``: entirely missing, or one value
    on every row (missing counts as a value: a column that is sometimes missing still
    says something through its missing indicator)."""
    out = []
    for name in names:
        column = X[name]
        if column.isna().all():
            out.append({"feature": str(name), "reason": "entirely missing"})
        elif column.nunique(dropna=False) <= 1:
            value = column.iloc[0]
            value = value.item() if isinstance(value, np.generic) else value
            out.append({"feature": str(name), "reason": f"constant {value!r}"})
    return out


def _aligned(values: Any, n_rows: int, what: str) -> pd.Series | None:
    if values is None:
        return None
    series = pd.Series(values).reset_index(drop=True)
    if len(series) != n_rows:
        raise ValueError(f"{what} has {len(series)} rows, X has {n_rows}")
    return series


def _recency_scores(recency: pd.Series) -> np.ndarray:
    """Days since the last target event as a churn score (higher: likelier gone); a customer
    with none yet ranks above everyone."""
    values = pd.to_numeric(recency, errors="coerce").to_numpy(dtype=np.float64)
    observed = values[~np.isnan(values)]
    ceiling = (float(observed.max()) if observed.size else 0.0) + 1.0
    return np.where(np.isnan(values), ceiling, values)


def _evaluation_arrays(
    X: pd.DataFrame,
    y: pd.Series,
    test: np.ndarray,
    oot: np.ndarray,
    train: np.ndarray,
    test_scores: np.ndarray,
    pipeline: CalibratedPipeline,
    recency: pd.Series | None,
    numeric: list[str],
    categorical: list[str],
) -> dict[str, np.ndarray]:
    """What ``driftline report model`` draws: held-out labels and scores (model and recency
    baseline), and samples of each used feature in the training and test parts."""

    def recency_of(rows: np.ndarray) -> np.ndarray | None:
        return None if recency is None else _recency_scores(recency.iloc[rows])

    arrays = scored_arrays("test", y.iloc[test], test_scores, recency_of(test))
    if oot.size:
        oot_scores = positive_scores(pipeline, X.iloc[oot])
        arrays.update(scored_arrays("oot", y.iloc[oot], oot_scores, recency_of(oot)))
    arrays.update(feature_arrays("train", X.iloc[train], numeric, categorical))
    arrays.update(feature_arrays("test", X.iloc[test], numeric, categorical))
    return arrays


def _comparable(baselines: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    return {"majority": baselines["majority"], "recency": baselines["recency"]}


def _check_features(X: pd.DataFrame, numeric: list[str], categorical: list[str]) -> list[str]:
    both = set(numeric) & set(categorical)
    if both:
        raise ValueError(f"columns listed as both numeric and categorical: {sorted(both)}")
    listed = [*numeric, *categorical]
    if len(set(listed)) != len(listed):
        raise ValueError("a column is listed twice")
    if len(set(X.columns)) != len(X.columns):
        raise ValueError("X has duplicate column names")
    missing = [c for c in listed if c not in X.columns]
    if missing:
        raise ValueError(f"columns not in X: {missing}")
    unlisted = [str(c) for c in X.columns if c not in set(listed)]
    if unlisted:
        raise ValueError(f"X columns neither numeric nor categorical: {unlisted} (drop them)")
    if not listed:
        raise ValueError("no feature columns")
    return [str(c) for c in X.columns]


def _binary_target(y: pd.Series, n_rows: int) -> pd.Series:
    y = pd.Series(y).reset_index(drop=True)
    if len(y) != n_rows:
        raise ValueError(f"X has {n_rows} rows but y has {len(y)}")
    if y.isna().any():
        raise ValueError(f"{int(y.isna().sum())} labels are missing")
    values = set(pd.unique(y).tolist())
    if not values <= {0, 1}:  # bools compare equal to 0/1
        raise ValueError(f"y must be 0/1 or bool, got values {sorted(map(str, values))[:10]}")
    if len(values) < 2:
        raise ValueError("y has a single class: nothing to learn")
    return y.astype(np.int64)


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars unwrapped, NaN/inf as None, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
