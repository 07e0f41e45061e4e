"""Reason codes on prediction records (``driftline worker --explain K``), per micro-batch.

``ScoringProcessor.finish`` asks :class:`ReasonCodes` for the ``reasons``,
``reasons_base`` and ``reasons_rest`` fields of a batch's event predictions: one
:meth:`ForestExplainer.explain <driftline.model.explain.ForestExplainer.explain>` call over
the batch's feature frame (the rows the model scored, in order).  Off by default: then the
processor never builds this object and its records carry none of these fields.

The explainer is built once per served model and rebuilt when the worker swaps in another
version, so the reasons always describe the model that scored (the record names it).
Only models scored by scikit-learn's ``predict_proba`` are explained
(:func:`check_runtime`): the reasons decompose the forest's output, and a faster runtime's
scores only agree with it within a tolerance.

Tick predictions (``tick_predictions``) carry no reasons: a tick re-scores every customer
in state, and explaining them all would multiply the cost exactly when it peaks.

:func:`reasons_for` is the same computation for one frame of feature rows, for a
request/response API.
"""

from __future__ import annotations

from itertools import repeat
from typing import Any

import pandas as pd

from driftline.core.predictions import Reason
from driftline.model.explain import ExplainRefused, Explanation, ForestExplainer
from driftline.model.runtimes.sklearn import Scorer
from driftline.model.runtimes.verification import RuntimeRefused

__all__ = ["ExplainRefused", "ReasonCodes", "check_runtime", "reasons_for"]


def check_runtime(runtime: str, explain: int | None) -> str:
    """The model runtime to use with ``--explain``: ``auto`` becomes scikit-learn's;
    ``compiled`` and ``onnx`` are refused (``RuntimeRefused``), as is ``K < 1``."""
    if explain is None:
        return runtime
    if explain < 1:
        raise ValueError(f"--explain takes K >= 1 features, got {explain}")
    if runtime in ("auto", "sklearn"):
        return "sklearn"
    raise RuntimeRefused(
        f"--explain needs the sklearn model runtime (reason codes decompose scikit-learn's "
        f"forest output), not {runtime!r}: use --model-runtime sklearn or auto"
    )


class ReasonCodes:
    """The top ``k`` reasons per event prediction, by the model that scored the batch."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"reason codes need k >= 1, got {k}")
        self.k = k
        self._model: object | None = None
        self._explainer: ForestExplainer | None = None

    def explainer(self, scorer: Scorer) -> ForestExplainer:
        """The explainer of ``scorer``'s model (built on first use and on a model swap);
        ``ExplainRefused`` if the model cannot be explained."""
        if self._explainer is None or self._model is not scorer.model:
            self._explainer = ForestExplainer(scorer.model.pipeline, scorer.feature_names)
            self._model = scorer.model
        return self._explainer

    def fields(
        self, scorer: Scorer, frame: pd.DataFrame
    ) -> tuple[list[list[Reason]], repeat[float], list[float]]:
        """The ``reasons``, ``reasons_base`` and ``reasons_rest`` of each row of
        ``frame`` (the batch's scored rows), in order, ready to map into ``Prediction``."""
        explanation = self.explainer(scorer).explain(frame, self.k)
        return (
            _reason_lists(explanation),
            repeat(explanation.base),
            explanation.rest.tolist(),
        )


def _reason_lists(explanation: Explanation) -> list[list[Reason]]:
    names = explanation.names
    return [
        [Reason(names[f], c, v) for f, c, v in zip(features, contributions, values, strict=True)]
        for features, contributions, values in zip(
            explanation.features.tolist(),
            explanation.contributions.tolist(),
            explanation.values,
            strict=True,
        )
    ]


def reasons_for(scorer: Scorer, frame: pd.DataFrame, k: int) -> list[dict[str, Any]]:
    """For an API: each row's score and its top ``k`` reasons, as JSON-ready dicts
    (``score``, ``raw``, ``base``, ``rest``, ``reasons``: [{feature, contribution,
    value}]); ``reasons`` decompose ``raw``, whose calibration is ``score``."""
    explainer = ForestExplainer(scorer.model.pipeline, scorer.feature_names)
    explanation = explainer.explain(frame, k)
    scores = scorer.score(frame).tolist()
    return [
        {
            "score": score,
            "raw": raw,
            "base": explanation.base,
            "rest": rest,
            "reasons": [
                {"feature": r.feature, "contribution": r.contribution, "value": r.value}
                for r in reasons
            ],
        }
        for score, raw, rest, reasons in zip(
            scores,
            explanation.raw.tolist(),
            explanation.rest.tolist(),
            _reason_lists(explanation),
            strict=True,
        )
    ]
