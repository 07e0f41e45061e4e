"""Metrics of ``driftline outcomes``, in a registry of their own.

``driftline_outcomes_pending`` is what the bounds bound; ``resolved_total`` by label and
source is what quality dashboards join against; ``dropped_total`` by reason says how much
the sampling and the cap leave out (``sampled``: not the first of its customer's bucket,
``capacity``: over ``--max-pending``, ``stale``: a redelivery older than the partition's
latest prediction minus the lateness, ``trigger``: a trigger not followed).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

NAMESPACE = "driftline_outcomes"


class OutcomeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg, ns = self.registry, NAMESPACE
        self.pending = Gauge("pending", "Predictions waiting for their label.",
                             namespace=ns, registry=reg)  # fmt: skip
        self.retained_times = Gauge(
            "retained_times",
            "Target-event and external-outcome times kept for predictions still to come.",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.partitions = Gauge("partitions", "Partitions assigned.", namespace=ns, registry=reg)
        self.paused = Gauge(
            "paused_partitions",
            "Input-event partitions paused: their events ran too far ahead of the predictions.",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.resolved = Counter(
            "resolved_total", "Predictions resolved, by label and label source.",
            ["label", "source"], namespace=ns, registry=reg,
        )  # fmt: skip
        self.dropped = Counter(
            "dropped_total", "Predictions not kept pending, by reason.", ["reason"],
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.records = Counter("records_total", "Records consumed, by topic.", ["topic"],
                               namespace=ns, registry=reg)  # fmt: skip
        self.late_events = Counter(
            "late_events_total", "Input events behind the watermark (ignored, as the worker "
            "ignores them).", namespace=ns, registry=reg,
        )  # fmt: skip
        self.skipped_events = Counter(
            "skipped_events_total",
            "Input events the decoder refuses (the worker dead-letters them).",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.dead_letters = Counter(
            "dead_letters_total", "Predictions and customer outcomes dead-lettered, by reason.",
            ["reason"], namespace=ns, registry=reg,
        )  # fmt: skip
        self.transactions_aborted = Counter(
            "transactions_aborted_total", "Batches whose transaction failed (rewound).",
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.restored_customers = Counter(
            "restored_customers_total", "Customers restored from the changelog.",
            namespace=ns, registry=reg,
        )  # fmt: skip
