"""What ``driftline quality`` exposes: names, labels, absent figures, retired windows, the
training AUC read from the registry, and its command-line flags."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftline.cli import build_parser, main
from driftline.commands.quality import settings_from_args
from driftline.core.predictions import Prediction
from driftline.core.quality import (
    QualitySettings,
    WindowedQuality,
    outcome_columns,
    prediction_columns,
)
from driftline.core.quality.records import PredictionOutcome
from driftline.core.spec import DAY_MS
from driftline.engine.kafka.quality import training_roc_auc
from driftline.observability.quality_metrics import QualityMetrics, window_label

T0 = 1_767_571_200_000  # Monday 2026-01-05


def records(
    n: int, version: str, t0: int, seed: int
) -> tuple[list[Prediction], list[PredictionOutcome]]:
    rng = np.random.default_rng(seed)
    preds, outs = [], []
    for i in range(n):
        score = float(rng.random())
        p = Prediction(
            event_id=f"e{i}", customer_id=f"c{i}", score=score, decision=score >= 0.4,
            threshold=0.4, model_name="churn", model_version=version, event_time=t0 + i,
            processed_at=t0 + i, source_partition=0, source_offset=i,
        )  # fmt: skip
        preds.append(p)
        outs.append(
            PredictionOutcome(
                event_id=p.event_id,
                customer_id=p.customer_id,
                prediction_time=p.event_time,
                score=score,
                threshold=0.4,
                model_name="churn",
                model_version=version,
                label=int(rng.random() < score),  # type: ignore[arg-type]
                resolved_at=p.event_time + 90 * DAY_MS,
            )
        )
    return preds, outs


def exposition(metrics: QualityMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def publish(metrics: QualityMetrics, quality: WindowedQuality) -> None:
    metrics.publish(
        quality.figures(),
        training_auc={("churn", "v0001"): 0.8},
        watermark_ms=quality.watermark_ms,
        counts=quality.counts,
        invalid={"predictions": 2},
        now=1.0,
    )


def test_figures_are_exposed_per_version_basis_and_window_and_never_as_nan() -> None:
    quality = WindowedQuality(QualitySettings(min_labels=200))
    preds, outs = records(300, "v0001", T0, 1)
    quality.add_predictions(prediction_columns(preds))
    quality.add_outcomes(outcome_columns(outs))
    few_preds, few_outs = records(50, "v0002", T0, 2)  # below the minimum: counts only
    quality.add_predictions(prediction_columns(few_preds))
    quality.add_outcomes(outcome_columns(few_outs))
    metrics = QualityMetrics(200, {"predictions": "predictions", "outcomes": "prediction-outcomes"})
    publish(metrics, quality)
    found = exposition(metrics)
    auc = {
        (s["model_version"], s["basis"], s["window"]): v
        for s, v in found["driftline_quality_roc_auc"]
    }
    assert set(auc) == {("v0001", "realised", "2026-01-05"), ("v0001", "estimated", "2026-01-05")}
    # Calibration error: realised only (the estimate is calibrated by assumption).
    assert [s["basis"] for s, _ in found["driftline_quality_calibration_error"]] == ["realised"]
    labels = {s["model_version"]: v for s, v in found["driftline_quality_labels"]}
    assert labels == {"v0001": 300, "v0002": 50}
    assert all(not math.isnan(v) for samples in found.values() for _, v in samples)
    records_total = {
        (s["topic"], s["result"]): v for s, v in found["driftline_quality_records_total"]
    }
    assert records_total[("predictions", "accepted")] == 350
    assert records_total[("predictions", "invalid")] == 2
    assert records_total[("prediction-outcomes", "late")] == 0
    assert found["driftline_quality_training_roc_auc"] == [
        ({"model": "churn", "model_version": "v0001"}, 0.8)
    ]
    assert found["driftline_quality_min_labels"] == [({}, 200.0)]
    assert found["driftline_quality_watermark_timestamp_seconds"][0][1] == pytest.approx(
        (T0 + 299 + 90 * DAY_MS) / 1000  # the last v0001 label
    )


def test_a_retired_window_disappears_from_the_exposition() -> None:
    quality = WindowedQuality(QualitySettings(min_labels=2, retention_ms=DAY_MS))
    metrics = QualityMetrics(2, {"predictions": "p", "outcomes": "o"})
    preds, _ = records(10, "v0001", T0, 3)
    quality.add_predictions(prediction_columns(preds))
    publish(metrics, quality)
    assert len(exposition(metrics)["driftline_quality_predictions"]) == 1
    later, _ = records(10, "v0001", T0 + 30 * DAY_MS, 4)
    quality.add_predictions(prediction_columns(later))
    publish(metrics, quality)
    windows = [s["window"] for s, _ in exposition(metrics)["driftline_quality_predictions"]]
    assert windows == ["2026-02-02"]


def test_window_labels_are_iso_dates_or_instants() -> None:
    assert window_label(T0) == "2026-01-05"
    assert window_label(T0 + 3_600_000) == "2026-01-05T01:00:00Z"


def test_training_auc_comes_from_the_registry_metadata_or_is_absent(tmp_path: Path) -> None:
    folder = tmp_path / "churn" / "v0001"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps({"metrics": {"test": {"roc_auc": 0.81}}}))
    assert training_roc_auc(tmp_path, "churn", "v0001") == 0.81
    assert training_roc_auc(tmp_path, "churn", "v0002") is None  # not registered
    (tmp_path / "churn" / "v0003").mkdir()
    (tmp_path / "churn" / "v0003" / "metadata.json").write_text("{not json")
    assert training_roc_auc(tmp_path, "churn", "v0003") is None
    assert training_roc_auc(tmp_path, "churn", "latest") is None  # not a version name


def test_the_command_flags_build_the_settings() -> None:
    args = build_parser().parse_args(
        ["quality", "--window", "1d", "--horizon", "30d", "--retention", "60d",
         "--min-labels", "50", "--refresh", "2s", "--metrics-port", "0"]
    )  # fmt: skip
    settings = settings_from_args(args)
    assert settings.quality.window_ms == DAY_MS
    assert settings.quality.horizon_ms == 30 * DAY_MS
    assert settings.quality.retention_ms == 60 * DAY_MS
    assert settings.quality.min_labels == 50
    assert settings.refresh_s == 2.0
    assert settings.outcomes_topic == "prediction-outcomes"
    assert settings.predictions_topic == "predictions"


def test_bad_settings_are_one_line_and_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quality", "--min-labels", "1"]) == 2
    assert "min_labels must be at least 2" in capsys.readouterr().err
