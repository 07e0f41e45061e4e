"""Fixtures shared by the unit tests of the model runtimes."""

from __future__ import annotations

import pytest

from driftline.commands.train import register, train_on_events
from driftline.core.spec import FeatureSpec, load_default_spec
from driftline.model.registry import LoadedModel, ModelRegistry
from driftline.simulate import Population


@pytest.fixture(scope="session")
def spec() -> FeatureSpec:
    return load_default_spec()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, spec: FeatureSpec) -> LoadedModel:
    """RandomForest(25) trained on 200 days of 300 simulated customers, registered.

    One per module: some tests change the loaded pipeline in place."""
    history = Population(n_customers=300, seed=8).generate_history(days=200)
    result = train_on_events(
        history, spec, horizon_days=60, n_estimators=25, cv_folds=2, progress=False
    )
    registry = ModelRegistry(tmp_path_factory.mktemp("small-forest"))
    version = register(result, registry, "churn", spec)
    return registry.load(version.name, expected_features=spec.feature_names)
