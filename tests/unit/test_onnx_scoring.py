"""ONNX Runtime scoring: same scores as scikit-learn, or refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from driftline.commands.train import register, train_on_events
from driftline.core.spec import FeatureSpec, load_default_spec
from driftline.model.registry import LoadedModel, ModelRegistry
from driftline.model.runtimes.onnx import (
    DEFAULT_TOLERANCE,
    OnnxMismatch,
    load_onnx_scorer,
    onnx_missing_reason,
    reference_sample,
    verify,
)
from driftline.model.runtimes.sklearn import Scorer
from driftline.simulate import Population

pytestmark = pytest.mark.skipif(
    onnx_missing_reason() is not None, reason=str(onnx_missing_reason())
)


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return load_default_spec()


def _model(root: Path, spec: FeatureSpec, seed: int) -> LoadedModel:
    history = Population(n_customers=300, seed=seed).generate_history(days=200)
    result = train_on_events(
        history, spec, horizon_days=60, n_estimators=20, cv_folds=2, progress=False
    )
    registry = ModelRegistry(root)
    version = register(result, registry, f"churn{seed}", spec)
    return registry.load(version.name, expected_features=spec.feature_names)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, spec: FeatureSpec) -> list[LoadedModel]:
    root = tmp_path_factory.mktemp("onnx-models")
    return [_model(root, spec, 3), _model(root, spec, 4)]


def test_the_reference_sample_covers_every_feature_with_missing_and_unseen_values(
    models: list[LoadedModel], spec: FeatureSpec
) -> None:
    sample = reference_sample(models[0])
    assert list(sample.columns) == spec.feature_names
    assert len(sample) == 2000
    assert sample.isna().any().all()  # every column has missing values
    for name in spec.categorical_features:
        assert "never-seen-in-training" in set(sample[name].dropna())
    assert reference_sample(models[0]).equals(sample)  # seeded: the same every time


def test_onnx_scores_match_scikit_learn_within_the_stated_tolerance(
    models: list[LoadedModel],
) -> None:
    scorer, worst = load_onnx_scorer(models[0])
    assert worst <= DEFAULT_TOLERANCE
    sample = reference_sample(models[0], rows=500, seed=9)
    np.testing.assert_allclose(
        scorer.score(sample), Scorer(models[0]).score(sample), rtol=0, atol=DEFAULT_TOLERANCE
    )
    assert scorer.score(sample.head(0)).shape == (0,)


def test_scores_that_differ_are_refused_with_the_difference_in_the_message(
    models: list[LoadedModel],
) -> None:
    onnx_scorer, _ = load_onnx_scorer(models[0])
    other = Scorer(models[1])  # a different forest: a genuine mismatch
    with pytest.raises(OnnxMismatch, match="differs from scikit-learn by up to"):
        verify(onnx_scorer, other, reference_sample(models[0]))


def test_the_numpy_preprocessing_equals_scikit_learns_transform(
    models: list[LoadedModel],
) -> None:
    from driftline.model.runtimes.onnx import OnnxScorer

    scorer = OnnxScorer(models[0])
    assert scorer._fast_preprocess is not None, "driftline's own pipeline must compile"
    sample = reference_sample(models[0], rows=700, seed=5)
    fast = scorer._fast_preprocess(sample)
    reference = scorer._preprocess.transform(sample)
    reference = reference.toarray() if hasattr(reference, "toarray") else reference
    np.testing.assert_allclose(fast, reference, rtol=1e-12, atol=1e-12)
