"""A worker with ``--drift`` on a model whose reference never saw some features, on a real
broker.

The log is purchase-only in the way CDNOW is: no event carries age, income, tenure, plan or
region, so ``train_on_events`` leaves them out of the model and of its reference profile
(entirely missing in training).  Such a model used to stop the worker at start
(``reference shares are empty``); now it runs, scores every event, monitors the features it
has a reference for and no others, and says how many events it did not monitor because
they precede the reference period.  With ``drift_from_start`` it monitors them all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftline.commands.train import register, train_on_events
from driftline.core.events import PROFILE_FIELDS
from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.worker import WorkerSettings
from driftline.event_producer import produce
from driftline.model.registry import ModelRegistry
from driftline.simulate import Population, frame_to_events

pytestmark = pytest.mark.integration


def without_profile(frame: pd.DataFrame) -> pd.DataFrame:
    """The same events with no profile field at all: a purchase log's view of them."""
    out = frame.copy()
    for field in PROFILE_FIELDS:
        out[field] = np.nan if pd.api.types.is_numeric_dtype(out[field]) else None
    return out


@pytest.fixture(scope="module")
def purchase_only(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, dict]:
    """(registry, event history, reference profile) of a model trained without profiles."""
    from driftline.core.spec import load_default_spec

    spec = load_default_spec()
    history = without_profile(Population(n_customers=300, seed=41).generate_history(days=200))
    registry = ModelRegistry(tmp_path_factory.mktemp("purchase-only-models"))
    result = train_on_events(
        history, spec, horizon_days=60, n_estimators=20, cv_folds=3, progress=False
    )
    profile = result.reference_profile
    assert set(PROFILE_FIELDS) <= set(result.dropped_features)
    assert not set(PROFILE_FIELDS) & (set(profile["numeric"]) | set(profile["categorical"]))
    register(result, registry, "churn", spec)
    return registry.root, history, profile


def samples(exposition: str, name: str) -> list[Any]:
    return [
        sample
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name
    ]


def run_worker(
    settings: WorkerSettings,
    spec: FeatureSpec,
    worker_in_thread: Callable[..., Any],
    consume_all: Callable[..., list[Any]],
    history: pd.DataFrame,
) -> tuple[str, int]:
    """Replay the history through a worker with --drift; (its /metrics, events it monitored)."""
    with worker_in_thread(settings, spec) as worker:
        produce(settings.bootstrap_servers, settings.input_topic, frame_to_events(history))
        predictions = consume_all(settings.output_topic, expected=len(history), timeout=120)
        assert len(predictions) == len(history), "every event gets exactly one prediction"
        assert worker.processor is not None and worker.processor.drift is not None
        monitored = worker.processor.drift.events_seen
        exposition = worker.metrics.render().decode()
    return exposition, monitored


def test_drift_worker_runs_on_a_model_without_profile_features_and_counts_skipped_events(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    worker_in_thread: Callable[..., Any],
    consume_all: Callable[..., list[Any]],
    purchase_only: tuple[Path, pd.DataFrame, dict],
) -> None:
    registry, history, profile = purchase_only
    worker_settings.registry = str(registry)
    worker_settings.drift = True
    exposition, monitored = run_worker(
        worker_settings, spec, worker_in_thread, consume_all, history
    )

    before = int((history["event_time"].to_numpy() <= profile["window_ms"][0]).sum())
    assert 0 < before < len(history)
    assert monitored == len(history) - before
    skipped = samples(exposition, "driftline_drift_unmonitored_events_total")
    assert [(s.labels["reason"], s.value) for s in skipped] == [("before_reference_period", before)]
    states = {
        s.labels["feature"]: s.value for s in samples(exposition, "driftline_feature_drift_state")
    }
    monitored_features = set(profile["numeric"]) | set(profile["categorical"])
    assert set(states) == monitored_features and not set(PROFILE_FIELDS) & set(states)
    detectors = {
        (s.labels["feature"], s.labels["detector"])
        for s in samples(exposition, "driftline_feature_drift_score")
    }
    assert not {f for f, _ in detectors} & set(PROFILE_FIELDS)
    assert ("spend_30d", "mean") in detectors
    (mean_score,) = samples(exposition, "driftline_prediction_mean_score")
    assert 0.0 <= mean_score.value <= 1.0


def test_drift_from_start_monitors_the_events_before_the_reference_period(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    worker_in_thread: Callable[..., Any],
    consume_all: Callable[..., list[Any]],
    purchase_only: tuple[Path, pd.DataFrame, dict],
) -> None:
    registry, history, _ = purchase_only
    worker_settings.registry = str(registry)
    worker_settings.drift = True
    worker_settings.drift_from_start = True
    exposition, monitored = run_worker(
        worker_settings, spec, worker_in_thread, consume_all, history
    )
    assert monitored == len(history)
    skipped = samples(exposition, "driftline_drift_unmonitored_events_total")
    assert [s.value for s in skipped] == [0.0]
