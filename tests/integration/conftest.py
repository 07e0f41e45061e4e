"""Fixtures for worker tests: a trained model in a registry, and a worker in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from driftline.core.spec import FeatureSpec, load_default_spec
from driftline.engine.kafka.worker import KafkaScoringWorker, WorkerSettings
from driftline.model.registry import LoadedModel, ModelRegistry
from driftline.simulate import Population

MODEL_NAME = "churn"


@pytest.fixture(scope="session")
def spec() -> FeatureSpec:
    return load_default_spec()


@pytest.fixture(scope="session")
def population_seed() -> int:
    return 11


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory, spec: FeatureSpec) -> Path:
    """A registry holding one small churn model trained on simulated history."""
    from driftline.commands.train import register, train_on_events

    root = tmp_path_factory.mktemp("registry")
    history = Population(n_customers=400, seed=3).generate_history(days=240)
    result = train_on_events(
        history, spec, horizon_days=60, n_estimators=30, cv_folds=3, progress=False
    )
    register(result, ModelRegistry(root), MODEL_NAME, spec)
    return root


@pytest.fixture(scope="session")
def loaded_model(trained_registry: Path, spec: FeatureSpec) -> LoadedModel:
    return ModelRegistry(trained_registry).load(MODEL_NAME, expected_features=spec.feature_names)


@pytest.fixture
def worker_topics(topic_factory: Callable[..., str]) -> dict[str, str]:
    return {
        "input_topic": topic_factory(4, "events"),
        "output_topic": topic_factory(4, "predictions"),
        "dead_letter_topic": topic_factory(1, "dlq"),
    }


@pytest.fixture
def worker_settings(
    kafka_bootstrap: str, unique_group: str, trained_registry: Path, worker_topics: dict[str, str]
) -> WorkerSettings:
    return WorkerSettings(
        bootstrap_servers=kafka_bootstrap,
        group_id=unique_group,
        registry=str(trained_registry),
        model_name=MODEL_NAME,
        batch_size=500,
        metrics_port=0,
        **worker_topics,
    )


@contextmanager
def running_worker(settings: WorkerSettings, spec: FeatureSpec) -> Iterator[KafkaScoringWorker]:
    """A worker in a background thread; stopped (batch finished, committed) on exit."""
    worker = KafkaScoringWorker(settings, spec)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(code=worker.run()), daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(60)
        assert not thread.is_alive(), "worker did not stop within 60 s"
    assert result.get("code") == 0, f"worker exited with {result.get('code')}"


@pytest.fixture(scope="session")
def worker_in_thread() -> Callable[..., Any]:
    return running_worker
