"""``driftline models list|promote|rollback`` through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftline import cli
from driftline.model.profile import build_reference_profile
from driftline.model.registry import ModelRegistry
from driftline.model.training import build_pipeline

FEATURES = ["spend_30d", "plan_type"]
TYPES = {"spend_30d": "numeric", "plan_type": "categorical"}


@pytest.fixture(scope="module")
def model() -> tuple[Any, pd.DataFrame]:
    rng = np.random.default_rng(2)
    X = pd.DataFrame(
        {"spend_30d": rng.gamma(2.0, 50.0, 100), "plan_type": rng.choice(["a", "b"], 100)}
    )
    y = (X["spend_30d"] < 80).astype(int)
    return build_pipeline(["spend_30d"], ["plan_type"], n_estimators=2, seed=0).fit(X, y), X


@pytest.fixture
def registry(tmp_path: Path, model: tuple[Any, pd.DataFrame]) -> Path:
    """v0001 champion (by hand), v0002 a candidate with lineage, v0003 without a stage."""
    pipeline, X = model
    reg = ModelRegistry(tmp_path / "models")
    profile = build_reference_profile(
        X, pipeline.predict_proba(X)[:, 1], ["spend_30d"], ["plan_type"]
    )
    common: dict[str, Any] = {
        "feature_names": FEATURES,
        "feature_types": TYPES,
        "spec_digest": None,
        "data_hash": "d" * 64,
        "reference_profile": profile,
        "threshold": 0.5,
    }
    reg.save("churn", pipeline, metrics={"test": {"roc_auc": 0.7123}}, stage="champion", **common)
    reg.save(
        "churn",
        pipeline,
        metrics={"test": {"roc_auc": 0.8}},
        stage="candidate",
        lineage={"parent_version": "v0001", "incident_id": "abcdef123456" + "0" * 52},
        **common,
    )
    reg.save("churn", pipeline, metrics={}, **common)
    return tmp_path / "models"


def run(*argv: str) -> int:
    return cli.main(["models", *argv])


def test_list_shows_stage_auc_parent_and_incident(
    registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("list", "--registry", str(registry)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["VERSION", "STAGE", "CREATED", "TEST", "AUC", "PARENT", "INCIDENT"]
    v1, v2, v3 = (line.split() for line in lines[1:4])
    assert v1[:3] == ["v0001", "champion", "*"] and "0.712" in v1
    assert v2[:2] == ["v0002", "candidate"] and v2[-2:] == ["v0001", "abcdef123456"]
    assert v3[:2] == ["v0003", "-"]


def test_list_json_is_one_object_per_version(
    registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("list", "--registry", str(registry), "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["version"], r["stage"], r["serving"]) for r in rows] == [
        ("v0001", "champion", True),
        ("v0002", "candidate", False),
        ("v0003", "-", False),
    ]


def test_promote_then_rollback(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("promote", "v0002", "--registry", str(registry), "--reason", "AUC +0.09") == 0
    assert "churn v0002 is champion; v0001 retired" in capsys.readouterr().out
    book = ModelRegistry(registry).stages("churn")
    assert book.champion == "v0002" and book.history[-1]["reason"] == "AUC +0.09"
    assert run("rollback", "--registry", str(registry), "--reason", "alerts", "--by", "me") == 0
    assert "v0001 is champion, v0002 retired" in capsys.readouterr().out
    book = ModelRegistry(registry).stages("churn")
    assert book.champion == "v0001" and book.history[-1]["by"] == "me"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["promote", "v0009", "--reason", "x"], "has no version 'v0009' (versions: v0001, v0002"),
        (["promote", "v0001", "--reason", "x"], "v0001 is already the champion"),
        (["rollback", "--reason", "x"], "no earlier champion to roll back to"),
        (["list", "--model-name", "nope"], "no versions of model 'nope'"),
        (["list", "--model-name", "../etc"], "bad model name"),
    ],
)
def test_mistakes_exit_2_with_one_line(
    registry: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert run(*argv, "--registry", str(registry)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("driftline models: ") and message in err and "\n" not in err


def test_promote_requires_a_reason(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run("promote", "v0002", "--registry", str(registry))
    assert exit_info.value.code == 2
    assert "--reason" in capsys.readouterr().err
