"""Event-time watermark of one partition, and the late events it rejects.

The watermark is the greatest event time seen on the partition minus the allowed
lateness.  An event older than the watermark *as it stood before that event* is late.
Computing it with a running maximum over the batch in arrival order makes the decision
independent of where batch boundaries fall.
"""

from __future__ import annotations

import numpy as np

from driftline.core.state import NO_TIME


class PartitionWatermark:
    def __init__(self, allowed_lateness_ms: int, max_event_time_ms: int = NO_TIME) -> None:
        self.allowed_lateness_ms = allowed_lateness_ms
        self.max_event_time_ms = max_event_time_ms

    @property
    def watermark_ms(self) -> int:
        if self.max_event_time_ms == NO_TIME:
            return NO_TIME
        return self.max_event_time_ms - self.allowed_lateness_ms

    def classify(self, event_time_ms: np.ndarray) -> np.ndarray:
        """Late mask for events in arrival order; advances the watermark past them."""
        if event_time_ms.size == 0:
            return np.zeros(0, dtype=bool)
        running = np.maximum.accumulate(np.maximum(event_time_ms, self.max_event_time_ms))
        before = np.empty_like(running)
        before[0] = self.max_event_time_ms
        before[1:] = running[:-1]
        seen = before != NO_TIME
        late = seen & (event_time_ms < before - self.allowed_lateness_ms)
        self.max_event_time_ms = int(running[-1])
        return late
