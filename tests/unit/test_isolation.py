"""Isolating the rows a model raises on: exact offenders, bounded cost, free when it scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from driftline.model.isolation import describe, score_isolating


class Rows:
    """A batch of values; ``take`` like ``FeatureBlock.take``."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def take(self, rows: np.ndarray) -> Rows:
        return Rows(self.values[rows])


class Strict:
    """Scores ``v / 100``; raises on any batch holding a negative value (like a strict
    preprocessing step); counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch: Rows) -> np.ndarray:
        self.calls += 1
        bad = batch.values[batch.values < 0]
        if bad.size:
            raise ValueError(f"negative value(s) {bad.tolist()} not allowed")
        return batch.values / 100.0


def test_a_batch_that_scores_costs_one_call_and_nothing_else() -> None:
    model = Strict()
    out = score_isolating(model, Rows(np.arange(500.0)))
    assert model.calls == 1 and out.extra_calls == 0
    assert out.offenders.size == 0 and out.errors == []
    np.testing.assert_array_equal(out.scores, np.arange(500.0) / 100.0)


@pytest.mark.parametrize("n", [2, 7, 1000, 2048])
@pytest.mark.parametrize("k", [1, 3, 17])
def test_the_offenders_are_found_exactly_within_2k_log2_n_calls(n: int, k: int) -> None:
    rng = np.random.default_rng(n * 31 + k)
    k = min(k, n)
    values = rng.uniform(0, 100, n)
    bad = np.sort(rng.choice(n, size=k, replace=False))
    values[bad] = -1.0 - np.arange(k)
    model = Strict()
    out = score_isolating(model, Rows(values))
    np.testing.assert_array_equal(out.offenders, bad)
    assert all("negative value" in str(e) for e in out.errors)
    good = np.setdiff1d(np.arange(n), bad)
    np.testing.assert_array_equal(out.scores[good], values[good] / 100.0)
    assert np.isnan(out.scores[bad]).all()
    bound = 2 * k * math.ceil(math.log2(n)) + 1
    assert model.calls == out.extra_calls + 1 <= bound, (model.calls, bound)


def test_every_row_bad_ends_with_every_row_an_offender_in_under_2n_calls() -> None:
    model = Strict()
    out = score_isolating(model, Rows(-np.ones(64)))
    assert out.offenders.tolist() == list(range(64))
    assert model.calls <= 2 * 64


def test_a_single_row_batch_is_not_scored_twice() -> None:
    model = Strict()
    out = score_isolating(model, Rows(np.array([-5.0])))
    assert out.offenders.tolist() == [0] and model.calls == 1


def test_describe_names_the_exception_on_one_line() -> None:
    assert describe(ValueError("Found unknown categories\n ['x']")) == (
        "ValueError: Found unknown categories ['x']"
    )
    assert describe(RuntimeError()) == "RuntimeError"
