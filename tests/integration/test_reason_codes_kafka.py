"""``driftline worker --explain K`` end to end on a real broker: every event prediction
carries its top K reasons, which with the rest add up to the raw probability whose
calibration is the published score, and which are the contributions an offline
explainer computes from the reference features; a worker without it publishes none."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pytest

from driftline.core.events import EventBatch
from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.worker import KafkaScoringWorker, WorkerSettings
from driftline.event_producer import produce
from driftline.model.calibration import calibration_of
from driftline.model.explain import ForestExplainer
from driftline.model.registry import LoadedModel
from driftline.model.runtimes.verification import RuntimeRefused
from driftline.simulate import Population
from support.feature_oracle import reference_features

pytestmark = pytest.mark.integration


def _events(n: int) -> list[dict[str, Any]]:
    population = Population(n_customers=120, seed=31)
    population.generate_history(days=30)
    return list(population.stream_events(max_events=n))


def _offline_contributions(
    events: list[dict[str, Any]],
    partitions: dict[str, int],
    spec: FeatureSpec,
    model: LoadedModel,
) -> pd.DataFrame:
    """Every feature's contribution per event_id, from features computed offline by the
    reference implementation (per partition, in production order, as the worker sees)."""
    frame = EventBatch.from_frame(pd.DataFrame(events)).to_frame()
    frame["partition"] = frame["customer_id"].map(partitions)
    frame = frame.sort_values("partition", kind="stable")
    features = reference_features(frame, spec)
    contributions, _ = ForestExplainer(model.pipeline, spec.feature_names).contributions(features)
    ids = frame.loc[features.index, "event_id"].to_numpy()
    return pd.DataFrame(contributions, index=ids, columns=spec.feature_names)


@pytest.mark.parametrize("explain", [3, None], ids=["explain-3", "default"])
def test_a_worker_with_explain_publishes_reasons_that_add_up(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
    explain: int | None,
) -> None:
    worker_settings.explain = explain  # model_runtime stays "auto": sklearn with --explain
    events = _events(1500)
    with worker_in_thread(worker_settings, spec):
        produce(worker_settings.bootstrap_servers, worker_settings.input_topic, events)
        messages = consume_all(worker_settings.output_topic, expected=len(events), timeout=90)
    assert len(messages) == len(events)
    if explain is None:
        assert not any(b"reasons" in m.value() for m in messages)
        return
    records = [msgspec.json.decode(m.value()) for m in messages]
    calibrator = calibration_of(loaded_model.pipeline)
    assert calibrator is not None
    partitions = {r["customer_id"]: r["source_partition"] for r in records}
    offline = _offline_contributions(events, partitions, spec, loaded_model)
    worst_sum = worst_offline = 0.0
    for record in records:
        reasons = record["reasons"]
        assert len(reasons) == explain
        raw = record["reasons_base"] + sum(r["contribution"] for r in reasons)
        raw += record["reasons_rest"]
        worst_sum = max(worst_sum, abs(float(calibrator(np.array([raw]))[0]) - record["score"]))
        expected = offline.loc[record["event_id"]]
        top = expected.abs().sort_values(ascending=False, kind="stable").index[:explain]
        assert [r["feature"] for r in reasons] == list(top)
        for reason in reasons:
            worst_offline = max(
                worst_offline, abs(reason["contribution"] - expected[reason["feature"]])
            )
        listed = sum(expected[r["feature"]] for r in reasons)
        assert record["reasons_rest"] == pytest.approx(expected.sum() - listed, abs=1e-9)
    assert worst_sum < 1e-6
    assert worst_offline < 1e-9


def test_explain_with_a_runtime_other_than_sklearn_refuses_to_start(
    worker_settings: WorkerSettings, spec: FeatureSpec
) -> None:
    worker_settings.explain = 3
    worker_settings.model_runtime = "compiled"
    with pytest.raises(RuntimeRefused, match="--explain needs the sklearn model runtime"):
        KafkaScoringWorker(worker_settings, spec).run()
