"""The model runtime a Faust worker scores with: the Kafka engine's rule, engine-free.

``auto``: the compiled runtime when it reproduces scikit-learn on the model's reference
sample, else scikit-learn; ``compiled`` and ``onnx`` only once they match within their
tolerance (a mismatch raises ``RuntimeRefused``).  The Kafka engine applies the same
rule in its worker class; this copy has no Kafka client in it.
"""

from __future__ import annotations

import logging

from driftline.model.registry import LoadedModel
from driftline.model.scoring import Scorer
from driftline.model.verification import RuntimeRefused

log = logging.getLogger(__name__)


def scorer_for(
    loaded: LoadedModel, runtime: str, *, compiled_tolerance: float, onnx_tolerance: float
) -> Scorer:
    """A scorer for ``loaded`` in ``runtime`` (auto, sklearn, compiled or onnx)."""
    if runtime == "sklearn":
        return Scorer(loaded)
    if runtime in ("auto", "compiled"):
        from driftline.model.compiled import load_compiled_scorer

        try:
            compiled, worst = load_compiled_scorer(loaded, compiled_tolerance)
        except RuntimeRefused as refused:
            if runtime == "compiled":
                raise
            log.info("model %s %s runs in scikit-learn: %s", loaded.name, loaded.version, refused)
            return Scorer(loaded)
        log.info(
            "model %s %s runs in the compiled runtime (max |diff| vs scikit-learn %.2g)",
            loaded.name,
            loaded.version,
            worst,
        )
        return compiled
    if runtime == "onnx":
        from driftline.model.onnx import load_onnx_scorer

        scorer, worst = load_onnx_scorer(loaded, onnx_tolerance)
        log.info(
            "model %s %s runs in ONNX Runtime (max |diff| vs scikit-learn %.2g)",
            loaded.name,
            loaded.version,
            worst,
        )
        return scorer
    raise ValueError(f"unknown model runtime {runtime!r}: auto, sklearn, compiled or onnx")
