"""The demo's stall rule (issue #14): nothing consumed while events wait is a failure.

The demo on Tansu used to go on printing ``drift OK`` with a frozen "events in" and exit
0 after its worker stopped consuming; ``StallWatch`` is the rule that now catches it
(the end-to-end check is ``test_demo_smoke.py``).
"""

from __future__ import annotations

from driftline.commands._demo_stall import (
    TANSU_LIVE_LINGER_MS,
    StallWatch,
    live_producer_config,
    stall_message,
)


def test_consumption_that_stops_while_the_producer_is_ahead_is_a_stall() -> None:
    watch = StallWatch(timeout_s=60, show_after_s=10)
    assert watch.observe(0.0, 1_000, 1_000) == 0
    assert watch.observe(1.0, 2_000, 2_100) == 0  # consuming
    assert watch.observe(5.0, 2_000, 10_000) == 4.0  # frozen, producer ahead
    assert watch.status(4.0) == ""  # not shown yet
    stalled = watch.observe(12.0, 2_000, 20_000)
    assert stalled == 11.0
    assert watch.waiting == 18_000
    assert "STALLED" in watch.status(stalled) and "18,000 waiting" in watch.status(stalled)
    assert not watch.expired(stalled)
    assert watch.expired(watch.observe(61.0, 2_000, 90_000))


def test_consumption_that_moves_again_resets_the_clock() -> None:
    watch = StallWatch(timeout_s=60)
    watch.observe(0.0, 100, 100)
    assert watch.observe(30.0, 100, 5_000) == 30.0
    assert watch.observe(31.0, 101, 5_100) == 0
    assert watch.observe(40.0, 101, 6_000) == 9.0


def test_an_idle_demo_with_nothing_waiting_is_not_stalled() -> None:
    watch = StallWatch(timeout_s=60)
    watch.observe(0.0, 500, 500)
    assert watch.observe(100.0, 500, 500) == 0  # producer not ahead (e.g. waiting for now)
    assert watch.observe(130.0, 500, 900) == 30.0  # from when events started to wait


def test_a_worker_whose_metrics_do_not_answer_makes_no_progress() -> None:
    watch = StallWatch(timeout_s=20)
    watch.observe(0.0, 100, 100)
    assert watch.observe(25.0, None, 1_000) == 25.0
    assert watch.expired(25.0)


def test_a_zero_timeout_never_fails_but_still_shows() -> None:
    watch = StallWatch(timeout_s=0, show_after_s=10)
    watch.observe(0.0, 0, 10)
    stalled = watch.observe(1_000.0, 0, 10)
    assert not watch.expired(stalled)
    assert "STALLED" in watch.status(stalled)


def test_the_live_producer_batches_more_on_tansu_only() -> None:
    assert live_producer_config("tansu") == {"linger.ms": TANSU_LIVE_LINGER_MS}
    assert live_producer_config("kafka") == {}
    assert live_producer_config(None) == {}  # an existing cluster: its own settings


def test_the_failure_names_tansu_when_the_demo_runs_it() -> None:
    assert "Tansu" in stall_message(60, 5_000, "tansu")
    assert "Tansu" not in stall_message(60, 5_000, "kafka")
    assert "5,000 events wait" in stall_message(60, 5_000, None)
