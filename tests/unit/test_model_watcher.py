"""Model hot reload: a new verified model is swapped in, anything else is refused."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

import driftline.model.watcher as watcher_module
from driftline.model.profile import build_reference_profile
from driftline.model.registry import (
    METADATA_FILE,
    MODEL_FILE,
    ModelRefused,
    ModelRegistry,
    ModelVersion,
)
from driftline.model.training import build_pipeline
from driftline.model.watcher import ModelWatcher

NUMERIC = ["spend_30d", "logins_7d"]
CATEGORICAL = ["plan_type"]
FEATURES = ["spend_30d", "plan_type", "logins_7d"]
TYPES = {"spend_30d": "numeric", "plan_type": "categorical", "logins_7d": "numeric"}
SPEC = "a" * 64


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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


def save(registry: ModelRegistry, fitted: tuple[Pipeline, pd.DataFrame], **extra: Any) -> Any:
    pipeline, X = fitted
    scores = pipeline.predict_proba(X)[:, 1]
    return registry.save(
        "churn",
        pipeline,
        feature_names=FEATURES,
        feature_types=TYPES,
        spec_digest=SPEC,
        metrics={},
        data_hash="d" * 64,
        reference_profile=build_reference_profile(X, scores, NUMERIC, CATEGORICAL),
        threshold=0.4,
        extra=extra or None,
    )


def age(version: ModelVersion, seconds: float = 3600) -> None:
    """Backdate a version's files, as if saved long ago (not "racy")."""
    past = time.time() - seconds
    for name in (MODEL_FILE, METADATA_FILE):
        os.utime(version.path / name, (past, past))


def rewrite_metadata(version_dir: Path, **changes: Any) -> None:
    path = version_dir / METADATA_FILE
    metadata = json.loads(path.read_text())
    metadata.update(changes)
    path.write_text(json.dumps(metadata))


def make_watcher(registry: ModelRegistry, clock: FakeClock | None = None, **kw: Any) -> Any:
    return ModelWatcher(
        registry,
        "churn",
        kw.pop("version", "latest"),
        expected_features=FEATURES,
        expected_spec_digest=SPEC,
        interval_s=kw.pop("interval_s", 5.0),
        clock=clock or FakeClock(),
        **kw,
    )


class Evil:
    """Unpickling this creates the ``sentinel`` file: proof that code ran."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.sentinel), "w"))


# --------------------------------------------------------------------------- happy paths


def test_unchanged_registry_means_no_load_and_no_hashing(
    tmp_path: Path, fitted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry(tmp_path)
    age(save(registry, fitted))
    watcher = make_watcher(registry)
    first = watcher.load()
    assert first.version == "v0001" and watcher.current is first and watcher.loads == 1

    def no_hashing(*_: object) -> str:
        raise AssertionError("hashed files although nothing changed")

    monkeypatch.setattr(watcher_module, "_content_digest", no_hashing)
    for _ in range(5):
        result = watcher.poll()
        assert result.kind == "unchanged" and result.model is None
    assert watcher.loads == 1 and watcher.current is first and watcher.last_failure is None


def test_due_follows_the_interval() -> None:
    clock = FakeClock()
    watcher = make_watcher(ModelRegistry("/nonexistent"), clock, interval_s=5.0)
    assert watcher.due()  # never polled
    watcher.poll()
    assert not watcher.due()
    clock.now += 4.9
    assert not watcher.due()
    clock.now += 0.1
    assert watcher.due()
    watcher.poll()
    assert not watcher.due()


def test_a_new_version_is_loaded(tmp_path: Path, fitted: Any) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted)
    watcher = make_watcher(registry)
    assert watcher.load().version == "v0001"
    save(registry, fitted)
    result = watcher.poll()
    assert result.kind == "loaded" and result.model is not None
    assert result.model.version == "v0002" and watcher.current is result.model
    assert watcher.poll().kind == "unchanged"


def test_a_pinned_version_ignores_new_versions(tmp_path: Path, fitted: Any) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted)
    watcher = make_watcher(registry, version="v0001")
    watcher.load()
    save(registry, fitted)
    assert watcher.poll().kind == "unchanged" and watcher.current.version == "v0001"


def test_deleting_the_latest_rolls_back(tmp_path: Path, fitted: Any) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted)
    second = save(registry, fitted)
    watcher = make_watcher(registry)
    assert watcher.load().version == "v0002"
    shutil.rmtree(second.path)
    result = watcher.poll()
    assert result.kind == "loaded" and result.model.version == "v0001"


def test_initial_load_refusal_raises(tmp_path: Path, fitted: Any) -> None:
    registry = ModelRegistry(tmp_path)
    saved = save(registry, fitted)
    rewrite_metadata(saved.path, feature_names=["a", "b"])
    watcher = make_watcher(registry)
    with pytest.raises(ModelRefused) as refused:
        watcher.load()
    assert refused.value.reason == "feature_mismatch"
    assert watcher.current is None and watcher.last_failure.reason == "feature_mismatch"


# --------------------------------------------------------------------------- refusals


def test_tampered_bytes_are_refused_without_unpickling_and_current_stays(
    tmp_path: Path, fitted: Any, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry(tmp_path)
    saved = save(registry, fitted)
    watcher = make_watcher(registry)
    first = watcher.load()

    sentinel = tmp_path / "pwned"
    (saved.path / MODEL_FILE).write_bytes(pickle.dumps(Evil(sentinel)))  # sha256 not updated
    result = watcher.poll()
    assert result.kind == "refused" and result.reason == "checksum_mismatch"
    assert result.version == "v0001" and "sha256" in (result.message or "")
    assert not sentinel.exists(), "the tampered pickle was executed"
    assert watcher.current is first and watcher.last_failure == result
    assert "model refused (checksum_mismatch)" in caplog.text
    assert "churn v0001 keeps serving" in caplog.text


def test_a_different_feature_list_is_refused(tmp_path: Path, fitted: Any) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted)
    watcher = make_watcher(registry)
    first = watcher.load()
    second = save(registry, fitted)
    rewrite_metadata(second.path, feature_names=[*FEATURES[:-1], "favourite_colour"])
    result = watcher.poll()
    assert result.kind == "refused" and result.reason == "feature_mismatch"
    assert "favourite_colour" in (result.message or "") and result.version == "v0002"
    assert watcher.current is first


def test_another_spec_is_refused(tmp_path: Path, fitted: Any) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted)
    watcher = make_watcher(registry)
    first = watcher.load()
    second = save(registry, fitted)
    rewrite_metadata(second.path, spec_digest="b" * 64)
    result = watcher.poll()
    assert result.kind == "refused" and result.reason == "spec_mismatch"
    assert watcher.current is first


def test_garbage_with_a_matching_checksum_is_refused_as_corrupt(
    tmp_path: Path, fitted: Any
) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted)
    watcher = make_watcher(registry)
    first = watcher.load()
    second = save(registry, fitted)
    garbage = os.urandom(4096)
    (second.path / MODEL_FILE).write_bytes(garbage)
    rewrite_metadata(second.path, sha256=hashlib.sha256(garbage).hexdigest())
    result = watcher.poll()
    assert result.kind == "refused" and result.reason == "corrupt"
    assert watcher.current is first


def test_a_refusal_is_not_retried_until_the_files_change_again(tmp_path: Path, fitted: Any) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted)
    watcher = make_watcher(registry)
    watcher.load()
    second = save(registry, fitted)
    model_file = second.path / MODEL_FILE
    good = model_file.read_bytes()
    model_file.write_bytes(good[: len(good) // 2])  # an in-place copy caught half-way
    assert watcher.poll().reason == "checksum_mismatch"
    loads = watcher.loads
    for _ in range(3):
        assert watcher.poll().kind == "unchanged"
    assert watcher.loads == loads and watcher.last_failure is not None

    model_file.write_bytes(good)  # the copy completes: retried, verified, swapped
    result = watcher.poll()
    assert result.kind == "loaded" and result.model.version == "v0002"
    assert watcher.last_failure is None


def test_after_a_refusal_a_good_new_version_is_loaded(tmp_path: Path, fitted: Any) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted)
    watcher = make_watcher(registry)
    watcher.load()
    bad = save(registry, fitted)
    rewrite_metadata(bad.path, feature_names=["x"])
    assert watcher.poll().reason == "feature_mismatch"
    save(registry, fitted, note="fixed")
    result = watcher.poll()
    assert result.kind == "loaded" and result.model.version == "v0003"
    assert result.model.metadata["extra"] == {"note": "fixed"}
    assert watcher.current is result.model and watcher.last_failure is None


def test_restoring_tampered_files_clears_the_failure_without_a_swap(
    tmp_path: Path, fitted: Any
) -> None:
    registry = ModelRegistry(tmp_path)
    saved = save(registry, fitted)
    watcher = make_watcher(registry)
    first = watcher.load()
    model_file = saved.path / MODEL_FILE
    good = model_file.read_bytes()
    model_file.write_bytes(b"\x00" + good[1:])
    assert watcher.poll().kind == "refused"
    model_file.write_bytes(good)
    result = watcher.poll()
    assert result.kind == "unchanged" and watcher.current is first
    assert watcher.last_failure is None


def test_all_versions_deleted_is_refused_once_and_current_stays(
    tmp_path: Path, fitted: Any
) -> None:
    registry = ModelRegistry(tmp_path)
    saved = save(registry, fitted)
    watcher = make_watcher(registry)
    first = watcher.load()
    shutil.rmtree(saved.path)
    result = watcher.poll()
    assert result.kind == "refused" and result.reason == "missing"
    assert watcher.poll().kind == "unchanged"  # counted once, not every poll
    assert watcher.current is first


def test_a_same_stat_rewrite_of_a_racy_file_is_still_noticed(
    tmp_path: Path, fitted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Coarse mtimes: a same-size rewrite in the same tick keeps the stats equal."""
    frozen = (1, 2, time.time_ns(), 4)  # inode, size, mtime (recent: racy), ctime
    monkeypatch.setattr(watcher_module, "_file_key", lambda path: frozen)
    registry = ModelRegistry(tmp_path)
    saved = save(registry, fitted)
    watcher = make_watcher(registry, racy_window_s=3600)
    first = watcher.load()
    # The stats never change, but the files are racy: content hashes are compared.
    assert watcher.poll().kind == "unchanged" and watcher.loads == 1
    model_file = saved.path / MODEL_FILE
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    result = watcher.poll()
    assert result.kind == "refused" and result.reason == "checksum_mismatch"
    assert watcher.current is first


def test_hashing_stops_once_the_files_are_no_longer_racy(
    tmp_path: Path, fitted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = watcher_module._content_digest

    def counting(paths: Any) -> str:
        calls.append(1)
        return real(paths)

    monkeypatch.setattr(watcher_module, "_content_digest", counting)
    registry = ModelRegistry(tmp_path)
    save(registry, fitted)  # just written: racy
    watcher = make_watcher(registry, racy_window_s=3600)
    watcher.load()
    watcher.poll()
    assert len(calls) == 2  # load and poll both hash while racy
    watcher.racy_window_ns = 0  # time passes
    watcher.poll()  # one last hash, to compare with the racy reference
    watcher.poll()
    watcher.poll()
    assert len(calls) == 3 and watcher.loads == 1


def test_a_vanished_registry_is_refused_once(tmp_path: Path, fitted: Any) -> None:
    registry = ModelRegistry(tmp_path / "models")
    save(registry, fitted)
    watcher = make_watcher(registry)
    first = watcher.load()
    shutil.rmtree(registry.root)
    result = watcher.poll()
    assert result.kind == "refused" and result.reason == "missing"
    assert watcher.poll().kind == "unchanged" and watcher.current is first


def test_an_unreadable_registry_is_refused_once(
    tmp_path: Path, fitted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted)
    watcher = make_watcher(registry)
    first = watcher.load()

    def denied(path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(watcher_module, "_file_key", denied)
    result = watcher.poll()
    assert result.kind == "refused" and result.reason == "missing"
    assert "Permission denied" in (result.message or "")
    assert watcher.poll().kind == "unchanged" and watcher.loads == 1
    assert watcher.current is first


def test_joblib_only_ever_sees_verified_bytes(
    tmp_path: Path, fitted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry(tmp_path)
    save(registry, fitted)
    watcher = make_watcher(registry)
    watcher.load()
    second = save(registry, fitted)
    (second.path / MODEL_FILE).write_bytes(b"not a pickle at all")

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("joblib.load called on an unverified file")

    monkeypatch.setattr(joblib, "load", refuse)
    assert watcher.poll().reason == "checksum_mismatch"
