"""Reason codes: per-prediction feature contributions of the served forest, per batch.

Method (path-based, "Saabas"): in one tree, a row's prediction is the root's value plus,
for every split on its decision path, the change in node value from the parent to the
child it went to; each change is credited to the parent's split feature.  Averaged over
the forest's trees this decomposes the forest's output exactly::

    raw probability = base + sum of the features' contributions

where ``base`` is the mean over trees of the root's value (each tree's weighted class-1
fraction of its own bootstrap sample: the mean training leaf value).  The sum is a
telescoping one, so it holds to rounding (a test checks 1e-6 against ``predict_proba``).

What is decomposed: the forest's *raw* positive-class probability, not the served score.
The served score is ``calibrator(raw)`` (:mod:`driftline.model.calibration`), a monotone
non-decreasing but non-linear map, which has no exact additive decomposition.  Rescaling
the contributions to the calibrated score would only multiply each row's contributions by
one factor: the same ranking and signs, in units that mean less.  So contributions are in
raw-probability units, with the raw base: ``calibrator(base + sum) == score``, and a
positive contribution pushes the score up (or leaves it, on a flat stretch of the map).

Batches: a row's path in a tree is fixed by the leaf it reaches, so each leaf's whole
path sum is computed once per model (a dense leaves x features table over all trees,
already credited to the *original* features: one-hot and missing-indicator columns summed
back to the feature they came from, and divided by the number of trees).  A batch then
costs the preprocessing, one ``apply`` per tree (the leaf of every row, in Cython) and one
gather-and-sum of table rows: no per-row Python, no per-path work.  The table is
(leaves x features) float64; a forest too large for :data:`MAX_TABLE_BYTES` is explained
instead from its per-node value changes (a sparse all-nodes x features matrix) and one
``decision_path`` over the batch (a sparse product; about twice the time, a fraction of
the memory).  Both give the same contributions (a test checks them against each other).

The preprocessing must be :func:`driftline.model.training.build_pipeline`'s kind
(``ColumnTransformer`` of pipelines of column-wise steps, imputers with indicators,
one-hot encoders); anything else is refused with :class:`ExplainRefused` at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from driftline.model.calibration import calibration_of
from driftline.model.runtimes.verification import RuntimeRefused

METHOD = "saabas-path"
#: Largest leaf table built (see the module docstring): 64 MiB is ~400k leaves of 21
#: features, a RandomForest(100) of ~4,000-leaf trees.
MAX_TABLE_BYTES = 64 * 2**20


class ExplainRefused(RuntimeRefused):
    """The model is not one reason codes can be computed for (said why).  A kind of
    ``RuntimeRefused``: a worker asked to explain refuses to start with such a model, and
    keeps its current model rather than swap in one (``engine.model_runtime``)."""


@dataclass(frozen=True, slots=True)
class Explanation:
    """Top-K contributions of a batch's rows.

    ``features[i, j]`` (index into ``names``) is row ``i``'s j-th largest contribution by
    magnitude, ``contributions[i, j]`` its value (raw-probability units), ``values[i][j]``
    the row's input value of that feature (float, string or None when missing).  ``rest``
    is the sum of the other features' contributions, ``base`` the model's base value and
    ``raw`` the forest's raw probability: ``base + contributions.sum(1) + rest == raw``.
    """

    names: list[str]
    features: np.ndarray  # (n, k) intp
    contributions: np.ndarray  # (n, k) float64
    values: list[list[Any]]
    rest: np.ndarray  # (n,) float64
    base: float
    raw: np.ndarray  # (n,) float64


class ForestExplainer:
    """Path-based contributions of a fitted (calibrated) pipeline's forest, by feature."""

    def __init__(
        self, pipeline: Any, feature_names: list[str], max_table_bytes: int = MAX_TABLE_BYTES
    ) -> None:
        if not isinstance(pipeline, Pipeline) or len(pipeline.steps) < 2:
            raise ExplainRefused("reason codes need a preprocessing + forest Pipeline")
        forest = pipeline[-1]
        if not isinstance(forest, RandomForestClassifier | ExtraTreesClassifier):
            raise ExplainRefused(
                f"reason codes need a random forest, the model's estimator is "
                f"{type(forest).__name__}"
            )
        classes = list(forest.classes_)
        if len(classes) != 2 or 1 not in classes:
            raise ExplainRefused(f"reason codes need a binary model with class 1, not {classes}")
        self.pipeline = pipeline
        self.transform = pipeline[:-1]
        self.forest = forest
        self.calibrator = calibration_of(pipeline)
        self.feature_names = list(feature_names)
        owner = column_owners(self.transform, self.feature_names)
        if len(owner) != forest.n_features_in_:
            raise ExplainRefused(
                f"mapped {len(owner)} preprocessed columns back to features, the forest "
                f"takes {forest.n_features_in_}"
            )
        n_leaves = sum(int(e.tree_.n_leaves) for e in forest.estimators_)
        positive = classes.index(1)
        self._table: np.ndarray | None = None
        self._leaf_row: list[np.ndarray] = []
        self._matrix: sparse.csr_matrix | None = None
        if n_leaves * len(self.feature_names) * 8 <= max_table_bytes:
            self.base, self._table, self._leaf_row = _leaf_table(
                forest, owner, len(self.feature_names), positive
            )
        else:
            self.base, self._matrix = _node_matrix(forest, owner, len(self.feature_names), positive)

    def contributions(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Every feature's contribution per row ``(n, n_features)`` and the raw probability
        ``base + row sum`` ``(n,)``, for a frame holding the model's input columns."""
        if len(frame) == 0:
            return np.empty((0, len(self.feature_names))), np.empty(0)
        Xt = self.transform.transform(frame.loc[:, self.feature_names])
        if sparse.issparse(Xt):
            Xt = Xt.toarray()
        # The trees compare float32 (what scikit-learn's predict does to its input).
        X32 = np.ascontiguousarray(Xt, dtype=np.float32)
        if self._table is not None:
            contributions = np.zeros((len(frame), len(self.feature_names)))
            for estimator, rows in zip(self.forest.estimators_, self._leaf_row, strict=True):
                contributions += self._table[rows[estimator.tree_.apply(X32)]]
        else:
            assert self._matrix is not None
            path, _ = self.forest.decision_path(X32)
            contributions = np.asarray((path @ self._matrix).toarray(), dtype=np.float64)
        return contributions, self.base + contributions.sum(axis=1)

    def explain(self, frame: pd.DataFrame, k: int) -> Explanation:
        """The top ``k`` contributions by magnitude per row (ties: the earlier feature)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        contributions, raw = self.contributions(frame)
        k = min(k, len(self.feature_names))
        order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(contributions, order, axis=1)
        rest = contributions.sum(axis=1) - top.sum(axis=1)
        inputs = frame.loc[:, self.feature_names].to_numpy(dtype=object)
        picked = np.take_along_axis(inputs, order, axis=1).tolist()
        values = [[_plain(v) for v in row] for row in picked]
        return Explanation(self.feature_names, order, top, values, rest, self.base, raw)


def _plain(value: Any) -> Any:
    """A JSON value for a feature input: None for missing, str for a category, else float."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, str):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return None if np.isnan(number) else number


def _values_and_parents(tree: Any, positive: int) -> tuple[np.ndarray, np.ndarray]:
    """Each node's positive-class share (the tree's probability were it a leaf) and its
    parent's id (-1 for the root): the two arrays both contribution methods walk."""
    counts = tree.value[:, 0, :]
    value = counts[:, positive] / counts.sum(axis=1)
    left, right = tree.children_left, tree.children_right
    internal = np.flatnonzero(left >= 0)
    parent = np.full(tree.node_count, -1, dtype=np.intp)
    parent[left[internal]] = internal
    parent[right[internal]] = internal
    return value, parent


def _leaf_table(
    forest: Any, owner: np.ndarray, n_features: int, positive: int
) -> tuple[float, np.ndarray, list[np.ndarray]]:
    """The forest's base value; a (all leaves x features) table of each leaf's path
    contributions (value change from parent to child, credited to the parent's split
    feature's owner, summed along the path, / T); per tree, node id -> table row."""
    trees = forest.estimators_
    n_trees = len(trees)
    tables: list[np.ndarray] = []
    leaf_rows: list[np.ndarray] = []
    rows = 0
    base = 0.0
    for estimator in trees:
        tree = estimator.tree_
        value, parent = _values_and_parents(tree, positive)
        base += float(value[0])
        left, right = tree.children_left, tree.children_right
        # Path sums level by level (a parent's id is always below its children's).
        path = np.zeros((tree.node_count, n_features))
        level = np.array([0])
        while level.size:
            below = level[left[level] >= 0]
            children = np.concatenate([left[below], right[below]])
            if children.size == 0:
                break
            up = parent[children]
            path[children] = path[up]
            path[children, owner[tree.feature[up]]] += (value[children] - value[up]) / n_trees
            level = children
        leaves = np.flatnonzero(left < 0)
        leaf_row = np.full(tree.node_count, -1, dtype=np.intp)
        leaf_row[leaves] = rows + np.arange(leaves.size)
        rows += leaves.size
        tables.append(path[leaves])
        leaf_rows.append(leaf_row)
    return base / n_trees, np.concatenate(tables), leaf_rows


def _node_matrix(
    forest: Any, owner: np.ndarray, n_features: int, positive: int
) -> tuple[float, sparse.csr_matrix]:
    """The forest's base value and the sparse (all nodes x features) matrix of each node's
    value change from its parent, credited to the parent's split feature's owner, / T
    (``decision_path @`` it sums each row's changes along its paths)."""
    trees = forest.estimators_
    n_trees = len(trees)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    offset = 0
    base = 0.0
    for estimator in trees:
        tree = estimator.tree_
        value, parent = _values_and_parents(tree, positive)
        base += float(value[0])
        child = np.flatnonzero(parent >= 0)
        rows.append(child + offset)
        cols.append(owner[tree.feature[parent[child]]])
        vals.append((value[child] - value[parent[child]]) / n_trees)
        offset += tree.node_count
    matrix = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(offset, n_features),
    )
    return base / n_trees, matrix


def column_owners(transform: Any, feature_names: list[str]) -> np.ndarray:
    """For each column the preprocessing outputs, the index of the input feature it comes
    from (a one-hot column: its categorical feature; a missing indicator: its feature)."""
    index = {name: i for i, name in enumerate(feature_names)}
    steps = list(transform.steps) if isinstance(transform, Pipeline) else [("", transform)]
    owner = np.arange(len(feature_names))
    for _, step in steps:
        if isinstance(step, ColumnTransformer):
            owner = _column_transformer_owners(step, index, owner)
        else:
            owner = _step_owners(step, owner)
    return np.asarray(owner, dtype=np.intp)


def _column_transformer_owners(
    ct: ColumnTransformer, index: dict[str, int], owner: np.ndarray
) -> np.ndarray:
    parts: list[tuple[int, np.ndarray]] = []
    for name, fitted, columns in ct.transformers_:
        where = ct.output_indices_[name]
        if fitted == "drop" or where.stop == where.start:
            continue
        if isinstance(columns, str):
            columns = [columns]
        try:
            inputs = owner[[index[c] for c in columns]]
        except (KeyError, TypeError, IndexError) as error:
            raise ExplainRefused(f"branch {name!r}: columns {columns!r} not by name") from error
        if fitted == "passthrough":
            mapped = inputs
        else:
            steps = list(fitted.steps) if isinstance(fitted, Pipeline) else [("", fitted)]
            mapped = inputs
            for _, step in steps:
                mapped = _step_owners(step, mapped)
        if len(mapped) != where.stop - where.start:
            raise ExplainRefused(f"branch {name!r}: cannot map its output columns")
        parts.append((where.start, mapped))
    parts.sort(key=lambda p: p[0])
    return np.concatenate([m for _, m in parts]) if parts else np.empty(0, dtype=np.intp)


def _step_owners(step: Any, owner: np.ndarray) -> np.ndarray:
    """The owners of one column-wise step's output columns, given its inputs' owners."""
    if isinstance(step, FunctionTransformer | StandardScaler):
        return owner
    if isinstance(step, SimpleImputer):
        kept = owner
        stats = np.asarray(step.statistics_)
        if not step.keep_empty_features and stats.dtype.kind == "f":
            kept = owner[~np.isnan(stats)]
        if step.indicator_ is not None:
            kept = np.concatenate([kept, owner[step.indicator_.features_]])
        return kept
    if isinstance(step, OneHotEncoder):
        if step.drop_idx_ is not None or getattr(step, "_infrequent_enabled", False):
            raise ExplainRefused("one-hot encoders with drop or infrequent categories")
        widths = [len(c) for c in step.categories_]
        return np.repeat(owner, widths)
    raise ExplainRefused(f"no column mapping for preprocessing step {type(step).__name__}")
