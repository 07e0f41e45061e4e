"""Scoring a micro-batch: one vectorized ``predict_proba`` call per batch.

The worker scores all the customers touched by a micro-batch at once.  Per-row calls would
pay scikit-learn's validation and the pipeline's Python overhead once per customer; one
call on the whole frame pays it once per batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from driftline.model.registry import LoadedModel

if TYPE_CHECKING:
    from driftline.core.state import FeatureBlock


class Scorer:
    """Turns feature frames into positive-class scores and decisions for one loaded model.

    Any ``n_jobs`` parameter inside the pipeline is pinned to 1: a forest with ``n_jobs > 1``
    predicts through joblib threads, which :func:`limit_native_threads` does not govern, and
    the worker already runs one process per core.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.pipeline = model.pipeline
        self.feature_names: list[str] = list(model.feature_names)
        self.threshold = float(model.threshold)
        classes = list(self.pipeline.classes_)
        if 1 not in classes:  # True == 1: covers bool labels
            raise ValueError(f"model {model.name} {model.version}: no class 1/True in {classes}")
        self._positive = classes.index(1)
        _pin_single_job(self.pipeline)

    def __reduce__(self) -> tuple[type[Scorer], tuple[LoadedModel]]:
        """Pickled as the model it scores: a copy (a scoring process's) is rebuilt by the
        same constructor, so a runtime's compiled closures or sessions never need pickling
        and the copy scores exactly as this one does."""
        return (type(self), (self.model,))

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return self.model.version

    def score(self, features: pd.DataFrame) -> np.ndarray:
        """Positive-class probability per row: one ``predict_proba`` call for the frame.

        Columns are reordered to the model's feature list (extra columns are ignored); a
        missing column is an error, not a silent NaN, because it means the worker and the
        model disagree on the features.
        """
        absent = [name for name in self.feature_names if name not in features.columns]
        if absent:
            raise ValueError(f"feature frame lacks the model's column(s) {absent}")
        if len(features) == 0:
            return np.empty(0, dtype=np.float64)
        frame = features.loc[:, self.feature_names]
        probabilities = self.pipeline.predict_proba(frame)
        return np.asarray(probabilities[:, self._positive], dtype=np.float64)

    def score_block(self, block: FeatureBlock) -> np.ndarray:
        """Scores of a batch held as the state's numpy blocks (see ``FeatureBlock``).

        scikit-learn needs a DataFrame; a runtime that reads the columns directly
        (``driftline.model.runtimes.compiled``) overrides this and skips building it.
        """
        return self.score(block.frame())

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """``score >= threshold`` per row (bool array): the model's registered cut-off."""
        return np.asarray(scores, dtype=np.float64) >= self.threshold


def limit_native_threads(n: int = 1) -> threadpool_limits:
    """Cap BLAS and OpenMP thread pools of this process at ``n`` threads.

    The worker runs one process per core (one per partition group).  Left alone, every
    process's OpenBLAS/MKL/OpenMP pool sizes itself to *all* cores, so N processes run N²
    threads that preempt one another and thrash caches: latency goes up, not down.  Call
    once at worker start (the limit then holds for the process), or use the return value as
    a context manager to restore the previous limits on exit (tests, notebooks).
    """
    if n < 1:
        raise ValueError(f"thread limit must be at least 1, got {n}")
    return threadpool_limits(limits=n)


def _pin_single_job(estimator: Any) -> None:
    """Set every ``n_jobs`` parameter (at any nesting depth) to 1."""
    get_params = getattr(estimator, "get_params", None)
    if get_params is None:
        return
    pinned = {
        key: 1
        for key, value in get_params(deep=True).items()
        if (key == "n_jobs" or key.endswith("__n_jobs")) and value != 1
    }
    if pinned:
        estimator.set_params(**pinned)
