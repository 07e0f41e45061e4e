"""Prometheus metrics of ``driftline retrain`` (its own registry: one process, one job).

Labels are closed sets (``outcome``, ``trigger``), never an incident id or a version.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

NAMESPACE = "driftline"


class RetrainMetrics:
    """Requests seen and what became of them; decisions; the last retrain's duration."""

    def __init__(self) -> None:
        self.registry = reg = CollectorRegistry()
        self.requests = Counter(
            "retrain_requests",
            "Retrain requests read, by what was done: acted, duplicate (incident already "
            "handled), cooldown, stale (about a version no longer champion), other_model, "
            "invalid (not a retrain request)",
            ["outcome"],
            namespace=NAMESPACE,
            registry=reg,
        )
        self.decisions = Counter(
            "retrain_decisions",
            "Retrains run, by outcome (promoted, rejected, failed) and trigger (request, schedule)",
            ["outcome", "trigger"],
            namespace=NAMESPACE,
            registry=reg,
        )
        self.last_seconds = Gauge(
            "retrain_last_duration_seconds",
            "Wall time of the latest retrain (read, train, evaluate, register)",
            namespace=NAMESPACE,
            registry=reg,
        )
        self.publish_failures = Counter(
            "retrain_decision_publish_failures",
            "Decisions that could not be published to the decisions topic (still logged)",
            namespace=NAMESPACE,
            registry=reg,
        )

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
