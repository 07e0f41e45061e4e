"""The retrain loop on a real broker: a history whose churn mechanism changed halfway, a
champion fitted on the old regime, a retrain request → the challenger fitted on recent
data is promoted and a running worker swaps to it without losing an event; with no
change the policy refuses and the challenger stays a candidate."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd
import pytest
from confluent_kafka import Producer

from driftline import cli
from driftline.commands._retrain_job import RetrainConfig
from driftline.commands._retrain_service import RetrainService, ServiceSettings
from driftline.commands.train import register, train_on_events
from driftline.core.drift.trigger import RetrainRequest
from driftline.core.offline import ChurnDefinition
from driftline.core.retrain import PromotionPolicy
from driftline.core.spec import DAY_MS, FeatureSpec
from driftline.engine.kafka.worker import WorkerSettings
from driftline.event_producer import produce
from driftline.model.registry import ModelRegistry
from driftline.observability.retrain_metrics import RetrainMetrics
from driftline.simulate import frame_to_events
from support.regime_history import regime_history

pytestmark = pytest.mark.integration

FAST = {"n_estimators": 40, "cv_folds": 3}


def champion_registry(history: pd.DataFrame, spec: FeatureSpec, root: Path) -> ModelRegistry:
    """v0001, champion, fitted on the first 180 days (the old regime)."""
    old = history[history["event_time"] < history["event_time"].min() + 180 * DAY_MS]
    result = train_on_events(
        old, spec, n_cutoffs=3, horizon_days=30, lookback_days=30, progress=False, **FAST
    )
    registry = ModelRegistry(root)
    register(result, registry, "churn", spec)
    return registry


def job(root: Path, spec: FeatureSpec, topic: str) -> RetrainConfig:
    return RetrainConfig(
        registry=str(root),
        model_name="churn",
        spec=spec,
        churn=ChurnDefinition(30 * DAY_MS, "purchase", 30 * DAY_MS),
        policy=PromotionPolicy(min_auc_gain=0.05),
        history_ms=150 * DAY_MS,
        n_cutoffs=3,
        train_kwargs=FAST,
        source={"topic": topic},
    )


def request_record(incident: str, end_ms: int, request_id: str) -> bytes:
    return msgspec.json.encode(
        RetrainRequest(
            request_id=request_id,
            incident_id=incident,
            model_name="churn",
            model_version="v0001",
            reference_hash="0" * 64,
            reason="feature_drift",
            drifted_features=[],
            drifted_share=0.6,
            window_start_ms=end_ms - 10 * DAY_MS,
            window_end_ms=end_ms,
            worker_id="worker-test",
            created_at=time.time(),
        )
    )


def send(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


@contextmanager
def service_in_thread(service: RetrainService) -> Iterator[RetrainService]:
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(code=service.run()), daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.stop()
        thread.join(120)
        assert not thread.is_alive(), "retrain service did not stop"
    assert result.get("code") == 0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def serving(worker: Any) -> str | None:
    processor = worker.processor
    return None if processor is None else str(processor.scorer.version)


def counter(metrics: RetrainMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_changed_mechanism_is_retrained_promoted_and_served(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    topic_factory: Callable[..., str],
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
    tmp_path: Path,
) -> None:
    # One stream: 360 days of history, then 10 more days produced after the promotion
    # (continuous in event time, so the worker's replay clock accepts them all).
    stream = regime_history(days=370, flip=True, seed=1)
    later = stream["event_time"] >= stream["event_time"].min() + 360 * DAY_MS
    history, live = stream[~later], stream[later]
    end_ms = int(history["event_time"].max())
    registry = champion_registry(history, spec, tmp_path / "models")
    requests, decisions = topic_factory(1, "retrain"), topic_factory(1, "decisions")
    settings = dataclasses.replace(
        worker_settings, registry=str(registry.root), model_poll_interval_s=0.2
    )
    assert settings.model_version == "champion"
    bootstrap = settings.bootstrap_servers
    service = RetrainService(
        ServiceSettings(
            bootstrap,
            settings.input_topic,
            requests_topic=requests,
            decisions_topic=decisions,
            group_id=f"{settings.group_id}-retrain",
        ),
        job(registry.root, spec, settings.input_topic),
        emit=lambda line: None,
    )

    with worker_in_thread(settings, spec) as worker, service_in_thread(service):
        wait_for(lambda: serving(worker) is not None, "the worker to load its model")
        assert serving(worker) == "v0001"
        assert produce(bootstrap, settings.input_topic, frame_to_events(history)) == len(history)
        incident = "a" * 64
        send(
            bootstrap,
            requests,
            [
                (b"junk", b"not a retrain request"),  # counted as invalid, not fatal
                (incident.encode(), request_record(incident, end_ms, "r1")),
                (incident.encode(), request_record(incident, end_ms, "r2")),  # 2nd worker
            ],
        )
        [record] = consume_all(decisions, expected=1, timeout=240)
        decision = json.loads(record.value())
        assert record.key() == b"churn"
        assert decision["outcome"] == "promoted", decision["reasons"]
        assert decision["incident_id"] == incident and decision["request_id"] == "r1"
        assert (decision["champion_version"], decision["challenger_version"]) == ("v0001", "v0002")
        ev = decision["evaluation"]
        assert ev["challenger"]["roc_auc"] >= ev["champion"]["roc_auc"] + 0.05

        wait_for(lambda: serving(worker) == "v0002", "the swap to v0002")
        # A later incident reported against v0001, no longer the champion: stale, skipped.
        late = "c" * 64
        send(
            bootstrap, requests, [(late.encode(), request_record(late, end_ms + 2 * DAY_MS, "r3"))]
        )
        m = service.metrics
        wait_for(
            lambda: counter(m, "driftline_retrain_requests_total", outcome="stale") == 1,
            "the stale request to be skipped",
        )
        produce(bootstrap, settings.input_topic, frame_to_events(live))
        expected = len(history) + len(live)
        predictions = consume_all(settings.output_topic, expected=expected, timeout=240)

    scored = {}
    for message in predictions:
        value = json.loads(message.value())
        scored[value["event_id"]] = value["model_version"]
    assert set(history["event_id"]) | set(live["event_id"]) <= set(scored), "events lost"
    assert {scored[e] for e in live["event_id"]} == {"v0002"}
    assert "v0001" in {scored[e] for e in history["event_id"]}

    lineage = registry.load("churn", "v0002").metadata["lineage"]
    assert lineage["parent_version"] == "v0001" and lineage["incident_id"] == incident
    assert lineage["source"] == {"topic": settings.input_topic}
    assert registry.stages("churn").stages == {"v0001": "retired", "v0002": "champion"}
    assert counter(m, "driftline_retrain_requests_total", outcome="acted") == 1
    assert counter(m, "driftline_retrain_requests_total", outcome="duplicate") == 1
    assert counter(m, "driftline_retrain_requests_total", outcome="invalid") == 1
    assert (
        counter(m, "driftline_retrain_decisions_total", outcome="promoted", trigger="request") == 1
    )


def test_no_change_is_refused_and_the_challenger_stays_a_candidate(
    worker_settings: WorkerSettings,
    kafka_bootstrap: str,
    spec: FeatureSpec,
    topic_factory: Callable[..., str],
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
    unique_group: str,
    tmp_path: Path,
) -> None:
    history = regime_history(flip=False, seed=1)
    registry = champion_registry(history, spec, tmp_path / "models")
    events, requests = worker_settings.input_topic, topic_factory(1, "retrain")
    decisions = topic_factory(1, "decisions")
    produce(kafka_bootstrap, events, frame_to_events(history))
    settings = dataclasses.replace(
        worker_settings, registry=str(registry.root), model_poll_interval_s=0.2
    )
    service = RetrainService(
        ServiceSettings(
            kafka_bootstrap,
            events,
            requests_topic=requests,
            decisions_topic=decisions,
            group_id=f"{unique_group}-retrain",
        ),
        job(registry.root, spec, events),
        emit=lambda line: None,
    )
    incident = "b" * 64
    end_ms = int(history["event_time"].max())
    with worker_in_thread(settings, spec) as worker, service_in_thread(service):
        wait_for(lambda: serving(worker) is not None, "the worker to load its model")
        send(
            kafka_bootstrap, requests, [(incident.encode(), request_record(incident, end_ms, "r"))]
        )
        [record] = consume_all(decisions, expected=1, timeout=240)
        polls = worker.model_watcher.polls
        wait_for(lambda: worker.model_watcher.polls >= polls + 3, "three more model polls")
        # v0002 is the latest version, but not the champion: not served.
        assert registry.latest("churn") == "v0002" and serving(worker) == "v0001"
    decision = json.loads(record.value())
    assert decision["outcome"] == "rejected", decision["reasons"]
    assert "< the required +0.05" in decision["reasons"][0]
    assert registry.champion("churn").version == "v0001"
    assert registry.stages("churn").stages == {"v0001": "champion", "v0002": "candidate"}
    # A restarted service remembers the incident (from the registry's lineage).
    again = RetrainService(
        ServiceSettings(kafka_bootstrap, events, requests_topic=requests, decisions_topic=""),
        job(registry.root, spec, events),
    )
    repeat = msgspec.json.decode(request_record(incident, end_ms, "x"), type=RetrainRequest)
    assert again.gate.check(repeat) == "duplicate"


def test_retrain_once_from_the_command_line(
    kafka_bootstrap: str,
    spec: FeatureSpec,
    topic_factory: Callable[..., str],
    consume_all: Callable[..., list[Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    history = regime_history(flip=True, seed=1)
    registry = champion_registry(history, spec, tmp_path / "models")
    events, decisions = topic_factory(4, "events"), topic_factory(1, "decisions")
    produce(kafka_bootstrap, events, frame_to_events(history))
    argv = [
        "retrain",
        "--once",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--input-topic",
        events,
        "--decisions-topic",
        decisions,
        "--registry",
        str(registry.root),
        "--history-days",
        "150",
        "--horizon-days",
        "30",
        "--lookback-days",
        "30",
        "--min-auc-gain",
        "0.05",
        "--n-estimators",
        "40",
        "--cv-folds",
        "3",
    ]
    assert cli.main(argv) == 0  # 0: promoted
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    [record] = consume_all(decisions, expected=1, timeout=60)
    assert json.loads(record.value()) == printed
    assert printed["outcome"] == "promoted" and printed["trigger"] == "schedule"
    assert registry.champion("churn").version == printed["challenger_version"] == "v0002"
    assert cli.main([*argv[:-4], "--min-auc-gain", "0.5"]) == 1  # 1: rejected, v0003 candidate
    assert registry.stages("churn").stages["v0003"] == "candidate"
    assert cli.main(["retrain", "--once", "--cutoffs", "1", "--registry", str(tmp_path)]) == 2


def test_history_is_read_from_a_produce_time_on_and_deduplicated(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    from driftline.engine.kafka.history_reader import read_history

    topic = topic_factory(3, "events")
    first = regime_history(n_customers=50, days=40, seed=3)
    second = regime_history(n_customers=50, days=40, seed=4)
    produce(kafka_bootstrap, topic, frame_to_events(first))
    time.sleep(0.05)
    boundary_ms = int(time.time() * 1000)
    time.sleep(0.05)
    produce(kafka_bootstrap, topic, frame_to_events(second))
    again = next(frame_to_bytes(second))  # a producer's retry: the same event once more
    owner = str(second["customer_id"].iloc[0]).encode()
    send(kafka_bootstrap, topic, [(owner, again), (b"k000001", b"{broken"), (b"x", again)])

    everything = read_history(kafka_bootstrap, topic)
    assert set(everything.events["event_id"]) == set(first["event_id"]) | set(second["event_id"])
    assert everything.duplicates == 1 and sum(everything.rejected.values()) == 2
    later = read_history(kafka_bootstrap, topic, since_ms=boundary_ms)
    assert set(later.events["event_id"]) == set(second["event_id"])
    assert read_history(
        kafka_bootstrap, topic, since_ms=int(time.time() * 1000) + 60_000
    ).events.empty
    with pytest.raises(LookupError):
        read_history(kafka_bootstrap, f"{topic}-missing")


def frame_to_bytes(frame: pd.DataFrame) -> Iterator[bytes]:
    for event in frame_to_events(frame):
        yield json.dumps(event).encode()


def test_a_retrain_that_cannot_run_is_a_failed_decision_and_the_service_goes_on(
    kafka_bootstrap: str,
    spec: FeatureSpec,
    topic_factory: Callable[..., str],
    consume_all: Callable[..., list[Any]],
    unique_group: str,
    tmp_path: Path,
) -> None:
    history = regime_history(n_customers=600, days=200, seed=5)
    registry = champion_registry(history, spec, tmp_path / "models")
    stages = registry.root / "churn" / "stages.json"
    stages.write_text("{torn")
    events, requests = topic_factory(2, "events"), topic_factory(1, "retrain")
    decisions = topic_factory(1, "decisions")
    produce(kafka_bootstrap, events, frame_to_events(history))
    service = RetrainService(
        ServiceSettings(
            kafka_bootstrap,
            events,
            requests_topic=requests,
            decisions_topic=decisions,
            group_id=f"{unique_group}-retrain",
        ),
        job(registry.root, spec, events),
        emit=lambda line: None,
    )
    end_ms = int(history["event_time"].max())
    first, second = "d" * 64, "e" * 64
    with service_in_thread(service):
        send(kafka_bootstrap, requests, [(first.encode(), request_record(first, end_ms, "r1"))])
        [record] = consume_all(decisions, expected=1, timeout=120)
        failed = json.loads(record.value())
        assert failed["outcome"] == "failed" and "stages.json" in failed["reasons"][0]
        assert failed["challenger_version"] is None
        stages.unlink()  # repaired: an old registry again (the latest version is champion)
        later = end_ms + 2 * DAY_MS
        send(kafka_bootstrap, requests, [(second.encode(), request_record(second, later, "r2"))])
        records = consume_all(decisions, expected=2, timeout=120)
    decided = json.loads(records[-1].value())
    assert decided["incident_id"] == second and decided["outcome"] in ("promoted", "rejected")
    assert registry.versions("churn") == ["v0001", "v0002"]
