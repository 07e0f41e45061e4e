"""``driftline retrain``'s POST /alerts: ModelPerformanceDegraded of the champion becomes one
retrain request (reason quality); everything else is acknowledged and nothing is sent.

Served over real HTTP (the service's own server on a free port); the publisher is a list,
since the Kafka side is covered by tests/integration/test_closed_loop.py.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator

from driftline.commands._retrain_alerts import (
    QualityAlertIntake,
    quality_incident_id,
    serve,
    window_start_ms,
)
from driftline.core.drift.trigger import RetrainRequest
from driftline.observability.bearer import BearerToken
from driftline.observability.retrain_metrics import RetrainMetrics


def alert(window: str, version: str = "v0001", **labels: str) -> dict[str, Any]:
    status = labels.pop("status", "firing")
    return {
        "status": status,
        "labels": {
            "alertname": "ModelPerformanceDegraded",
            "model": "churn",
            "model_version": version,
            "window": window,
            "severity": "warning",
            **labels,
        },
        "startsAt": "2026-12-05T10:00:00Z",
    }


def body(*alerts: dict[str, Any]) -> bytes:
    return json.dumps({"version": "4", "status": "firing", "alerts": list(alerts)}).encode()


@pytest.fixture
def service() -> Any:
    sent: list[RetrainRequest] = []
    state = {"champion": "v0001"}
    metrics = RetrainMetrics()
    intake = QualityAlertIntake(
        "churn", lambda: state["champion"], sent.append, metrics, BearerToken("s3cret")
    )
    server = serve("127.0.0.1", 0, metrics, intake)
    url = f"http://127.0.0.1:{server.server_address[1]}"

    def post(data: bytes, token: str | None = "s3cret") -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(f"{url}/alerts", data=data, method="POST")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    yield post, sent, state, metrics, url
    server.shutdown()


def outcomes(metrics: RetrainMetrics) -> dict[str, float]:
    return {
        s.labels["outcome"]: s.value
        for m in metrics.registry.collect()
        if m.name == "driftline_retrain_quality_alerts"
        for s in m.samples
        if s.name.endswith("_total")
    }


def test_a_degraded_champion_gets_one_request_for_its_earliest_window(
    service: Any, repo_root: Any
) -> None:
    post, sent, _, metrics, _ = service
    status, answer = post(body(alert("2026-01-12"), alert("2026-01-05")))
    assert status == 202 and answer["published"] == 1
    [request] = sent
    assert request.reason == "quality" and request.model_version == "v0001"
    assert request.incident_id == quality_incident_id("churn", "v0001", "2026-01-05")
    assert request.window_start_ms == request.window_end_ms == window_start_ms("2026-01-05")
    assert request.window_end_ms == 1767571200000  # 2026-01-05T00:00:00Z
    schema = json.loads((repo_root / "schemas/retrain-request.schema.json").read_text())
    Draft202012Validator(schema).validate(json.loads(msgspec.json.encode(request)))
    # Alertmanager's repeat, with one more window joined: the same incident, nothing sent.
    status, answer = post(body(alert("2026-01-05"), alert("2026-01-12"), alert("2026-01-19")))
    assert status == 202 and answer["published"] == 0 and len(sent) == 1
    assert outcomes(metrics) == {"published": 1.0, "repeated": 4.0}


def test_other_alerts_models_resolved_and_retired_versions_send_nothing(service: Any) -> None:
    post, sent, state, metrics, _ = service
    state["champion"] = "v0002"
    status, _ = post(
        body(
            alert("2026-01-05"),  # v0001 is no longer the champion
            alert("2026-01-05", version="v0002", status="resolved"),
            alert("2026-01-05", version="v0002", model="other"),
            alert("2026-01-05", version="v0002", alertname="RetrainRequired"),
            alert("not a date", version="v0002"),
        )
    )
    assert status == 202 and sent == []
    assert outcomes(metrics) == {
        "stale": 1.0,
        "resolved": 1.0,
        "other_model": 1.0,
        "other_alert": 1.0,
        "bad_window": 1.0,
    }


def test_the_token_and_the_payload_are_checked(service: Any) -> None:
    post, sent, _, _, url = service
    assert post(body(alert("2026-01-05")), token=None)[0] == 401
    assert post(body(alert("2026-01-05")), token="wrong")[0] == 401
    assert post(b"{not json")[0] == 400
    assert post(json.dumps({"version": "3", "status": "firing", "alerts": []}).encode())[0] == 400
    assert sent == []
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    assert 'driftline_retrain_alert_webhook_requests_total{code="401"} 2.0' in text


def test_a_request_the_broker_did_not_take_is_a_503_and_is_sent_again() -> None:
    calls: list[RetrainRequest] = []

    def flaky(request: RetrainRequest) -> None:
        calls.append(request)
        if len(calls) == 1:
            raise RuntimeError("broker away")

    intake = QualityAlertIntake("churn", lambda: "v0001", flaky, RetrainMetrics())
    assert intake.submit(body(alert("2026-01-05")))[0] == 503  # Alertmanager retries 5xx
    status, answer = intake.submit(body(alert("2026-01-05")))
    assert status == 202 and answer["published"] == 1 and len(calls) == 2
