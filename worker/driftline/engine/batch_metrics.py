"""A finished batch's counts and timings, as every engine reports them.

One place for the metric side of the engine contract (``engine.base``): whichever engine
scored a batch, the same series move by the same amounts.
"""

from __future__ import annotations

import logging
import time

from driftline.observability.metrics import WorkerMetrics
from driftline.processor import BatchResult, PreparedBatch, Rejected, ScoringProcessor
from driftline.tick_predictions import TickOutput

log = logging.getLogger(__name__)


def count_reasons(rejected: list[Rejected]) -> dict[str, int]:
    """Dead letters per reason, for the metrics."""
    counts: dict[str, int] = {}
    for r in rejected:
        counts[r.reason] = counts.get(r.reason, 0) + 1
    return counts


def record_scored(metrics: WorkerMetrics, prepared: PreparedBatch, result: BatchResult) -> None:
    """Once scored: model errors isolated, and the decode/state/predict stage times."""
    if prepared.model_errors:
        errors, calls = prepared.model_errors, prepared.isolation_calls
        metrics.record_model_errors(errors, calls)
        log.warning(
            "the model raised on %d event(s) of a batch of %d: dead-lettered as "
            "model_error, the rest scored (%d extra scorer calls)",
            errors,
            len(prepared.raw),
            calls,
        )
    metrics.observe_stage("decode", result.stage_seconds["decode"])
    metrics.observe_stage("state", result.stage_seconds["state"])
    metrics.observe_stage("predict", result.stage_seconds["predict"])


def record_ticks(metrics: WorkerMetrics, ticks: TickOutput) -> None:
    """Each tick of a batch: counted, its customers and duration observed, and logged."""
    for tick in ticks.ticks:
        metrics.record_tick(tick.customers, tick.seconds)
        log.info(
            "tick %s on partition %d: %d customers re-scored in %.3f s",
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(tick.boundary_ms / 1000)),
            tick.partition,
            tick.customers,
            tick.seconds,
        )
    if ticks.errors:
        metrics.inc_tick_model_errors(ticks.errors)
        log.warning(
            "the model raised on %d customer(s) at a tick (left out of it), e.g. %s",
            ticks.errors,
            ticks.first_error,
        )


def record_batch(
    metrics: WorkerMetrics,
    processor: ScoringProcessor,
    result: BatchResult,
    *,
    topic: str,
    n: int,
    seconds: float,
) -> None:
    """Once produced: events, predictions, dead letters, lateness, latency, state size."""
    if result.n_redelivered:
        metrics.inc_redelivered(result.n_redelivered)
    metrics.inc_events_consumed(topic, n)
    scorer = processor.scorer
    metrics.inc_predictions(scorer.name, scorer.version, len(result.prediction_values))
    for reason, count in count_reasons(result.rejected).items():
        metrics.inc_dead_letters(reason, count)
    if result.n_late:
        metrics.inc_late_events(result.n_late)
    metrics.observe_event_latencies(result.event_latency_seconds)
    if result.ticks is not None:
        record_ticks(metrics, result.ticks)
    metrics.set_customers_in_state(processor.customers_in_state)
    metrics.record_batch(n, seconds)
