"""``POST /predict``: feature rows scored by the registry's champion, as the worker does.

The model is the one the worker serves: :class:`~driftline.model.watcher.ModelWatcher`
resolves the champion (``model/stages.py``), verifies the files before unpickling and
refuses a model for another feature list or spec; the runtime is chosen by the same
rule (:func:`~driftline.model.runtimes.serving_scorer`).  Between requests the watcher is
polled when its interval is due, so a promotion or rollback reaches the API as it
reaches the workers.  A batch is scored in one call (one frame, one ``predict_proba``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from driftline.contracts.serving import feature_row_contract
from driftline.core.spec import FeatureSpec
from driftline.model.registry import ModelRegistry
from driftline.model.runtimes import Scorer, serving_scorer
from driftline.model.watcher import ModelWatcher
from driftline.serving.schema import PredictResult, predict_request_type

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """A body that does not match the request schema; the message says where."""


class Predictor:
    """Decodes ``POST /predict`` bodies against the spec's row struct and scores them."""

    def __init__(
        self,
        spec: FeatureSpec,
        registry: str,
        model_name: str,
        *,
        version: str = "champion",
        runtime: str = "auto",
        poll_interval_s: float = 5.0,
        compiled_tolerance: float = 1e-12,
        onnx_tolerance: float = 1e-5,
    ) -> None:
        self.spec = spec
        #: The row's contract (``schemas/feature-row.schema.json`` for the default spec):
        #: its struct is what bodies are decoded with, its schema what OpenAPI shows.
        self.row = feature_row_contract(spec)
        self.request_type = predict_request_type(self.row.struct)
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(self.request_type)
        self._runtime = runtime
        self._tolerances = (compiled_tolerance, onnx_tolerance)
        self._watcher = ModelWatcher(
            ModelRegistry(registry),
            model_name,
            version,
            expected_features=spec.feature_names,
            expected_spec_digest=spec.digest,
            interval_s=poll_interval_s,
        )
        self._lock = threading.Lock()
        self.scorer = self._scorer_for(self._watcher.load())
        self._numeric = list(spec.numeric_features)
        self._categorical = list(spec.categorical_features)

    def _scorer_for(self, loaded: Any) -> Scorer:
        compiled, onnx = self._tolerances
        return serving_scorer(
            loaded, self._runtime, compiled_tolerance=compiled, onnx_tolerance=onnx
        )

    def due(self) -> bool:
        """Whether the registry poll interval has elapsed (cheap: a clock read)."""
        return self._watcher.due()

    def refresh(self) -> None:
        """Poll the registry if due; swap in a newly verified champion (a refused one is
        logged by the watcher and the current model keeps serving)."""
        if not self._watcher.due():
            return
        with self._lock:
            result = self._watcher.poll()
            if result.kind == "loaded" and result.model is not None:
                self.scorer = self._scorer_for(result.model)

    def decode(self, body: bytes) -> tuple[list[Any], bool]:
        """The rows of a body and whether it was a batch; :class:`BadRequest` if it does
        not match the schema (msgspec's message names the path, e.g. ``$[3].spend_30d``)."""
        try:
            decoded = self._decoder.decode(body)
        except msgspec.ValidationError as error:  # a subclass of DecodeError: first
            raise BadRequest(f"body does not match the feature-row schema: {error}") from error
        except msgspec.DecodeError as error:
            raise BadRequest(f"body is not valid JSON: {error}") from error
        if isinstance(decoded, list):
            return decoded, True
        return [decoded], False

    def frame(self, rows: list[Any]) -> pd.DataFrame:
        """The rows as the worker's feature frame: float64 numeric columns (missing:
        NaN), object categorical columns (missing: None), in spec order."""
        numeric = np.array(
            [[getattr(row, name) for name in self._numeric] for row in rows], dtype=np.float64
        ).reshape(len(rows), len(self._numeric))
        frame = pd.DataFrame(numeric, columns=self._numeric, copy=False)
        for name in self._categorical:
            values = [getattr(row, name) for row in rows]
            frame[name] = pd.Series(values, dtype=object)
        return frame.loc[:, self.spec.feature_names]

    def score(self, rows: list[Any]) -> list[PredictResult]:
        """Score the rows in one batch with the serving model."""
        scorer = self.scorer
        scores = scorer.score(self.frame(rows))
        decisions = scorer.decide(scores)
        return [
            PredictResult(
                score=float(s),
                decision=bool(d),
                threshold=scorer.threshold,
                model_name=scorer.name,
                model_version=scorer.version,
            )
            for s, d in zip(scores.tolist(), decisions.tolist(), strict=True)
        ]

    def answer(self, body: bytes) -> PredictResult | list[PredictResult]:
        """Decode, score, and shape the answer like the request: a result for a row, an
        array of results (in row order) for an array of rows."""
        rows, batch = self.decode(body)
        results = self.score(rows)
        return results if batch else results[0]
