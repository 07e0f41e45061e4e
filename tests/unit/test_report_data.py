"""The numbers the reports draw: curves, calibration bins, histograms, and where they live.

Curves must be scikit-learn's on the very test set training judged (the AUC on the page
is the AUC in the metadata); histograms must be on the reference profile's frozen bins,
with the profile's shares as the reference series (what the drift monitor compares); the
held-out arrays are stored in the version by the registry's atomic save and verified by
checksum; reports are written beside the version's files without touching them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from driftline.cli import main
from driftline.commands.train import register, train_on_events
from driftline.core.drift.bins import OTHER
from driftline.core.drift.trigger import DriftedFeature, RetrainRequest
from driftline.core.spec import load_default_spec
from driftline.model.evaluation import expected_calibration_error
from driftline.model.evaluation_arrays import EVALUATION_FILE, MAX_FEATURE_ROWS, feature_arrays
from driftline.model.profile import build_reference_profile, numeric_shares
from driftline.model.registry import ModelRegistry
from driftline.reports.data import (
    calibration_bins,
    compare,
    edge_labels,
    pr_curve,
    roc_curve,
)
from driftline.reports.drift_report import LIVE, REFERENCE, compare_window
from driftline.reports.live import LiveWindow
from driftline.reports.model_report import curves, feature_histograms
from driftline.reports.store import ReportError, read_evaluation, read_metadata, write_report
from driftline.simulate import Population


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    spec = load_default_spec()
    population = Population(n_customers=300, seed=7)
    history = population.generate_history(days=240)
    result = train_on_events(
        history, spec, horizon_days=60, n_cutoffs=2, n_estimators=15, cv_folds=3, progress=False
    )
    registry = ModelRegistry(tmp_path_factory.mktemp("models"))
    version = register(result, registry, "churn", spec)
    metadata = read_metadata(registry, "churn", version.version)
    arrays = read_evaluation(registry, "churn", version.version, metadata)
    events = tmp_path_factory.mktemp("events") / "events.csv"
    live = pd.DataFrame(list(population.stream_events(max_events=2000)))
    pd.concat([history, live], ignore_index=True).to_csv(events, index=False)
    return {
        "result": result,
        "registry": registry,
        "version": version,
        "arrays": arrays,
        "events": events,
        "n_live": len(live),
        "live_start": int(live["event_time"].min()),
    }


def test_curves_are_sklearns() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    scores = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    roc = roc_curve("m", y, scores)
    fpr, tpr, _ = sk_roc_curve(y, scores)
    np.testing.assert_array_equal(roc.x, fpr)
    np.testing.assert_array_equal(roc.y, tpr)
    assert roc.area == pytest.approx(roc_auc_score(y, scores))
    pr = pr_curve("m", y, scores)
    precision, recall, _ = precision_recall_curve(y, scores)
    np.testing.assert_array_equal(pr.x, recall)
    np.testing.assert_array_equal(pr.y, precision)


def test_calibration_bins_are_sklearns_uniform_bins_and_give_the_tables_ece() -> None:
    rng = np.random.default_rng(4)
    scores = rng.random(2000) ** 2
    y = (rng.random(2000) < scores).astype(int)
    bins = calibration_bins(y, scores)
    observed, predicted = calibration_curve(y, scores, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(bins.positive_rate, observed)
    np.testing.assert_allclose(bins.mean_score, predicted)
    assert bins.count.sum() == 2000
    # Scores on the edges too: the bins are those of the ECE in the metrics table.
    scores[:6] = [0.0, 1.0, 0.1, 0.5, 0.9, 0.3]
    bins = calibration_bins(y, scores)
    gap = np.abs(bins.positive_rate - bins.mean_score) * bins.count / bins.count.sum()
    assert gap.sum() == pytest.approx(expected_calibration_error(y, scores))


def test_saved_arrays_are_the_test_set_training_judged(saved: dict[str, Any]) -> None:
    result, arrays = saved["result"], saved["arrays"]
    assert arrays is not None
    np.testing.assert_array_equal(arrays["test_y"], result.y_test.to_numpy())
    np.testing.assert_allclose(arrays["test_score"], result.test_scores)
    drawn = curves(arrays, "test")
    assert drawn is not None
    roc, pr = drawn
    assert [c.label for c in roc] == ["model", "recency baseline", "majority class"]
    # The page's areas are the ones the training report printed for the model and baseline.
    assert roc[0].area == pytest.approx(result.metrics["test"]["roc_auc"])
    assert pr[0].area == pytest.approx(result.metrics["test"]["pr_auc"])
    recency = result.metrics["baselines"]["test"]["recency"]
    assert roc[1].area == pytest.approx(recency["roc_auc"])
    oot = curves(arrays, "oot")
    assert oot is not None and oot[0][0].area == pytest.approx(
        result.metrics["out_of_time"]["roc_auc"]
    )


def test_model_report_histograms_use_the_profiles_bins(saved: dict[str, Any]) -> None:
    registry, version, arrays = saved["registry"], saved["version"], saved["arrays"]
    metadata = read_metadata(registry, "churn", version.version)
    profile = metadata["reference_profile"]
    histograms = {h.feature: h for h in feature_histograms(metadata, arrays)}
    assert set(histograms) == set(profile["numeric"]) | set(profile["categorical"])
    for feature, entry in profile["numeric"].items():
        histogram = histograms[feature]
        assert histogram.labels == edge_labels(entry["edges"])
        for part in ("train", "test"):
            np.testing.assert_allclose(
                histogram.shares[part], numeric_shares(arrays[f"{part}__{feature}"], entry["edges"])
            )


def test_drift_histograms_are_on_the_profiles_bins_with_its_shares() -> None:
    rng = np.random.default_rng(5)
    reference = pd.DataFrame(
        {
            "spend": rng.gamma(2.0, 30.0, 3000),
            "plan": rng.choice(["basic", "gold", "premium"], 3000, p=[0.5, 0.3, 0.2]),
        }
    )
    profile = build_reference_profile(reference, rng.random(3000), ["spend"], ["plan"])
    live = pd.DataFrame(
        {
            "spend": np.r_[rng.gamma(2.0, 45.0, 995), [np.nan] * 5],
            "plan": rng.choice(["basic", "gold", "platinum", None], 1000, p=[0.4, 0.3, 0.2, 0.1]),
        }
    )
    edges = profile["numeric"]["spend"]["edges"]
    live.loc[: len(edges) - 1, "spend"] = edges  # values on the edges: right-closed bins
    scores = rng.random(1000) ** 0.5
    window = LiveWindow(live, np.arange(1000), 1000, 0, 0)
    data = compare_window(
        profile, {"spend": "numeric", "plan": "categorical"}, window, scores, ["spend"]
    )
    spend = next(h for h in data.features if h.feature == "spend")
    np.testing.assert_array_equal(spend.shares[REFERENCE], profile["numeric"]["spend"]["shares"])
    np.testing.assert_allclose(spend.shares[LIVE], numeric_shares(live["spend"].to_numpy(), edges))
    assert spend.missing[LIVE] == pytest.approx(0.005)
    assert spend.psi is not None and spend.psi > 0.05  # a real shift, measured
    plan = next(h for h in data.features if h.feature == "plan")
    categories = [c for c in profile["categorical"]["plan"]["shares"] if c != OTHER]
    assert plan.labels == [*categories, "other"]
    observed = live["plan"].dropna()
    expected_live = [float((observed == c).mean()) for c in categories]
    expected_live.append(float((~observed.isin(categories)).mean()))  # platinum: unseen
    np.testing.assert_allclose(plan.shares[LIVE], expected_live)
    assert plan.missing[LIVE] == pytest.approx(float(live["plan"].isna().mean()))
    assert data.score is not None
    np.testing.assert_allclose(
        data.score.shares[LIVE], numeric_shares(scores, profile["score"]["edges"])
    )


def test_compare_counts_unknown_categories_as_other() -> None:
    entry = {"missing_rate": 0.0, "shares": {"a": 0.6, "b": 0.4, OTHER: 0.0}}
    values = np.array(["a", "c", "", "b"], dtype=str)
    missing = np.array([False, False, True, False])
    histogram = compare("x", "categorical", entry, {"s": (values, missing)})
    np.testing.assert_allclose(histogram.shares["s"], [1 / 3, 1 / 3, 1 / 3])
    assert histogram.missing["s"] == pytest.approx(0.25)


def test_edge_labels_are_right_closed() -> None:
    assert edge_labels([0.0, 2.5, 10.0]) == ["≤ 0", "(0, 2.5]", "(2.5, 10]", "> 10"]
    assert edge_labels([]) == ["all"]


def test_feature_samples_are_bounded() -> None:
    frame = pd.DataFrame({"x": np.arange(MAX_FEATURE_ROWS * 3, dtype=float)})
    arrays = feature_arrays("train", frame, ["x"], [])
    assert arrays["train__x"].shape == (MAX_FEATURE_ROWS,)
    assert np.all(np.diff(arrays["train__x"]) > 0)  # a sample in row order


def test_evaluation_file_is_in_the_version_with_its_checksum(saved: dict[str, Any]) -> None:
    registry, version = saved["registry"], saved["version"]
    metadata = json.loads((version.path / "metadata.json").read_text())
    recorded = metadata["files"][EVALUATION_FILE]
    assert recorded["bytes"] == (version.path / EVALUATION_FILE).stat().st_size
    assert recorded["bytes"] < 2_000_000
    registry.load("churn", version.version)  # the model still loads as before


def test_a_tampered_evaluation_file_is_refused(tmp_path: Path, saved: dict[str, Any]) -> None:
    import shutil

    registry = ModelRegistry(tmp_path)
    shutil.copytree(saved["version"].path, tmp_path / "churn" / "v0001")
    target = tmp_path / "churn" / "v0001" / EVALUATION_FILE
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    metadata = read_metadata(registry, "churn", "v0001")
    with pytest.raises(ReportError, match="sha256"):
        read_evaluation(registry, "churn", "v0001", metadata)


def test_registry_refuses_bad_extra_file_names(saved: dict[str, Any], tmp_path: Path) -> None:
    result = saved["result"]
    registry = ModelRegistry(tmp_path)
    for bad in ("../escape", "model.joblib", ".hidden", "a/b"):
        with pytest.raises(ValueError, match="extra file name"):
            registry.save(
                "churn",
                result.pipeline,
                feature_names=result.feature_names,
                feature_types=result.feature_types,
                spec_digest=None,
                metrics={},
                data_hash="x",
                reference_profile={},
                threshold=0.5,
                files={bad: b"x"},
            )
    assert not registry.versions("churn")


def test_write_report_replaces_atomically_and_leaves_the_version_alone(tmp_path: Path) -> None:
    version = tmp_path / "churn" / "v0001"
    version.mkdir(parents=True)
    (version / "model.joblib").write_bytes(b"m")
    first = write_report(version, "model.html", "<html>one</html>")
    second = write_report(version, "model.html", "<html>two</html>")
    assert first == second == version / "reports" / "model.html"
    assert second.read_text() == "<html>two</html>"
    assert sorted(p.name for p in (version / "reports").iterdir()) == ["model.html"]
    assert (version / "model.joblib").read_bytes() == b"m"


def test_the_workers_request_has_no_report_property_and_one_can_be_added() -> None:
    request = RetrainRequest(
        request_id="r",
        incident_id="i",
        model_name="churn",
        model_version="v0001",
        reference_hash="h",
        reason="feature_drift",
        drifted_features=[DriftedFeature("x", "mean", 1.0, 0.5, None)],
        drifted_share=0.5,
        window_start_ms=1,
        window_end_ms=2,
        worker_id="w",
        created_at=0.0,
    )
    assert "report" not in json.loads(msgspec.json.encode(request))  # unchanged on the wire
    named = msgspec.structs.replace(request, report="/models/churn/v0001/reports/drift-i.html")
    decoded = msgspec.json.decode(msgspec.json.encode(named), type=RetrainRequest)
    assert decoded.report == named.report


def test_the_worker_never_imports_matplotlib() -> None:
    """The worker's command (and the CLI's parser, which imports every command module)
    load no plotting library: matplotlib is imported only when a report is drawn."""
    code = (
        "import sys; from driftline.cli import build_parser; build_parser();"
        "import driftline.commands.worker, driftline.engine.kafka.worker;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_report_command_errors_are_one_line_usage_errors(
    saved: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(saved["registry"].root)
    assert main(["report", "model", "churn", "v0009", "--registry", root]) == 2
    assert "churn v0009 not found" in capsys.readouterr().err
    events = str(saved["events"])
    assert main(["report", "drift", "--registry", root, "--events", events]) == 2
    assert "give --from TIME or --last DURATION" in capsys.readouterr().err
    assert main(["report", "drift", "--registry", root, "--events", "/nonexistent.csv"]) == 2
    assert "nonexistent.csv" in capsys.readouterr().err


def test_report_drift_on_demand_from_an_event_file(
    saved: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    root, start = str(saved["registry"].root), saved["live_start"]
    argv = ["report", "drift", "--registry", root, "--events", str(saved["events"])]
    assert main([*argv, "--from", str(start), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["events_compared"] == saved["n_live"]  # every live event, none late
    page = Path(out["report"])
    assert page.name == f"drift-{start}-{out['window_ms'][1]}.html"
    assert page.parent == saved["version"].path / "reports"
    profile = read_metadata(saved["registry"], "churn", saved["version"].version)[
        "reference_profile"
    ]
    text = page.read_text(encoding="utf-8")
    monitored = [*profile["numeric"], *profile["categorical"]]
    # On demand every monitored feature is drawn, and the score.
    assert all(f'data-plot="feature-{f}"' in text for f in monitored)
    assert text.count('<figure class="plot"') == len(monitored) + 1
    # Self-contained: no script, and nothing referenced outside the page.
    assert "<script" not in text
    assert not re.search(r'(src|href)="(?!#)', text)


def test_a_version_saved_without_arrays_still_gets_a_page(saved: dict[str, Any]) -> None:
    """Versions trained before reports existed: tables, confusion matrices and
    importances, and a note saying which plots are missing."""
    from driftline.reports.model_report import build

    metadata = read_metadata(saved["registry"], "churn", saved["version"].version)
    text = build("churn", "v0001", metadata, None)
    assert 'data-plot="confusion-test"' in text and 'data-plot="importances"' in text
    assert 'data-plot="roc-test"' not in text and "saved without its held-out arrays" in text
