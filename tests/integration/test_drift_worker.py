"""The worker's drift monitor on a real broker.

A drifted stream gives drift metrics on /metrics and exactly one retrain request for the
incident, keyed by its id; a stationary stream gives none.  The stationary run uses the
default spec without the calendar-bound features (``tests/support/specs.py``): in the
simulated closed cohort ``active_streak_months`` is the calendar, which really does drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftline.commands.train import register, train_on_events
from driftline.core.drift.trigger import RetrainRequest
from driftline.core.predictions import Prediction
from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.worker import WorkerSettings
from driftline.event_producer import produce
from driftline.model.registry import ModelRegistry
from driftline.simulate import Population, frame_to_events
from support.specs import stationary_spec

pytestmark = pytest.mark.integration


def drifted(event: dict[str, Any]) -> dict[str, Any]:
    """Customers stop buying (every purchase becomes a page view: the churn model's main
    signals move, and so do its scores) and a plan nobody had at training time appears.
    A drift the model cares about: a retrain is due.  (A drift of features the model
    barely uses, e.g. order values alone, is detected and shown but, by the importance-
    weighted policy, triggers no retrain.)"""
    changed = dict(event)
    if changed.get("event_type") == "purchase":
        changed["event_type"] = "page_view"
        for field in ("amount", "quantity"):
            changed.pop(field, None)
    if changed.get("plan_type") is not None:
        changed["plan_type"] = "platinum"
    return changed


def run_stream(
    settings: WorkerSettings,
    spec: FeatureSpec,
    tmp_path: Path,
    topic_factory: Callable[..., str],
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
    drift: bool,
) -> tuple[list[Any], str]:
    """Backfill a simulated history, then live events (drifted or not); return the
    retrain-request records and the worker's /metrics text."""
    population = Population(n_customers=400, seed=31)
    history = population.generate_history(days=240)
    registry = ModelRegistry(tmp_path / "models")
    result = train_on_events(
        history, spec, horizon_days=60, n_estimators=20, cv_folds=3, progress=False
    )
    register(result, registry, "churn", spec)
    settings.registry = str(registry.root)
    settings.drift = True
    settings.retrain_topic = topic_factory(1, "retrain")
    settings.retrain_persistence_s = 1.0
    live = list(population.stream_events(max_events=12_000))
    later = [drifted(e) for e in live[3000:]] if drift else live[3000:]
    with worker_in_thread(settings, spec) as worker:
        # The history warms the state up (events before the reference period are not
        # monitored), then live events: first as usual, then drifted or not.
        produce(settings.bootstrap_servers, settings.input_topic, frame_to_events(history))
        produce(settings.bootstrap_servers, settings.input_topic, live[:3000])
        # The change comes after the worker has read everything before it, as a live
        # change does.  Without this wait a worker behind the full-speed backfill read
        # the partitions' backlogs in turns (one partition's drifted events, then another's
        # history): the monitor saw the drift come and go, the incident's condition could
        # be reached only in the last partition's events, too late for its second alarm,
        # and no request was sent (0 instead of 1, once in ~10 loaded runs).
        wait_consumed(worker, len(history) + 3000, timeout=90)
        produce(settings.bootstrap_servers, settings.input_topic, later, rate=3000)
        # Every event scored first (a prediction each), so that "no request" is a verdict
        # on the whole stream, not on a worker that has not read it yet.
        total = len(history) + len(live)
        predictions = consume_all(settings.output_topic, expected=total, timeout=90)
        assert len(predictions) >= total
        requests = consume_all(settings.retrain_topic, expected=1 if drift else 0, timeout=30)
        exposition = worker.metrics.render().decode()
    return requests, exposition


def wait_consumed(worker: Any, count: int, timeout: float) -> None:
    """Until the worker has read ``count`` events (its own events-consumed counter)."""
    deadline = time.monotonic() + timeout
    while True:
        exposition = worker.metrics.render().decode()
        read = sum(s.value for s in samples(exposition, "driftline_events_consumed_total"))
        if read >= count:
            return
        assert time.monotonic() < deadline, f"worker read {read:.0f} of {count} events"
        time.sleep(0.2)


def wait_up(worker: Any, timeout: float = 60.0) -> None:
    """Until the worker has loaded its model and looked for its drift checkpoint."""
    assert worker.drift_checkpoint_checked.wait(timeout), "worker did not start"


def samples(exposition: str, name: str) -> list[Any]:
    return [
        sample
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name
    ]


def test_drift_metrics_and_one_retrain_request_per_incident(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    tmp_path: Path,
    topic_factory: Callable[..., str],
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
) -> None:
    requests, exposition = run_stream(
        worker_settings, spec, tmp_path, topic_factory, consume_all, worker_in_thread, drift=True
    )
    # Many batches in DRIFT, one incident: exactly one request (persistence 1 s, cooldown).
    assert len(requests) == 1, f"{len(requests)} retrain requests for one incident"
    request = msgspec.json.decode(requests[0].value(), type=RetrainRequest)
    assert request.model_name == "churn" and request.model_version == "v0001"
    assert requests[0].key().decode() == request.incident_id
    assert request.drifted_features
    assert sum(s.value for s in samples(exposition, "driftline_retrain_triggers_total")) == 1
    states = samples(exposition, "driftline_feature_drift_state")
    assert {s.labels["feature"] for s in states} == set(spec.feature_names)
    allowed = {"model", "model_version", "feature", "detector", "reason"}
    for name in (
        "driftline_feature_drift_score",
        "driftline_feature_psi",
        "driftline_retrain_required",
    ):
        found = samples(exposition, name)
        assert found, name
        assert all(set(s.labels) <= allowed for s in found), name


def test_a_stationary_stream_sends_no_retrain_request(
    worker_settings: WorkerSettings,
    tmp_path: Path,
    topic_factory: Callable[..., str],
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
) -> None:
    spec = stationary_spec()
    requests, exposition = run_stream(
        worker_settings, spec, tmp_path, topic_factory, consume_all, worker_in_thread, drift=False
    )
    assert requests == []
    assert sum(s.value for s in samples(exposition, "driftline_retrain_triggers_total")) == 0
    states = {
        s.labels["feature"]: s.value for s in samples(exposition, "driftline_feature_drift_state")
    }
    assert set(states) == set(spec.feature_names)
    # The monitor did run (scores exported), and no feature is latched in DRIFT.
    assert samples(exposition, "driftline_feature_drift_score")
    assert [f for f, v in states.items() if v == 2] == []


def test_a_restart_during_an_incident_sends_no_second_request(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    tmp_path: Path,
    topic_factory: Callable[..., str],
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
) -> None:
    """The drift goes on after a restart: the new worker sees it again, but recalls the
    request already on the topic (cooldown), so the incident still has one request."""
    requests, _ = run_stream(
        worker_settings, spec, tmp_path, topic_factory, consume_all, worker_in_thread, drift=True
    )
    assert len(requests) == 1
    scored = consume_all(worker_settings.output_topic, expected=0, timeout=30)
    # The stream goes on after the last event scored (not after the request's window:
    # a worker that keeps up fires early in event time, and events older than the
    # restored watermark would all be dead-lettered as late, never scored).
    last_seen = max(msgspec.json.decode(m.value(), type=Prediction).event_time for m in scored)
    population = Population(n_customers=400, seed=32)
    population.clock_ms = max(
        msgspec.json.decode(requests[0].value(), type=RetrainRequest).window_end_ms,
        last_seen + 1,
        population.clock_ms,
    )
    more = [drifted(e) for e in population.stream_events(max_events=12_000)]
    with worker_in_thread(worker_settings, spec) as worker:
        produce(worker_settings.bootstrap_servers, worker_settings.input_topic, more, rate=3000)
        total = len(scored) + len(more)
        assert len(consume_all(worker_settings.output_topic, expected=total, timeout=60)) >= total
        exposition = worker.metrics.render().decode()
    after = consume_all(worker_settings.retrain_topic, expected=1, timeout=20)
    assert len(after) == 1, f"{len(after)} requests after the restart"
    # The restarted monitor did see the drift again (so the gate, not blindness, held it).
    states = samples(exposition, "driftline_feature_drift_state")
    assert any(s.value == 2 for s in states)


def test_a_restarted_worker_keeps_its_latched_drift(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    tmp_path: Path,
    topic_factory: Callable[..., str],
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
) -> None:
    """The monitor's checkpoint (saved at shutdown) brings latched DRIFT states and the
    statistics back under the same worker id: a restart does not clear an alarm."""
    worker_settings.worker_id = "drift-restart-test"
    run_stream(
        worker_settings, spec, tmp_path, topic_factory, consume_all, worker_in_thread, drift=True
    )
    with worker_in_thread(worker_settings, spec) as first_restart:
        wait_up(first_restart)
        monitor = first_restart.processor.drift
        assert monitor is not None
        drifted_after_restart = [f for f, s in monitor.states.items() if s == 2]
        seen = monitor.events_seen
    assert drifted_after_restart, "latched DRIFT lost across the restart"
    assert seen > 0
    # Another worker id has no checkpoint: it starts clean.
    worker_settings.worker_id = "another-worker"
    with worker_in_thread(worker_settings, spec) as other:
        wait_up(other)
        assert other.processor.drift is not None
        assert other.processor.drift.events_seen == 0
