"""Offline training: the classic tabular workflow, as a library the CLI (and tests) call.

Why each step is there:

* **stratified train/test split** — churn is imbalanced; a plain split can leave the test
  set with a different positive rate and make the metrics noisy.
* **one Pipeline** (preprocessing + forest) — the worker loads *one* object and calls
  ``predict_proba`` on raw feature frames; imputation, scaling and one-hot encoding travel
  with the model, so serving cannot apply a different transformation than training did.
* **cross-validation on the training part** — the spread across folds says how much to
  trust the single test-set number.
* **a majority-class baseline** — an ROC AUC of 0.8 means little on its own; the report
  always shows what "predict nobody churns" scores on the same rows.
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
:mod:`driftline.model.evaluation`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import (
    get_scorer,
)
from sklearn.model_selection import (
    GridSearchCV,
    ParameterGrid,
    StratifiedKFold,
    cross_validate,
    train_test_split,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from tqdm import tqdm

from driftline.model.evaluation import (
    best_f1_threshold,
    evaluate,
    report_text,
    top_importances,
)
from driftline.model.profile import build_reference_profile

log = logging.getLogger(__name__)

#: Decision threshold the test-set precision/recall/F1 are reported at (and the default
#: threshold a freshly trained model is registered with).
DEFAULT_THRESHOLD = 0.5
#: ``threshold=AUTO_THRESHOLD`` picks the threshold maximizing F1 on out-of-fold predictions
#: of the training part (never on the test set, whose numbers would then be optimistic).
AUTO_THRESHOLD = "auto"
#: Small on purpose: 9 candidates x k folds.  Depth and leaf size are what matter most for
#: a forest on a few dozen features; more knobs would mostly buy training time.
PARAM_GRID: dict[str, list[Any]] = {
    "model__max_depth": [None, 8, 16],
    "model__min_samples_leaf": [1, 5, 20],
}
TOP_IMPORTANCES = 20
#: The forest is grown in about this many chunks so that fitting shows progress.
_FIT_CHUNKS = 20
_POSITIVE_WORDS = {"1", "yes", "y", "true", "t", "churn", "churned", "positive"}


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
) -> Pipeline:
    """Preprocessing + random forest as one estimator (unfitted).

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
    return Pipeline([("features", ColumnTransformer(branches)), ("model", model)])


# --- results ------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """Everything the CLI needs to register a model and print what it is worth."""

    pipeline: Pipeline
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
    threshold: float = DEFAULT_THRESHOLD
    #: Where the rows came from (source, cutoffs, churn definition...): filled by callers
    #: that build the table (``driftline train``), stored with the model as provenance.
    dataset: dict[str, Any] = field(default_factory=dict)

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
    class_weight_balanced: bool = False,
    grid_search: bool = False,
    n_estimators: int = 100,
    test_size: float = 0.2,
    cv_folds: int = 5,
    seed: int = 42,
    progress: bool = True,
    threshold: float | str = DEFAULT_THRESHOLD,
) -> TrainResult:
    """Split, cross-validate (or grid-search), fit, evaluate against a baseline, profile.

    ``X`` must hold exactly the ``numeric`` and ``categorical`` columns (any order); the
    model's feature list is ``X``'s column order.  ``y`` is binary: bool, or 0/1.
    ``threshold`` is the decision threshold reported and registered, or ``"auto"``: the one
    maximizing F1 on the out-of-fold cross-validation scores of the training part.
    """
    numeric, categorical = list(numeric), list(categorical)
    feature_names = _check_features(X, numeric, categorical)
    X = X.reset_index(drop=True)
    y = _binary_target(y, len(X))
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be within (0, 1), got {test_size}")
    if cv_folds < 2:
        raise ValueError(f"cv_folds must be at least 2, got {cv_folds}")
    auto_threshold = threshold == AUTO_THRESHOLD
    if not auto_threshold:
        if isinstance(threshold, str):
            raise ValueError(f"threshold must be a number or {AUTO_THRESHOLD!r}, got {threshold!r}")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")

    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, stratify=y, random_state=seed
    )
    pipeline = build_pipeline(
        numeric,
        categorical,
        class_weight_balanced=class_weight_balanced,
        n_estimators=n_estimators,
        seed=seed,
    )
    folds = StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed)

    grid_summary: dict[str, Any] | None = None
    if grid_search:
        n_fits = len(ParameterGrid(PARAM_GRID)) * cv_folds
        with tqdm(total=n_fits, desc="grid search", unit="fit", disable=not progress) as bar:
            search = GridSearchCV(
                pipeline,
                PARAM_GRID,
                scoring=_ProgressScorer(bar),
                cv=folds,
                n_jobs=1,
                refit=False,  # refit below, with a progress bar
            )
            search.fit(X_train, y_train)
        results = search.cv_results_
        best = int(np.argmin(results["rank_test_score"]))
        best_params = dict(results["params"][best])
        cv_scores = np.array([results[f"split{k}_test_score"][best] for k in range(cv_folds)])
        pipeline.set_params(**best_params)
        # The grid search kept no fold predictions: re-run the best candidate's folds.
        oof_scores = (
            _cross_validate(pipeline, X_train, y_train, folds, progress=progress, keep_oof=True)[1]
            if auto_threshold
            else None
        )
        grid_summary = {
            "best_params": {k.removeprefix("model__"): v for k, v in best_params.items()},
            "candidates": [
                {
                    "params": {k.removeprefix("model__"): v for k, v in params.items()},
                    "roc_auc_mean": results["mean_test_score"][i],
                    "roc_auc_std": results["std_test_score"][i],
                }
                for i, params in enumerate(results["params"])
            ],
        }
    else:
        cv_scores, oof_scores = _cross_validate(
            pipeline, X_train, y_train, folds, progress=progress, keep_oof=auto_threshold
        )

    if oof_scores is not None:
        chosen = best_f1_threshold(y_train.to_numpy(), oof_scores)
        threshold_info = {"value": chosen, "method": "max F1 on out-of-fold CV scores (train)"}
    else:
        chosen = float(threshold)
        threshold_info = {"value": chosen, "method": "fixed"}

    _fit_with_progress(pipeline, X_train, y_train, progress=progress)
    test_scores = positive_scores(pipeline, X_test)
    model_metrics, model_text = evaluate(y_test, test_scores, chosen)

    baseline = DummyClassifier(strategy="most_frequent").fit(X_train, y_train)
    baseline_scores = positive_scores(baseline, X_test)
    baseline_metrics, _ = evaluate(y_test, baseline_scores, chosen)

    importances = top_importances(pipeline, TOP_IMPORTANCES)
    forest: RandomForestClassifier = pipeline[-1]
    metrics = _jsonable(
        {
            "n_rows": len(X),
            "n_train": len(X_train),
            "n_test": len(X_test),
            "n_features": len(feature_names),
            "positive_rate_train": float(y_train.mean()),
            "positive_rate_test": float(y_test.mean()),
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
                "roc_auc_mean": float(np.mean(cv_scores)),
                "roc_auc_std": float(np.std(cv_scores)),
                "roc_auc_folds": [float(s) for s in cv_scores],
            },
            "grid_search": grid_summary,
            "threshold": threshold_info,
            "test": model_metrics,
            "baseline": {"strategy": "most_frequent", **baseline_metrics},
            "top_importances": importances,
        }
    )
    profile = build_reference_profile(X_test, test_scores, numeric, categorical)
    report = report_text(metrics, model_text, importances)
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
    )


def train_from_table(
    df: pd.DataFrame,
    label_column: str,
    positive_label: object = None,
    drop_columns: Iterable[str] = ("customerID", "customer_id"),
    **train_kwargs: Any,
) -> TrainResult:
    """Train on a plain customer table: one row per customer, one label column.

    ``positive_label`` defaults to the obvious one for 0/1, bool and yes/no-style labels;
    anything else must be given.  Columns in ``drop_columns`` are dropped when present (ids
    carry no signal and would one-hot into one column per customer).  Column types are
    inferred by :func:`infer_column_types`.  ``train_kwargs`` go to :func:`train_model`.
    """
    if label_column not in df.columns:
        raise ValueError(f"label column {label_column!r} not in the table")
    labels = df[label_column]
    if labels.isna().any():
        raise ValueError(f"{int(labels.isna().sum())} rows have no {label_column!r} label")
    if positive_label is None:
        positive_label = _infer_positive_label(labels)
    elif not (labels == positive_label).any():
        raise ValueError(f"positive_label {positive_label!r} never occurs in {label_column!r}")
    y = pd.Series((labels == positive_label).to_numpy(dtype=np.int64), name=label_column)
    dropped = [c for c in drop_columns if c in df.columns and c != label_column]
    X, numeric, categorical = infer_column_types(df.drop(columns=[label_column, *dropped]))
    return train_model(X, y, numeric, categorical, **train_kwargs)


def infer_column_types(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Split columns into numeric and categorical; returns the coerced frame and both lists.

    Numeric and bool dtypes are numeric.  A text column is numeric when every non-blank
    value parses as a number (Telco's ``TotalCharges`` is text because of 11 blank cells);
    blanks become NaN.  Everything else is categorical, with blank strings as missing.
    """
    out: dict[str, pd.Series] = {}
    numeric: list[str] = []
    categorical: list[str] = []
    for name in df.columns:
        column = df[name]
        if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
            out[name] = column.astype(np.float64)
            numeric.append(name)
            continue
        text = column.astype(object).where(column.notna(), None)
        stripped = text.map(lambda v: v.strip() if isinstance(v, str) else v)
        blank = stripped.isna() | (stripped == "")
        parsed = pd.to_numeric(stripped.where(~blank, None), errors="coerce")
        present = int((~blank).sum())
        if present and int(parsed.notna().sum()) == present:
            out[name] = parsed.astype(np.float64)
            numeric.append(name)
        else:
            out[name] = stripped.where(~blank, None).astype(object)
            categorical.append(name)
            if present > 50 and stripped[~blank].nunique() == present:
                log.warning("column %r has a distinct value on every row (an id?)", name)
    return pd.DataFrame(out, index=df.index), numeric, categorical


# --- helpers --------------------------------------------------------------------------------


def positive_scores(estimator: Any, X: pd.DataFrame) -> np.ndarray:
    """The positive-class column of ``predict_proba`` (class ``1`` / ``True``)."""
    classes = list(estimator.classes_)
    if 1 not in classes:  # True == 1, so this covers bool labels too
        raise ValueError(f"no positive class 1/True among classes {classes}")
    return np.asarray(estimator.predict_proba(X)[:, classes.index(1)], dtype=np.float64)


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


def _cross_validate(
    pipeline: Pipeline,
    X: pd.DataFrame,
    y: pd.Series,
    folds: StratifiedKFold,
    *,
    progress: bool,
    keep_oof: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-fold ROC AUC, and (``keep_oof``) every row's score from the fold that held it out.

    Out-of-fold scores come from the fold models themselves (``return_estimator``), so
    choosing a threshold on them costs predictions, not another round of fits.
    """
    with tqdm(
        total=folds.get_n_splits(), desc="cross-validation", unit="fold", disable=not progress
    ) as bar:
        results = cross_validate(
            pipeline,
            X,
            y,
            cv=folds,
            scoring=_ProgressScorer(bar),
            n_jobs=1,
            return_estimator=keep_oof,
            return_indices=keep_oof,
        )
    scores = np.asarray(results["test_score"], dtype=np.float64)
    if not keep_oof:
        return scores, None
    oof = np.full(len(X), np.nan)
    for estimator, rows in zip(results["estimator"], results["indices"]["test"], strict=True):
        oof[rows] = positive_scores(estimator, X.iloc[rows])
    return scores, oof


class _ProgressScorer:
    """ROC AUC scorer that ticks a progress bar.

    scikit-learn has no per-fit callback, but it calls the scorer exactly once per fitted
    fold (``return_train_score`` is off), which is what the bar counts.
    """

    def __init__(self, bar: tqdm) -> None:
        self._bar = bar
        self._scorer = get_scorer("roc_auc")

    def __call__(self, estimator: Any, X: pd.DataFrame, y: pd.Series) -> float:
        try:
            return float(self._scorer(estimator, X, y))
        finally:
            self._bar.update(1)


def _fit_with_progress(
    pipeline: Pipeline, X: pd.DataFrame, y: pd.Series, *, progress: bool
) -> Pipeline:
    """Fit the pipeline, growing the forest in chunks (``warm_start``) to show progress.

    Equivalent to ``pipeline.fit(X, y)``: the forest seeds tree *i* the same way whether it
    grows all trees at once or in steps (scikit-learn advances its random state over the
    trees already grown), so the fitted model is identical — a unit test checks it.
    """
    transform, forest = pipeline[:-1], pipeline[-1]
    total = int(forest.n_estimators)
    step = max(1, math.ceil(total / _FIT_CHUNKS))
    with (
        _quiet_warm_start(),
        tqdm(total=total, desc="fit", unit="tree", disable=not progress) as bar,
    ):
        Xt = transform.fit_transform(X, y)
        forest.set_params(warm_start=True)
        try:
            grown = 0
            while grown < total:
                target = min(total, grown + step)
                forest.set_params(n_estimators=target)
                forest.fit(Xt, y)
                bar.update(target - grown)
                grown = target
        finally:
            forest.set_params(warm_start=False)
    return pipeline


@contextmanager
def _quiet_warm_start() -> Iterator[None]:
    """Silence the 'balanced class_weight with warm_start' warning: we refit on the same rows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*class_weight presets.*warm_start.*")
        yield


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


def _infer_positive_label(labels: pd.Series) -> object:
    values = pd.unique(labels).tolist()
    if len(values) != 2:
        raise ValueError(f"label must have two values, got {len(values)}: {values[:10]}")
    if set(values) <= {0, 1}:
        return 1 if 1 in values else True
    positive = [v for v in values if str(v).strip().lower() in _POSITIVE_WORDS]
    if len(positive) != 1:
        raise ValueError(f"cannot tell the positive label among {values}: pass positive_label")
    return positive[0]


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
