"""Prometheus metrics of ``driftline retrain`` (its own registry: one process, one job).

Labels are closed sets (``outcome``, ``trigger``), never an incident id.  The one version
label is ``driftline_model_champion_info{model, version}``: one series at a time (the
champion's), so a dashboard can name the version workers serve; a new version is a new
series only when a promotion or a rollback happens, which is rare by design.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

NAMESPACE = "driftline"
log = logging.getLogger(__name__)


class ChampionInfo(Collector):
    """``driftline_model_champion_info{model, version} 1``, read at each scrape.

    Read, not set: a promotion by this service, a ``driftline models promote`` or
    ``rollback`` by hand and another retrain service all change the registry's
    ``stages.json``; asking the registry when Prometheus scrapes (a small file read) shows
    each of them without this process having to hear of it.  No sample while there is no
    champion, or when the registry cannot be read (logged).
    """

    def __init__(self, model: str, champion: Callable[[], str | None]) -> None:
        self.model = model
        self.champion = champion

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            f"{NAMESPACE}_model_champion_info",
            "The model version workers serve (the registry's champion): always 1, the "
            "version is the label",
            labels=["model", "version"],
        )
        try:
            version = self.champion()
        except Exception as error:  # an unreadable stages.json must not break /metrics
            log.warning("champion of %s unreadable for /metrics: %s", self.model, error)
            version = None
        if version is not None:
            family.add_metric([self.model, version], 1.0)
        yield family


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

    def watch_champion(self, model: str, champion: Callable[[], str | None]) -> None:
        """Export ``model``'s champion, as ``champion()`` gives it at each scrape."""
        self.registry.register(ChampionInfo(model, champion))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
