"""Model registry: atomic versions, and refusal of anything that must not be served."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from datetime import datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from driftline.model.profile import build_reference_profile
from driftline.model.registry import (
    METADATA_FILE,
    MODEL_FILE,
    REFUSAL_REASONS,
    ModelRefused,
    ModelRegistry,
    ModelVersion,
    describe_feature_difference,
)
from driftline.model.runtimes.sklearn import Scorer, limit_native_threads
from driftline.model.training import build_pipeline

NUMERIC = ["spend_30d", "logins_7d"]
CATEGORICAL = ["plan_type"]
FEATURES = ["spend_30d", "plan_type", "logins_7d"]  # spec order, mixed types
TYPES = {"spend_30d": "numeric", "plan_type": "categorical", "logins_7d": "numeric"}


def _frame(n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "spend_30d": rng.gamma(2.0, 50.0, n),
            "plan_type": rng.choice(["basic", "pro", None], n),
            "logins_7d": rng.poisson(3, n).astype(float),
        }
    )
    y = pd.Series((X["logins_7d"] + rng.normal(0, 1, n) < 2).astype(int))
    return X, y


@pytest.fixture(scope="module")
def fitted() -> tuple[Pipeline, pd.DataFrame]:
    X, y = _frame(300, seed=1)
    pipeline = build_pipeline(NUMERIC, CATEGORICAL, n_estimators=5, seed=0).fit(X, y)
    return pipeline, X


def _save(
    registry: ModelRegistry,
    pipeline: Pipeline,
    X: pd.DataFrame,
    name: str = "churn",
    **overrides: Any,
) -> ModelVersion:
    scores = pipeline.predict_proba(X)[:, 1]
    arguments: dict[str, Any] = {
        "feature_names": FEATURES,
        "feature_types": TYPES,
        "spec_digest": "a" * 64,
        "metrics": {"test": {"roc_auc": 0.9}},
        "data_hash": "d" * 64,
        "reference_profile": build_reference_profile(X, scores, NUMERIC, CATEGORICAL),
        "threshold": 0.4,
    }
    arguments.update(overrides)
    return registry.save(name, pipeline, **arguments)


def _forbid_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("joblib.load called on an unverified file")

    monkeypatch.setattr(joblib, "load", refuse)


def _rewrite_metadata(version_dir: Path, **changes: Any) -> None:
    path = version_dir / METADATA_FILE
    metadata = json.loads(path.read_text())
    metadata.update(changes)
    path.write_text(json.dumps(metadata))


def test_round_trip(tmp_path: Path, fitted: tuple[Pipeline, pd.DataFrame]) -> None:
    pipeline, X = fitted
    registry = ModelRegistry(tmp_path)
    assert registry.versions("churn") == [] and registry.latest("churn") is None

    first = _save(registry, pipeline, X)
    second = _save(registry, pipeline, X, extra={"note": "retrained"})
    assert (first.version, second.version) == ("v0001", "v0002")
    assert registry.versions("churn") == ["v0001", "v0002"]
    assert registry.latest("churn") == "v0002"
    assert sorted(p.name for p in (tmp_path / "churn").iterdir()) == ["v0001", "v0002"]

    loaded = registry.load("churn", expected_features=FEATURES, expected_spec_digest="a" * 64)
    assert loaded.version == "v0002" and loaded.feature_names == FEATURES
    assert loaded.threshold == 0.4
    assert loaded.sha256 == hashlib.sha256((second.path / MODEL_FILE).read_bytes()).hexdigest()
    np.testing.assert_array_equal(loaded.pipeline.predict_proba(X), pipeline.predict_proba(X))

    metadata = loaded.metadata
    assert metadata["name"] == "churn" and metadata["version"] == "v0002"
    assert metadata["feature_types"] == TYPES and metadata["spec_digest"] == "a" * 64
    assert metadata["data_hash"] == "d" * 64 and metadata["extra"] == {"note": "retrained"}
    assert set(metadata["libraries"]) == {"python", "sklearn", "numpy", "pandas", "joblib"}
    assert datetime.fromisoformat(metadata["created_at"]).utcoffset().total_seconds() == 0
    assert metadata["reference_profile"]["n_rows"] == len(X)
    assert registry.load("churn", "v0001").version == "v0001"


def test_flipped_byte_is_refused_without_unpickling(
    tmp_path: Path, fitted: tuple[Pipeline, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry(tmp_path)
    saved = _save(registry, *fitted)
    model_file = saved.path / MODEL_FILE
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    _forbid_unpickling(monkeypatch)

    with pytest.raises(ModelRefused) as refused:
        registry.load("churn")
    assert refused.value.reason == "checksum_mismatch"
    assert MODEL_FILE in refused.value.message


def test_malicious_pickle_is_never_executed(
    tmp_path: Path, fitted: tuple[Pipeline, pd.DataFrame]
) -> None:
    class Exploit:
        def __init__(self, marker: Path) -> None:
            self.marker = marker

        def __reduce__(self) -> tuple[Any, ...]:
            return (os.mkdir, (str(self.marker),))

    # The payload is live: unpickling it does run code.
    pickle.loads(pickle.dumps(Exploit(tmp_path / "proof")))
    assert (tmp_path / "proof").is_dir()

    registry = ModelRegistry(tmp_path / "registry")
    saved = _save(registry, *fitted)
    marker = tmp_path / "pwned"
    (saved.path / MODEL_FILE).write_bytes(pickle.dumps(Exploit(marker)))

    with pytest.raises(ModelRefused) as refused:
        registry.load("churn")
    assert refused.value.reason == "checksum_mismatch"
    assert not marker.exists()


def test_feature_mismatch_names_the_features(
    tmp_path: Path, fitted: tuple[Pipeline, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry(tmp_path)
    _save(registry, *fitted)
    _forbid_unpickling(monkeypatch)  # refused from the metadata alone

    with pytest.raises(ModelRefused) as refused:
        registry.load("churn", expected_features=["spend_30d", "plan_type", "tickets_30d"])
    assert refused.value.reason == "feature_mismatch"
    assert "'tickets_30d'" in refused.value.message  # expected, the model lacks it
    assert "'logins_7d'" in refused.value.message  # the model has it, not expected

    with pytest.raises(ModelRefused) as refused:
        registry.load("churn", expected_features=["plan_type", "spend_30d", "logins_7d"])
    assert refused.value.reason == "feature_mismatch"
    assert "order" in refused.value.message and "position 0" in refused.value.message


def test_spec_digest_mismatch(tmp_path: Path, fitted: tuple[Pipeline, pd.DataFrame]) -> None:
    registry = ModelRegistry(tmp_path)
    _save(registry, *fitted)
    with pytest.raises(ModelRefused) as refused:
        registry.load("churn", expected_spec_digest="b" * 64)
    assert refused.value.reason == "spec_mismatch"
    assert "aaaaaaaaaaaa" in refused.value.message and "bbbbbbbbbbbb" in refused.value.message


def test_missing_versions_and_files(tmp_path: Path, fitted: tuple[Pipeline, pd.DataFrame]) -> None:
    registry = ModelRegistry(tmp_path)
    for name, version in [("churn", "latest"), ("churn", "v0007"), ("../etc", "latest")]:
        with pytest.raises(ModelRefused) as refused:
            registry.load(name, version)
        assert refused.value.reason == "missing"
    saved = _save(registry, *fitted)
    (saved.path / MODEL_FILE).unlink()
    with pytest.raises(ModelRefused) as refused:
        registry.load("churn")
    assert refused.value.reason == "missing" and MODEL_FILE in refused.value.message


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", json.dumps({"name": "churn"})],
    ids=["syntax", "not-object", "keys-missing"],
)
def test_invalid_metadata(
    tmp_path: Path, fitted: tuple[Pipeline, pd.DataFrame], content: str
) -> None:
    registry = ModelRegistry(tmp_path)
    saved = _save(registry, *fitted)
    (saved.path / METADATA_FILE).write_text(content)
    with pytest.raises(ModelRefused) as refused:
        registry.load("churn")
    assert refused.value.reason == "metadata_invalid"


def test_metadata_copied_from_another_version_is_invalid(
    tmp_path: Path, fitted: tuple[Pipeline, pd.DataFrame]
) -> None:
    registry = ModelRegistry(tmp_path)
    first = _save(registry, *fitted)
    second = _save(registry, *fitted)
    (second.path / METADATA_FILE).write_bytes((first.path / METADATA_FILE).read_bytes())
    with pytest.raises(ModelRefused) as refused:
        registry.load("churn", "v0002")
    assert refused.value.reason == "metadata_invalid"


def test_verified_but_unusable_payload_is_corrupt(
    tmp_path: Path, fitted: tuple[Pipeline, pd.DataFrame]
) -> None:
    registry = ModelRegistry(tmp_path)
    saved = _save(registry, *fitted)
    for payload in (b"definitely not a pickle", pickle.dumps({"a": "dict"})):
        (saved.path / MODEL_FILE).write_bytes(payload)
        _rewrite_metadata(saved.path, sha256=hashlib.sha256(payload).hexdigest())
        with pytest.raises(ModelRefused) as refused:
            registry.load("churn")
        assert refused.value.reason == "corrupt"


def test_metadata_features_disagreeing_with_the_fitted_model(
    tmp_path: Path, fitted: tuple[Pipeline, pd.DataFrame]
) -> None:
    pipeline, X = fitted
    registry = ModelRegistry(tmp_path)
    with pytest.raises(ValueError, match="logins_7d"):
        _save(registry, pipeline, X, feature_names=["spend_30d", "plan_type", "logins_30d"])

    saved = _save(registry, pipeline, X)
    renamed = ["spend_30d", "plan_type", "logins_30d"]
    _rewrite_metadata(saved.path, feature_names=renamed)
    with pytest.raises(ModelRefused) as refused:
        registry.load("churn", expected_features=renamed)
    assert refused.value.reason == "feature_mismatch" and "logins_7d" in refused.value.message


def test_save_validates_its_inputs(tmp_path: Path, fitted: tuple[Pipeline, pd.DataFrame]) -> None:
    pipeline, X = fitted
    registry = ModelRegistry(tmp_path)
    with pytest.raises(ValueError, match="strict JSON"):
        _save(registry, pipeline, X, metrics={"roc_auc": float("nan")})
    with pytest.raises(ValueError, match="feature_types"):
        _save(registry, pipeline, X, feature_types={"spend_30d": "numeric"})
    with pytest.raises(ValueError, match="threshold"):
        _save(registry, pipeline, X, threshold=1.5)
    with pytest.raises(ValueError, match="model name"):
        _save(registry, pipeline, X, name="../escape")
    assert registry.versions("churn") == []
    assert [p.name for p in (tmp_path / "churn").iterdir()] == []  # staging cleaned up


def test_refusal_reasons_are_a_closed_set() -> None:
    assert REFUSAL_REASONS == (
        "missing",
        "checksum_mismatch",
        "feature_mismatch",
        "spec_mismatch",
        "corrupt",
        "metadata_invalid",
    )
    assert describe_feature_difference(["a", "b"], ["a", "b"]) is None
    assert "twice" in (describe_feature_difference(["a", "b"], ["a", "b", "b"]) or "")


def test_scorer_one_call_reordered_columns(
    tmp_path: Path, fitted: tuple[Pipeline, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, X = fitted
    registry = ModelRegistry(tmp_path)
    _save(registry, pipeline, X)
    loaded = registry.load("churn", expected_features=FEATURES)
    loaded.pipeline.set_params(model__n_jobs=4)
    scorer = Scorer(loaded)
    assert loaded.pipeline.get_params()["model__n_jobs"] == 1  # pinned

    calls: list[int] = []
    original = loaded.pipeline.predict_proba

    def counting(frame: pd.DataFrame) -> np.ndarray:
        calls.append(len(frame))
        assert list(frame.columns) == FEATURES
        return original(frame)

    monkeypatch.setattr(loaded.pipeline, "predict_proba", counting)
    shuffled = X[["logins_7d", "plan_type", "spend_30d"]].assign(unrelated=1)
    scores = scorer.score(shuffled)
    assert calls == [len(X)]
    np.testing.assert_allclose(scores, pipeline.predict_proba(X[FEATURES])[:, 1])
    np.testing.assert_array_equal(scorer.decide(scores), scores >= 0.4)
    assert scorer.decide(np.array([0.39, 0.4, 0.41])).tolist() == [False, True, True]

    assert scorer.score(X.iloc[:0]).shape == (0,)
    with pytest.raises(ValueError, match="logins_7d"):
        scorer.score(X.drop(columns=["logins_7d"]))


def test_scorer_handles_unseen_and_missing_values(
    tmp_path: Path, fitted: tuple[Pipeline, pd.DataFrame]
) -> None:
    registry = ModelRegistry(tmp_path)
    _save(registry, *fitted)
    scorer = Scorer(registry.load("churn"))
    live = pd.DataFrame(
        {
            "spend_30d": [np.nan, 10.0, 5.0],
            "plan_type": [None, "enterprise", np.nan],
            "logins_7d": [1.0, np.nan, 0.0],
        }
    )
    scores = scorer.score(live)
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))


def test_limit_native_threads_is_a_context_manager() -> None:
    with limit_native_threads(1) as limits:
        assert limits is not None
    with pytest.raises(ValueError):
        limit_native_threads(0)
