"""The model a worker serves, and the runtime it scores with: one rule for every engine.

scikit-learn always works; the compiled runtime (numpy preprocessing, direct tree calls)
and ONNX Runtime are faster, and are used only once they reproduce scikit-learn on the
model's reference sample within their tolerance (``driftline.model.runtimes.verification``).
"""

from __future__ import annotations

import logging

from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.settings import WorkerSettings
from driftline.model.explain import ForestExplainer
from driftline.model.registry import LoadedModel, ModelRefused, ModelRegistry
from driftline.model.runtimes import serving_scorer
from driftline.model.runtimes.sklearn import Scorer
from driftline.model.watcher import ModelWatcher
from driftline.observability.http import HealthState
from driftline.observability.metrics import WorkerMetrics
from driftline.reason_codes import check_runtime

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
    """The scorer for ``--model-runtime`` (:func:`driftline.model.runtimes.serving_scorer`,
    the rule every engine applies).  With ``--explain``: scikit-learn's, and only for a
    model reason codes can explain (``ExplainRefused``, a ``RuntimeRefused``, otherwise:
    the worker does not start, or keeps its current model)."""
    scorer = serving_scorer(
        loaded,
        check_runtime(settings.model_runtime, settings.explain),
        compiled_tolerance=settings.compiled_tolerance,
        onnx_tolerance=settings.onnx_tolerance,
    )
    if settings.explain is not None:
        ForestExplainer(loaded.pipeline, scorer.feature_names)
    return scorer


def load_first_model(
    watcher: ModelWatcher, metrics: WorkerMetrics, health: HealthState
) -> LoadedModel:
    """The model a worker starts with; a refused one is counted and shown on ``/readyz``
    before ``ModelRefused`` propagates (the worker does not start)."""
    try:
        return watcher.load()
    except ModelRefused as refused:
        metrics.inc_model_load_failures(refused.reason)
        health.set_model_loaded(False, f"{refused.reason}: {refused.message}")
        raise
