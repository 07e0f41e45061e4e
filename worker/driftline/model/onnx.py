"""Optional ONNX Runtime execution of a registered model's forest (``pip install .[onnx]``).

What runs where: the random forest is converted with skl2onnx and run by ONNX Runtime on
one thread.  The preprocessing (cast, impute, scale, one-hot) cannot be converted:
skl2onnx expresses neither the pipeline's Python cast functions nor the imputer's
``add_indicator`` columns.  For the pipeline ``driftline train`` builds, it is evaluated
from the fitted parameters in numpy (:func:`_compile_preprocess`): through scikit-learn
and pandas it cost ~7 ms per batch whatever the batch size, which is most of the
latency of a small batch; any other pipeline keeps scikit-learn's own ``transform``.
The forest is converted with float32 inputs on purpose: scikit-learn's trees compare
float32 features too, so the two agree to float rounding (a float64 conversion split
differently on threshold ties and was off by 0.02 on some rows).

Never silently different: :func:`load_onnx_scorer` scores the model's *reference
sample* both ways and refuses (:class:`OnnxMismatch`) unless every positive-class
probability agrees within ``tolerance`` (default :data:`DEFAULT_TOLERANCE`).  The
registry keeps no rows, so the sample is drawn, seeded, from the model's reference
profile: values inside every histogram bin, the bin edges themselves (where a float
rounding difference would flip a split), missing values, and every recorded category
plus an unseen one; callers may add real rows (the benchmark adds its feature frames).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from driftline.model.registry import LoadedModel
from driftline.model.scoring import Scorer

#: Largest accepted |p_onnx - p_sklearn| on the reference sample.  Float32 sums of 100
#: tree probabilities differ from scikit-learn's by ~1e-7; 1e-5 leaves room for more trees.
DEFAULT_TOLERANCE = 1e-5
REFERENCE_ROWS = 2000


class OnnxUnavailable(RuntimeError):
    """skl2onnx or onnxruntime is not installed, or the model cannot be converted."""


class OnnxMismatch(RuntimeError):
    """ONNX Runtime's scores differ from scikit-learn's beyond the tolerance: refused."""


def onnx_missing_reason() -> str | None:
    """Why ONNX cannot be used here (None when it can): for skips and error messages."""
    try:
        import onnxruntime  # noqa: F401
        import skl2onnx  # noqa: F401
    except ImportError as error:
        return f"{error.name} is not installed (pip install 'driftline[onnx]')"
    return None


class OnnxScorer(Scorer):
    """A :class:`Scorer` whose forest runs in ONNX Runtime (same frames in, same scores out)."""

    runtime = "onnx"

    def __init__(self, model: LoadedModel) -> None:
        super().__init__(model)
        reason = onnx_missing_reason()
        if reason is not None:
            raise OnnxUnavailable(reason)
        import onnxruntime as ort
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        steps = getattr(self.pipeline, "steps", None)
        if not steps or len(steps) < 2:
            raise OnnxUnavailable("the model is not a preprocessing + forest pipeline")
        self._preprocess = self.pipeline[:-1]
        self._fast_preprocess = _compile_preprocess(self._preprocess)
        forest = self.pipeline[-1]
        width = int(getattr(forest, "n_features_in_", 0))
        try:
            proto = convert_sklearn(
                forest,
                initial_types=[("X", FloatTensorType([None, width]))],
                options={id(forest): {"zipmap": False}},
                target_opset={"": 17, "ai.onnx.ml": 3},
            )
        except Exception as error:  # skl2onnx raises many kinds for unsupported models
            raise OnnxUnavailable(
                f"skl2onnx cannot convert {type(forest).__name__}: {error}"
            ) from error
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one worker process per core, as for scikit-learn
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self._output = self._session.get_outputs()[1].name  # [label, probabilities]
        self._forest_positive = list(forest.classes_).index(1)

    def score(self, features: pd.DataFrame) -> np.ndarray:
        absent = [name for name in self.feature_names if name not in features.columns]
        if absent:
            raise ValueError(f"feature frame lacks the model's column(s) {absent}")
        if len(features) == 0:
            return np.empty(0, dtype=np.float64)
        frame = features.loc[:, self.feature_names]
        matrix = self._fast_preprocess(frame) if self._fast_preprocess is not None else None
        if matrix is None:
            matrix = self._preprocess.transform(frame)
            if hasattr(matrix, "toarray"):
                matrix = matrix.toarray()
        x = np.ascontiguousarray(matrix, dtype=np.float32)
        probabilities = self._session.run([self._output], {"X": x})[0]
        return np.asarray(probabilities[:, self._forest_positive], dtype=np.float64)


def reference_sample(model: LoadedModel, rows: int = REFERENCE_ROWS, seed: int = 0) -> pd.DataFrame:
    """Feature rows drawn from the model's reference profile (see the module docstring)."""
    rng = np.random.default_rng(seed)
    profile = model.metadata.get("reference_profile") or {}
    types = model.metadata.get("feature_types") or {}
    columns: dict[str, Any] = {}
    for name in model.feature_names:
        if types.get(name) == "categorical":
            shares = ((profile.get("categorical") or {}).get(name) or {}).get("shares") or {}
            seen = [c for c in shares if c != "__other__"]
            choices = np.asarray([*seen, "never-seen-in-training"], dtype=object)
            values = choices[rng.integers(0, len(choices), rows)]
            values[rng.random(rows) < 0.05] = None
            columns[name] = values
        else:
            columns[name] = _numeric_sample(
                (profile.get("numeric") or {}).get(name) or {}, rows, rng
            )
    return pd.DataFrame(columns, columns=model.feature_names)


def _numeric_sample(entry: dict[str, Any], rows: int, rng: np.random.Generator) -> np.ndarray:
    edges = np.asarray(entry.get("edges") or [], dtype=np.float64)
    spread = float(entry.get("std") or 1.0) or 1.0
    centre = float(entry.get("mean") or 0.0)
    if edges.size == 0:
        values = centre + spread * rng.standard_normal(rows)
    else:
        lows = np.concatenate([[edges[0] - 2 * spread], edges])
        highs = np.concatenate([edges, [edges[-1] + 2 * spread]])
        bins = rng.integers(0, lows.size, rows)
        values = lows[bins] + (highs[bins] - lows[bins]) * rng.random(rows)
        on_edge = rng.random(rows) < 0.2  # exactly on a split candidate
        values[on_edge] = edges[rng.integers(0, edges.size, int(on_edge.sum()))]
    values[rng.random(rows) < max(0.02, float(entry.get("missing_rate") or 0.0))] = np.nan
    return values


def verify(
    onnx: Scorer,
    reference: Scorer,
    sample: pd.DataFrame,
    tolerance: float = DEFAULT_TOLERANCE,
) -> float:
    """Largest |difference| of the two scorers on ``sample``; raises beyond ``tolerance``."""
    got, want = onnx.score(sample), reference.score(sample)
    worst = float(np.max(np.abs(got - want))) if len(sample) else 0.0
    if not worst <= tolerance:
        raise OnnxMismatch(
            f"model {reference.name} {reference.version}: ONNX Runtime differs from "
            f"scikit-learn by up to {worst:.3g} on {len(sample)} reference rows "
            f"(tolerance {tolerance:g}); refusing to serve it with ONNX"
        )
    return worst


def load_onnx_scorer(
    model: LoadedModel,
    tolerance: float = DEFAULT_TOLERANCE,
    extra_rows: pd.DataFrame | None = None,
) -> tuple[OnnxScorer, float]:
    """An ONNX scorer for ``model`` that passed :func:`verify`, and its worst difference."""
    scorer = OnnxScorer(model)
    sample = reference_sample(model)
    if extra_rows is not None and len(extra_rows):
        sample = pd.concat([sample, extra_rows.loc[:, model.feature_names]], ignore_index=True)
    worst = verify(scorer, Scorer(model), sample, tolerance)
    return scorer, worst


Preprocess = Callable[[pd.DataFrame], "np.ndarray | None"]


def _compile_preprocess(preprocess: Any) -> Preprocess | None:
    """numpy evaluation of ``driftline train``'s fitted ColumnTransformer, or None.

    Only the exact structure is compiled: numeric ``as_float -> SimpleImputer(median,
    add_indicator) -> StandardScaler`` and categorical ``as_category_strings ->
    SimpleImputer(constant) -> OneHotEncoder(handle_unknown="ignore")``, no remainder.
    The function returns None for a frame it cannot cast cheaply (non-numeric dtypes),
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
    parts: list[Callable[[pd.DataFrame], np.ndarray | None]] = []
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

    def run(frame: pd.DataFrame) -> np.ndarray | None:
        blocks = [part(frame) for part in parts]
        if any(b is None for b in blocks):
            return None
        return np.hstack(blocks)  # type: ignore[arg-type]

    return run


def _numeric_branch(
    columns: list[str], impute: Any, scale: Any
) -> Callable[[pd.DataFrame], np.ndarray | None]:
    fill = np.asarray(impute.statistics_, dtype=np.float64)
    indicator = getattr(impute, "indicator_", None)
    flagged = np.asarray(indicator.features_ if indicator is not None else [], dtype=np.intp)
    mean = scale.mean_ if scale.with_mean else None
    std = scale.scale_ if scale.with_std else None

    def run(frame: pd.DataFrame) -> np.ndarray | None:
        block = frame[columns]
        if not all(pd.api.types.is_numeric_dtype(t) for t in block.dtypes):
            return None
        x = block.to_numpy(dtype=np.float64, na_value=np.nan)
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


def _categorical_branch(
    columns: list[str], impute: Any, encoder: Any
) -> Callable[[pd.DataFrame], np.ndarray | None]:
    from driftline.model.training import as_category_strings

    categories = [np.asarray(c, dtype=object) for c in encoder.categories_]
    fill = impute.fill_value

    def run(frame: pd.DataFrame) -> np.ndarray | None:
        values = as_category_strings(frame[columns]).to_numpy(dtype=object)
        missing = pd.isna(values)
        values = np.where(missing, fill, values)
        blocks = [
            (values[:, i, None] == categories[i][None, :]).astype(np.float64)
            for i in range(len(columns))
        ]
        return np.hstack(blocks)

    return run
