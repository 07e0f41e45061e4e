"""The compiled runtime: scikit-learn's scores, bit for bit, or refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from driftline.model.registry import LoadedModel
from driftline.model.runtimes.compiled import (
    CompiledMismatch,
    CompiledScorer,
    CompiledUnavailable,
    compile_forest,
    load_compiled_scorer,
)
from driftline.model.runtimes.sklearn import Scorer
from driftline.model.runtimes.verification import reference_sample


def test_compiled_scores_are_scikit_learns_bit_for_bit(model: LoadedModel) -> None:
    scorer, worst = load_compiled_scorer(model)
    assert worst == 0.0
    for rows, seed in ((1, 1), (7, 2), (200, 3), (3000, 4)):
        sample = reference_sample(model, rows=rows, seed=seed)
        np.testing.assert_array_equal(scorer.score(sample), Scorer(model).score(sample))
    assert scorer.score(reference_sample(model).head(0)).shape == (0,)


def test_extra_columns_are_ignored_and_a_missing_one_is_an_error(model: LoadedModel) -> None:
    scorer = CompiledScorer(model)
    sample = reference_sample(model, rows=50, seed=6)
    shuffled = sample[list(reversed(sample.columns))].assign(unrelated=1.0)
    np.testing.assert_array_equal(scorer.score(shuffled), Scorer(model).score(sample))
    with pytest.raises(ValueError, match="lacks the model's column"):
        scorer.score(sample.drop(columns=[sample.columns[0]]))


def test_a_forest_compiled_wrong_is_refused_with_the_difference(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verification is what stands between a compilation bug and served scores."""
    import driftline.model.runtimes.compiled as compiled

    def off_by_one_tree(estimator: object) -> compiled.Forest | None:
        forest = compile_forest(estimator)
        assert forest is not None
        n = len(model.pipeline[-1].estimators_)
        return lambda matrix: forest(matrix) * n / (n - 1)  # divides by one tree too few

    monkeypatch.setattr(compiled, "compile_forest", off_by_one_tree)
    with pytest.raises(CompiledMismatch, match="differs from scikit-learn by up to"):
        load_compiled_scorer(model)


def test_a_pipeline_it_cannot_reproduce_is_refused_not_guessed(model: LoadedModel) -> None:
    sample = reference_sample(model, rows=300, seed=1)
    first = sample.select_dtypes("number").iloc[:, 0]
    linear = Pipeline([*model.pipeline.steps[:-1], ("model", LogisticRegression())])
    linear.fit(sample, (first > first.median()).astype(int))
    other = dataclasses.replace(model, pipeline=linear)
    with pytest.raises(CompiledUnavailable, match="LogisticRegression"):
        CompiledScorer(other)
