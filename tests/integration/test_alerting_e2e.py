"""Alerting end to end on real processes: drift, trigger, Prometheus, Alertmanager, /alerts.

The chain under test is the production one: a ``driftline worker --drift`` process scores a
simulated stream on the embedded broker; a real Prometheus scrapes its /metrics every second
and evaluates the repository's rules (``monitoring/rules``) every second; ``RetrainRequired``
goes to a real Alertmanager, which posts its webhook JSON to the worker's ``POST /alerts``.
The worker's own trigger fires first (the alert is built on the request it sent), so the
alert must be acknowledged without a second request: exactly one request for the incident
lands on the retrain-requests topic.

What is generated for the test, and why:

* a copy of ``monitoring/rules/*.yml`` with every ``for:`` cut to 2 s (production waits 5
  minutes before FeatureDrift/PredictionDrift fire; RetrainRequired has no ``for:`` and
  fires on the first evaluation that sees a sent request).  Expressions, labels and
  annotations are the production ones; the production files are not touched.
* Prometheus and Alertmanager configs pointing at this test's ports (Alertmanager routes
  RetrainRequired/critical to the worker like ``monitoring/alertmanager.yml`` does, with a
  1 s group_wait, and drops every other alert; that routing file itself is checked with
  amtool in ``tests/unit/test_deploy_files.py``).

The stream: a simulated history backfills the state, then 3000 live events as usual, then
the known drift from ``test_drift_worker.py`` (amounts x8, an unseen plan) from the
3001st live event on.  Without it, nothing may alert and no request may land.  The spec is
the default one without the calendar-bound features (``tests/support/specs.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator
from test_drift_worker import drifted

from driftline.benchmarks.worker_process import WorkerProcess
from driftline.commands.train import register, train_on_events
from driftline.core.drift.trigger import RetrainRequest
from driftline.core.spec import FeatureSpec, load_spec
from driftline.event_producer import produce
from driftline.model.registry import ModelRegistry
from driftline.simulate import Population, frame_to_events
from support.monitoring import (
    Alertmanager,
    Prometheus,
    alertmanager_binary,
    prometheus_binary,
    shortened_rules,
)
from support.specs import write_stationary_spec
from support.topic_reading import read_topic

pytestmark = pytest.mark.integration

ALERT = "RetrainRequired"
LIVE_EVENTS = 12_000
DRIFT_FROM = 3_000  # index of the first drifted live event
#: After the last event is scored: Prometheus must scrape it (1 s), evaluate (1 s), and
#: Alertmanager wait (1 s) and post.  Twice that, before "no alert" is believed.
QUIET_S = 6.0


@dataclass(frozen=True)
class Stream:
    registry: Path
    history: list[dict[str, Any]]
    live: list[dict[str, Any]]


@pytest.fixture(scope="module")
def binaries() -> tuple[str, str]:
    prometheus, alertmanager = prometheus_binary(), alertmanager_binary()
    if prometheus is None:
        pytest.skip(reason="prometheus not installed (Debian package 'prometheus')")
    if alertmanager is None:
        pytest.skip(reason="alertmanager not installed (Debian 'prometheus-alertmanager')")
    return prometheus, alertmanager


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default spec without the calendar-bound features (``tests/support/specs.py``):
    in the simulated closed cohort ``active_streak_months`` is the calendar and really drifts."""
    path = tmp_path_factory.mktemp("spec") / "features.toml"
    write_stationary_spec(path)
    return path


@pytest.fixture(scope="module")
def spec(spec_file: Path) -> FeatureSpec:
    return load_spec(spec_file)


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory, spec: FeatureSpec) -> Stream:
    """A model trained on a population's history, and that population's live events."""
    population = Population(n_customers=400, seed=31)
    history = population.generate_history(days=240)
    registry = ModelRegistry(tmp_path_factory.mktemp("models"))
    result = train_on_events(
        history, spec, horizon_days=60, n_estimators=20, cv_folds=3, progress=False
    )
    register(result, registry, "churn", spec)
    return Stream(
        registry.root,
        list(frame_to_events(history)),
        list(population.stream_events(max_events=LIVE_EVENTS)),
    )


@pytest.fixture
def rules(repo_root: Path, tmp_path: Path) -> list[Path]:
    sources = sorted((repo_root / "monitoring" / "rules").glob("*.yml"))
    assert any("alert: RetrainRequired" in p.read_text() for p in sources)
    return shortened_rules(sources, tmp_path / "rules", "2s")


@dataclass
class Observed:
    """What every part of the chain saw, read before anything was stopped."""

    prometheus_alerts: list[dict[str, Any]]
    alertmanager_alerts: list[dict[str, Any]]
    webhook_sent: float
    webhook_failed: float
    worker: list[tuple[str, dict[str, str], float]]
    worker_exit: int | None
    requests: list[Any]

    def samples(self, name: str) -> dict[str, float]:
        """``name``'s samples on the worker, by their label values joined with ``,``."""
        return {",".join(labels.values()): value for n, labels, value in self.worker if n == name}

    def retrain_alerts(self, source: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [a for a in source if a["labels"].get("alertname") == ALERT]


@pytest.fixture
def run_alerting(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    unique_group: str,
    tmp_path: Path,
    binaries: tuple[str, str],
    stream: Stream,
    rules: list[Path],
    spec_file: Path,
) -> Iterator[Callable[[bool], Observed]]:
    """``run(drift) -> Observed``; every process it starts is stopped when the test ends."""
    started: list[Any] = []

    def run(drift: bool) -> Observed:
        token_file = tmp_path / "alerts-token"
        token_file.write_text(f"e2e-{unique_group}\n")
        retrain_topic = topic_factory(1, "retrain")
        input_topic = topic_factory(4, "events")
        worker = WorkerProcess(
            kafka_bootstrap,
            input_topic,
            topic_factory(4, "predictions"),
            topic_factory(1, "dlq"),
            unique_group,
            stream.registry,
            [
                "--drift",
                "--retrain-topic",
                retrain_topic,
                "--retrain-persistence",
                "1",
                "--features",
                str(spec_file),
                # 400 customers: a batch of 2000 holds ~20 events per customer, which the
                # monitor counts as ~1/20 of the evidence (design effect); 500 as the other
                # drift tests use keeps detection within the stream.
                "--batch-size",
                "500",
                # Alertmanager authenticates as monitoring/alertmanager.yml does.
                "--alerts-token-file",
                str(token_file),
            ],
            tmp_path / "worker.log",
            name="alerted-worker",
        )
        started.append(worker.start())  # imports and loads while the servers start
        alertmanager = Alertmanager(
            binaries[1],
            tmp_path / "alertmanager",
            f"http://127.0.0.1:{worker.port}/alerts",
            ALERT,
            credentials_file=token_file,
        )
        started.append(alertmanager.start())
        prometheus = Prometheus(
            binaries[0],
            tmp_path / "prometheus",
            [f"127.0.0.1:{worker.port}"],
            rules,
            f"127.0.0.1:{alertmanager.port}",
        )
        started.append(prometheus.start())
        worker.wait_ready(60)

        later = stream.live[DRIFT_FROM:]
        total = len(stream.history) + len(stream.live)
        produce(kafka_bootstrap, input_topic, stream.history)
        produce(kafka_bootstrap, input_topic, stream.live[:DRIFT_FROM])
        produce(kafka_bootstrap, input_topic, [drifted(e) for e in later] if drift else later, 3000)
        worker.wait_metric("driftline_events_consumed_total", total, timeout=60)
        if drift:
            # The alert went round: Prometheus -> Alertmanager -> POST /alerts -> the loop.
            worker.wait_metric("driftline_retrain_alerts_total", 1, timeout=90)
        else:
            time.sleep(QUIET_S)
        observed = Observed(
            prometheus_alerts=prometheus.alerts(),
            alertmanager_alerts=alertmanager.alerts(),
            webhook_sent=alertmanager.metric(
                "alertmanager_notifications_total", integration="webhook"
            ),
            webhook_failed=alertmanager.metric(
                "alertmanager_notifications_failed_total", integration="webhook"
            ),
            worker=worker.metric_samples(),
            worker_exit=None,
            requests=[],
        )
        prometheus.stop()
        alertmanager.stop()
        # Stopped (batch finished, producer flushed) before reading: a request sent late
        # would be on the topic now, and counted.
        observed.worker_exit = worker.sigterm(timeout=30)
        observed.requests = read_topic(
            kafka_bootstrap, retrain_topic, expected=1 if drift else 0, timeout=15
        )
        return observed

    try:
        yield run
    finally:
        for process in reversed(started):
            if isinstance(process, WorkerProcess):
                process.close(graceful=False)
            else:
                process.stop()


def test_drift_fires_retrain_required_through_alertmanager_and_one_request_lands(
    run_alerting: Callable[[bool], Observed], repo_root: Path
) -> None:
    observed = run_alerting(True)
    assert observed.worker_exit == 0

    (firing,) = observed.retrain_alerts(observed.prometheus_alerts)
    assert firing["state"] == "firing"
    assert firing["labels"]["model"] == "churn" and firing["labels"]["model_version"] == "v0001"
    (routed,) = observed.retrain_alerts(observed.alertmanager_alerts)
    assert routed["status"]["state"] == "active"
    assert [r["name"] for r in routed["receivers"]] == ["webhook"]
    assert observed.webhook_sent >= 1 and observed.webhook_failed == 0

    # The worker accepted the notification (with Alertmanager's bearer token: a missing or
    # wrong one would be a 401) and its trigger had already fired the incident.
    assert observed.samples("driftline_alert_webhook_requests_total").keys() == {"202"}
    outcomes = {k: v for k, v in observed.samples("driftline_retrain_alerts_total").items() if v}
    assert outcomes.keys() <= {"already_fired", "fired", "in_flight", "repeated"}, outcomes
    assert outcomes, "no alert reached the worker's trigger"

    # Exactly one request for the incident: the trigger's and the alert's are one.
    assert len(observed.requests) == 1, [m.value() for m in observed.requests]
    record = observed.requests[0]
    request = msgspec.json.decode(record.value(), type=RetrainRequest)
    assert record.key().decode() == request.incident_id
    assert request.model_name == "churn" and request.model_version == "v0001"
    assert sum(observed.samples("driftline_retrain_triggers_total").values()) == 1
    schema = json.loads((repo_root / "schemas/retrain-request.schema.json").read_text())
    Draft202012Validator(schema).validate(json.loads(record.value()))


def test_no_drift_no_alert_no_request(run_alerting: Callable[[bool], Observed]) -> None:
    observed = run_alerting(False)
    assert observed.worker_exit == 0
    assert observed.retrain_alerts(observed.prometheus_alerts) == []
    assert observed.retrain_alerts(observed.alertmanager_alerts) == []
    assert observed.webhook_sent == 0
    assert sum(observed.samples("driftline_alert_webhook_requests_total").values()) == 0
    assert observed.requests == []
