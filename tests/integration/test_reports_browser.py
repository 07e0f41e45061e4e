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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from driftline.cli import main
from driftline.commands.train import register, train_on_events
from driftline.core.drift.trigger import RetrainRequest
from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.worker import WorkerSettings
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


def test_drift_report_of_a_workers_retrain_request_renders_in_chromium(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    topic_factory: Callable[..., str],
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A real worker scores a stream that drifts and sends its retrain request; the report
    of that request reads the request back from the retrain topic and the live events back
    from the input topic (4 partitions) of the real broker.  The model and stream are
    ``test_drift_worker``'s, whose drift is known to make the worker request a retrain."""
    population = Population(n_customers=400, seed=31)
    frame = population.generate_history(days=240)
    result = train_on_events(
        frame, spec, horizon_days=60, n_estimators=20, cv_folds=3, progress=False
    )
    registry = ModelRegistry(tmp_path / "models")
    version = register(result, registry, "churn", spec)
    settings = worker_settings
    settings.registry = str(registry.root)
    settings.model_name = "churn"
    settings.drift = True
    settings.retrain_topic = topic_factory(1, "report-retrain")
    settings.retrain_persistence_s = 1.0
    history = list(frame_to_events(frame))
    live = list(population.stream_events(max_events=12_000))
    later = [drifted(e) for e in live[3000:]]
    with worker_in_thread(settings, spec):
        produce(settings.bootstrap_servers, settings.input_topic, history)
        produce(settings.bootstrap_servers, settings.input_topic, live[:3000])
        produce(settings.bootstrap_servers, settings.input_topic, later, rate=3000)
        total = len(history) + len(live)
        assert len(consume_all(settings.output_topic, expected=total, timeout=90)) >= total
        records = consume_all(settings.retrain_topic, expected=1, timeout=30)
    assert records, "the worker sent no retrain request"
    request = msgspec.json.decode(records[0].value(), type=RetrainRequest)
    assert request.report is None  # the worker leaves it out

    out = run_cli(
        [
            "report",
            "drift",
            "--registry",
            str(registry.root),
            "--bootstrap-servers",
            settings.bootstrap_servers,
            "--input-topic",
            settings.input_topic,
            "--retrain-topic",
            settings.retrain_topic,
            "--request-id",
            request.request_id,
            "--json",
        ],
        capsys,
    )
    page = Path(out["report"])
    assert page == version.path / "reports" / f"drift-{request.incident_id[:16]}.html"
    # Every event of the request's window was read back from the topic and compared
    # (none is late: the stream is in event order).
    events = [*history, *live[:3000], *later]
    in_window = [
        e for e in events if request.window_start_ms <= e["event_time"] <= request.window_end_ms
    ]
    assert out["window_ms"] == [request.window_start_ms, request.window_end_ms]
    assert out["events_compared"] == len(in_window) > 0
    annotated = msgspec.convert(out["request"], RetrainRequest)
    assert annotated.report == str(page)
    assert msgspec.structs.replace(annotated, report=None) == request
    text = page.read_text(encoding="utf-8")
    assert request.request_id in text
    for reading in request.drifted_features:  # the detector readings are on the page
        assert f"<td>{reading.feature}</td><td>{reading.detector}</td>" in text
    drifted_plots = {f"feature-{d.feature}" for d in request.drifted_features} - {
        "feature-__score__"
    }
    rendered = open_in_chromium(page, tmp_path)
    assert_rendered(rendered, {"score", *drifted_plots})


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
