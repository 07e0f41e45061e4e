"""Event-time watermark of one partition, and the late events it rejects.

The watermark is the partition's event-time front minus the allowed lateness.  An event
older than the watermark *as it stood before that event* is late.

The front is not simply the greatest event time seen: it moves to a time only once
``QUORUM`` of the partition's last ``WINDOW`` events have reached it (the ``QUORUM``-th
greatest time of that window), and never back.  One event dated hours ahead, valid by the
contract (a producer's clock, a flipped bit in a replay) and within the future-event rule
(``core.clock_skew``), would otherwise carry the watermark with it and make every correct
event of the next hours late: one record would stop the partition.  A real step forward
(a replay crossing a gap, a day-resolution log turning a day) is followed as soon as
``QUORUM`` events agree, two events later; the outlier itself is scored as usual.

The decisions depend only on the events before each one on the partition (the last
``WINDOW - 1`` times are carried across batches), so they do not depend on where batch
boundaries fall; within a batch they are computed with numpy (sliding windows, a
partition for the order statistic, a running maximum).  After a restart the window starts
empty from the restored front.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from driftline.core.state import NO_TIME

#: Events of a partition whose times make its front.
WINDOW = 16
#: How many of them must reach a time before the front moves to it.
QUORUM = 3


class PartitionWatermark:
    """The partition's front, its greatest accepted event time, and the late split."""

    def __init__(self, allowed_lateness_ms: int, max_event_time_ms: int = NO_TIME) -> None:
        self.allowed_lateness_ms = allowed_lateness_ms
        self.max_event_time_ms = max_event_time_ms

    @property
    def max_event_time_ms(self) -> int:
        """Greatest event time classified (what the future-event rule and the changelog
        call the partition's clock).  Setting it (a restore) restarts the front there."""
        return self._max

    @max_event_time_ms.setter
    def max_event_time_ms(self, value: int) -> None:
        self._max = int(value)
        #: The greatest time ``QUORUM`` of the last ``WINDOW`` events reached.
        self.front_ms = int(value)
        self._recent = np.full(WINDOW - 1, NO_TIME, dtype=np.int64)

    @property
    def watermark_ms(self) -> int:
        if self.front_ms == NO_TIME:
            return NO_TIME
        return self.front_ms - self.allowed_lateness_ms

    def classify(self, event_time_ms: np.ndarray) -> np.ndarray:
        """Late mask for events in arrival order; advances the front past them."""
        times = np.asarray(event_time_ms, dtype=np.int64)
        if times.size == 0:
            return np.zeros(0, dtype=bool)
        extended = np.concatenate([self._recent, times])
        windows = sliding_window_view(extended, WINDOW)  # one per new event, ending at it
        confirmed = np.partition(windows, WINDOW - QUORUM, axis=1)[:, WINDOW - QUORUM]
        front = np.maximum.accumulate(np.maximum(confirmed, self.front_ms))
        before = np.empty_like(front)
        before[0] = self.front_ms
        before[1:] = front[:-1]
        seen = before != NO_TIME
        late = seen & (times < before - self.allowed_lateness_ms)
        self.front_ms = int(front[-1])
        self._max = max(self._max, int(times.max()))
        self._recent = extended[-(WINDOW - 1) :].copy()
        result: np.ndarray = late
        return result
