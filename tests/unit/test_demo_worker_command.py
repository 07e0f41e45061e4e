"""The worker the demo starts counts its false-alarm budget in the demo's own days.

The demo streams its simulated world ~10^5 times faster than its calendar: the reference's
~2,500 events per simulated day go by in about a second.  A budget of one false alarm per
30 days of *that* rate is one per ~40 s of demo, which is what a stationary 10-minute demo
showed (DRIFT on ``days_since_last_purchase`` and ``spend_30d`` at ~285k live events, the
same features and counts as an offline replay of that stream with that budget).  The demo
means the operator's day, its own rate per wall-clock day (capped); these tests read the
demo's worker command line back through the worker's own parser and settings, as the
worker process does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from driftline.cli import build_parser
from driftline.commands.demo import MAX_DEMO_EVENTS_PER_DAY, worker_command
from driftline.commands.worker import settings_from_args
from driftline.config import TopicNames
from driftline.engine.kafka.settings import WorkerSettings


def _settings(argv: list[str]) -> WorkerSettings:
    assert argv[1:4] == ["-m", "driftline.cli", "worker"], argv
    return settings_from_args(build_parser().parse_args(argv[3:]))


@pytest.mark.parametrize(
    ("rate", "expected"), [(2000.0, MAX_DEMO_EVENTS_PER_DAY), (50.0, 50.0 * 86_400)]
)
def test_the_demo_worker_gets_the_demos_events_per_day_for_its_budget(
    rate: float, expected: float
) -> None:
    argv = worker_command(
        "127.0.0.1:9092",
        Path("var/demo/models"),
        9300,
        drift=True,
        retrain_persistence_s=1234.0,
        names=TopicNames(input="p-in", output="p-out", dead_letter="p-dlq"),
        events_per_day=min(rate * 86_400, MAX_DEMO_EVENTS_PER_DAY),
    )
    settings = _settings(argv)
    assert settings.drift
    assert settings.drift_events_per_day == expected
    assert settings.retrain_persistence_s == 1234.0
    assert (settings.input_topic, settings.output_topic) == ("p-in", "p-out")


def test_without_drift_the_demo_worker_gets_no_drift_flags() -> None:
    argv = worker_command(
        "127.0.0.1:9092", Path("m"), 9300, drift=False, events_per_day=MAX_DEMO_EVENTS_PER_DAY
    )
    settings = _settings(argv)
    assert not settings.drift
    assert settings.drift_events_per_day is None


def test_the_demo_worker_ticks_from_the_live_streams_start_only() -> None:
    """The warm-up replays the history: a year of daily re-scores nobody reads (millions
    of records in an in-memory broker) unless ticks start where the live stream does."""
    live_start = 1_710_028_800_000
    argv = worker_command("127.0.0.1:9092", Path("m"), 9300, tick_from_ms=live_start)
    assert _settings(argv).tick_from_ms == live_start
    assert _settings(worker_command("127.0.0.1:9092", Path("m"), 9300)).tick_from_ms is None


def _fetch_wait(settings: WorkerSettings) -> int:
    from driftline.engine.kafka.clients import consumer_config

    config = consumer_config(
        settings, stats_cb=lambda _s: None, error_cb=lambda _e: None, on_commit=lambda *_a: None
    )
    return int(config["fetch.wait.max.ms"])


def test_the_demo_worker_waits_longer_for_fetches_on_tansu_only() -> None:
    """Issue #14: Tansu answers a fetch with no records when reading the partition takes
    longer than the wait, and that read grows with the partition's record batches; the
    demo's worker on Tansu waits longer.  On Kafka or a given cluster: the worker's own
    default (a fifth of the 50 ms latency target), unchanged."""
    from driftline.commands._demo_stall import TANSU_FETCH_WAIT_MS, worker_fetch_wait_ms

    registry = Path("/tmp/registry")
    tansu = _settings(
        worker_command("b:9092", registry, 9300, fetch_wait_max_ms=worker_fetch_wait_ms("tansu"))
    )
    assert tansu.fetch_wait_max_ms == TANSU_FETCH_WAIT_MS
    assert _fetch_wait(tansu) == TANSU_FETCH_WAIT_MS >= 300
    for kind in ("kafka", None):
        argv = worker_command(
            "b:9092", registry, 9300, fetch_wait_max_ms=worker_fetch_wait_ms(kind)
        )
        assert "--fetch-wait-max-ms" not in argv
        assert _fetch_wait(_settings(argv)) == 10
