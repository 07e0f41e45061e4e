"""A model swap takes the old version's drift series off /metrics.

Otherwise the last values of a version no longer served (a latched DRIFT state, a
``retrain_required`` of 1) stay exported for as long as the worker runs, and FeatureDrift
or RetrainRequired keep firing for it.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftline.engine.kafka.worker import KafkaScoringWorker, WorkerSettings
from driftline.event_producer import produce
from driftline.model.registry import LoadedModel, ModelRegistry
from driftline.simulate import Population, frame_to_events

pytestmark = pytest.mark.integration

#: Series that carry model and model_version and come from the drift monitor.
DRIFT_SERIES = (
    "driftline_feature_drift_state",
    "driftline_feature_drift_score",
    "driftline_prediction_drift_state",
    "driftline_retrain_required",
    "driftline_reference_rows",
    "driftline_drifted_features",
    "driftline_prediction_score_bucket",
)


def versions_exported(worker: KafkaScoringWorker) -> dict[str, set[str]]:
    """metric name -> model versions it has series for."""
    text = worker.metrics.render()
    text = text.decode() if isinstance(text, bytes) else text
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "model_version" in s.labels and s.name in DRIFT_SERIES:
                found.setdefault(s.name, set()).add(s.labels["model_version"])
    return found


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_old_version_series_are_removed_after_a_swap(
    worker_settings: WorkerSettings,
    spec: Any,
    trained_registry: Path,
    loaded_model: LoadedModel,
    topic_factory: Callable[..., str],
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
    tmp_path: Path,
) -> None:
    root = tmp_path / "models"
    shutil.copytree(trained_registry, root)
    settings = dataclasses.replace(
        worker_settings,
        registry=str(root),
        model_version="latest",
        model_poll_interval_s=0.2,
        drift=True,
        retrain_topic=topic_factory(1, "retrain"),
    )
    population = Population(n_customers=400, seed=3)  # the registry's training population
    history = population.generate_history(days=240)
    live = list(population.stream_events(max_events=4000))
    with worker_in_thread(settings, spec) as worker:
        produce(settings.bootstrap_servers, settings.input_topic, frame_to_events(history))
        produce(settings.bootstrap_servers, settings.input_topic, live[:2000])
        expected = len(history) + 2000
        assert len(consume_all(settings.output_topic, expected=expected, timeout=120)) >= expected
        before = versions_exported(worker)
        assert set(before) == set(DRIFT_SERIES), f"drift series missing: {before}"
        assert all(v == {"v0001"} for v in before.values()), before

        md = loaded_model.metadata
        saved = ModelRegistry(root).save(
            "churn",
            loaded_model.pipeline,
            feature_names=loaded_model.feature_names,
            feature_types=md["feature_types"],
            spec_digest=md["spec_digest"],
            metrics=md["metrics"],
            data_hash=md["data_hash"],
            reference_profile=md["reference_profile"],
            threshold=loaded_model.threshold,
        )
        assert saved.version == "v0002"
        wait_for(lambda: worker.processor.scorer.version == "v0002", "the swap to v0002")
        produce(settings.bootstrap_servers, settings.input_topic, live[2000:])
        expected += len(live) - 2000
        assert len(consume_all(settings.output_topic, expected=expected, timeout=120)) >= expected
        after = versions_exported(worker)
    stale = {name: versions for name, versions in after.items() if "v0001" in versions}
    assert not stale, f"series of the swapped-out v0001 still exported: {stale}"
    assert after.get("driftline_retrain_required") == {"v0002"}
    assert after.get("driftline_feature_drift_state") == {"v0002"}
