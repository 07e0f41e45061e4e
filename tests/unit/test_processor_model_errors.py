"""A real model that raises on some events: the processor isolates them, in every runtime.

The model is the registered churn forest with ``OneHotEncoder(handle_unknown="error")``
(``tests/support/strict_model.py``): it raises on a plan it never saw.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from driftline.core.events import REASON_MODEL_ERROR
from driftline.core.spec import FeatureSpec
from driftline.model.registry import LoadedModel, ModelRegistry
from driftline.model.runtimes.compiled import load_compiled_scorer
from driftline.model.runtimes.process import ScoringProcess, ScoringRaised
from driftline.model.runtimes.sklearn import Scorer
from driftline.model.runtimes.verification import RuntimeRefused
from driftline.processor import RawBatch, ScoringProcessor
from driftline.simulate import Population
from support.strict_model import UNKNOWN_PLAN, register_strict

POISON_AT = (3, 250, 251, 499)


@pytest.fixture(scope="module")
def strict(
    model: LoadedModel, spec: FeatureSpec, tmp_path_factory: pytest.TempPathFactory
) -> LoadedModel:
    root: Path = tmp_path_factory.mktemp("strict")
    register_strict(model, root)
    return ModelRegistry(root).load(model.name, expected_features=spec.feature_names)


def batch(poison: tuple[int, ...] = POISON_AT) -> RawBatch:
    """500 live events on one partition; ``poison`` rows are new customers on an unseen
    plan (one event each, so only they carry it)."""
    population = Population(n_customers=80, seed=12)
    population.generate_history(days=20)
    events = list(population.stream_events(max_events=500))
    for i in poison:
        events[i] = dict(events[i], customer_id=f"new-{i}", plan_type=UNKNOWN_PLAN)
    encode = msgspec.json.encode
    return RawBatch(
        "events",
        [encode(e) for e in events],
        [e["customer_id"].encode() for e in events],
        np.zeros(len(events), np.int32),
        np.arange(len(events), dtype=np.int64),
    )


def unseen_category_rows(model: LoadedModel, raw: RawBatch) -> list[int]:
    """Rows whose event (one per customer here) carries a plan or region the model's
    one-hot encoder has no category for."""
    branch = dict((n, b) for n, b, _ in model.pipeline.named_steps["features"].transformers_)
    encoder = branch["cat"].named_steps["onehot"]
    known = dict(zip(("plan_type", "region"), map(set, encoder.categories_), strict=True))
    latest: dict[str, dict[str, str]] = {}
    rows = []
    for i, value in enumerate(raw.values):
        event = msgspec.json.decode(value)
        profile = latest.setdefault(event["customer_id"], {})
        profile.update({f: event[f] for f in known if event.get(f) is not None})
        if any(profile.get(f, "missing") not in known[f] for f in known):
            rows.append(i)
    return rows


def test_the_processor_dead_letters_the_rows_the_model_raises_on_and_scores_the_rest(
    spec: FeatureSpec, model: LoadedModel, strict: LoadedModel
) -> None:
    raw = batch()
    result = ScoringProcessor(spec, Scorer(strict), changelog=False).process(raw)
    # The oracle: rows with a category the encoder was not fitted on (the simulated
    # stream has a few of its own besides the planted ones).
    offenders = unseen_category_rows(strict, raw)
    assert set(POISON_AT) <= set(offenders)
    assert [(r.index, r.reason, r.error_class) for r in result.rejected] == [
        (i, REASON_MODEL_ERROR, "model") for i in offenders
    ]
    assert all("Found unknown categories" in r.message for r in result.rejected)
    # The others: every one scored, as the lenient model scores them in the same batch.
    lenient = ScoringProcessor(spec, Scorer(model), changelog=False).process(raw)
    keep = np.setdiff1d(np.arange(len(raw)), offenders)
    np.testing.assert_array_equal(result.prediction_index, keep)
    same_rows = np.isin(lenient.prediction_index, keep)
    np.testing.assert_array_equal(result.scores, lenient.scores[same_rows])


def test_a_batch_that_scores_pays_no_isolation(spec: FeatureSpec, strict: LoadedModel) -> None:
    processor = ScoringProcessor(spec, Scorer(strict), changelog=False)
    prepared = processor.prepare(batch(poison=()))
    processor.score(prepared)
    assert prepared.model_errors == 0 and prepared.isolation_calls == 0


def test_the_compiled_runtime_refuses_the_strict_model_so_auto_scores_it_with_sklearn(
    spec: FeatureSpec, model: LoadedModel, strict: LoadedModel
) -> None:
    """The default runtime (auto) falls back to scikit-learn on a refusal: the strict
    model raises there, and is isolated.  The lenient model's compiled runtime does not
    raise on the unseen plan: it scores it as scikit-learn does (all-zero one-hot)."""
    with pytest.raises(RuntimeRefused):
        load_compiled_scorer(strict)
    compiled, _ = load_compiled_scorer(model)
    processor = ScoringProcessor(spec, compiled, changelog=False)
    result = processor.process(batch())
    assert result.rejected == []
    sklearn = ScoringProcessor(spec, Scorer(model), changelog=False).process(batch())
    np.testing.assert_allclose(result.scores, sklearn.scores, rtol=0, atol=1e-12)


def test_the_scoring_process_reports_a_model_error_as_such_and_serves_on(
    spec: FeatureSpec, strict: LoadedModel
) -> None:
    scorer = Scorer(strict)
    processor = ScoringProcessor(spec, scorer, changelog=False)
    bad = processor.prepare(batch()).block
    good = ScoringProcessor(spec, scorer, changelog=False).prepare(batch(poison=())).block
    assert bad is not None and good is not None
    with ScoringProcess(scorer) as child:
        child.submit(bad)
        child.submit(good)
        with pytest.raises(ScoringRaised, match="unknown categories") as raised:
            child.result()
        assert raised.value.summary.startswith("ValueError: Found unknown categories")
        np.testing.assert_array_equal(child.result(), scorer.score_block(good))
