"""``POST /alerts`` of ``driftline retrain``: ``ModelPerformanceDegraded`` in, retrain request out.

The quality alert (monitoring/rules/driftline-quality.yml) is computed by ``driftline
quality`` over the predictions of *all* workers, per model version and window.  It must lead
to one retrain request, and it can happen with no input drift at all (concept drift: the
same customers, a changed churn mechanism), so the workers' own ``POST /alerts`` is the
wrong receiver: it joins a drift incident that the worker's trigger tracks on its
partitions, and answers ``no_incident`` when its inputs did not drift.  The retrain service
is the one process that acts on the request, so Alertmanager posts the quality alert here.

What the intake does, per firing ``ModelPerformanceDegraded`` of a notification:

* another model, or a version that is not the champion now (the alert of a retired version
  keeps firing until its windows retire): acknowledged, nothing sent;
* otherwise one :class:`RetrainRequest` with reason ``quality`` is published to the
  requests topic (keyed by its ``incident_id``), which the service consumes like any
  other: one incident per degraded **window** of a version, its event time the window's
  start, so the service's gate applies its duplicate check and its event-time cooldown,
  and its lineage records the incident.  A notification holding several windows of one
  version (Alertmanager groups by model and version) publishes one request, for the
  earliest window; incidents already published are remembered and not sent again.

The workers' hot path is untouched.  The HTTP thread validates, then publishes with
``acks=all`` and waits for the delivery before answering 202, so Alertmanager retries
(5xx) a request the broker did not take.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
from confluent_kafka import Producer
from prometheus_client import CONTENT_TYPE_LATEST, Counter

from driftline.core.drift.trigger import RetrainRequest
from driftline.engine.kafka.client_config import kafka_client_config
from driftline.observability.alerts import MAX_BODY_BYTES, InvalidNotification, decode_notification
from driftline.observability.bearer import BearerToken
from driftline.observability.retrain_metrics import RetrainMetrics

__all__ = ["QUALITY_ALERT", "QualityAlertIntake", "quality_request", "serve"]

log = logging.getLogger(__name__)

#: The alert of monitoring/rules/driftline-quality.yml that asks for a retrain.
QUALITY_ALERT = "ModelPerformanceDegraded"
#: Who sent the request (the ``worker_id`` field of the request contract).
SENDER = "driftline-retrain/alerts"


def window_start_ms(window: str) -> int:
    """The ``window`` label of the quality metrics (``2026-01-05`` or
    ``2026-01-05T12:00:00Z``, UTC) as epoch ms; ``ValueError`` for anything else."""
    text = window.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    start = datetime.fromisoformat(text)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    return int(start.timestamp() * 1000)


def quality_incident_id(model_name: str, model_version: str, window: str) -> str:
    """One incident per degraded window of a version (deterministic: repeats, restarts and
    a second Alertmanager give the same id, which the service's gate deduplicates)."""
    payload = json.dumps([QUALITY_ALERT, model_name, model_version, window], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def quality_request(
    model_name: str, model_version: str, window: str, created_at: float | None = None
) -> RetrainRequest:
    """The retrain request for a degraded window (event time: the window's start)."""
    start = window_start_ms(window)
    return RetrainRequest(
        request_id=uuid.uuid4().hex,
        incident_id=quality_incident_id(model_name, model_version, window),
        model_name=model_name,
        model_version=model_version,
        reference_hash="",
        reason="quality",
        drifted_features=[],
        drifted_share=0.0,
        window_start_ms=start,
        window_end_ms=start,
        worker_id=SENDER,
        created_at=time.time() if created_at is None else created_at,
    )


class QualityAlertIntake:
    """Turns webhook bodies into published retrain requests (thread-safe: one lock)."""

    def __init__(
        self,
        model_name: str,
        champion: Callable[[], str | None],
        publish: Callable[[RetrainRequest], None],
        metrics: RetrainMetrics,
        token: BearerToken | None = None,
    ) -> None:
        self.model_name = model_name
        self.champion = champion
        self.publish = publish
        self.token = token
        self._published: set[str] = set()
        self._lock = threading.Lock()
        self.webhook = Counter(
            "retrain_alert_webhook_requests",
            "POSTs to the retrain service's /alerts by HTTP status (202 handled, 401 no or "
            "wrong token, 400/413 refused, 503 request not published: retried)",
            ["code"],
            namespace="driftline",
            registry=metrics.registry,
        )
        self.outcomes = Counter(
            "retrain_quality_alerts",
            "ModelPerformanceDegraded alerts received, by what became of them (published: a "
            "retrain request was sent; repeated: its incident was sent already; stale: not "
            "the champion; resolved, other_alert, other_model, bad_window: nothing sent)",
            ["outcome"],
            namespace="driftline",
            registry=metrics.registry,
        )

    def authorized(self, authorization: str | None) -> bool:
        return self.token is None or self.token.allows(authorization)

    def answer(self, status: HTTPStatus, doc: dict[str, Any]) -> tuple[HTTPStatus, dict[str, Any]]:
        self.webhook.labels(str(status.value)).inc()
        return status, doc

    def submit(self, body: bytes) -> tuple[HTTPStatus, dict[str, Any]]:
        """Handle one webhook body: ``(status, JSON reply)``."""
        try:
            notification = decode_notification(body)
        except InvalidNotification as invalid:
            return self.answer(HTTPStatus.BAD_REQUEST, {"error": str(invalid)})
        with self._lock:
            try:
                champion = self.champion()
            except Exception as error:  # unreadable stages: Alertmanager retries a 5xx
                log.error("quality alert: cannot read the champion: %s", error)
                return self.answer(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(error)})
            degraded: list[str] = []
            for alert in notification.alerts:
                labels = alert.labels
                outcome = None
                if labels.get("alertname") != QUALITY_ALERT:
                    outcome = "other_alert"
                elif alert.status != "firing":
                    outcome = "resolved"
                elif labels.get("model") != self.model_name:
                    outcome = "other_model"
                elif champion is None or labels.get("model_version") != champion:
                    outcome = "stale"
                else:
                    try:
                        window_start_ms(labels.get("window", ""))
                        degraded.append(labels["window"])
                    except ValueError:
                        outcome = "bad_window"
                if outcome is not None:
                    self.outcomes.labels(outcome).inc()
            if not degraded:
                return self.answer(HTTPStatus.ACCEPTED, {"status": "accepted", "published": 0})
            assert champion is not None
            earliest = min(degraded, key=window_start_ms)
            request = quality_request(self.model_name, champion, earliest)
            if request.incident_id in self._published:
                self.outcomes.labels("repeated").inc(len(degraded))
                return self.answer(HTTPStatus.ACCEPTED, {"status": "accepted", "published": 0})
            try:
                self.publish(request)
            except Exception as error:  # Alertmanager retries a 5xx
                log.error("quality alert: retrain request not published: %s", error)
                return self.answer(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(error)})
            self._published.add(request.incident_id)
            self.outcomes.labels("published").inc()
            self.outcomes.labels("repeated").inc(len(degraded) - 1)
        log.info(
            "quality alert: %s %s degraded in the window from %s: retrain request %s "
            "(incident %s) published",
            self.model_name,
            champion,
            earliest,
            request.request_id,
            request.incident_id[:12],
        )
        return self.answer(
            HTTPStatus.ACCEPTED,
            {"status": "accepted", "published": 1, "incident_id": request.incident_id},
        )


def kafka_publisher(bootstrap_servers: str, topic: str) -> Callable[[RetrainRequest], None]:
    """Publish one request and wait for the broker's ack (raises when it is not taken)."""
    producer = Producer(
        kafka_client_config(
            {"bootstrap.servers": bootstrap_servers, "acks": "all", "enable.idempotence": True}
        )
    )
    lock = threading.Lock()

    def publish(request: RetrainRequest) -> None:
        failures: list[str] = []

        def delivered(err: object, _msg: object) -> None:
            if err is not None:
                failures.append(str(err))

        with lock:
            producer.produce(
                topic,
                key=request.incident_id.encode(),
                value=msgspec.json.encode(request),
                on_delivery=delivered,
            )
            left = producer.flush(30)
        if left or failures:
            raise RuntimeError(f"retrain request not delivered to {topic}: {failures or 'timeout'}")

    return publish


def serve(
    host: str, port: int, metrics: RetrainMetrics, intake: QualityAlertIntake | None
) -> ThreadingHTTPServer:
    """Serve ``GET /metrics`` and (with an intake) ``POST /alerts`` in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http: " + format, *args)

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: HTTPStatus, doc: dict[str, Any]) -> None:
            self._send(status, json.dumps(doc).encode(), "application/json")

        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                self._send(HTTPStatus.OK, metrics.render(), CONTENT_TYPE_LATEST)
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path.split("?")[0] != "/alerts" or intake is None:
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            if not intake.authorized(self.headers.get("Authorization")):
                self._json(*intake.answer(HTTPStatus.UNAUTHORIZED, {"error": "unauthorized"}))
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._json(*intake.answer(HTTPStatus.LENGTH_REQUIRED, {"error": "no length"}))
                return
            if length > MAX_BODY_BYTES or length < 0:
                self._json(
                    *intake.answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "too large"})
                )
                return
            self._json(*intake.submit(self.rfile.read(length)))

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="retrain-http", daemon=True).start()
    return server
