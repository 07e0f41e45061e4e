"""Both reports, drawn by the real command and opened in a real browser (headless Chromium).

The model report of a freshly trained model, and the drift report of a retrain request
read from the retrain topic, whose live events are read back from the input topic of a
real broker, recomputed and scored.  Each page is screenshotted and probed
(``tests/support/browser.py``): every expected plot rendered at a visible size with drawn
content, no broken image, no page or console error.  The screenshots are kept under the
test's tmp_path (``<name>.png``).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Producer

from driftline.cli import main
from driftline.commands.train import register, train_on_events
from driftline.core.drift.trigger import DriftedFeature, RetrainRequest
from driftline.core.spec import FeatureSpec
from driftline.event_producer import produce
from driftline.model.registry import ModelRegistry
from driftline.simulate import Population, frame_to_events
from support.browser import assert_rendered, chromium, open_in_chromium

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        chromium() is None and not os.environ.get("CI"),
        reason="needs Debian's chromium (make system-deps installs it; required in CI)",
    ),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, spec: FeatureSpec) -> dict[str, Any]:
    """A small model trained with two cutoffs (so an out-of-time part too), registered."""
    population = Population(n_customers=400, seed=31)
    history = population.generate_history(days=240)
    result = train_on_events(
        history, spec, horizon_days=60, n_cutoffs=2, n_estimators=20, cv_folds=3, progress=False
    )
    registry = ModelRegistry(tmp_path_factory.mktemp("report-models"))
    version = register(result, registry, "churn", spec)
    return {"population": population, "history": history, "registry": registry, "version": version}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(argv) == 0, capsys.readouterr().err
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_model_report_renders_in_chromium(
    trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry, version = trained["registry"], trained["version"]
    out = run_cli(["report", "model", "churn", "--registry", str(registry.root), "--json"], capsys)
    page = Path(out["report"])
    assert page == version.path / "reports" / "model.html" and out["curves"] is True
    # The version's own files are untouched (the report is beside them, in reports/).
    assert sorted(p.name for p in version.path.iterdir()) == [
        "evaluation.npz",
        "metadata.json",
        "model.joblib",
        "reports",
    ]
    features = {
        f"feature-{name}"
        for name, kind in registry.load("churn").metadata["feature_types"].items()
        if name not in registry.load("churn").metadata["extra"]["dropped_features"]
    }
    expected = {
        *(
            f"{plot}-{part}"
            for plot in ("roc", "pr", "calibration", "confusion")
            for part in ("test", "oot")
        ),
        "importances",
        *features,
    }
    rendered = open_in_chromium(page, tmp_path, height=3000)
    assert_rendered(rendered, expected)


def drifted(event: dict[str, Any]) -> dict[str, Any]:
    """Customers stop buying and move to a plan nobody had at training time."""
    changed = dict(event)
    if changed.get("event_type") == "purchase":
        changed["event_type"] = "page_view"
        for field in ("amount", "quantity"):
            changed.pop(field, None)
    if changed.get("plan_type") is not None:
        changed["plan_type"] = "platinum"
    return changed


def test_drift_report_of_a_retrain_request_renders_in_chromium(
    trained: dict[str, Any],
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry, version = trained["registry"], trained["version"]
    input_topic, retrain_topic = topic_factory(2, "report-in"), topic_factory(1, "report-rt")
    live = list(trained["population"].stream_events(max_events=4000))
    later = [drifted(e) for e in live[1500:]]
    produce(kafka_bootstrap, input_topic, frame_to_events(trained["history"]))
    produce(kafka_bootstrap, input_topic, live[:1500] + later)
    request = RetrainRequest(
        request_id=uuid.uuid4().hex,
        incident_id=uuid.uuid4().hex * 2,
        model_name="churn",
        model_version=version.version,
        reference_hash="0" * 64,
        reason="feature_drift",
        drifted_features=[
            DriftedFeature("plan_type", "unseen", 812.0, 25.0, 6.1),
            DriftedFeature("purchases_30d", "mean", 95.0, 21.0, 0.4),
            DriftedFeature("__score__", "mean", 40.0, 21.0, 0.2),
        ],
        drifted_share=0.45,
        window_start_ms=int(later[0]["event_time"]),
        window_end_ms=int(later[-1]["event_time"]),
        worker_id="test-worker",
        created_at=0.0,
    )
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(retrain_topic, msgspec.json.encode(request), request.incident_id.encode())
    assert producer.flush(30) == 0

    out = run_cli(
        [
            "report",
            "drift",
            "--registry",
            str(registry.root),
            "--bootstrap-servers",
            kafka_bootstrap,
            "--input-topic",
            input_topic,
            "--retrain-topic",
            retrain_topic,
            "--request-id",
            request.request_id,
            "--json",
        ],
        capsys,
    )
    page = Path(out["report"])
    assert page == version.path / "reports" / f"drift-{request.incident_id[:16]}.html"
    # Every drifted live event was read back from the topic and compared (none is late:
    # the stream is in event order), and the request now names its report.
    assert out["events_compared"] == len(later)
    annotated = msgspec.convert(out["request"], RetrainRequest)
    assert annotated.report == str(page)
    assert msgspec.structs.replace(annotated, report=None) == request
    text = page.read_text(encoding="utf-8")
    assert request.request_id in text and "812.000" in text  # the detector readings
    rendered = open_in_chromium(page, tmp_path)
    assert_rendered(rendered, {"score", "feature-plan_type", "feature-purchases_30d"})


@pytest.mark.parametrize(
    ("fault", "expected", "message"),
    [
        ('<img src="missing.png" width="300" height="300">', "importances", "page errors"),
        ('<script>console.error("boom")</script>', "importances", "page errors"),
        (
            '<figure class="plot" data-plot="empty"><svg width="0" height="0"></svg></figure>',
            "empty",
            "not visible",
        ),
        ("", "nowhere", "missing plots"),
    ],
)
def test_the_browser_check_fails_on_a_broken_page(
    trained: dict[str, Any],
    tmp_path: Path,
    fault: str,
    expected: str,
    message: str,
) -> None:
    """The check above can fail: a broken image, a console error, a plot laid out at zero
    size, or a plot that is not there each fail it, on an otherwise good report."""
    good = tmp_path / "good.html"
    assert (
        main(
            [
                "report",
                "model",
                "churn",
                "--registry",
                str(trained["registry"].root),
                "--out",
                str(good),
            ]
        )
        == 0
    )
    page = tmp_path / "broken.html"
    page.write_text(good.read_text(encoding="utf-8").replace("</body>", fault + "</body>"))
    rendered = open_in_chromium(page, tmp_path / "shots")
    with pytest.raises(AssertionError, match=message):
        assert_rendered(rendered, {"roc-test", expected})
