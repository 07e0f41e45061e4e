"""``driftline.model.runtimes``: a runtime chosen by the name ``--model-runtime`` takes."""

from __future__ import annotations

import argparse

import pytest

from driftline.commands import worker as worker_command
from driftline.model.registry import LoadedModel
from driftline.model.runtimes import RUNTIMES, load_verified
from driftline.model.runtimes.compiled import CompiledScorer
from driftline.model.runtimes.sklearn import Scorer
from driftline.model.runtimes.verification import reference_sample


def test_the_runtime_names_are_the_ones_the_worker_command_accepts() -> None:
    parser = argparse.ArgumentParser()
    worker_command.add_arguments(parser)
    (option,) = [a for a in parser._actions if "--model-runtime" in a.option_strings]
    assert tuple(option.choices or ()) == RUNTIMES


def test_compiled_by_name_is_the_verified_compiled_runtime(model: LoadedModel) -> None:
    scorer, worst = load_verified("compiled", model)
    assert isinstance(scorer, CompiledScorer)
    assert worst == 0.0
    sample = reference_sample(model, rows=100, seed=3)
    assert (scorer.score(sample) == Scorer(model).score(sample)).all()


def test_onnx_by_name_is_onnx_runtime_within_its_tolerance(model: LoadedModel) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("skl2onnx")
    from driftline.model.runtimes.onnx import DEFAULT_TOLERANCE, OnnxScorer

    scorer, worst = load_verified("onnx", model)
    assert isinstance(scorer, OnnxScorer)
    assert worst <= DEFAULT_TOLERANCE


@pytest.mark.parametrize("name", ["sklearn", "auto", "tflite"])
def test_a_name_without_a_verified_runtime_is_an_error(model: LoadedModel, name: str) -> None:
    with pytest.raises(ValueError, match="no verified runtime"):
        load_verified(name, model)
