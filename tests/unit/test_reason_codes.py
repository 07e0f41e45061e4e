"""``--explain K`` in the scoring processor: reasons on every event prediction that add up
with the rest to the raw probability whose calibration is the served score; without it,
the records are byte for byte what they were."""

from __future__ import annotations

import dataclasses
import time

import msgspec
import numpy as np
import pandas as pd
import pytest

from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.settings import WorkerSettings
from driftline.engine.model_runtime import scorer_for
from driftline.model.calibration import calibration_of
from driftline.model.explain import ExplainRefused, ForestExplainer
from driftline.model.registry import LoadedModel
from driftline.model.runtimes.sklearn import Scorer
from driftline.model.runtimes.verification import RuntimeRefused
from driftline.processor import RawBatch, ScoringProcessor
from driftline.reason_codes import check_runtime, reasons_for
from driftline.simulate import Population

#: One wall clock for every run, so that two runs' records can be compared byte for byte.
NOW = time.time()
REASON_FIELDS = ("reasons", "reasons_base", "reasons_rest")


def _batch(n: int = 600) -> RawBatch:
    population = Population(n_customers=150, seed=21)
    population.generate_history(days=30)
    events = list(population.stream_events(max_events=n))
    return RawBatch(
        "events",
        [msgspec.json.encode(e) for e in events],
        [e["customer_id"].encode() for e in events],
        np.arange(len(events), dtype=np.int32) % 3,
        np.arange(len(events), dtype=np.int64),
    )


def _run(spec: FeatureSpec, model: LoadedModel, explain: int | None):  # type: ignore[no-untyped-def]
    processor = ScoringProcessor(spec, Scorer(model), clock=lambda: NOW, explain=explain)
    return processor.process(_batch())


def test_explained_records_add_up_to_the_served_score(
    spec: FeatureSpec, model: LoadedModel
) -> None:
    result = _run(spec, model, explain=3)
    records = [msgspec.json.decode(v) for v in result.prediction_values]
    assert len(records) > 500
    calibrator = calibration_of(model.pipeline)
    assert calibrator is not None  # the registered model is calibrated
    frame = result.feature_block.frame()
    worst = 0.0
    for i, record in enumerate(records):
        reasons = record["reasons"]
        assert len(reasons) == 3
        magnitudes = [abs(r["contribution"]) for r in reasons]
        assert magnitudes == sorted(magnitudes, reverse=True)
        raw = record["reasons_base"] + sum(r["contribution"] for r in reasons)
        raw += record["reasons_rest"]
        worst = max(worst, abs(float(calibrator(np.array([raw]))[0]) - record["score"]))
        for reason in reasons:
            value = frame.loc[i, reason["feature"]]
            if pd.isna(value):
                assert reason["value"] is None
            elif isinstance(value, str):
                assert reason["value"] == value
            else:
                assert reason["value"] == pytest.approx(float(value))
    assert worst < 1e-6
    # The listed reasons are the largest: none of the rest is bigger than the third.
    explainer = ForestExplainer(model.pipeline, spec.feature_names)
    everything, _ = explainer.contributions(frame)
    third = np.sort(np.abs(everything), axis=1)[:, -3]
    np.testing.assert_allclose([abs(r["reasons"][2]["contribution"]) for r in records], third)
    assert result.stage_seconds["explain"] > 0


def test_default_records_are_unchanged_and_carry_no_reasons(
    spec: FeatureSpec, model: LoadedModel
) -> None:
    plain = _run(spec, model, explain=None)
    explained = _run(spec, model, explain=2)
    assert "explain" not in plain.stage_seconds
    assert len(plain.prediction_values) == len(explained.prediction_values)
    for before, with_reasons in zip(
        plain.prediction_values, explained.prediction_values, strict=True
    ):
        record = msgspec.json.decode(with_reasons)
        for name in REASON_FIELDS:
            del record[name]
        # Same fields in the same order, same bytes: only the reasons are added.
        assert before == msgspec.json.encode(record)
        assert b"reasons" not in before
    first = msgspec.json.decode(plain.prediction_values[0])
    assert list(first) == [
        "event_id",
        "customer_id",
        "score",
        "decision",
        "threshold",
        "model_name",
        "model_version",
        "event_time",
        "processed_at",
        "source_partition",
        "source_offset",
        "trigger",
    ]


def test_explain_needs_the_sklearn_runtime(model: LoadedModel) -> None:
    assert check_runtime("auto", 3) == "sklearn"
    assert check_runtime("sklearn", 3) == "sklearn"
    assert check_runtime("compiled", None) == "compiled"
    for runtime in ("compiled", "onnx"):
        with pytest.raises(RuntimeRefused, match="--explain needs the sklearn model runtime"):
            check_runtime(runtime, 3)
    with pytest.raises(ValueError, match="K >= 1"):
        check_runtime("auto", 0)
    settings = WorkerSettings(model_runtime="auto", explain=3)
    assert type(scorer_for(model, settings)) is Scorer


def test_an_unexplainable_model_is_refused_before_serving(
    spec: FeatureSpec, model: LoadedModel
) -> None:
    from sklearn.dummy import DummyClassifier
    from sklearn.pipeline import Pipeline

    frame = _run(spec, model, explain=None).feature_block.frame()
    dummy = Pipeline([("features", model.pipeline[0]), ("model", DummyClassifier())])
    dummy[-1].fit(model.pipeline[0].transform(frame), np.arange(len(frame)) % 2)
    other = dataclasses.replace(model, pipeline=dummy)
    with pytest.raises(ExplainRefused, match="random forest"):
        scorer_for(other, WorkerSettings(model_runtime="sklearn", explain=3))
    scorer_for(other, WorkerSettings(model_runtime="sklearn"))  # without --explain: served


def test_reasons_for_an_api_call(spec: FeatureSpec, model: LoadedModel) -> None:
    frame = _run(spec, model, explain=None).feature_block.frame().head(20)
    scorer = Scorer(model)
    answers = reasons_for(scorer, frame, 4)
    calibrator = calibration_of(model.pipeline)
    assert calibrator is not None
    np.testing.assert_allclose([a["score"] for a in answers], scorer.score(frame))
    for answer in answers:
        assert len(answer["reasons"]) == 4
        total = answer["base"] + sum(r["contribution"] for r in answer["reasons"]) + answer["rest"]
        assert total == pytest.approx(answer["raw"], abs=1e-12)
        assert float(calibrator(np.array([answer["raw"]]))[0]) == pytest.approx(
            answer["score"], abs=1e-6
        )


def test_the_worker_flag() -> None:
    from driftline.cli import build_parser
    from driftline.commands._errors import CommandError
    from driftline.commands.worker import settings_from_args
    from driftline.engine.faust.worker import unsupported

    parser = build_parser()
    assert settings_from_args(parser.parse_args(["worker"])).explain is None
    settings = settings_from_args(parser.parse_args(["worker", "--explain", "3"]))
    assert settings.explain == 3
    assert any("--explain" in m for m in unsupported(settings))  # Faust: refused
    with pytest.raises(CommandError, match="K >= 1"):
        settings_from_args(parser.parse_args(["worker", "--explain", "0"]))
