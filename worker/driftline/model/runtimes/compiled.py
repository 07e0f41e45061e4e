"""The ``compiled`` model runtime: the same fitted pipeline, without the per-call overhead.

Why: scikit-learn's ``predict_proba`` costs ~11 ms per call on a 200-row batch for the
pipeline ``driftline train`` builds, almost none of it arithmetic.  The ColumnTransformer
goes through pandas and input validation per branch (~6 ms), and a forest dispatches
each tree through joblib with a config context, warning filters and input validation
(~4.4 ms for 100 trees).  A worker that keeps latency low scores small batches, and
there that overhead is most of the time.

What runs: the preprocessing is evaluated from the fitted parameters in numpy
(:func:`compile_preprocess`; only the exact structure ``driftline train`` builds), and
the forest calls each fitted tree's own ``tree_.predict`` (the Cython routine scikit-
learn's ``predict_proba`` ends in) on the same float32 matrix, summing in estimator order
and dividing by the number of trees, as scikit-learn does with one job.  The result is
expected to be bit-identical, and it is never assumed: :func:`load_compiled_scorer`
scores the reference sample both ways and refuses (:class:`CompiledMismatch`) beyond
:data:`DEFAULT_TOLERANCE`.  A pipeline of any other shape is refused as unsupported
(:class:`CompiledUnavailable`), and the worker then says so rather than guessing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import pandas as pd

from driftline.model.calibration import calibration_of
from driftline.model.registry import LoadedModel
from driftline.model.runtimes.sklearn import Scorer
from driftline.model.runtimes.verification import (
    RuntimeMismatch,
    RuntimeRefused,
    sample_with,
    verify,
)

if TYPE_CHECKING:
    from driftline.core.state import FeatureBlock

#: Largest accepted |p_compiled - p_sklearn|: the same operations in the same order give
#: the same bits, so anything beyond rounding noise means the compilation is wrong.
DEFAULT_TOLERANCE = 1e-12


class CompiledUnavailable(RuntimeRefused):
    """The pipeline has a shape the compiled runtime does not reproduce."""


class CompiledMismatch(RuntimeMismatch):
    """The compiled runtime's scores differ from scikit-learn's: refused."""


Forest = Callable[[np.ndarray], np.ndarray]


class CompiledScorer(Scorer):
    """A :class:`Scorer` evaluating the fitted pipeline in numpy and the trees directly."""

    runtime = "compiled"

    def __init__(self, model: LoadedModel) -> None:
        super().__init__(model)
        steps = getattr(self.pipeline, "steps", None)
        if not steps or len(steps) < 2:
            raise CompiledUnavailable("the model is not a preprocessing + forest pipeline")
        preprocess = compile_columns_preprocess(self.pipeline[:-1])
        if preprocess is None:
            raise CompiledUnavailable("the preprocessing is not the one driftline train builds")
        forest = compile_forest(self.pipeline[-1])
        if forest is None:
            raise CompiledUnavailable(
                f"{type(self.pipeline[-1]).__name__} is not a single-output forest classifier"
            )
        self._preprocess = preprocess
        self._fallback = self.pipeline[:-1]
        self._forest = forest
        self._forest_positive = list(self.pipeline[-1].classes_).index(1)
        #: The model's calibration map, applied to the forest's scores as its own
        #: ``predict_proba`` does (``driftline.model.calibration``).
        self._calibrator = calibration_of(self.pipeline)

    def score(self, features: pd.DataFrame) -> np.ndarray:
        absent = [name for name in self.feature_names if name not in features.columns]
        if absent:
            raise ValueError(f"feature frame lacks the model's column(s) {absent}")
        if len(features) == 0:
            return np.empty(0, dtype=np.float64)
        matrix = self._preprocess(FrameColumns(features))  # by name: no column copy
        if matrix is None:  # a dtype the numpy path does not cast: scikit-learn's
            matrix = self._fallback.transform(features.loc[:, self.feature_names])
            if hasattr(matrix, "toarray"):
                matrix = matrix.toarray()
        return self._positive_scores(matrix)

    def score_block(self, block: FeatureBlock) -> np.ndarray:
        """Scores straight from the state's numpy blocks: no DataFrame is built."""
        if len(block) == 0:
            return np.empty(0, dtype=np.float64)
        matrix = self._preprocess(BlockColumns(block))
        if matrix is None:
            return self.score(block.frame())
        return self._positive_scores(matrix)

    def _positive_scores(self, matrix: np.ndarray) -> np.ndarray:
        probabilities = self._forest(matrix)
        scores = np.asarray(probabilities[:, self._forest_positive], dtype=np.float64)
        return scores if self._calibrator is None else self._calibrator(scores)


def compile_forest(estimator: Any) -> Forest | None:
    """``predict_proba`` of a fitted single-output forest of decision trees, or None."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    if not isinstance(estimator, RandomForestClassifier | ExtraTreesClassifier):
        return None
    if estimator.n_outputs_ != 1:
        return None
    trees = [tree.tree_ for tree in estimator.estimators_]
    n_classes = int(estimator.n_classes_)

    def run(matrix: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(matrix, dtype=np.float32)
        total = np.zeros((x.shape[0], n_classes), dtype=np.float64)
        for tree in trees:
            total += tree.predict(x)[:, :n_classes]
        total /= len(trees)
        return total

    return run


def load_compiled_scorer(
    model: LoadedModel,
    tolerance: float = DEFAULT_TOLERANCE,
    extra_rows: pd.DataFrame | None = None,
) -> tuple[CompiledScorer, float]:
    """A compiled scorer for ``model`` that passed :func:`verify`, and its worst difference."""
    scorer = CompiledScorer(model)
    worst = verify(
        scorer,
        Scorer(model),
        sample_with(model, extra_rows),
        tolerance,
        "the compiled runtime",
        CompiledMismatch,
    )
    return scorer, worst


class Columns(Protocol):
    """A batch's features by column name, from wherever they are (a frame, a block)."""

    rows: int

    def numeric(self, name: str) -> np.ndarray | None:
        """float64 values (NaN: missing), or None when the column is not numeric."""

    def objects(self, name: str) -> np.ndarray:
        """The column's values as an object array (missing: None or NaN)."""


class FrameColumns:
    """Columns of a pandas DataFrame."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.rows = len(frame)

    def numeric(self, name: str) -> np.ndarray | None:
        column = self.frame[name]
        if not pd.api.types.is_numeric_dtype(column.dtype):
            return None
        return cast(np.ndarray, column.to_numpy(dtype=np.float64, na_value=np.nan))

    def objects(self, name: str) -> np.ndarray:
        return cast(np.ndarray, self.frame[name].to_numpy(dtype=object, na_value=None))


class BlockColumns:
    """Columns of a :class:`~driftline.core.state.FeatureBlock`: no DataFrame at all."""

    def __init__(self, block: FeatureBlock) -> None:
        self.block = block
        self.rows = len(block)
        layout = block.layout
        self._numeric = {name: i for i, name in enumerate(layout.numeric)}
        self._categorical = {name: i for i, name in enumerate(layout.categorical)}

    def numeric(self, name: str) -> np.ndarray | None:
        i = self._numeric.get(name)
        return None if i is None else cast(np.ndarray, self.block.numeric[i])

    def objects(self, name: str) -> np.ndarray:
        i = self._categorical.get(name)
        if i is not None:
            return cast(np.ndarray, self.block.categorical[i])
        return cast(np.ndarray, self.block.numeric[self._numeric[name]].astype(object))


Preprocess = Callable[[pd.DataFrame], "np.ndarray | None"]
ColumnsPreprocess = Callable[[Columns], "np.ndarray | None"]


def compile_preprocess(preprocess: Any) -> Preprocess | None:
    """numpy evaluation of ``driftline train``'s fitted ColumnTransformer on a DataFrame,
    or None (see :func:`compile_columns_preprocess`)."""
    compiled = compile_columns_preprocess(preprocess)
    if compiled is None:
        return None
    return lambda frame: compiled(FrameColumns(frame))


def compile_columns_preprocess(preprocess: Any) -> ColumnsPreprocess | None:
    """numpy evaluation of ``driftline train``'s fitted ColumnTransformer, or None.

    Only the exact structure is compiled: numeric ``as_float -> SimpleImputer(median,
    add_indicator) -> StandardScaler`` and categorical ``as_category_strings ->
    SimpleImputer(constant) -> OneHotEncoder(handle_unknown="ignore")``, no remainder.
    The function returns None for columns it cannot cast cheaply (non-numeric dtypes),
    and the caller then uses scikit-learn.  Equality with scikit-learn is not assumed:
    :func:`verify` checks the scores, this path included, before anything is served.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from driftline.model.training import as_category_strings, as_float

    steps = getattr(preprocess, "steps", None)
    if not steps or len(steps) != 1 or not isinstance(steps[0][1], ColumnTransformer):
        return None
    transformer: ColumnTransformer = steps[0][1]
    parts: list[ColumnsPreprocess] = []
    for name, branch, columns in transformer.transformers_:
        if name == "remainder":
            if branch != "drop":
                return None
            continue
        named = [n for n, _ in getattr(branch, "steps", [])]
        if named != ["cast", "impute", "scale"] and named != ["cast", "impute", "onehot"]:
            return None
        cast, impute, last = (step for _, step in branch.steps)
        if not isinstance(impute, SimpleImputer):
            return None
        if named[2] == "scale":
            if (
                cast.func is not as_float
                or not isinstance(last, StandardScaler)
                or impute.strategy != "median"
            ):
                return None
            parts.append(_numeric_branch(list(columns), impute, last))
        else:
            if cast.func is not as_category_strings or not isinstance(last, OneHotEncoder):
                return None
            if (
                last.handle_unknown != "ignore"
                or last.drop is not None
                or getattr(last, "infrequent_categories_", None) is not None
                or impute.strategy != "constant"
            ):
                return None
            parts.append(_categorical_branch(list(columns), impute, last))

    def run(columns: Columns) -> np.ndarray | None:
        blocks = [part(columns) for part in parts]
        if any(b is None for b in blocks):
            return None
        return np.hstack(blocks)  # type: ignore[arg-type]

    return run


def _numeric_branch(columns: list[str], impute: Any, scale: Any) -> ColumnsPreprocess:
    fill = np.asarray(impute.statistics_, dtype=np.float64)
    indicator = getattr(impute, "indicator_", None)
    flagged = np.asarray(indicator.features_ if indicator is not None else [], dtype=np.intp)
    mean = scale.mean_ if scale.with_mean else None
    std = scale.scale_ if scale.with_std else None

    def run(source: Columns) -> np.ndarray | None:
        x = np.empty((source.rows, len(columns)), dtype=np.float64)
        for j, name in enumerate(columns):
            values = source.numeric(name)
            if values is None:
                return None
            x[:, j] = values
        missing = np.isnan(x)
        x = np.where(missing, fill, x)
        if flagged.size:
            x = np.hstack([x, missing[:, flagged].astype(np.float64)])
        if mean is not None:
            x = x - mean
        if std is not None:
            x = x / std
        return x

    return run


def _categorical_branch(columns: list[str], impute: Any, encoder: Any) -> ColumnsPreprocess:
    from driftline.model.training import as_category_strings

    fill = impute.fill_value
    # One-hot by lookup: a category's column, or absent (unknown: an all-zero row, as
    # handle_unknown="ignore" does).
    positions = [{c: j for j, c in enumerate(cats)} for cats in encoder.categories_]
    widths = [len(cats) for cats in encoder.categories_]
    offsets = np.concatenate([[0], np.cumsum(widths)]).astype(np.intp)

    def strings(values: np.ndarray) -> np.ndarray:
        """``as_category_strings`` of one column, then the imputer's fill for missing;
        the common all-``str`` case without pandas."""
        missing = pd.isna(values)
        if not all(type(v) is str for v in values[~missing]):
            values = as_category_strings(pd.DataFrame({"c": values})).to_numpy(dtype=object)[:, 0]
            missing = pd.isna(values)
        values = values.copy()
        values[missing] = fill
        return values

    def run(source: Columns) -> np.ndarray | None:
        out = np.zeros((source.rows, int(offsets[-1])), dtype=np.float64)
        rows = np.arange(source.rows)
        for i, name in enumerate(columns):
            lookup = positions[i]
            codes = np.fromiter(
                (lookup.get(v, -1) for v in strings(source.objects(name))),
                dtype=np.intp,
                count=source.rows,
            )
            known = codes >= 0
            out[rows[known], offsets[i] + codes[known]] = 1.0
        return out

    return run
