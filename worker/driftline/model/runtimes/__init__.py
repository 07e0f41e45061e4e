"""Model runtimes: what runs a registered pipeline's ``predict_proba`` in the worker.

* ``sklearn``: :class:`Scorer`, scikit-learn's own ``predict_proba``: the reference every
  other runtime is checked against, and the class they extend.
* ``compiled``: the fitted pipeline evaluated in numpy, the trees called directly.
* ``onnx``: the forest in ONNX Runtime (the ``onnx`` extra).
* ``process``: a child process scoring with any of them, beside the worker's loop.
* ``verification``: a faster runtime is served only once it scores the model's reference
  sample like scikit-learn (:class:`RuntimeRefused` otherwise).

``driftline worker --model-runtime`` names one of :data:`RUNTIMES`; ``auto`` is the
compiled runtime when it reproduces the model, else scikit-learn's.
:func:`load_verified` loads a faster runtime by name.  The runtimes are imported when
asked for: ONNX Runtime is optional, and scikit-learn alone needs neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from driftline.model.runtimes.sklearn import Scorer, limit_native_threads
from driftline.model.runtimes.verification import RuntimeMismatch, RuntimeRefused

if TYPE_CHECKING:
    import pandas as pd

    from driftline.model.registry import LoadedModel

#: The names ``--model-runtime`` takes.
RUNTIMES: tuple[str, ...] = ("auto", "sklearn", "compiled", "onnx")

#: The runtimes other than scikit-learn's, each served only after its verification.
VERIFIED_RUNTIMES: tuple[str, ...] = ("compiled", "onnx")

__all__ = [
    "RUNTIMES",
    "VERIFIED_RUNTIMES",
    "RuntimeMismatch",
    "RuntimeRefused",
    "Scorer",
    "limit_native_threads",
    "load_verified",
    "serving_scorer",
]


def load_verified(
    runtime: str,
    model: LoadedModel,
    tolerance: float | None = None,
    extra_rows: pd.DataFrame | None = None,
) -> tuple[Scorer, float]:
    """``runtime``'s scorer for ``model`` (``compiled`` or ``onnx``) once it matched
    scikit-learn on the reference sample (plus ``extra_rows``), and the worst difference
    seen; ``tolerance`` None is the runtime's default.  Raises :class:`RuntimeRefused`
    when it cannot serve the model, ``ValueError`` for another name."""
    if runtime == "compiled":
        from driftline.model.runtimes import compiled

        return compiled.load_compiled_scorer(
            model, compiled.DEFAULT_TOLERANCE if tolerance is None else tolerance, extra_rows
        )
    if runtime == "onnx":
        from driftline.model.runtimes import onnx

        return onnx.load_onnx_scorer(
            model, onnx.DEFAULT_TOLERANCE if tolerance is None else tolerance, extra_rows
        )
    raise ValueError(f"no verified runtime {runtime!r}: {', '.join(VERIFIED_RUNTIMES)}")


def serving_scorer(
    loaded: LoadedModel, runtime: str, *, compiled_tolerance: float, onnx_tolerance: float
) -> Scorer:
    """The scorer an engine serves ``loaded`` with, for ``--model-runtime`` (auto, sklearn,
    compiled or onnx): scikit-learn, or a faster runtime only once it matched scikit-learn
    on the model's reference sample.  ``auto`` falls back to scikit-learn when the compiled
    runtime refuses the model; an explicit runtime that refuses raises ``RuntimeRefused``.
    One rule for every engine."""
    import logging

    log = logging.getLogger(__name__)
    if runtime == "sklearn":
        return Scorer(loaded)
    if runtime not in ("auto", "compiled", "onnx"):
        raise ValueError(f"unknown model runtime {runtime!r}: auto, sklearn, compiled or onnx")
    name = "onnx" if runtime == "onnx" else "compiled"
    tolerance = onnx_tolerance if runtime == "onnx" else compiled_tolerance
    try:
        scorer, worst = load_verified(name, loaded, tolerance)
    except RuntimeRefused as refused:
        if runtime != "auto":
            raise
        log.info("model %s %s runs in scikit-learn: %s", loaded.name, loaded.version, refused)
        return Scorer(loaded)
    log.info(
        "model %s %s runs in the %s runtime (max |diff| vs scikit-learn %.2g, tolerance %g)",
        loaded.name,
        loaded.version,
        name,
        worst,
        tolerance,
    )
    return scorer
