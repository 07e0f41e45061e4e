"""``driftline train`` on the real CDNOW purchase log: the spec's features carry signal.

No broker: the log is read through ``replay.CDNOW_MAPPING`` and the training set is built
offline by the worker's own feature engine.  CDNOW has purchases only; a row is a
customer's features as of the cutoff (as a worker's tick there scores them), so
``days_since_last_purchase`` is the silence at the cutoff, and the model must rank better
than that one feature alone (the recency baseline), on customers it never saw and on the
latest cutoff.  The bar is "better than chance and than recency", not a benchmark score.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from driftline import cli
from driftline.core.spec import load_default_spec
from driftline.model.registry import ModelRegistry


def test_cdnow_model_beats_chance_and_the_baseline(
    monkeypatch: pytest.MonkeyPatch,
    require_shared: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cdnow = require_shared("data", "cdnow", "cdnow_master.csv")
    monkeypatch.setattr(cli, "COMMANDS", ("train",))  # the other subcommands are not under test
    registry = tmp_path / "models"
    argv = ["train", "--events", str(cdnow), "--mapping", "cdnow", "--cutoffs", "3"]
    options = ["--n-estimators", "50", "--cv-folds", "3", "--no-progress", "--json"]
    assert cli.main([*argv, "--registry", str(registry), *options]) == 0
    out = json.loads(capsys.readouterr().out)

    dataset, test, baseline = out["dataset"], out["test"], out["baseline"]
    oot, recency = out["out_of_time"], out["baselines"]["test"]["recency"]
    # dates read in the file's calendar (1997-98), though replayed 28 years later
    assert dataset["history"] == ["1997-01-01", "1998-06-30"]
    assert dataset["cutoffs"] == ["1997-10-03", "1998-01-01", "1998-04-01"]
    with capsys.disabled():  # the numbers for the record, shown even without -s
        print(
            f"\nCDNOW: {dataset['n_rows']} rows, {dataset['n_customers']} customers, cutoffs "
            f"{', '.join(dataset['cutoffs'])}, churn rate {dataset['churn_rate']:.1%}; "
            f"test (unseen customers) ROC AUC {test['roc_auc']:.3f} (CV "
            f"{out['cv']['roc_auc_mean']:.3f} ± {out['cv']['roc_auc_std']:.3f}), PR AUC "
            f"{test['pr_auc']:.3f} vs majority {baseline['pr_auc']:.3f}, recency ROC AUC "
            f"{recency['roc_auc']:.3f}; out-of-time ROC AUC {oot['roc_auc']:.3f}"
        )
    # Honest split: no customer on both sides, the latest cutoff held out.
    assert test["roc_auc"] > 0.55 and oot["roc_auc"] > 0.55
    assert out["cv"]["roc_auc_mean"] > 0.55
    assert test["pr_auc"] > baseline["pr_auc"] + 0.03
    assert recency["roc_auc"] > 0.55
    assert test["roc_auc"] > recency["roc_auc"]
    assert oot["roc_auc"] > out["baselines"]["out_of_time"]["recency"]["roc_auc"]

    spec = load_default_spec()
    loaded = ModelRegistry(registry).load(
        "churn", expected_features=spec.feature_names, expected_spec_digest=spec.digest
    )
    assert loaded.metadata["extra"]["dataset"]["calendar_shift_days"] == 10_227
