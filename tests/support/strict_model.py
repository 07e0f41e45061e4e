"""A real model that raises on some rows only, for the model-error tests.

Test support, not shipped: no command registers such a model.

The trained churn pipeline one-hot encodes ``plan_type`` and ``region`` with
``handle_unknown="ignore"``.  Registering the same fitted pipeline with
``handle_unknown="error"`` gives a model many teams ship without thinking twice: it
scores every event it was trained for, and raises ``ValueError: Found unknown categories``
on an event whose plan or region it never saw.  ``predict_proba`` on a batch holding
such an event raises for the whole batch, which is what the worker must survive.

The compiled runtime refuses this pipeline (it only reproduces ``handle_unknown=
"ignore"``), so under the default runtime (``auto``) the worker scores it with
scikit-learn, and ``--model-runtime compiled`` refuses to start with it.
"""

from __future__ import annotations

import copy
from pathlib import Path

from driftline.model.registry import LoadedModel, ModelRegistry, ModelVersion

#: A plan no training data had: any event carrying it makes the strict model raise.
UNKNOWN_PLAN = "legacy-platinum"


def strict_pipeline(model: LoadedModel) -> object:
    """A copy of ``model``'s fitted pipeline whose one-hot encoders reject unseen values."""
    pipeline = copy.deepcopy(model.pipeline)
    columns = pipeline.named_steps["features"]
    encoders = 0
    for _name, branch, _cols in columns.transformers_:
        steps = getattr(branch, "named_steps", {})
        if "onehot" in steps:
            steps["onehot"].handle_unknown = "error"
            encoders += 1
    if not encoders:
        raise ValueError("the pipeline has no one-hot encoder to make strict")
    return pipeline


def register_strict(model: LoadedModel, root: str | Path) -> ModelVersion:
    """Register the strict copy of ``model`` under the same name in the registry at
    ``root``: a new version, made the champion (what workers serve), as a deploy would."""
    metadata = model.metadata
    return ModelRegistry(root).save(
        model.name,
        strict_pipeline(model),
        feature_names=list(model.feature_names),
        feature_types=dict(metadata["feature_types"]),
        spec_digest=metadata.get("spec_digest"),
        metrics=dict(metadata.get("metrics", {})),
        data_hash=str(metadata.get("data_hash", "")),
        reference_profile=dict(metadata.get("reference_profile") or {}),
        threshold=model.threshold,
        extra={"note": "handle_unknown='error': raises on unseen categories"},
        stage="champion",
    )
