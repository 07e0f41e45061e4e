"""Model faults on a running worker: bad models are refused, the serving model carries on.

Fault 5 of the fault-tolerance issue: the model file replaced by a tampered one, or a new
version with a different feature list, is refused (``driftline_model_load_failures_total``
counts it, which the ModelLoadFailed alert watches) while the previous model keeps scoring
every event; a good new version is then hot-swapped between batches, and no event is lost
or scored twice.

Needs a broker (the session fixture) *and* the model watcher wired into the worker
(``WorkerSettings.model_poll_interval_s``, see ``driftline.model.watcher``): skipped, with
that reason, until the worker has it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftline.core.predictions import Prediction
from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.worker import KafkaScoringWorker, WorkerSettings
from driftline.event_producer import produce
from driftline.model.registry import METADATA_FILE, MODEL_FILE, LoadedModel, ModelRegistry
from driftline.simulate import Population

MODEL = "churn"
_HOT_RELOAD = "model_poll_interval_s" in {f.name for f in dataclasses.fields(WorkerSettings)}

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not _HOT_RELOAD,
        reason="needs the model watcher wired into KafkaScoringWorker "
        "(WorkerSettings.model_poll_interval_s; driftline.model.watcher.ModelWatcher)",
    ),
]


def sample(worker: KafkaScoringWorker, name: str, **labels: str) -> float:
    """One sample of the worker's /metrics text (0 if absent)."""
    text = worker.metrics.render()
    if isinstance(text, bytes):
        text = text.decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def failures(worker: KafkaScoringWorker, reason: str) -> float:
    return sample(worker, "driftline_model_load_failures_total", reason=reason)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def register_copy(root: Path, source: Path, version: str, **metadata_changes: Any) -> Path:
    """Register ``source``'s files as ``version`` the way the registry does: stage, rename."""
    folder = root / MODEL / version
    staging = root / MODEL / f".staging-{version}"
    shutil.copytree(source, staging)
    path = staging / METADATA_FILE
    metadata = json.loads(path.read_text())
    metadata.update(version=version, **metadata_changes)
    path.write_text(json.dumps(metadata))
    os.rename(staging, folder)
    return folder


@pytest.mark.parametrize("scoring_process", [False, True], ids=["in-loop", "scoring-process"])
def test_bad_models_are_refused_while_the_previous_one_serves_then_a_good_one_swaps_in(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    trained_registry: Path,
    loaded_model: LoadedModel,
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
    tmp_path: Path,
    scoring_process: bool,
) -> None:
    """With a scoring process, a swap starts a child for the new model once the batch
    pending in the old one is published."""
    root = tmp_path / "models"
    shutil.copytree(trained_registry, root)  # never damage the session's registry
    assert ModelRegistry(root).versions(MODEL) == ["v0001"]
    pristine = tmp_path / "pristine-v0001"
    shutil.copytree(root / MODEL / "v0001", pristine)
    settings = dataclasses.replace(
        worker_settings,
        registry=str(root),
        model_version="latest",
        batch_size=200,
        model_poll_interval_s=0.2,
        scoring_process=scoring_process,
    )

    population = Population(n_customers=200, seed=31)
    population.generate_history(days=10)
    events = list(population.stream_events(max_events=4_000))
    size = len(events) // 4
    phases = [events[i * size : (i + 1) * size] for i in range(3)] + [events[3 * size :]]
    expected_version: dict[str, str] = {}
    topic = settings.output_topic

    def run_phase(batch: list[dict[str, Any]], version: str) -> None:
        produce(settings.bootstrap_servers, settings.input_topic, batch)
        expected_version.update((e["event_id"], version) for e in batch)
        messages = consume_all(topic, expected=len(expected_version), timeout=120)
        scored = {}
        for m in messages:
            p = msgspec.json.decode(m.value(), type=Prediction)
            scored[p.event_id] = p.model_version
        wrong = {
            e["event_id"]: scored.get(e["event_id"])
            for e in batch
            if scored.get(e["event_id"]) != version
        }
        assert not wrong, f"{len(wrong)} events not scored by {version}: {list(wrong.items())[:5]}"

    with worker_in_thread(settings, spec) as worker:
        wait_for(lambda: worker.processor is not None, "the worker to load its model")
        run_phase(phases[0], "v0001")

        # 1. v0001's model.joblib tampered in place: refused, v0001 (in memory) keeps serving.
        artifact = root / MODEL / "v0001" / MODEL_FILE
        data = bytearray(artifact.read_bytes())
        data[len(data) // 2] ^= 0xFF
        artifact.write_bytes(bytes(data))
        wait_for(lambda: failures(worker, "checksum_mismatch") >= 1, "checksum_mismatch")
        run_phase(phases[1], "v0001")
        assert worker.processor.scorer.version == "v0001"
        assert worker.health.model_loaded, "a refused reload must not make the worker unready"

        # 2. a v0002 trained for another feature list: refused, v0001 keeps serving.
        wrong_features = [*loaded_model.feature_names[:-1], "favourite_colour"]
        register_copy(root, pristine, "v0002", feature_names=wrong_features)
        wait_for(lambda: failures(worker, "feature_mismatch") >= 1, "feature_mismatch")
        run_phase(phases[2], "v0001")
        assert worker.processor.scorer.version == "v0001"

        # 3. a good v0003, registered the normal way: verified and swapped between batches.
        md = loaded_model.metadata
        saved = ModelRegistry(root).save(
            MODEL,
            loaded_model.pipeline,
            feature_names=loaded_model.feature_names,
            feature_types=md["feature_types"],
            spec_digest=md["spec_digest"],
            metrics=md["metrics"],
            data_hash=md["data_hash"],
            reference_profile=md["reference_profile"],
            threshold=loaded_model.threshold,
        )
        assert saved.version == "v0003"
        wait_for(lambda: worker.processor.scorer.version == "v0003", "the swap to v0003")
        run_phase(phases[3], "v0003")
        assert sample(worker, "driftline_model_info", model_version="v0003") == 1
        assert sample(worker, "driftline_model_info", model_version="v0001") == 0

        # Refusals are counted once per change on disk, not once per poll (0.2 s apart).
        assert 1 <= failures(worker, "checksum_mismatch") <= 2  # 2 if a poll saw a torn write
        assert failures(worker, "feature_mismatch") == 1

    messages = consume_all(topic, expected=len(events), timeout=60)
    ids = collections.Counter(
        msgspec.json.decode(m.value(), type=Prediction).event_id for m in messages
    )
    missing = set(expected_version) - set(ids)
    assert not missing, f"{len(missing)} events without a prediction"
    duplicates = {event_id: n for event_id, n in ids.items() if n > 1}
    assert not duplicates, f"{len(duplicates)} events scored more than once"
