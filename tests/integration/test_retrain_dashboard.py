"""``grafana/dashboards/retraining.json`` on a real Prometheus scraping a real
``driftline retrain`` process on the real broker.

The service runs as a subprocess with ``--metrics-port``; its input topic holds a history
whose churn mechanism changed (``support.regime_history``) and a champion fitted on the
old regime is registered.  Three records go to its requests topic: a retrain request about
the champion (acted on: one retrain, one decision), the same incident again (duplicate)
and a record that is not a request (invalid).  Prometheus scrapes the service every
second, and every query of the dashboard is run as Grafana would run it (the helpers of
``test_grafana_prometheus.py``): each must return data.  The figures on ``/metrics`` are
checked against what happened (the decision on the decisions topic, the registry), and a
rollback by hand shows on ``driftline_model_champion_info`` at the next scrape, without
the service being told.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from test_grafana_prometheus import (
    Prometheus,
    dashboard_queries,
    has_data,
    prometheus_binary,
    resolve_variables,
    substitute,
    wait_for,
)
from test_quality_service import scrape, start, stop, value
from test_retrain_loop import champion_registry, request_record, send

from driftline import cli
from driftline.broker import free_port
from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.event_producer import produce
from driftline.model.registry import ModelRegistry
from driftline.simulate import frame_to_events
from support.regime_history import regime_history

pytestmark = pytest.mark.integration

DEADLINE_S = 180.0  # one retrain: read ~100k events back, train, judge (slower under load)


@dataclass
class Run:
    metrics_url: str
    prometheus: Prometheus
    process: subprocess.Popen[bytes]
    log: Path
    registry: ModelRegistry
    decision: dict[str, Any]


def read_decision(bootstrap: str, topic: str, timeout: float) -> dict[str, Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                decision: dict[str, Any] = json.loads(message.value())
                return decision
    finally:
        consumer.close()
    raise AssertionError(f"no decision on {topic} in {timeout} s")


@pytest.fixture(scope="module")
def run(
    kafka_bootstrap: str,
    spec: FeatureSpec,
    tmp_path_factory: pytest.TempPathFactory,
    repo_root: Path,
) -> Iterator[Run]:
    binary = prometheus_binary()
    workdir = tmp_path_factory.mktemp("retrain-dashboard")
    history = regime_history(n_customers=800, flip=True, seed=1)
    registry = champion_registry(history, spec, workdir / "models")
    suffix = uuid.uuid4().hex[:12]
    events, requests, decisions = (f"{kind}-{suffix}" for kind in ("events", "req", "dec"))
    ensure_topics(
        kafka_bootstrap, [TopicSpec(events, 2), TopicSpec(requests, 1), TopicSpec(decisions, 1)]
    )
    produce(kafka_bootstrap, events, frame_to_events(history))

    port = free_port()
    log = workdir / "retrain.log"
    command = [
        sys.executable, "-m", "driftline.cli", "retrain",
        "--bootstrap-servers", kafka_bootstrap,
        "--input-topic", events,
        "--requests-topic", requests,
        "--decisions-topic", decisions,
        "--group-id", f"retrain-{suffix}",
        "--registry", str(registry.root),
        "--history-days", "150", "--horizon-days", "30", "--lookback-days", "30",
        "--min-auc-gain", "0.05", "--n-estimators", "40", "--cv-folds", "3",
    ]  # fmt: skip
    prometheus = Prometheus(
        binary, workdir, f"127.0.0.1:{port}", repo_root / "monitoring" / "rules"
    )
    process = None
    try:
        prometheus.wait_ready()
        process = start(command, port, log)
        end_ms = int(history["event_time"].max())
        incident = uuid.uuid4().hex
        send(
            kafka_bootstrap,
            requests,
            [
                (b"churn", request_record(incident, end_ms, "first")),
                (b"churn", request_record(incident, end_ms, "again")),  # the same incident
                (b"churn", b"not a retrain request"),
            ],
        )
        decision = read_decision(kafka_bootstrap, decisions, DEADLINE_S)
        yield Run(f"http://127.0.0.1:{port}/metrics", prometheus, process, log, registry, decision)
    finally:
        prometheus.stop()
        if process is not None:
            stop(process)
    assert process.returncode == 0, log.read_text()[-5000:]  # SIGTERM: a clean exit


def samples_when(run: Run, ready: Any, timeout: float = 60.0) -> dict[Any, float]:
    deadline = time.monotonic() + timeout
    while True:
        assert run.process.poll() is None, run.log.read_text()[-5000:]
        found = scrape(run.metrics_url)
        if ready(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_the_service_counts_what_it_did(run: Run) -> None:
    decision = run.decision
    assert decision["trigger"] == "request" and decision["challenger_version"] == "v0002"
    samples = samples_when(
        run,
        lambda s: (
            value(s, "driftline_retrain_requests_total", outcome="invalid") == 1
            and value(s, "driftline_retrain_requests_total", outcome="duplicate") == 1
        ),
    )
    for outcome in ("acted", "duplicate", "invalid"):
        assert value(samples, "driftline_retrain_requests_total", outcome=outcome) == 1, outcome
    assert (
        value(
            samples,
            "driftline_retrain_decisions_total",
            outcome=decision["outcome"],
            trigger="request",
        )
        == 1
    )
    assert value(samples, "driftline_retrain_last_duration_seconds") > 0  # type: ignore[operator]
    champion = run.registry.champion("churn").version
    assert champion == ("v0002" if decision["outcome"] == "promoted" else "v0001")
    assert value(samples, "driftline_model_champion_info", model="churn", version=champion) == 1
    infos = [k for k in samples if k[0] == "driftline_model_champion_info"]
    assert len(infos) == 1, infos  # one series: the champion's


def test_every_retraining_dashboard_query_returns_data(run: Run, repo_root: Path) -> None:
    dashboard = json.loads((repo_root / "grafana" / "dashboards" / "retraining.json").read_text())
    report: list[str] = []

    def missing() -> list[str]:
        variables = resolve_variables(run.prometheus, dashboard)
        if variables.problems:
            return variables.problems
        queries = dashboard_queries(dashboard, variables)
        report[:] = [
            f"{where}: {substitute(target['expr'], values)}" for where, target, values in queries
        ]
        return [
            line
            for line, (_, target, values) in zip(report, queries, strict=True)
            if not has_data(run.prometheus.run(target, values))
        ]

    empty = wait_for(missing, 60.0)
    assert len(report) >= 8
    assert not empty, "queries without data:\n" + "\n".join(empty)
    acted = run.prometheus.instant(
        'sum by (outcome) (increase(driftline_retrain_requests_total{outcome="acted"}[5m]))'
    )
    assert acted, "Prometheus has no acted requests"


def test_a_rollback_by_hand_shows_at_the_next_scrape(run: Run) -> None:
    """The champion gauge reads the registry when scraped: the service is not told."""
    # the mechanism changed: the challenger wins (as in test_retrain_loop.py)
    assert run.decision["outcome"] == "promoted", run.decision["reasons"]
    assert run.registry.champion("churn").version == "v0002"
    argv = ["models", "rollback", "--registry", str(run.registry.root), "--reason", "test"]
    assert cli.main(argv) == 0
    samples = samples_when(
        run,
        lambda s: value(s, "driftline_model_champion_info", model="churn", version="v0001"),
    )
    assert value(samples, "driftline_model_champion_info", model="churn", version="v0001") == 1
    assert value(samples, "driftline_model_champion_info", model="churn", version="v0002") is None

    def prometheus_sees_v0001() -> list[str]:
        result = run.prometheus.instant("driftline_model_champion_info")
        versions = [series["metric"]["version"] for series in result]
        return [] if versions == ["v0001"] else [f"champion series: {versions}"]

    assert not wait_for(prometheus_sees_v0001, 20.0)
