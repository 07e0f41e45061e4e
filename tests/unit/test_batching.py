"""Adaptive micro-batching controller: grows under a backlog, shrinks when caught up."""

from __future__ import annotations

import pytest

from driftline.engine.batching import AdaptiveBatcher


def test_a_backlog_doubles_the_batch_up_to_the_ceiling() -> None:
    batcher = AdaptiveBatcher(max_size=4000, min_size=50, initial_size=250)
    sizes = []
    for _ in range(6):
        plan = batcher.plan()
        batcher.observe(plan.size, plan.size, busy_s=0.01)  # every poll comes back full
        sizes.append(batcher.plan().size)
    assert sizes == [500, 1000, 2000, 4000, 4000, 4000]


def test_a_backlog_grows_the_batch_even_past_the_latency_target() -> None:
    # Queueing dominates under a backlog: shrinking would only lower throughput.
    batcher = AdaptiveBatcher(max_size=2000, initial_size=500, target_latency_s=0.05)
    batcher.observe(500, 500, busy_s=0.2)
    assert batcher.plan().size == 1000


def test_when_caught_up_the_batch_decays_to_twice_what_arrives() -> None:
    batcher = AdaptiveBatcher(max_size=4000, min_size=50)
    sizes = []
    for _ in range(6):
        plan = batcher.plan()
        batcher.observe(plan.size, 100, busy_s=0.002)
        sizes.append(batcher.plan().size)
    assert sizes == [2000, 1000, 500, 250, 200, 200]


def test_idle_polls_shrink_to_the_floor() -> None:
    batcher = AdaptiveBatcher(max_size=2000, min_size=50)
    for _ in range(20):
        batcher.observe(batcher.plan().size, 0, busy_s=0.0)
    assert batcher.plan().size == 50


def test_caught_up_the_wait_is_what_the_target_leaves_after_processing() -> None:
    batcher = AdaptiveBatcher(
        max_size=2000, target_latency_s=0.05, max_wait_s=0.05, min_wait_s=0.001
    )
    # 100 records in 10 ms: 0.1 ms each; the next wait is (50 ms - 10 ms) / 2.
    plan = batcher.observe(2000, 100, busy_s=0.010)
    assert plan.wait_s == pytest.approx(0.020)
    # Processing that eats the whole target leaves the floor.
    batcher = AdaptiveBatcher(max_size=2000, target_latency_s=0.05, min_wait_s=0.001)
    assert batcher.observe(2000, 1000, busy_s=0.2).wait_s == pytest.approx(0.001)


def test_a_backlog_uses_the_longest_wait_since_polls_return_full_anyway() -> None:
    batcher = AdaptiveBatcher(max_size=2000, max_wait_s=0.05)
    batcher.observe(2000, 100, busy_s=0.001)
    assert batcher.observe(1000, 1000, busy_s=0.01).wait_s == pytest.approx(0.05)


def test_fixed_mode_never_moves() -> None:
    batcher = AdaptiveBatcher(max_size=700, max_wait_s=0.03, adaptive=False)
    for received in (700, 0, 5, 700):
        plan = batcher.observe(700, received, busy_s=0.5)
    assert (plan.size, plan.wait_s) == (700, 0.03)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_size": 10, "min_size": 20}, "min_size"),
        ({"max_size": 0}, "min_size"),
        ({"max_size": 10, "min_size": 1, "target_latency_s": 0}, "target_latency_s"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaptiveBatcher(**kwargs)  # type: ignore[arg-type]
