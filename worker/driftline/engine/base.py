"""What a Driftline engine is: the contract every engine (Kafka, Faust, ...) keeps.

An engine moves events between a broker and the engine-free ``ScoringProcessor``
(``driftline.processor``): it consumes micro-batches, hands them to the processor, and
produces what comes back.  Everything a user or an operator can observe is the same
whichever engine runs, and that is the contract:

* input: customer events as JSON, ``schemas/customer-event.schema.json``, keyed by
  customer id; a record that is not one is dead-lettered, never stops the engine;
* predictions: ``schemas/prediction.schema.json`` on the output topic, keyed by customer;
* dead letters: the original key and value, with the ``driftline.*`` headers of
  ``schemas/dead-letter-headers.schema.json`` (reason, error, source topic, partition,
  offset, worker, time) on the dead-letter topic;
* retrain requests: ``schemas/retrain-request.schema.json`` on the retrain topic;
* metrics: ``driftline.observability.metrics.WorkerMetrics`` (and ``DriftMetrics``), the
  same names and labels, served on ``/metrics``;
* health: ``HealthState`` behind ``/healthz`` (the loop is turning) and ``/readyz``
  (model loaded, partitions assigned and restored, broker reachable), served with the
  metrics by ``driftline.observability.http.HealthServer``;
* exit codes of ``run()``: ``EXIT_OK`` after ``stop()`` (the last batch committed),
  ``EXIT_NOT_COMMITTED`` when it stopped without committing (a failed delivery, a fenced
  or fatal producer, a failed restore), ``EXIT_MODEL_REFUSED`` (from the CLI) when the
  model or its runtime was refused at start.

Engines declare the Protocol by subclassing it (``class KafkaScoringWorker(ScoringEngine)``)
so that a type checker holds them to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from driftline.observability.http import HealthState
from driftline.observability.metrics import WorkerMetrics

#: ``run()`` returned after ``stop()``, with everything processed committed.
EXIT_OK = 0
#: The model (or the runtime asked for) was refused at start.
EXIT_MODEL_REFUSED = 2
#: Stopped without committing the batch in hand: it is processed again by the next owner.
EXIT_NOT_COMMITTED = 3


class ScoringEngine(Protocol):
    """An engine: a loop that scores until told to stop, observable through two objects."""

    #: The Prometheus metrics (``/metrics``), with the names every engine shares.
    metrics: WorkerMetrics
    #: What ``/healthz`` and ``/readyz`` answer from.
    health: HealthState

    def run(self, ready: Callable[[], None] | None = None) -> int:
        """Consume, score and produce until ``stop()``; returns an exit code (``EXIT_*``).

        ``ready`` is called once the engine is subscribed and about to consume.
        """
        ...

    def stop(self) -> None:
        """Finish the batch in hand, commit it and return from ``run()`` (thread- and
        signal-safe)."""
        ...
