"""Metrics and health endpoints for the worker.

Kept free of Kafka and model imports so that any component (and the tests) can record
metrics without pulling in the rest of the worker.
"""

from driftline.observability.http import DEFAULT_MAX_HEARTBEAT_AGE, HealthServer, HealthState
from driftline.observability.metrics import STAGES, BulkHistogram, WorkerMetrics

__all__ = [
    "DEFAULT_MAX_HEARTBEAT_AGE",
    "STAGES",
    "BulkHistogram",
    "HealthServer",
    "HealthState",
    "WorkerMetrics",
]
