"""Registry stages: champion/candidate/retired in stages.json, lineage, and the watcher
serving the champion (promotions and rollbacks picked up like new versions)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from driftline.model.profile import build_reference_profile
from driftline.model.registry import (
    METADATA_FILE,
    MODEL_FILE,
    ModelRefused,
    ModelRegistry,
    ModelVersion,
)
from driftline.model.stages import STAGES_FILE, StageError
from driftline.model.training import build_pipeline
from driftline.model.watcher import ModelWatcher

NUMERIC = ["spend_30d", "logins_7d"]
CATEGORICAL = ["plan_type"]
FEATURES = ["spend_30d", "plan_type", "logins_7d"]
TYPES = {"spend_30d": "numeric", "plan_type": "categorical", "logins_7d": "numeric"}
SPEC = "a" * 64


@pytest.fixture(scope="module")
def fitted() -> tuple[Pipeline, pd.DataFrame]:
    rng = np.random.default_rng(1)
    n = 200
    X = pd.DataFrame(
        {
            "spend_30d": rng.gamma(2.0, 50.0, n),
            "plan_type": rng.choice(["basic", "pro"], n),
            "logins_7d": rng.poisson(3, n).astype(float),
        }
    )
    y = (X["logins_7d"] + rng.normal(0, 1, n) < 2).astype(int)
    return build_pipeline(NUMERIC, CATEGORICAL, n_estimators=3, seed=0).fit(X, y), X


def save(registry: ModelRegistry, fitted: tuple[Pipeline, pd.DataFrame], **kw: Any) -> ModelVersion:
    pipeline, X = fitted
    scores = pipeline.predict_proba(X)[:, 1]
    version = registry.save(
        "churn",
        pipeline,
        feature_names=FEATURES,
        feature_types=TYPES,
        spec_digest=SPEC,
        metrics={"test": {"roc_auc": 0.75}},
        data_hash="d" * 64,
        reference_profile=build_reference_profile(X, scores, NUMERIC, CATEGORICAL),
        threshold=0.4,
        **kw,
    )
    past = time.time() - 3600  # not "racy": the watcher trusts stat() alone
    for name in (MODEL_FILE, METADATA_FILE):
        os.utime(version.path / name, (past, past))
    return version


def watcher_for(registry: ModelRegistry) -> ModelWatcher:
    return ModelWatcher(
        registry, "churn", "champion", FEATURES, SPEC, interval_s=0.0, racy_window_s=0.0
    )


# --------------------------------------------------------------------------- registry


def test_without_a_stages_file_the_latest_version_is_the_champion(
    tmp_path: Path, fitted: Any
) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted)
    save(registry, fitted)
    assert not (tmp_path / "churn" / STAGES_FILE).exists()
    champion = registry.champion("churn")
    assert (champion.version, champion.source) == ("v0002", "latest")
    assert registry.load("churn", "champion").version == "v0002"


def test_a_recorded_champion_is_served_whatever_is_registered_after_it(
    tmp_path: Path, fitted: Any
) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted, stage="champion")
    save(registry, fitted, stage="candidate")
    save(registry, fitted)  # no stage (ModelRegistry.save without one)
    assert registry.champion("churn").version == "v0001"
    assert registry.champion("churn").source == "recorded"
    assert registry.load("churn", "champion").version == "v0001"
    assert registry.load("churn").version == "v0003"  # "latest" still means latest
    book = registry.stages("churn")
    assert book.stages == {"v0001": "champion", "v0002": "candidate"}


def test_promotion_retires_the_old_champion_and_keeps_who_when_why(
    tmp_path: Path, fitted: Any
) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted, stage="champion")
    save(registry, fitted, stage="candidate")
    entry = registry.set_stage("churn", "v0002", "champion", reason="better AUC", by="ops@test")
    assert entry["replaced"] == "v0001" and entry["from"] == "candidate"
    book = registry.stages("churn")
    assert book.champion == "v0002"
    assert book.stages == {"v0001": "retired", "v0002": "champion"}
    retire, promote = book.history[-2:]
    assert (retire["version"], retire["to"], retire["by"]) == ("v0001", "retired", "ops@test")
    assert "better AUC" in retire["reason"]
    assert (promote["version"], promote["to"], promote["reason"]) == (
        "v0002",
        "champion",
        "better AUC",
    )
    assert promote["at"].endswith("+00:00")
    data = json.loads((tmp_path / "churn" / STAGES_FILE).read_text())
    assert data["champion"] == "v0002" and data["format"] == 1


def test_rollback_returns_to_the_previous_champion_and_never_to_a_rolled_back_one(
    tmp_path: Path, fitted: Any
) -> None:
    registry = ModelRegistry(tmp_path)
    for _ in range(3):
        save(registry, fitted, stage="champion")  # v1, v2, v3 champions in turn
    entry = registry.rollback("churn", reason="v0003 misbehaves")
    assert (entry["version"], entry["replaced"]) == ("v0002", "v0003")
    assert registry.champion("churn").version == "v0002"
    # A second rollback goes further back, not "back" to the rolled-back v0003.
    registry.rollback("churn", reason="v0002 too")
    assert registry.champion("churn").version == "v0001"
    with pytest.raises(StageError, match="no earlier champion"):
        registry.rollback("churn", reason="nothing left")
    registry.rollback("churn", reason="explicit", to="v0003")
    assert registry.champion("churn").version == "v0003"


def test_stage_changes_are_refused_for_unknown_versions_and_stages(
    tmp_path: Path, fitted: Any
) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted)
    with pytest.raises(StageError, match="no version 'v0009'"):
        registry.set_stage("churn", "v0009", "champion", reason="x")
    with pytest.raises(StageError, match="unknown stage"):
        registry.set_stage("churn", "v0001", "golden", reason="x")
    with pytest.raises(StageError, match="no recorded champion"):
        registry.rollback("churn", reason="x")
    with pytest.raises(ValueError, match="candidate or champion"):
        save(registry, fitted, stage="retired")


def test_lineage_is_written_into_the_new_versions_metadata(tmp_path: Path, fitted: Any) -> None:
    registry = ModelRegistry(tmp_path)
    lineage = {"parent_version": "v0007", "incident_id": "f" * 64, "training_window_ms": [1, 2]}
    version = save(registry, fitted, lineage=lineage, stage="candidate")
    metadata = registry.load("churn", version.version).metadata
    assert metadata["lineage"] == {**lineage, "data_hash": "d" * 64}


def test_concurrent_stage_changes_are_all_kept(tmp_path: Path, fitted: Any) -> None:
    registry = ModelRegistry(tmp_path)
    versions = [save(registry, fitted).version for _ in range(8)]
    barrier = threading.Barrier(len(versions))

    def mark(version: str) -> None:
        barrier.wait()
        ModelRegistry(tmp_path).set_stage("churn", version, "candidate", reason="race")

    threads = [threading.Thread(target=mark, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    book = registry.stages("churn")
    assert book.stages == dict.fromkeys(versions, "candidate")
    assert len(book.history) == len(versions)


# --------------------------------------------------------------------------- watcher


def test_the_watcher_follows_promotions_and_rollbacks(tmp_path: Path, fitted: Any) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted, stage="champion")
    save(registry, fitted, stage="candidate")
    watcher = watcher_for(registry)
    assert watcher.load().version == "v0001"  # the champion, not the latest v0002
    assert watcher.poll().kind == "unchanged"

    registry.set_stage("churn", "v0002", "champion", reason="test")
    result = watcher.poll()
    assert result.kind == "loaded" and result.model is not None
    assert result.model.version == "v0002"

    save(registry, fitted)  # a new version without a stage is not served
    assert watcher.poll().kind == "unchanged"
    assert watcher.current is not None and watcher.current.version == "v0002"

    registry.rollback("churn", reason="test")
    result = watcher.poll()
    assert result.kind == "loaded" and result.model is not None
    assert result.model.version == "v0001"


def test_an_old_registry_is_served_its_latest_until_the_first_promotion(
    tmp_path: Path, fitted: Any
) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted)
    watcher = watcher_for(registry)
    assert watcher.load().version == "v0001"
    save(registry, fitted)
    result = watcher.poll()
    assert result.kind == "loaded" and result.version == "v0002"  # as before stages
    registry.set_stage("churn", "v0001", "champion", reason="pin the older one")
    result = watcher.poll()
    assert result.kind == "loaded" and result.version == "v0001"


def test_an_unreadable_stages_file_is_refused_and_the_champion_keeps_serving(
    tmp_path: Path, fitted: Any
) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted, stage="champion")
    watcher = watcher_for(registry)
    assert watcher.load().version == "v0001"
    (tmp_path / "churn" / STAGES_FILE).write_text("{not json")
    result = watcher.poll()
    assert result.kind == "refused" and "stages.json" in (result.message or "")
    assert watcher.current is not None and watcher.current.version == "v0001"


def test_a_candidate_registered_into_an_old_registry_is_not_served(
    tmp_path: Path, fitted: Any
) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted)  # an old registry: no stages at all
    watcher = watcher_for(registry)
    assert watcher.load().version == "v0001"
    save(registry, fitted, stage="candidate")  # what `driftline retrain` registers
    assert watcher.poll().kind == "unchanged"
    assert watcher.current is not None and watcher.current.version == "v0001"
    champion = registry.champion("churn")
    assert (champion.version, champion.source) == ("v0001", "recorded")
    assert (
        "recorded before registering a candidate" in registry.stages("churn").history[0]["reason"]
    )


def test_candidates_and_retired_versions_are_never_served_implicitly(
    tmp_path: Path, fitted: Any
) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted, stage="candidate")
    assert registry.champion("churn").source == "none"
    with pytest.raises(ModelRefused, match=r"has no champion .* `driftline models promote"):
        registry.load("churn", "champion")
    with pytest.raises(ModelRefused, match="has no champion"):
        watcher_for(registry).load()  # a worker does not start on a candidate
    save(registry, fitted)  # a legacy save without a stage is served as before
    assert registry.champion("churn").version == "v0002"


def test_a_report_without_a_version_is_of_the_champion_not_the_latest_candidate(
    tmp_path: Path, fitted: Any
) -> None:
    from driftline.reports.store import ReportError, resolve_version

    registry = ModelRegistry(tmp_path)
    save(registry, fitted, stage="champion")
    save(registry, fitted, stage="candidate")
    assert resolve_version(registry, "churn", "champion") == "v0001"
    assert resolve_version(registry, "churn", "latest") == "v0002"
    assert resolve_version(registry, "churn", "v0002") == "v0002"
    with pytest.raises(ReportError, match="no versions"):
        resolve_version(ModelRegistry(tmp_path / "empty"), "churn", "champion")
