"""The Alertmanager webhook intake: payload checks, the HTTP endpoint, and the alert policy.

The HTTP tests run a real :class:`HealthServer` on a free port and talk to it over a socket;
the policy tests run a real :class:`RetrainTrigger` fed with monitor updates, so "one
request per incident, whoever asks first" is checked on the trigger the worker uses.
That the whole chain works with a real Prometheus and Alertmanager is
``tests/integration/test_alerting_e2e.py``.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry
from test_retrain_trigger import T0, fake_update, feed, make_trigger

from driftline.core.drift.trigger import RetrainRequest
from driftline.observability import HealthServer, WorkerMetrics
from driftline.observability.alerts import (
    MAX_BODY_BYTES,
    AlertIntake,
    InvalidNotification,
    decode_notification,
)

MODEL, VERSION = "churn", "7"  # make_trigger's model
START = "2023-11-14T22:20:05.123456789Z"  # T0 + 5 s, with Alertmanager's nanoseconds


def alert(
    status: str = "firing",
    alertname: str = "RetrainRequired",
    model: str = MODEL,
    version: str = VERSION,
    starts_at: str = START,
) -> dict[str, Any]:
    """One alert as Alertmanager 0.25 writes it (every field, including unused ones)."""
    return {
        "status": status,
        "labels": {
            "alertname": alertname,
            "model": model,
            "model_version": version,
            "severity": "critical",
            "stack": "driftline",
        },
        "annotations": {"summary": f"Retrain required for {model} version {version}"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2023-11-14T23:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=...",
        "fingerprint": f"fp-{alertname}-{model}-{version}",
    }


def notification(*alerts: dict[str, Any], version: str = "4") -> bytes:
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return json.dumps(
        {
            "version": version,
            "groupKey": '{}/{severity="critical"}:{alertname="RetrainRequired"}',
            "truncatedAlerts": 0,
            "status": status,
            "receiver": "driftline-retrain",
            "groupLabels": {"alertname": "RetrainRequired"},
            "commonLabels": alerts[0]["labels"] if alerts else {},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": list(alerts),
        }
    ).encode()


def outcomes(intake: AlertIntake) -> dict[str, float]:
    return {
        s.labels["outcome"]: s.value
        for metric in intake.outcomes.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    }


# --------------------------------------------------------------------------- payload


def test_decodes_alertmanagers_payload_and_names_what_is_wrong_otherwise() -> None:
    decoded = decode_notification(notification(alert()))
    (first,) = decoded.alerts
    assert first.status == "firing" and first.labels["model"] == MODEL
    assert first.starts_at == datetime(2023, 11, 14, 22, 20, 5, 123457, tzinfo=UTC)
    assert first.key == ("fp-RetrainRequired-churn-7", first.starts_at)

    cases = {
        b"{not json": "invalid JSON",
        b"": "invalid JSON",
        b"[]": "not an Alertmanager webhook notification: Expected `object`",
        b'{"version": "4", "status": "firing"}': "missing required field `alerts`",
        b'{"version": "4", "status": "firing", "alerts": [{"status": "firing"}]}': (
            "missing required field `labels` - at `$.alerts[0]`"
        ),
        notification(alert(starts_at="2023-11-14T22:20:05")): "at `$.alerts[0].startsAt`",
        notification(alert(status="pending")): "at `$.alerts[0].status`",
        notification(alert(), version="3"): "unsupported webhook version '3'",
    }
    for body, message in cases.items():
        with pytest.raises(InvalidNotification) as raised:
            decode_notification(body)
        assert message in str(raised.value), (body, str(raised.value))


# --------------------------------------------------------------------------- HTTP


@pytest.fixture
def intake() -> AlertIntake:
    return AlertIntake(CollectorRegistry())


@pytest.fixture
def server(intake: AlertIntake) -> Iterator[HealthServer]:
    with HealthServer(WorkerMetrics(), "127.0.0.1", 0, alerts=intake) as running:
        yield running


def request(
    server: HealthServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; ``body`` None sends no body and no length."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None and "Content-Length" not in (headers or {}):
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_post_alerts_queues_and_answers_202(server: HealthServer, intake: AlertIntake) -> None:
    status, headers, body = request(
        server, "POST", "/alerts", notification(alert(), alert(model="upsell"))
    )
    assert status == 202 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"status": "accepted", "alerts": 2}
    assert intake.pending  # queued for the poll loop, not handled by the HTTP thread
    assert outcomes(intake) == {}


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(
    server: HealthServer, intake: AlertIntake
) -> None:
    status, _, body = request(server, "POST", "/alerts", b"{oops")
    assert status == 400 and json.loads(body)["error"].startswith("invalid JSON")
    status, _, body = request(server, "POST", "/alerts", b'{"version": "4"}')
    assert status == 400 and "missing required field" in json.loads(body)["error"]
    status, _, body = request(server, "POST", "/alerts", body=None)
    assert status == 411 and json.loads(body)["error"] == "Content-Length required"
    status, _, _ = request(server, "POST", "/alerts", b"{}", {"Content-Length": "-5"})
    assert status == 400
    # Refused on the header alone: the worker does not read (or buffer) the body.
    status, _, body = request(
        server, "POST", "/alerts", b"", {"Content-Length": str(MAX_BODY_BYTES + 1)}
    )
    assert status == 413 and "bytes" in json.loads(body)["error"]
    status, headers, _ = request(server, "GET", "/alerts")
    assert status == 405 and headers["Allow"] == "POST"
    assert request(server, "POST", "/metrics", b"{}")[0] == 404
    assert not intake.pending
    codes = {
        s.labels["code"]: s.value
        for m in intake.requests.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert codes == {"400": 3, "411": 1, "413": 1}
    assert request(server, "GET", "/healthz")[0] == 200


def test_a_full_queue_answers_503_so_alertmanager_retries() -> None:
    intake = AlertIntake(CollectorRegistry(), maxsize=1)
    with HealthServer(WorkerMetrics(), "127.0.0.1", 0, alerts=intake) as server:
        assert request(server, "POST", "/alerts", notification(alert()))[0] == 202
        status, _, body = request(server, "POST", "/alerts", notification(alert()))
        assert status == 503 and "retry" in json.loads(body)["error"]
        intake.take(MODEL, VERSION, None)
        assert request(server, "POST", "/alerts", notification(alert()))[0] == 202


def test_without_an_intake_there_is_no_alerts_endpoint() -> None:
    with HealthServer(WorkerMetrics(), "127.0.0.1", 0) as server:
        assert request(server, "POST", "/alerts", notification(alert()))[0] == 404
        assert request(server, "GET", "/alerts")[0] == 404


# --------------------------------------------------------------------------- policy


def submit(intake: AlertIntake, *alerts: dict[str, Any]) -> None:
    status, reply = intake.submit(notification(*alerts))
    assert status == 202, reply


def test_alert_after_the_trigger_fired_is_acknowledged_without_a_request(
    intake: AlertIntake,
) -> None:
    trigger = make_trigger()
    assert len(feed(trigger, ["a", "b"], T0, 700)) == 1
    submit(intake, alert())
    assert intake.take(MODEL, VERSION, trigger, now_s=T0 + 700) == []
    assert outcomes(intake) == {"already_fired": 1}


def test_alert_first_sends_one_request_and_the_trigger_stays_quiet(intake: AlertIntake) -> None:
    trigger = make_trigger()
    assert feed(trigger, ["a", "b"], T0, 100) == []  # drifting, not yet persistent
    submit(intake, alert())
    (sent,) = intake.take(MODEL, VERSION, trigger, now_s=T0 + 100)
    assert sent.reason == "alert" and sent.model_version == VERSION
    assert msgspec.json.decode(msgspec.json.encode(sent), type=RetrainRequest) == sent
    # The same alert again (Alertmanager repeats), then the incident goes on: nothing more.
    submit(intake, alert(), alert())
    assert intake.take(MODEL, VERSION, trigger, now_s=T0 + 200) == []
    assert feed(trigger, ["a", "b"], T0 + 100, 3000) == []
    assert outcomes(intake) == {"fired": 1, "repeated": 2}


def test_what_is_not_a_firing_retrain_alert_for_this_model_is_only_counted(
    intake: AlertIntake,
) -> None:
    trigger = make_trigger()
    feed(trigger, ["a", "b"], T0, 100)
    submit(
        intake,
        alert(status="resolved"),
        alert(alertname="FeatureDrift"),
        alert(model="upsell"),
        alert(version="6"),
    )
    assert intake.take(MODEL, VERSION, trigger, now_s=T0 + 100) == []
    assert outcomes(intake) == {"resolved": 1, "other_alert": 1, "other_model": 2}
    assert not trigger.incident_fired
    submit(intake, alert())
    assert intake.take(MODEL, VERSION, None) == []  # drift monitoring off
    assert outcomes(intake)["no_monitor"] == 1


def test_an_alert_before_drift_here_is_tried_again_when_repeated(intake: AlertIntake) -> None:
    """Nothing monitored yet, then nothing drifting here: acknowledged, not remembered, so
    Alertmanager's repeat finds the incident once this worker sees the drift too."""
    trigger = make_trigger()
    submit(intake, alert())
    assert intake.take(MODEL, VERSION, trigger, now_s=T0) == []
    trigger.observe(fake_update([], T0 + 10), T0 + 10)
    submit(intake, alert())
    assert intake.take(MODEL, VERSION, trigger, now_s=T0 + 10) == []
    trigger.observe(fake_update(["a", "b"], T0 + 20), T0 + 20)
    submit(intake, alert())
    assert len(intake.take(MODEL, VERSION, trigger, now_s=T0 + 30)) == 1
    assert outcomes(intake) == {"no_data": 1, "no_incident": 1, "fired": 1}


def test_an_alert_that_breaks_the_trigger_is_counted_and_the_next_one_is_handled(
    intake: AlertIntake,
) -> None:
    trigger = make_trigger()
    update = fake_update(["a", "b"], T0)
    trigger.observe(dataclasses.replace(update, statistics={}), T0)  # nothing to explain
    submit(intake, alert(), alert(model="upsell"))
    assert intake.take(MODEL, VERSION, trigger, now_s=T0 + 10) == []
    assert outcomes(intake) == {"error": 1, "other_model": 1}
