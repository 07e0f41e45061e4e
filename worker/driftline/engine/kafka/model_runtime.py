"""Choosing the model runtime a worker scores with.

scikit-learn always works; the compiled runtime (numpy preprocessing, direct tree calls)
and ONNX Runtime are faster, and are used only once they reproduce scikit-learn on the
model's reference sample within their tolerance (``driftline.model.runtimes.verification``).
"""

from __future__ import annotations

import logging

from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.settings import WorkerSettings
from driftline.model.registry import LoadedModel, ModelRegistry
from driftline.model.runtimes.sklearn import Scorer
from driftline.model.runtimes.verification import RuntimeRefused
from driftline.model.watcher import ModelWatcher

log = logging.getLogger(__name__)


def model_watcher(settings: WorkerSettings, spec: FeatureSpec) -> ModelWatcher:
    """The registry watcher of the model a worker serves: it loads the model at start and
    offers newer verified versions between batches (refusing ones that do not fit
    ``spec``'s features)."""
    return ModelWatcher(
        ModelRegistry(settings.registry),
        settings.model_name,
        settings.model_version,
        expected_features=spec.feature_names,
        expected_spec_digest=spec.digest,
        interval_s=settings.model_poll_interval_s,
    )


def scorer_for(loaded: LoadedModel, settings: WorkerSettings) -> Scorer:
    """scikit-learn, or a faster runtime when asked for and only once it matches
    scikit-learn on the model's reference sample (a mismatch or an unsupported model
    raises a ``RuntimeRefused``)."""
    runtime = settings.model_runtime
    if runtime == "sklearn":
        return Scorer(loaded)
    if runtime == "auto":
        # The compiled runtime when it reproduces the model, else scikit-learn's own.
        from driftline.model.runtimes.compiled import load_compiled_scorer

        try:
            compiled, _worst = load_compiled_scorer(loaded, settings.compiled_tolerance)
        except RuntimeRefused as refused:
            log.info("model %s %s runs in scikit-learn: %s", loaded.name, loaded.version, refused)
            return Scorer(loaded)
        log.info(
            "model %s %s runs in the compiled runtime (same scores as scikit-learn on "
            "its reference sample)",
            loaded.name,
            loaded.version,
        )
        return compiled
    scorer: Scorer
    if runtime == "compiled":
        from driftline.model.runtimes.compiled import load_compiled_scorer

        tolerance = settings.compiled_tolerance
        scorer, worst = load_compiled_scorer(loaded, tolerance)
        where = "the compiled runtime"
    elif runtime == "onnx":
        from driftline.model.runtimes.onnx import load_onnx_scorer

        tolerance = settings.onnx_tolerance
        scorer, worst = load_onnx_scorer(loaded, tolerance)
        where = "ONNX Runtime"
    else:
        raise ValueError(f"unknown model runtime {runtime!r}: auto, sklearn, compiled or onnx")
    log.info(
        "model %s %s runs in %s (max |diff| vs scikit-learn %.2g, tolerance %g)",
        loaded.name,
        loaded.version,
        where,
        worst,
        tolerance,
    )
    return scorer
