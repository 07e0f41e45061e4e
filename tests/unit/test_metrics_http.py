"""Unit tests for driftline.observability: metric set, bulk histogram, health server."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from driftline.observability import BulkHistogram, HealthServer, HealthState, WorkerMetrics
from driftline.observability.metrics import EVENT_LATENCY_BUCKETS

# Hand-written excerpt with the structure librdkafka's stats_cb emits (STATISTICS.md):
# per topic, per partition, including the internal "-1" (UA) partition, and lag -1 for
# partitions this consumer has no position on.
STATS_SAMPLE: dict[str, Any] = {
    "name": "rdkafka#consumer-1",
    "client_id": "driftline",
    "type": "consumer",
    "ts": 123456789012,
    "time": 1764080000,
    "replyq": 0,
    "msg_cnt": 0,
    "brokers": {
        "127.0.0.1:9092/1": {"name": "127.0.0.1:9092/1", "nodeid": 1, "state": "UP"},
    },
    "topics": {
        "customer-events": {
            "topic": "customer-events",
            "age": 5012,
            "metadata_age": 4010,
            "partitions": {
                "0": {
                    "partition": 0,
                    "broker": 1,
                    "leader": 1,
                    "desired": True,
                    "fetch_state": "active",
                    "next_offset": 1200,
                    "app_offset": 1195,
                    "stored_offset": 1195,
                    "committed_offset": 1100,
                    "lo_offset": 0,
                    "hi_offset": 1205,
                    "ls_offset": 1205,
                    "consumer_lag": 105,
                    "consumer_lag_stored": 10,
                    "rxmsgs": 1200,
                },
                "1": {
                    "partition": 1,
                    "broker": 1,
                    "leader": 1,
                    "desired": True,
                    "fetch_state": "active",
                    "committed_offset": 40,
                    "hi_offset": 40,
                    "consumer_lag": 0,
                    "consumer_lag_stored": 0,
                },
                "2": {
                    "partition": 2,
                    "broker": 1,
                    "leader": 1,
                    "desired": False,
                    "fetch_state": "none",
                    "committed_offset": -1001,
                    "hi_offset": -1,
                    "consumer_lag": -1,
                    "consumer_lag_stored": -1,
                },
                "-1": {
                    "partition": -1,
                    "broker": -1,
                    "leader": -1,
                    "desired": False,
                    "fetch_state": "none",
                    "consumer_lag": -1,
                },
            },
        },
        "customer-events-dlq": {
            "topic": "customer-events-dlq",
            "partitions": {
                "0": {"partition": 0, "consumer_lag": 7},
                "-1": {"partition": -1, "consumer_lag": -1},
            },
        },
    },
    "cgrp": {"state": "up", "join_state": "steady", "assignment_size": 2},
}


@pytest.fixture
def metrics() -> WorkerMetrics:
    return WorkerMetrics(process_metrics=False)


@pytest.fixture
def server(metrics: WorkerMetrics) -> Iterator[HealthServer]:
    with HealthServer(metrics, "127.0.0.1", 0, HealthState()) as srv:
        yield srv


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _histogram_samples(text: str, name: str) -> tuple[dict[str, float], float, float]:
    fam = _families(text)[name]
    buckets = {s.labels["le"]: s.value for s in fam.samples if s.name == f"{name}_bucket"}
    total = next(s.value for s in fam.samples if s.name == f"{name}_sum")
    count = next(s.value for s in fam.samples if s.name == f"{name}_count")
    return buckets, total, count


# --------------------------------------------------------------------------- /metrics


def test_metrics_endpoint_exposes_expected_names(
    metrics: WorkerMetrics, server: HealthServer
) -> None:
    assert server.port > 0
    metrics.inc_events_consumed("customer-events", 10)
    metrics.inc_predictions("churn", "3", 9)
    metrics.inc_dead_letters("decode_error")
    metrics.inc_model_load_failures("sha256_mismatch")
    metrics.set_model("churn", "3", "a" * 64)
    metrics.record_batch(10, 0.02)
    metrics.observe_stage("predict", 0.001)
    metrics.observe_event_latencies(np.array([0.01, 0.2]))
    metrics.update_from_librdkafka_stats(json.dumps(STATS_SAMPLE))

    status, headers, body = _get(f"{server.url}/metrics")
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST
    sample_names = {
        s.name for fam in text_string_to_metric_families(body.decode()) for s in fam.samples
    }
    expected = {
        "driftline_events_consumed_total",
        "driftline_predictions_produced_total",
        "driftline_dead_letters_total",
        "driftline_late_events_total",
        "driftline_producer_delivery_errors_total",
        "driftline_transactions_aborted_total",
        "driftline_batch_size_bucket",
        "driftline_stage_duration_seconds_bucket",
        "driftline_batch_duration_seconds_count",
        "driftline_event_to_prediction_seconds_sum",
        "driftline_consumer_lag",
        "driftline_assigned_partitions",
        "driftline_customers_in_state",
        "driftline_customers_evicted_total",
        "driftline_model_info",
        "driftline_model_load_failures_total",
        "driftline_last_batch_timestamp_seconds",
        "driftline_heartbeat_timestamp_seconds",
        "driftline_up",
    }
    assert expected <= sample_names
    assert all(n.startswith("driftline_") for n in sample_names)

    allowed = {"topic", "partition", "reason", "stage", "model", "model_version", "le"}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            extra = set(s.labels) - allowed
            assert extra <= ({"sha256"} if fam.name == "driftline_model_info" else set())


def test_bulk_histogram_matches_per_value_observe(
    metrics: WorkerMetrics, server: HealthServer
) -> None:
    rng = np.random.default_rng(7)
    values = np.concatenate(
        [
            rng.lognormal(mean=-2.0, sigma=2.5, size=5000),
            np.asarray(EVENT_LATENCY_BUCKETS),  # exact bounds: le is inclusive
            [0.0, 7200.0, 1e9],  # zero, beyond the last bound
        ]
    )
    metrics.observe_event_latencies(values[:2000])
    metrics.observe_event_latencies(values[2000:])

    ref_registry = CollectorRegistry()
    ref = Histogram(
        "driftline_event_to_prediction_seconds", "ref", registry=ref_registry,
        buckets=EVENT_LATENCY_BUCKETS,
    )  # fmt: skip
    for v in values:
        ref.observe(float(v))

    _, _, body = _get(f"{server.url}/metrics")
    name = "driftline_event_to_prediction_seconds"
    got_b, got_sum, got_n = _histogram_samples(body.decode(), name)
    ref_b, ref_sum, ref_n = _histogram_samples(generate_latest(ref_registry).decode(), name)
    assert got_b == ref_b
    assert got_n == ref_n == len(values)
    assert got_sum == pytest.approx(ref_sum, rel=1e-9)


def test_bulk_histogram_edge_cases() -> None:
    reg = CollectorRegistry()
    h = BulkHistogram("x_seconds", "doc", [0.1, 1.0, float("inf")], registry=reg)
    assert h.upper_bounds == (0.1, 1.0)
    assert h.observe_many([]) == 0
    assert h.observe_many([np.nan, 0.1, 0.5, np.inf]) == 3
    cum, total = h.snapshot()
    assert cum.tolist() == [1, 2, 3]
    assert total == float("inf")
    with pytest.raises(ValueError):
        BulkHistogram("y", "doc", [1.0, 1.0])
    with pytest.raises(ValueError):
        BulkHistogram("z", "doc", [])
    with pytest.raises(ValueError, match="Duplicated"):
        BulkHistogram("x_seconds", "doc", [1.0], registry=reg)


def test_negative_latency_is_clamped(metrics: WorkerMetrics) -> None:
    metrics.observe_event_latencies(np.array([-3.0, 0.5]))
    cum, total = metrics.event_to_prediction.snapshot()
    assert cum[0] == 1 and cum[-1] == 2
    assert total == pytest.approx(0.5)


def test_two_workers_in_one_process_do_not_collide() -> None:
    a, b = WorkerMetrics(), WorkerMetrics()
    a.inc_late_events(3)
    assert a.registry.get_sample_value("driftline_late_events_total") == 3
    assert b.registry.get_sample_value("driftline_late_events_total") == 0


def test_set_model_keeps_only_current(metrics: WorkerMetrics) -> None:
    metrics.set_model("churn", "3", "0123456789abcdef0123")
    metrics.set_model("churn", "4", "fedcba9876543210fedc")
    fam = _families(metrics.render().decode())["driftline_model_info"]
    assert [s.labels for s in fam.samples] == [
        {"model": "churn", "model_version": "4", "sha256": "fedcba987654"}
    ]


def test_stage_timing(metrics: WorkerMetrics) -> None:
    with pytest.raises(ValueError):
        metrics.observe_stage("customer-42", 0.1)
    with pytest.raises(RuntimeError), metrics.time_stage("decode"):
        raise RuntimeError("boom")
    metrics.observe_stage("commit", 0.002)
    reg = metrics.registry
    name = "driftline_stage_duration_seconds_count"
    assert reg.get_sample_value(name, {"stage": "decode"}) == 1
    assert reg.get_sample_value(name, {"stage": "commit"}) == 1
    assert reg.get_sample_value(name, {"stage": "poll"}) == 0  # pre-initialised


# --------------------------------------------------------------------------- stats


def test_consumer_lag_from_librdkafka_stats(metrics: WorkerMetrics) -> None:
    reg = metrics.registry

    def lag(topic: str, partition: str) -> float | None:
        return reg.get_sample_value(
            "driftline_consumer_lag", {"topic": topic, "partition": partition}
        )

    assert metrics.update_from_librdkafka_stats(json.dumps(STATS_SAMPLE)) == 3
    assert lag("customer-events", "0") == 105
    assert lag("customer-events", "1") == 0
    assert lag("customer-events", "2") is None  # lag -1: unknown
    assert lag("customer-events", "-1") is None  # internal UA partition
    assert lag("customer-events-dlq", "0") == 7

    # After a rebalance partition 0 is gone: its series must disappear, not freeze.
    later = json.loads(json.dumps(STATS_SAMPLE))
    del later["topics"]["customer-events"]["partitions"]["0"]
    later["topics"]["customer-events"]["partitions"]["1"]["consumer_lag"] = 12
    assert metrics.update_from_librdkafka_stats(json.dumps(later).encode()) == 2
    assert lag("customer-events", "0") is None
    assert lag("customer-events", "1") == 12

    # Malformed input must never raise (it runs inside poll()).
    assert metrics.update_from_librdkafka_stats("{not json") == 0
    assert metrics.update_from_librdkafka_stats('{"topics": []}') == 0
    assert metrics.update_from_librdkafka_stats('{"name": "no topics key"}') == 0
    assert metrics.update_from_librdkafka_stats("[1, 2]") == 0
    assert lag("customer-events", "1") == 12

    # A valid document with no topics (e.g. everything revoked) clears the gauge.
    assert metrics.update_from_librdkafka_stats('{"topics": {}}') == 0
    assert lag("customer-events", "1") is None


# --------------------------------------------------------------------------- health


def test_healthz_goes_stale(metrics: WorkerMetrics) -> None:
    health = HealthState()
    with HealthServer(metrics, "127.0.0.1", 0, health, max_heartbeat_age=0.2) as srv:
        health.beat()
        status, headers, body = _get(f"{srv.url}/healthz")
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        doc = json.loads(body)
        assert doc["status"] == "ok"
        assert 0 <= doc["heartbeat_age_seconds"] < 0.2

        time.sleep(0.3)
        status, _, body = _get(f"{srv.url}/healthz")
        assert status == 503
        assert json.loads(body)["heartbeat_age_seconds"] >= 0.2

        health.beat()
        assert _get(f"{srv.url}/healthz")[0] == 200


def test_readyz_reports_failing_conditions(server: HealthServer) -> None:
    status, _, body = _get(f"{server.url}/readyz")
    assert status == 503
    doc = json.loads(body)
    assert doc["status"] == "not_ready"
    assert set(doc["failing"]) == {"partitions_assigned", "model_loaded"}

    server.health.set_assigned(3)
    assert set(json.loads(_get(f"{server.url}/readyz")[2])["failing"]) == {"model_loaded"}
    server.health.set_model_loaded(True)
    status, _, body = _get(f"{server.url}/readyz")
    assert status == 200
    assert json.loads(body)["failing"] == {}

    server.health.set_broker_ok(False, "all brokers down")
    status, _, body = _get(f"{server.url}/readyz")
    assert status == 503
    assert json.loads(body)["failing"] == {"broker_reachable": "all brokers down"}

    server.health.set_broker_ok(True)
    server.health.set_model_loaded(False, "sha256 mismatch")
    assert json.loads(_get(f"{server.url}/readyz")[2])["failing"] == {
        "model_loaded": "sha256 mismatch"
    }


def test_unknown_path_and_head(server: HealthServer) -> None:
    assert _get(f"{server.url}/nope")[0] == 404
    req = urllib.request.Request(f"{server.url}/metrics", method="HEAD")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
        assert resp.read() == b""


def test_stop_releases_port_and_is_idempotent(
    metrics: WorkerMetrics, capsys: pytest.CaptureFixture[str]
) -> None:
    srv = HealthServer(metrics, "127.0.0.1", 0).start()
    port = srv.port
    assert port > 0 and srv.running
    assert _get(f"{srv.url}/healthz")[0] == 200
    srv.stop()
    srv.stop()
    assert not srv.running
    assert srv.port == port
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    assert capsys.readouterr().err == ""  # no per-request log lines
