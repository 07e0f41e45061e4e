"""The watermark's front moves only when QUORUM of the last WINDOW events agree."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.core.watermark import QUORUM, WINDOW, PartitionWatermark

HOUR = 3_600_000
T0 = 1_767_225_600_000


def test_one_event_hours_ahead_does_not_make_the_next_events_late() -> None:
    """Seen in the fuzz run: a bit flip put one valid replayed event 11 h ahead; with a
    plain running maximum the next hours of correct events were all dead-lettered late."""
    times = T0 + np.arange(200, dtype=np.int64) * 1000
    times[60] += 11 * HOUR
    watermark = PartitionWatermark(HOUR)
    assert not watermark.classify(times).any()
    assert watermark.front_ms < T0 + HOUR
    assert watermark.max_event_time_ms == times.max()  # the future-event rule's clock


def test_a_real_step_forward_is_followed_after_quorum_events() -> None:
    """A day-resolution log turning a day: the front follows once QUORUM events agree,
    and the previous day's stragglers are late from then on."""
    day = 86_400_000
    times = np.concatenate([np.full(50, T0), np.full(50, T0 + day), np.array([T0])])
    watermark = PartitionWatermark(HOUR)
    late = watermark.classify(times)
    assert watermark.front_ms == T0 + day
    assert late.tolist() == [False] * 100 + [True]


def _sequential(times: np.ndarray, lateness: int) -> list[bool]:
    """The textbook loop: front = running max of the QUORUM-th greatest of the window."""
    front, recent, out = None, [], []
    for t in times.tolist():
        out.append(front is not None and t < front - lateness)
        recent = [*recent, t][-WINDOW:]
        if len(recent) >= QUORUM:
            confirmed = sorted(recent)[-QUORUM]
            front = confirmed if front is None else max(front, confirmed)
    return out


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.integers(-3 * HOUR, 3 * HOUR), min_size=1, max_size=120),
    cuts=st.sets(st.integers(1, 119), max_size=10),
)
def test_any_batching_matches_the_sequential_loop(gaps: list[int], cuts: set[int]) -> None:
    times = T0 + np.cumsum(np.array(gaps, dtype=np.int64))
    watermark = PartitionWatermark(HOUR)
    parts = np.split(times, sorted(c for c in cuts if c < len(times)))
    late = np.concatenate([watermark.classify(p) for p in parts]).tolist()
    assert late == _sequential(times, HOUR)
