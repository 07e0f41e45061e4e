"""Model lifecycle: train (offline), register, load with verification, score, profile.

Only the serving side (registry, scoring) is re-exported here: the worker needs nothing
else, and ``training`` pulls in model selection, metrics and tqdm.  Import
``driftline.model.training`` / ``driftline.model.profile`` explicitly where needed.
"""

from driftline.model.registry import (
    REFUSAL_REASONS,
    LoadedModel,
    ModelRefused,
    ModelRegistry,
    ModelVersion,
)
from driftline.model.runtimes.sklearn import Scorer, limit_native_threads

__all__ = [
    "REFUSAL_REASONS",
    "LoadedModel",
    "ModelRefused",
    "ModelRegistry",
    "ModelVersion",
    "Scorer",
    "limit_native_threads",
]
