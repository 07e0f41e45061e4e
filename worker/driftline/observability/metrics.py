"""Prometheus metrics for the scoring worker.

Design notes (the *why*):

* Every :class:`WorkerMetrics` owns a private :class:`~prometheus_client.CollectorRegistry`.
  The process-global default registry would make two workers in one process (tests, the
  demo) fail with "Duplicated timeseries", and would leak state between tests.
* Label values are bounded by construction. Only ``topic``, ``partition``, ``reason``,
  ``stage``, ``model`` and ``model_version`` are used (plus a short ``sha256`` on the
  single ``model_info`` series). A customer id must never become a label: every distinct
  value is a new time series held in memory forever by the client and the TSDB.
* Per-event latencies are observed in bulk. Calling ``Histogram.observe`` once per event
  costs a Python call, a lock and a bucket scan per event, which is noticeable on batches of
  thousands. :class:`BulkHistogram` bins a whole NumPy array with ``searchsorted`` +
  ``bincount`` and adds the counts under one lock. prometheus_client has no public bulk API,
  so it is a small custom collector that exposes an ordinary histogram family.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

__all__ = [
    "BATCH_DURATION_BUCKETS",
    "BATCH_SIZE_BUCKETS",
    "EVENT_LATENCY_BUCKETS",
    "NAMESPACE",
    "STAGES",
    "STAGE_BUCKETS",
    "BulkHistogram",
    "WorkerMetrics",
]

log = logging.getLogger(__name__)

NAMESPACE = "driftline"

#: The pipeline stages timed by ``driftline_stage_duration_seconds``. Fixed so that the
#: ``stage`` label stays bounded and every stage has a series (at zero) from the first scrape.
STAGES: tuple[str, ...] = (
    "poll",
    "decode",
    "state",
    "features",
    "predict",
    "drift",
    "produce",
    "commit",
)

#: Events per batch, 1-2-5 log spacing from 1 to 10 000.
BATCH_SIZE_BUCKETS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000,
)  # fmt: skip

#: Per-stage wall time, 50 µs to 5 s: a stage is either sub-millisecond NumPy work or a
#: broker round trip, so the range has to cover both.
STAGE_BUCKETS: tuple[float, ...] = (
    50e-6, 100e-6, 250e-6, 500e-6,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

#: Whole-batch wall time, 1 ms to 30 s.
BATCH_DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

#: Event time to prediction time, 1 ms to 1 h: live traffic sits at the low end, replays and
#: catch-up after an outage at the high end.
EVENT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip

#: Customers re-scored per tick, 1-2-5 log spacing from 1 to 1 000 000.
TICK_CUSTOMERS_BUCKETS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000,
    100_000, 200_000, 500_000, 1_000_000,
)  # fmt: skip

#: One tick's wall time (features, scoring, encoding), 1 ms to 2 min.
TICK_DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
)  # fmt: skip

_SHA_SHORT = 12


class BulkHistogram:
    """An unlabelled Prometheus histogram that accepts whole NumPy arrays at once.

    Semantics match :class:`prometheus_client.Histogram`: a value ``v`` lands in the first
    bucket whose upper bound satisfies ``v <= le`` (``searchsorted(..., side="left")``), and
    the exposed bucket counts are cumulative with a final ``+Inf`` bucket equal to the count.
    NaN values are dropped (they have no bucket and would poison the sum).

    It is a custom collector rather than a subclass because the client's value objects are
    private; exposing a plain ``HistogramMetricFamily`` keeps the wire format identical.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        bounds = np.asarray(sorted(float(b) for b in buckets), dtype=np.float64)
        if bounds.size and math.isinf(bounds[-1]):
            bounds = bounds[:-1]  # +Inf is implicit, as in prometheus_client
        if bounds.size == 0:
            raise ValueError("BulkHistogram needs at least one finite bucket bound")
        if np.any(np.diff(bounds) <= 0):
            raise ValueError("bucket bounds must be strictly increasing")
        self.name = name
        self.documentation = documentation
        self._bounds = bounds
        self._le = [floatToGoString(b) for b in bounds] + ["+Inf"]
        self._counts = np.zeros(bounds.size + 1, dtype=np.int64)  # per bucket, not cumulative
        self._sum = 0.0
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    @property
    def upper_bounds(self) -> tuple[float, ...]:
        """Finite upper bounds (the ``+Inf`` bucket is implicit)."""
        return tuple(float(b) for b in self._bounds)

    def observe_many(self, values: npt.ArrayLike) -> int:
        """Add every value of ``values``; returns how many were counted (NaNs excluded)."""
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size == 0:
            return 0
        arr = arr[~np.isnan(arr)]
        if arr.size == 0:
            return 0
        idx = np.searchsorted(self._bounds, arr, side="left")
        binned = np.bincount(idx, minlength=self._counts.size)
        total = float(arr.sum())
        with self._lock:
            self._counts += binned
            self._sum += total
        return int(arr.size)

    def observe(self, value: float) -> None:
        """Single-value convenience, for call sites that only have one number."""
        self.observe_many((value,))

    def snapshot(self) -> tuple[np.ndarray, float]:
        """Cumulative bucket counts (last one is ``+Inf`` == count) and the sum."""
        with self._lock:
            counts = self._counts.copy()
            total = self._sum
        return np.cumsum(counts), total

    def describe(self) -> list[HistogramMetricFamily]:
        """Names only, so the registry can detect clashes without collecting."""
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, total = self.snapshot()
        yield HistogramMetricFamily(
            self.name,
            self.documentation,
            buckets=[(le, float(c)) for le, c in zip(self._le, cumulative, strict=True)],
            sum_value=total,
        )


class WorkerMetrics:
    """All metrics of one worker, in a registry of its own.

    The metric objects are public attributes for unusual call sites; the hot path should use
    the helper methods, which validate label values and keep the worker code short.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        process_metrics: bool = True,
    ) -> None:
        """Create the metric set.

        ``process_metrics`` adds ``driftline_process_*`` (CPU, RSS, open fds) because a
        scoring worker's first failure modes are memory growth in the state store and CPU
        saturation, and those are cheaper to read here than from the node exporter.
        """
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        ns = NAMESPACE
        if process_metrics:
            ProcessCollector(namespace=ns, registry=reg)

        # --- throughput -------------------------------------------------------------------
        self.events_consumed = Counter(
            "events_consumed_total", "Events read from Kafka.", ["topic"],
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.predictions_produced = Counter(
            "predictions_produced_total", "Predictions written to the output topic.",
            ["model", "model_version"], namespace=ns, registry=reg,
        )  # fmt: skip
        self.dead_letters = Counter(
            "dead_letters_total",
            "Events sent to the dead-letter topic, by reason (fixed vocabulary).",
            ["reason"], namespace=ns, registry=reg,
        )  # fmt: skip
        self.dead_letter_failures = Counter(
            "dead_letter_failures_total",
            "Dead letters the producer or the broker refused, by reason (too_large, "
            "refused). Never fatal: see driftline.engine.kafka.dead_letters.",
            ["reason"], namespace=ns, registry=reg,
        )  # fmt: skip
        self.dead_letters_dropped = Counter(
            "dead_letters_dropped_total",
            "Rejected records whose dead letter was given up on after a refusal (the record "
            "is still on the input topic; the log names its partition and offset).",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.dead_letters_truncated = Counter(
            "dead_letters_truncated_total",
            "Dead letters cut to fit the dead-letter topic (headers give the original "
            "length and SHA-256).",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.model_errors = Counter(
            "model_errors_total",
            "Events the model raised on (isolated by bisecting their batch, dead-lettered "
            "as model_error); the rest of their batch was scored.",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.model_isolation_calls = Counter(
            "model_isolation_calls_total",
            "Extra scorer calls spent isolating the events a model raised on (0 while every "
            "batch scores).",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.late_events = Counter(
            "late_events_total", "Events older than the allowed lateness for their customer.",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.producer_delivery_errors = Counter(
            "producer_delivery_errors_total", "Producer delivery reports carrying an error.",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.transactions_aborted = Counter(
            "transactions_aborted_total",
            "Exactly-once batches whose transaction was aborted (the worker rewound to the "
            "last committed batch and scored them again).",
            namespace=ns, registry=reg,
        )  # fmt: skip

        # --- scheduled re-scoring (driftline.core.ticks) -----------------------------------
        self.ticks = Counter(
            "ticks_total",
            "Event-time ticks done: a partition's customers re-scored as of a boundary.",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.tick_customers = BulkHistogram(
            f"{ns}_tick_customers",
            "Customers re-scored per tick (every customer in the partition's state).",
            TICK_CUSTOMERS_BUCKETS,
            registry=reg,
        )
        self.tick_duration = Histogram(
            "tick_duration_seconds",
            "Wall time of one tick: its features, and its share of the scoring and encoding.",
            namespace=ns, registry=reg, buckets=TICK_DURATION_BUCKETS,
        )  # fmt: skip
        self.tick_model_errors = Counter(
            "tick_model_errors_total",
            "Customers the model raised on at a tick (left out of it; nothing to dead-letter).",
            namespace=ns, registry=reg,
        )  # fmt: skip

        # --- timing -----------------------------------------------------------------------
        self.batch_size = BulkHistogram(
            f"{ns}_batch_size", "Events per processed batch.", BATCH_SIZE_BUCKETS, registry=reg
        )
        self.stage_duration = Histogram(
            "stage_duration_seconds", "Wall time per pipeline stage per batch.", ["stage"],
            namespace=ns, registry=reg, buckets=STAGE_BUCKETS,
        )  # fmt: skip
        self.batch_duration = Histogram(
            "batch_duration_seconds", "Wall time to process one batch end to end.",
            namespace=ns, registry=reg, buckets=BATCH_DURATION_BUCKETS,
        )  # fmt: skip
        self.event_to_prediction = BulkHistogram(
            f"{ns}_event_to_prediction_seconds",
            "Prediction time minus the input record's timestamp (producer create time), per event;"
            " negative clock skew clamped to 0.",
            EVENT_LATENCY_BUCKETS,
            registry=reg,
        )
        for stage in STAGES:  # series exist at 0 before the first batch
            self.stage_duration.labels(stage=stage)

        # --- Kafka ------------------------------------------------------------------------
        self.consumer_lag = Gauge(
            "consumer_lag",
            "Messages behind the high watermark per partition, from librdkafka statistics.",
            ["topic", "partition"], namespace=ns, registry=reg,
        )  # fmt: skip
        self.assigned_partitions = Gauge(
            "assigned_partitions", "Partitions currently assigned to this worker.",
            namespace=ns, registry=reg,
        )  # fmt: skip

        # --- state ------------------------------------------------------------------------
        self.customers_in_state = Gauge(
            "customers_in_state", "Customers with live per-customer state.",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.redelivered_events = Counter(
            "redelivered_events_total",
            "Events delivered again after a crash that the restored state already held "
            "(at-least-once); they are skipped, their predictions were already delivered.",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.restore_records = Counter(
            "restore_records_total", "Changelog records read to restore partition state.",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.restored_customers = Counter(
            "restored_customers_total", "Customers whose state was restored from the changelog.",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.restore_duration = Histogram(
            "restore_duration_seconds", "Time to restore one partition's state from the changelog.",
            namespace=ns, registry=reg,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )  # fmt: skip
        self.customers_evicted = Counter(
            "customers_evicted_total", "Customers evicted from state (TTL or capacity).",
            namespace=ns, registry=reg,
        )  # fmt: skip

        # --- model ------------------------------------------------------------------------
        self.model_info = Gauge(
            "model_info", "Currently loaded model (value is always 1).",
            ["model", "model_version", "sha256"], namespace=ns, registry=reg,
        )  # fmt: skip
        self.model_load_failures = Counter(
            "model_load_failures_total", "Failed model loads or reloads, by reason.",
            ["reason"], namespace=ns, registry=reg,
        )  # fmt: skip

        # --- liveness ---------------------------------------------------------------------
        self.last_batch_timestamp = Gauge(
            "last_batch_timestamp_seconds", "Unix time the last batch finished.",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.heartbeat_timestamp = Gauge(
            "heartbeat_timestamp_seconds",
            "Unix time of the last main-loop iteration (moves even when idle).",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.up = Gauge(
            "up", "1 while the worker loop runs, 0 once it is shutting down.",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.up.set(1)

        self._model_lock = threading.Lock()
        self._lag_lock = threading.Lock()
        self._lag_series: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ counters
    def inc_events_consumed(self, topic: str, n: int = 1) -> None:
        self.events_consumed.labels(topic=topic).inc(n)

    def inc_predictions(self, model: str, model_version: str, n: int = 1) -> None:
        self.predictions_produced.labels(model=model, model_version=model_version).inc(n)

    def inc_dead_letters(self, reason: str, n: int = 1) -> None:
        """``reason`` must come from a fixed vocabulary, never from payload text."""
        self.dead_letters.labels(reason=reason).inc(n)

    def inc_dead_letter_failures(self, reason: str, n: int = 1) -> None:
        self.dead_letter_failures.labels(reason=reason).inc(n)

    def inc_dead_letters_dropped(self, n: int = 1) -> None:
        self.dead_letters_dropped.inc(n)

    def inc_dead_letters_truncated(self, n: int = 1) -> None:
        self.dead_letters_truncated.inc(n)

    def record_model_errors(self, rows: int, calls: int) -> None:
        """Rows the model raised on in a batch, and the scorer calls isolating them took."""
        self.model_errors.inc(rows)
        self.model_isolation_calls.inc(calls)

    def inc_late_events(self, n: int = 1) -> None:
        self.late_events.inc(n)

    def inc_producer_delivery_errors(self, n: int = 1) -> None:
        self.producer_delivery_errors.inc(n)

    def inc_transactions_aborted(self) -> None:
        self.transactions_aborted.inc()

    def inc_model_load_failures(self, reason: str) -> None:
        self.model_load_failures.labels(reason=reason).inc()

    def record_tick(self, customers: int, seconds: float) -> None:
        """One tick done: how many customers it re-scored, and its wall time."""
        self.ticks.inc()
        self.tick_customers.observe(customers)
        self.tick_duration.observe(seconds)

    def inc_tick_model_errors(self, n: int = 1) -> None:
        self.tick_model_errors.inc(n)

    def inc_redelivered(self, n: int = 1) -> None:
        self.redelivered_events.inc(n)

    def record_restore(self, records: int, customers: int, seconds: float) -> None:
        self.restore_records.inc(records)
        self.restored_customers.inc(customers)
        self.restore_duration.observe(seconds)

    def inc_customers_evicted(self, n: int = 1) -> None:
        self.customers_evicted.inc(n)

    # ------------------------------------------------------------------ gauges
    def set_customers_in_state(self, n: int) -> None:
        self.customers_in_state.set(n)

    def set_assigned_partitions(self, n: int) -> None:
        self.assigned_partitions.set(n)

    def heartbeat(self) -> None:
        """Mark one main-loop iteration, so a stalled loop is visible from Prometheus too."""
        self.heartbeat_timestamp.set(time.time())

    def set_up(self, up: bool) -> None:
        self.up.set(1 if up else 0)

    def set_model(self, name: str, version: str, sha256: str) -> None:
        """Publish the current model, dropping the previous label set.

        Without the removal a hot reload would leave two ``model_info`` series at 1 and
        dashboards joining on it would double count.
        """
        with self._model_lock:
            self.model_info.clear()
            self.model_info.labels(
                model=name, model_version=str(version), sha256=sha256[:_SHA_SHORT]
            ).set(1)

    # ------------------------------------------------------------------ timing
    def observe_stage(self, stage: str, seconds: float) -> None:
        """Record one stage duration; unknown stages raise so the label stays bounded."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        self.stage_duration.labels(stage=stage).observe(seconds)

    @contextmanager
    def time_stage(self, stage: str) -> Iterator[None]:
        """Time a ``with`` block as ``stage``; failures are timed too (the time was spent)."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        child = self.stage_duration.labels(stage=stage)
        start = time.perf_counter()
        try:
            yield
        finally:
            child.observe(time.perf_counter() - start)

    def record_batch(self, size: int, seconds: float) -> None:
        """Record a finished batch: its size, its wall time and the completion time."""
        self.batch_size.observe(size)
        self.batch_duration.observe(seconds)
        self.last_batch_timestamp.set(time.time())

    def observe_event_latencies(self, seconds: npt.ArrayLike) -> None:
        """Add event-to-prediction latencies for a whole batch in one vectorised step.

        Negative values (producer clock ahead of ours) are clamped to 0: they land in the
        lowest bucket instead of making ``_sum`` decrease, which would break ``rate()``.
        """
        arr = np.asarray(seconds, dtype=np.float64)
        if arr.size == 0:
            return
        self.event_to_prediction.observe_many(np.maximum(arr, 0.0))

    # ------------------------------------------------------------------ Kafka stats
    def update_from_librdkafka_stats(self, stats_json: str | bytes) -> int:
        """Set ``driftline_consumer_lag`` from a librdkafka statistics JSON document.

        Use as (or from) the consumer's ``stats_cb`` with ``statistics.interval.ms`` set.
        Reads ``topics[t].partitions[p].consumer_lag``; the pseudo-partition ``-1``
        (librdkafka's unassigned-message queue) and lag ``-1`` (unknown: not assigned, or no
        committed offset yet) are skipped, and series that are no longer reported with a
        valid lag are removed so revoked partitions do not show a frozen value.

        Why the statistics and not ``get_watermark_offsets`` / ListOffsets: on the
        Kafka-protocol broker used here (Tansu) the ListOffsets high watermark is wrong, so
        lag computed from it is wrong. librdkafka's ``consumer_lag`` is derived from the
        high watermark carried in Fetch responses, which is correct. The price is that it only
        moves while a partition is actively fetched and updates once per statistics interval.

        Never raises: this runs inside ``poll()`` via the callback, and an exception there
        would surface in the consume loop; a malformed document leaves the gauges unchanged.
        Returns the number of partitions whose lag was set.
        """
        try:
            stats: Any = json.loads(stats_json)
            topics = stats["topics"]
            if not isinstance(topics, dict):
                raise TypeError(f"'topics' is {type(topics).__name__}, expected an object")
            seen: dict[tuple[str, str], float] = {}
            for topic_name, topic in topics.items():
                partitions = (topic or {}).get("partitions") or {}
                for pid, part in partitions.items():
                    if str(pid) == "-1" or not isinstance(part, dict):
                        continue
                    lag = part.get("consumer_lag", -1)
                    if not isinstance(lag, int | float) or lag < 0:
                        continue
                    seen[(str(topic_name), str(pid))] = float(lag)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            # Leave the gauges as they were: a garbled document says nothing about lag.
            log.debug("ignoring malformed librdkafka statistics: %r", exc)
            return 0
        with self._lag_lock:
            for topic_name, pid in self._lag_series - seen.keys():
                self.consumer_lag.remove(topic_name, pid)
            for (topic_name, pid), lag in seen.items():
                self.consumer_lag.labels(topic=topic_name, partition=pid).set(lag)
            self._lag_series = set(seen)
        return len(seen)

    # ------------------------------------------------------------------ exposition
    def render(self) -> bytes:
        """Prometheus text exposition of this worker's registry."""
        return generate_latest(self.registry)
