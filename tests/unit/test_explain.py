"""Reason codes (``driftline.model.explain``): the batched path-based contributions agree
with a per-row walk of every tree written here, and decompose the forest's raw probability
(base + contributions == predict_proba of the forest, calibrated == the served score)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from driftline.model.calibration import fit_calibrator
from driftline.model.explain import ExplainRefused, ForestExplainer, column_owners
from driftline.model.training import build_pipeline

NUMERIC = ["spend", "visits", "tenure"]
CATEGORICAL = ["plan", "region"]
FEATURES = NUMERIC + CATEGORICAL


def _table(n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "spend": rng.gamma(2.0, 30.0, n),
            "visits": rng.poisson(4, n).astype(float),
            "tenure": rng.uniform(0, 900, n),
            "plan": rng.choice(["basic", "pro", "team"], n).astype(object),
            "region": rng.choice(["eu", "us", "apac", "latam"], n).astype(object),
        }
    )
    logit = 0.02 * X["spend"] - 0.3 * X["visits"] + (X["plan"] == "basic") * 1.2
    y = pd.Series((rng.uniform(size=n) < 1 / (1 + np.exp(-logit + 0.5))).astype(int))
    # Missing values in numeric and categorical features (the worker's state has both).
    for name, share in (("spend", 0.15), ("tenure", 0.1), ("plan", 0.1), ("region", 0.2)):
        X.loc[rng.uniform(size=n) < share, name] = None
    return X, y


@pytest.fixture(scope="module")
def fitted() -> tuple[Pipeline, pd.DataFrame]:
    X, y = _table(1500, seed=1)
    pipeline = build_pipeline(
        NUMERIC, CATEGORICAL, n_estimators=25, seed=3, class_weight_balanced=True
    )
    pipeline.set_params(model__min_samples_leaf=3)
    pipeline.fit(X, y)
    raw = pipeline.predict_proba(X)[:, 1]
    pipeline.calibrator_ = fit_calibrator(y.to_numpy(), raw, "isotonic")
    batch, _ = _table(400, seed=2)
    return pipeline, batch


def _reference_walk(pipeline: Pipeline, frame: pd.DataFrame) -> tuple[np.ndarray, float]:
    """Per row, per tree: follow the splits in Python and credit each value change to the
    split's preprocessed column; then sum the columns of each original feature by
    their (tested separately) owners, and average over the trees."""
    Xt = pipeline[:-1].transform(frame)
    Xt = Xt.toarray() if hasattr(Xt, "toarray") else np.asarray(Xt)
    Xt = Xt.astype(np.float32)  # what the trees compare (thresholds sit between float32s)
    forest = pipeline[-1]
    owner = column_owners(pipeline[:-1], FEATURES)
    out = np.zeros((len(frame), len(FEATURES)))
    base = 0.0
    for est in forest.estimators_:
        t = est.tree_
        frac = t.value[:, 0, 1] / t.value[:, 0, :].sum(axis=1)
        base += frac[0]
        for i in range(len(frame)):
            node = 0
            while t.children_left[node] != -1:
                f = t.feature[node]
                nxt = (
                    t.children_left[node]
                    if Xt[i, f] <= t.threshold[node]
                    else t.children_right[node]
                )
                out[i, owner[f]] += frac[nxt] - frac[node]
                node = nxt
    n = len(forest.estimators_)
    return out / n, base / n


def test_column_owners_sum_one_hot_and_indicator_columns_to_their_feature(fitted) -> None:
    pipeline, _ = fitted
    names = pipeline[:-1].get_feature_names_out()
    owner = column_owners(pipeline[:-1], FEATURES)
    assert len(owner) == len(names)
    for name, o in zip(names, owner, strict=True):
        feature = FEATURES[o]
        # sklearn's own output names: num__spend, num__missingindicator_spend, cat__plan_pro
        assert name.split("__", 1)[1].removeprefix("missingindicator_").startswith(feature)


@pytest.mark.parametrize("table", [True, False], ids=["leaf-table", "sparse-paths"])
def test_contributions_match_a_per_row_walk_and_sum_to_the_raw_probability(
    fitted, table: bool
) -> None:
    """Both ways (the leaf table, and sparse decision paths for forests too big for it)."""
    pipeline, batch = fitted
    explainer = ForestExplainer(pipeline, FEATURES, max_table_bytes=2**40 if table else 0)
    assert (explainer._table is not None) == table
    contributions, raw = explainer.contributions(batch)
    expected, base = _reference_walk(pipeline, batch)
    assert explainer.base == pytest.approx(base, abs=1e-12)
    np.testing.assert_allclose(contributions, expected, atol=1e-9, rtol=0)
    forest_raw = super(type(pipeline), pipeline).predict_proba(batch)[:, 1]
    assert np.max(np.abs(explainer.base + contributions.sum(axis=1) - forest_raw)) < 1e-6
    np.testing.assert_allclose(raw, forest_raw, atol=1e-6, rtol=0)
    # The served (calibrated) score is the calibrator of that raw probability.
    served = pipeline.predict_proba(batch)[:, 1]
    np.testing.assert_allclose(explainer.calibrator(raw), served, atol=1e-6, rtol=0)
    # Numeric and categorical features, missing ones included, all get credit somewhere.
    assert np.all(np.abs(contributions).sum(axis=0) > 0)
    assert batch.isna().any().sum() == 4


def test_top_k_by_magnitude_with_values_and_rest(fitted) -> None:
    pipeline, batch = fitted
    explainer = ForestExplainer(pipeline, FEATURES)
    everything, raw = explainer.contributions(batch)
    exp = explainer.explain(batch, 3)
    assert exp.features.shape == (len(batch), 3)
    magnitude = np.abs(exp.contributions)
    assert np.all(magnitude[:, :-1] >= magnitude[:, 1:])
    kth = np.sort(np.abs(everything), axis=1)[:, -3]
    np.testing.assert_allclose(magnitude[:, -1], kth)
    np.testing.assert_allclose(
        exp.base + exp.contributions.sum(axis=1) + exp.rest, raw, atol=1e-12, rtol=0
    )
    for i in (0, 7, 123):
        for j, f in enumerate(exp.features[i]):
            value = batch.iloc[i, f]
            got = exp.values[i][j]
            if pd.isna(value):
                assert got is None
            else:
                assert got == (value if isinstance(value, str) else float(value))
    # K larger than the features: every feature, rest zero.
    wide = explainer.explain(batch.head(5), 50)
    assert wide.features.shape == (5, len(FEATURES))
    np.testing.assert_allclose(wide.rest, 0.0, atol=1e-12)


def test_non_forest_models_are_refused_at_start() -> None:
    X, y = _table(200, seed=4)
    numeric = X[NUMERIC].fillna(0.0)
    with pytest.raises(ExplainRefused, match="random forest"):
        ForestExplainer(
            Pipeline([("id", "passthrough"), ("m", LogisticRegression())]).fit(numeric, y), NUMERIC
        )
    bare = RandomForestClassifier(n_estimators=2).fit(numeric, y)
    with pytest.raises(ExplainRefused, match="Pipeline"):
        ForestExplainer(bare, NUMERIC)
