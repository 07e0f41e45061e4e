"""The Kafka loop of ``driftline retrain``: requests in, retrains, decisions out.

One consumer in its own group reads the retrain-requests topic; each request goes through
the :class:`~driftline.core.retrain.RequestGate` (one retrain per incident, a cooldown in
event time); an accepted one reads the retained input topic back
(:mod:`driftline.engine.kafka.history_reader`) and runs
:func:`driftline.commands._retrain_job.retrain`.  The decision is logged as one JSON line,
printed on stdout, published to the decisions topic (key: model name) and counted; only then
is the request's offset committed, so a crash mid-retrain retries it and the registry's
lineage (recalled at start) keeps a finished one from running twice.

A schedule (``every_s``) runs a retrain without a request every so often (wall clock).
A record that is not a retrain request is logged and counted (``invalid``), never fatal.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from driftline.commands._retrain_job import RetrainConfig, make_decision, recall, retrain
from driftline.core.drift.trigger import RetrainRequest
from driftline.core.retrain import Decision, RequestGate, Trigger
from driftline.engine.kafka.client_config import kafka_client_config
from driftline.engine.kafka.history_reader import read_history
from driftline.model.registry import ModelRegistry
from driftline.observability.retrain_metrics import RetrainMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSettings:
    bootstrap_servers: str
    input_topic: str
    requests_topic: str = "retrain-requests"
    #: Empty: decisions are only logged and printed.
    decisions_topic: str = "model-decisions"
    group_id: str = "driftline-retrain"
    cooldown_ms: int = 86_400_000
    #: Wall-clock seconds between scheduled retrains (None: requests only).
    every_s: float | None = None
    #: Read the input topic from this produce time on (None: from the beginning).
    since_ms: int | None = None
    read_timeout_s: float = 300.0


class RetrainService:
    """Run with :meth:`run` (blocks); :meth:`stop` from a signal handler or another thread."""

    def __init__(
        self,
        settings: ServiceSettings,
        job: RetrainConfig,
        metrics: RetrainMetrics | None = None,
        *,
        emit: Callable[[str], None] | None = None,
        track: Callable[[Decision], None] | None = None,
    ) -> None:
        self.settings = settings
        self.track = track
        self.job = job
        self.metrics = metrics or RetrainMetrics()
        self.emit = emit or (lambda line: print(line, file=sys.stdout, flush=True))
        self.gate = RequestGate(job.model_name, settings.cooldown_ms)
        self.gate.recall(*recall(ModelRegistry(job.registry), job.model_name))
        self.decisions: list[Decision] = []
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run_once(
        self, trigger: Trigger = "schedule", request: RetrainRequest | None = None
    ) -> Decision:
        """Read the history, retrain, publish: one decision (``failed`` on any error: a
        retrain that cannot run must not stop the service)."""
        started = time.monotonic()
        try:
            history = read_history(
                self.settings.bootstrap_servers,
                self.settings.input_topic,
                since_ms=self.settings.since_ms,
                timeout_s=self.settings.read_timeout_s,
            )
            log.info(
                "read %d events from %s (%d records, %d duplicates, %d rejected)",
                len(history.events),
                self.settings.input_topic,
                history.records,
                history.duplicates,
                sum(history.rejected.values()),
            )
            decision = retrain(history.events, self.job, trigger=trigger, request=request)
        except Exception as error:  # reported as a failed decision; the loop goes on
            log.exception("retrain failed")
            decision = make_decision(
                self.job,
                "failed",
                [f"{type(error).__name__}: {error}"],
                trigger=trigger,
                request=request,
                champion=self._champion(),
            )
        self.metrics.last_seconds.set(time.monotonic() - started)
        self._publish(decision)
        if self.track is not None:
            try:  # experiment tracking (--mlflow) is a record, never a reason to stop
                self.track(decision)
            except Exception as error:
                log.error("the decision stands; logging it to MLflow failed: %s", error)
        return decision

    def run(self) -> int:
        s = self.settings
        consumer = Consumer(
            kafka_client_config(
                {
                    "bootstrap.servers": s.bootstrap_servers,
                    "group.id": s.group_id,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    # a retrain (read + train) runs between two polls
                    "max.poll.interval.ms": 3_600_000,
                }
            )
        )
        consumer.subscribe([s.requests_topic])
        next_scheduled = time.monotonic() + s.every_s if s.every_s else None
        log.info(
            "retrain service for model %s: requests from %s, history from %s%s",
            self.job.model_name,
            s.requests_topic,
            s.input_topic,
            f", every {s.every_s:.0f} s" if s.every_s else "",
        )
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.5)
                if message is not None:
                    self._handle(message)
                    if message.error() is None:
                        self._commit(consumer, message)
                if next_scheduled is not None and time.monotonic() >= next_scheduled:
                    self.run_once("schedule")
                    next_scheduled = time.monotonic() + (s.every_s or 0.0)
        finally:
            consumer.close()
        return 0

    def _handle(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("retrain requests: %s", error)
            return
        try:
            request = msgspec.json.decode(message.value() or b"", type=RetrainRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as problem:
            self.metrics.requests.labels(outcome="invalid").inc()
            log.error(
                "not a retrain request (%s [%d] @%d): %s; skipped",
                message.topic(),
                message.partition(),
                message.offset(),
                problem,
            )
            return
        skip = self.gate.check(request, self._champion())
        if skip is not None:
            self.metrics.requests.labels(outcome=skip).inc()
            log.info(
                "retrain request %s (incident %s, model %s) skipped: %s",
                request.request_id,
                request.incident_id[:12],
                request.model_name,
                skip,
            )
            return
        self.metrics.requests.labels(outcome="acted").inc()
        self.gate.accept(request)
        log.info(
            "retrain request %s: incident %s (%s), model %s %s",
            request.request_id,
            request.incident_id[:12],
            request.reason,
            request.model_name,
            request.model_version,
        )
        self.run_once("request", request)

    @staticmethod
    def _commit(consumer: Consumer, message: Message) -> None:
        """Commit past a handled request; a failure (a rebalance, a broker away) means it
        is read again, and the gate knows its incident by then."""
        try:
            consumer.commit(message=message, asynchronous=False)
        except KafkaException as error:
            log.warning("commit of retrain request @%d failed: %s", message.offset(), error)

    def _champion(self) -> str | None:
        """The champion now; None when the stages file cannot be read (logged: the retrain
        itself then fails with the reason, the service goes on)."""
        try:
            return ModelRegistry(self.job.registry).champion(self.job.model_name).version
        except (OSError, ValueError) as error:
            log.error("cannot read the champion of %s: %s", self.job.model_name, error)
            return None

    def _publish(self, decision: Decision) -> None:
        self.decisions.append(decision)
        self.metrics.decisions.labels(outcome=decision.outcome, trigger=decision.trigger).inc()
        line = msgspec.json.encode(decision).decode()
        log.info(
            "decision %s: %s challenger %s vs champion %s: %s",
            decision.decision_id[:8],
            decision.outcome,
            decision.challenger_version,
            decision.champion_version,
            "; ".join(decision.reasons),
        )
        self.emit(line)
        topic = self.settings.decisions_topic
        if not topic:
            return
        producer = Producer(
            kafka_client_config(
                {"bootstrap.servers": self.settings.bootstrap_servers, "acks": "all"}
            )
        )
        failures: list[str] = []

        def delivered(err: object, _msg: object) -> None:
            if err is not None:
                failures.append(str(err))

        producer.produce(
            topic, key=decision.model_name.encode(), value=line.encode(), on_delivery=delivered
        )
        left = producer.flush(30)
        if left or failures:
            self.metrics.publish_failures.inc()
            log.error(
                "decision %s not published to %s: %s",
                decision.decision_id,
                topic,
                failures or "timed out",
            )


def decision_json(decision: Decision) -> dict[str, object]:
    """A decision as a plain dict (what the topic carries)."""
    value: dict[str, object] = json.loads(msgspec.json.encode(decision))
    return value
