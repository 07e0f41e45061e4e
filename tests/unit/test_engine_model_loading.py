"""Both engines load their first model through ``engine.model_runtime``: a refused one is
counted (``driftline_model_load_failures_total``, which the ModelLoadFailed alert watches)
and shown on ``/readyz`` before the worker gives up, whichever engine it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from driftline.core.spec import load_default_spec
from driftline.engine.faust.worker import FaustScoringWorker
from driftline.engine.kafka.worker import KafkaScoringWorker, WorkerSettings
from driftline.model.registry import ModelRefused


@pytest.mark.parametrize("engine", [KafkaScoringWorker, FaustScoringWorker])
def test_a_missing_model_is_refused_counted_and_shown_unready(engine: Any, tmp_path: Path) -> None:
    settings = WorkerSettings(
        bootstrap_servers="127.0.0.1:1", registry=str(tmp_path / "empty"), model_name="churn"
    )
    worker = engine(settings, load_default_spec())
    with pytest.raises(ModelRefused):
        worker.load_model()
    failures = sum(
        sample.value
        for family in worker.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "driftline_model_load_failures_total"
    )
    assert failures == 1
    assert not worker.health.model_loaded
