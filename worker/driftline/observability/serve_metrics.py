"""Prometheus metrics of ``driftline serve`` (its own registry: one process, one job).

Labels are closed sets (the route template, the status code, the topic kind), never a
customer id.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

NAMESPACE = "driftline"

#: Request latencies: the API's target is p99 <= 10 ms (docs/serving.md).
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

#: Staleness of the replica: from the worker scoring (processed_at) to the replica holding it.
STALENESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    """Requests, replica contents and how far behind the workers the replica is."""

    def __init__(self) -> None:
        self.registry = reg = CollectorRegistry()
        self.requests = Counter(
            "serve_requests",
            "API requests answered, by route and status code",
            ["route", "status"],
            namespace=NAMESPACE,
            registry=reg,
        )
        self.latency = Histogram(
            "serve_request_seconds",
            "Time to answer an API request in the handler, by route",
            ["route"],
            namespace=NAMESPACE,
            registry=reg,
            buckets=LATENCY_BUCKETS,
        )
        self.rows_scored = Counter(
            "serve_predict_rows",
            "Feature rows scored by POST /predict",
            namespace=NAMESPACE,
            registry=reg,
        )
        self.records = Counter(
            "serve_replica_records",
            "Records the replica applied, by topic kind (changelog, predictions)",
            ["topic"],
            namespace=NAMESPACE,
            registry=reg,
        )
        self.rejected = Counter(
            "serve_replica_rejected_records",
            "Records the replica could not read (another feature spec's snapshots, "
            "predictions that do not decode), by topic kind",
            ["topic"],
            namespace=NAMESPACE,
            registry=reg,
        )
        self.customers = Gauge(
            "serve_replica_customers",
            "Customers whose state the replica holds",
            namespace=NAMESPACE,
            registry=reg,
        )
        self.staleness = Histogram(
            "serve_replica_staleness_seconds",
            "Per prediction: wall time from the worker scoring it (processed_at) to the "
            "replica applying it, i.e. how long an answer can lag the worker",
            namespace=NAMESPACE,
            registry=reg,
            buckets=STALENESS_BUCKETS,
        )
        self.ready = Gauge(
            "serve_ready",
            "1 once the replica has read both topics to the ends they had at start",
            namespace=NAMESPACE,
            registry=reg,
        )

    def observe_applied(
        self, topic: str, records: int, rejected: int, processed_at: list[int]
    ) -> None:
        self.records.labels(topic).inc(records)
        if rejected:
            self.rejected.labels(topic).inc(rejected)
        if processed_at:
            now_ms = time.time() * 1000.0
            observe = self.staleness.observe
            for at in processed_at:
                observe(max(0.0, (now_ms - at) / 1000.0))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
