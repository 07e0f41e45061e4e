"""Optional ONNX Runtime execution of a registered model's forest (``pip install .[onnx]``).

What runs where: the random forest is converted with skl2onnx and run by ONNX Runtime on
one thread.  The preprocessing (cast, impute, scale, one-hot) cannot be converted:
skl2onnx expresses neither the pipeline's Python cast functions nor the imputer's
``add_indicator`` columns.  For the pipeline ``driftline train`` builds, it is evaluated
from the fitted parameters in numpy (``driftline.model.runtimes.compiled.compile_preprocess``):
through scikit-learn and pandas it cost ~7 ms per batch whatever the batch size, which
is most of the latency of a small batch; any other pipeline keeps scikit-learn's own
``transform``.
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

import numpy as np
import pandas as pd

from driftline.model.calibration import calibration_of
from driftline.model.registry import LoadedModel
from driftline.model.runtimes.compiled import compile_preprocess
from driftline.model.runtimes.sklearn import Scorer
from driftline.model.runtimes.verification import (
    REFERENCE_ROWS,
    RuntimeMismatch,
    RuntimeRefused,
    reference_sample,
    sample_with,
)
from driftline.model.runtimes.verification import verify as _verify

#: Largest accepted |p_onnx - p_sklearn| on the reference sample.  Float32 sums of 100
#: tree probabilities differ from scikit-learn's by ~1e-7; 1e-5 leaves room for more trees.
DEFAULT_TOLERANCE = 1e-5


class OnnxUnavailable(RuntimeRefused):
    """skl2onnx or onnxruntime is not installed, or the model cannot be converted."""


class OnnxMismatch(RuntimeMismatch):
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
        self._fast_preprocess = compile_preprocess(self._preprocess)
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
        self._calibrator = calibration_of(self.pipeline)  # applied as predict_proba does

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
        scores = np.asarray(probabilities[:, self._forest_positive], dtype=np.float64)
        return scores if self._calibrator is None else self._calibrator(scores)


def verify(
    onnx: Scorer,
    reference: Scorer,
    sample: pd.DataFrame,
    tolerance: float = DEFAULT_TOLERANCE,
) -> float:
    """Largest |difference| of the two scorers on ``sample``; raises beyond ``tolerance``."""
    return _verify(onnx, reference, sample, tolerance, "ONNX Runtime", OnnxMismatch)


def load_onnx_scorer(
    model: LoadedModel,
    tolerance: float = DEFAULT_TOLERANCE,
    extra_rows: pd.DataFrame | None = None,
) -> tuple[OnnxScorer, float]:
    """An ONNX scorer for ``model`` that passed :func:`verify`, and its worst difference."""
    scorer = OnnxScorer(model)
    worst = verify(scorer, Scorer(model), sample_with(model, extra_rows), tolerance)
    return scorer, worst


__all__ = [
    "DEFAULT_TOLERANCE",
    "REFERENCE_ROWS",
    "OnnxMismatch",
    "OnnxScorer",
    "OnnxUnavailable",
    "load_onnx_scorer",
    "onnx_missing_reason",
    "reference_sample",
    "verify",
]
