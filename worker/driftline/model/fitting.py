"""Fitting with progress: cross-validation that keeps its out-of-fold scores, the grid
search, and the final fit grown in chunks.  Split from :mod:`driftline.model.training`,
which decides *what* is fitted on which rows; this module only fits.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import get_scorer
from sklearn.model_selection import (
    BaseCrossValidator,
    GridSearchCV,
    ParameterGrid,
    cross_validate,
)
from sklearn.pipeline import Pipeline
from tqdm import tqdm

#: Small on purpose: 9 candidates x k folds.  Depth and leaf size are what matter most for
#: a forest on a few dozen features; more knobs would mostly buy training time.
PARAM_GRID: dict[str, list[Any]] = {
    "model__max_depth": [None, 8, 16],
    "model__min_samples_leaf": [1, 5, 20],
}
#: The forest is grown in about this many chunks so that fitting shows progress.
_FIT_CHUNKS = 20


def positive_scores(estimator: Any, X: pd.DataFrame) -> np.ndarray:
    """The positive-class column of ``predict_proba`` (class ``1`` / ``True``)."""
    classes = list(estimator.classes_)
    if 1 not in classes:  # True == 1, so this covers bool labels too
        raise ValueError(f"no positive class 1/True among classes {classes}")
    return np.asarray(estimator.predict_proba(X)[:, classes.index(1)], dtype=np.float64)


def cross_validate_oof(
    pipeline: Pipeline,
    X: pd.DataFrame,
    y: pd.Series,
    folds: BaseCrossValidator,
    *,
    progress: bool,
    groups: pd.Series | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold ROC AUC, and every row's score from the fold that held it out.

    Out-of-fold scores come from the fold models themselves (``return_estimator``), so
    calibrating and choosing a threshold on them costs predictions, not another round of
    fits.
    """
    with tqdm(
        total=folds.get_n_splits(), desc="cross-validation", unit="fold", disable=not progress
    ) as bar:
        results = cross_validate(
            pipeline,
            X,
            y,
            groups=None if groups is None else groups.to_numpy(),
            cv=folds,
            scoring=ProgressScorer(bar),
            n_jobs=1,
            return_estimator=True,
            return_indices=True,
        )
    scores = np.asarray(results["test_score"], dtype=np.float64)
    oof = np.full(len(X), np.nan)
    for estimator, rows in zip(results["estimator"], results["indices"]["test"], strict=True):
        oof[rows] = positive_scores(estimator, X.iloc[rows])
    return scores, oof


def search_grid(
    pipeline: Pipeline,
    X: pd.DataFrame,
    y: pd.Series,
    folds: BaseCrossValidator,
    groups: pd.Series | None,
    *,
    progress: bool,
) -> dict[str, Any]:
    """Grid-search :data:`PARAM_GRID` (ROC AUC, the same folds), set the best parameters
    on ``pipeline`` (unfitted) and return the summary for the report."""
    cv_folds = folds.get_n_splits()
    n_fits = len(ParameterGrid(PARAM_GRID)) * cv_folds
    with tqdm(total=n_fits, desc="grid search", unit="fit", disable=not progress) as bar:
        search = GridSearchCV(
            pipeline,
            PARAM_GRID,
            scoring=ProgressScorer(bar),
            cv=folds,
            n_jobs=1,
            refit=False,  # refit by the caller, with a progress bar
        )
        search.fit(X, y, groups=None if groups is None else groups.to_numpy())
    results = search.cv_results_
    best = int(np.argmin(results["rank_test_score"]))
    best_params = dict(results["params"][best])
    pipeline.set_params(**best_params)
    return {
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


class ProgressScorer:
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


def fit_with_progress(
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
        quiet_warm_start(),
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
def quiet_warm_start() -> Iterator[None]:
    """Silence the 'balanced class_weight with warm_start' warning: we refit on the same rows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*class_weight presets.*warm_start.*")
        yield
