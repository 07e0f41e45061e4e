"""Alertmanager webhook intake: ``RetrainRequired`` alerts in, at most one request per incident.

Alertmanager posts its standard webhook JSON (version 4) to ``POST /alerts`` on the worker's
HTTP port.  A firing ``RetrainRequired`` alert for the model this worker serves (labels
``model`` and ``model_version``) goes to the worker's :class:`RetrainTrigger`, which decides:
an incident it already fired, or one held back by its gates (in flight, cooldown, weekly
cap), gets no second request; an incident going on here fires now with reason ``alert``;
no drift here, no request (see :meth:`RetrainTrigger.on_alert`).  Everything else
(resolved alerts, repeats of one already handled, other alerts, other models) is
acknowledged and counted, nothing more.

Why two halves in two threads: the HTTP server answers from its own threads, while the
trigger is fed by the poll loop batch by batch and is not thread-safe.  So
:meth:`AlertIntake.submit` (HTTP thread) only validates and queues, and answers 202
Accepted; :meth:`AlertIntake.take` (poll loop, between batches) does the rest.  The
status codes follow what Alertmanager does with them: it retries 5xx and gives up on 4xx,
so a payload that can never be valid is a 400 with the reason, and a full queue a 503.
"""

from __future__ import annotations

import logging
import queue
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any, Literal

import msgspec
from prometheus_client import CollectorRegistry, Counter

from driftline.core.drift.trigger import RetrainRequest, RetrainTrigger
from driftline.observability.bearer import BearerToken

__all__ = [
    "ALERT_NAME",
    "MAX_BODY_BYTES",
    "AlertIntake",
    "InvalidNotification",
    "WebhookAlert",
    "WebhookNotification",
    "decode_notification",
]

log = logging.getLogger(__name__)

#: The alert of monitoring/rules/driftline-drift.yml that asks for a retrain.
ALERT_NAME = "RetrainRequired"
#: Alertmanager's webhook payload version this intake reads.
WEBHOOK_VERSION = "4"
#: A notification carries the alerts of one group (one per model version here): 1 MiB
#: is thousands of alerts, and bounds what a stray client can make the worker buffer.
MAX_BODY_BYTES = 1 << 20
#: Notifications waiting for the poll loop; one loop turn drains them all.
QUEUE_SIZE = 100
#: Alerts remembered to recognise Alertmanager's repeats (repeat_interval, group changes).
REMEMBERED_ALERTS = 1024

_Time = Annotated[datetime, msgspec.Meta(tz=True)]


class WebhookAlert(msgspec.Struct, frozen=True):
    """One alert of a notification; only the fields the intake reads (others are ignored)."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    starts_at: _Time = msgspec.field(name="startsAt")
    fingerprint: str = ""

    @property
    def key(self) -> tuple[str, datetime]:
        """Same alert, same key, across Alertmanager's repeats: labels and start."""
        identity = self.fingerprint or repr(sorted(self.labels.items()))
        return identity, self.starts_at


class WebhookNotification(msgspec.Struct, frozen=True):
    """Alertmanager's webhook body (``version`` 4), the fields the intake reads."""

    version: str
    status: Literal["firing", "resolved"]
    alerts: list[WebhookAlert]
    receiver: str = ""
    group_key: str = msgspec.field(name="groupKey", default="")


class InvalidNotification(ValueError):
    """The body is not an Alertmanager webhook notification; the message says why."""


_decode = msgspec.json.Decoder(WebhookNotification).decode


def decode_notification(body: bytes) -> WebhookNotification:
    """Parse and check one webhook body, or raise :class:`InvalidNotification`."""
    try:
        notification = _decode(body)
    except msgspec.ValidationError as error:
        raise InvalidNotification(f"not an Alertmanager webhook notification: {error}") from None
    except msgspec.DecodeError as error:
        raise InvalidNotification(f"invalid JSON: {error}") from None
    if notification.version != WEBHOOK_VERSION:
        raise InvalidNotification(
            f"unsupported webhook version {notification.version!r} "
            f"(Alertmanager's version {WEBHOOK_VERSION} payload expected)"
        )
    return notification


class AlertIntake:
    """The queue between the HTTP thread and the poll loop, and the alert policy.

    :meth:`submit` is safe from any thread; :meth:`take` must be called from the thread
    that drives the trigger (the poll loop), which is the point of the queue.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        maxsize: int = QUEUE_SIZE,
        token: BearerToken | None = None,
    ):
        #: When set, a POST must carry ``Authorization: Bearer <token>`` (else 401).
        self.token = token
        self._queue: queue.Queue[WebhookNotification] = queue.Queue(maxsize)
        self._handled: OrderedDict[tuple[str, datetime], str] = OrderedDict()
        self.requests = Counter(
            "alert_webhook_requests_total",
            "POSTs to /alerts by HTTP status (202 queued, 401 no or wrong token, 4xx "
            "refused, 503 queue full).",
            ["code"],
            namespace="driftline",
            registry=registry,
        )
        self.outcomes = Counter(
            "retrain_alerts_total",
            "Alerts received on /alerts by what became of them (fired: a retrain request "
            "was sent; already_fired, in_flight, cooldown, weekly_cap: the trigger held it "
            "back; no_incident: no drift on this worker; resolved, repeated, other_alert, "
            "other_model, no_monitor, no_data, error: acknowledged, nothing sent).",
            ["outcome"],
            namespace="driftline",
            registry=registry,
        )

    # ------------------------------------------------------------------ HTTP thread
    def authorized(self, authorization: str | None) -> bool:
        """Whether a request with this ``Authorization`` header may post (no token: all)."""
        return self.token is None or self.token.allows(authorization)

    def submit(self, body: bytes) -> tuple[HTTPStatus, dict[str, Any]]:
        """Validate and queue one webhook body: ``(status, JSON reply)``."""
        try:
            notification = decode_notification(body)
        except InvalidNotification as invalid:
            return self._answer(HTTPStatus.BAD_REQUEST, {"error": str(invalid)})
        try:
            self._queue.put_nowait(notification)
        except queue.Full:
            return self._answer(
                HTTPStatus.SERVICE_UNAVAILABLE,
                {"error": "alert queue full: the worker's loop is behind, retry later"},
            )
        return self._answer(
            HTTPStatus.ACCEPTED, {"status": "accepted", "alerts": len(notification.alerts)}
        )

    def _answer(self, status: HTTPStatus, doc: dict[str, Any]) -> tuple[HTTPStatus, dict[str, Any]]:
        self.requests.labels(str(status.value)).inc()
        return status, doc

    def refuse(self, status: HTTPStatus, reason: str) -> tuple[HTTPStatus, dict[str, Any]]:
        """Reply for a request refused before its body was read (size, length), counted."""
        return self._answer(status, {"error": reason})

    # ------------------------------------------------------------------ poll loop
    @property
    def pending(self) -> bool:
        """Something is queued (cheap: checked on every turn of the loop)."""
        return not self._queue.empty()

    def take(
        self,
        model_name: str,
        model_version: str,
        trigger: RetrainTrigger | None,
        now_s: float | None = None,
    ) -> list[RetrainRequest]:
        """Drain the queue through the trigger; the retrain requests to send.

        A request comes back only from :meth:`RetrainTrigger.on_alert`, which has already
        marked its incident fired: the caller must send it.
        """
        requests = []
        for notification in self._drain():
            for alert in notification.alerts:
                try:
                    request, outcome = self._handle(
                        alert, model_name, str(model_version), trigger, now_s
                    )
                except Exception:  # an alert must never stop the scoring loop
                    log.exception("alert %s not handled", alert.labels)
                    request, outcome = None, "error"
                self.outcomes.labels(outcome).inc()
                if request is not None:
                    requests.append(request)
                log.info(
                    "alert %s (%s, %s %s): %s",
                    alert.labels.get("alertname"),
                    alert.status,
                    alert.labels.get("model"),
                    alert.labels.get("model_version"),
                    outcome,
                )
        return requests

    def _drain(self) -> Iterable[WebhookNotification]:
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return

    def _handle(
        self,
        alert: WebhookAlert,
        model_name: str,
        model_version: str,
        trigger: RetrainTrigger | None,
        now_s: float | None,
    ) -> tuple[RetrainRequest | None, str]:
        labels = alert.labels
        if labels.get("alertname") != ALERT_NAME:
            return None, "other_alert"
        if alert.status != "firing":
            return None, "resolved"
        if labels.get("model") != model_name or labels.get("model_version") != model_version:
            return None, "other_model"
        if alert.key in self._handled:
            return None, "repeated"
        if trigger is None:
            return None, "no_monitor"  # drift monitoring off: no incident to join
        request, outcome = trigger.on_alert(now_s)
        if outcome not in ("no_data", "no_incident"):  # a repeat may find an incident
            self._handled[alert.key] = outcome
            while len(self._handled) > REMEMBERED_ALERTS:
                self._handled.popitem(last=False)
        return request, outcome
