"""Adaptive micro-batching: how many records to ask for, and how long to wait for them.

Why adaptive: a large batch amortises the per-batch costs (one ``predict_proba``, one
flush, one commit) and is what throughput wants under a backlog; but an idle worker that
waits to fill a large batch adds that wait to every event's latency.  The controller
reads what the last poll and batch looked like and moves the two knobs:

* **size** (records per ``consume``): doubles, up to ``max_size``, while polls come back
  full (a backlog: latency is then queueing, which only throughput reduces, and a big
  batch is the cheapest per record); halves towards twice what actually arrives when
  polls come back short (caught up), so a burst does not leave it oversized.  Shrinking
  under a backlog to meet the target would lower throughput and grow the queue: tried,
  it spiralled down to batches of ~100 at a fifth of the throughput.
* **wait** (the ``consume`` timeout): the time a record may sit in the client waiting
  for its batch to fill.  Under a backlog it does not matter (polls return full at once);
  caught up, it is what the latency target leaves after processing, capped by
  ``max_wait_s``, so at low rates events go out after a few milliseconds.

Pure logic, no clock of its own: the worker passes in the figures, the unit tests too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BatchPlan:
    """One ``consume`` call: at most ``size`` records, waiting at most ``wait_s``."""

    size: int
    wait_s: float


class AdaptiveBatcher:
    """Controller of the micro-batch size (doubling, halving) and poll wait, to a latency target.

    ``adaptive=False`` keeps ``max_size`` and ``max_wait_s`` fixed (the old behaviour,
    and what a benchmark of a fixed batch size wants).
    """

    def __init__(
        self,
        *,
        max_size: int,
        min_size: int = 50,
        target_latency_s: float = 0.05,
        max_wait_s: float = 0.05,
        min_wait_s: float = 0.001,
        adaptive: bool = True,
        initial_size: int | None = None,
    ) -> None:
        if max_size < 1 or min_size < 1 or min_size > max_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
        if target_latency_s <= 0 or max_wait_s < min_wait_s or min_wait_s < 0:
            raise ValueError("need target_latency_s > 0 and 0 <= min_wait_s <= max_wait_s")
        self.max_size = max_size
        self.min_size = min_size
        self.target_latency_s = target_latency_s
        self.max_wait_s = max_wait_s
        self.min_wait_s = min_wait_s
        self.adaptive = adaptive
        start = initial_size if initial_size is not None else max_size
        self.size = max(min_size, min(max_size, start)) if adaptive else max_size
        self.wait_s = max_wait_s
        #: Smoothed processing seconds per record (None until the first batch).
        self.per_record_s: float | None = None

    def plan(self) -> BatchPlan:
        return BatchPlan(self.size, self.wait_s)

    def observe(self, requested: int, received: int, busy_s: float) -> BatchPlan:
        """Account for one poll that asked ``requested`` and got ``received`` records,
        processed in ``busy_s`` seconds (0 for an empty poll); returns the next plan."""
        if not self.adaptive:
            return self.plan()
        if received > 0 and busy_s > 0:
            sample = busy_s / received
            self.per_record_s = (
                sample if self.per_record_s is None else 0.7 * self.per_record_s + 0.3 * sample
            )
        if received >= requested:
            # A backlog: latency is queueing now, and only throughput cuts it; bigger
            # batches are cheaper per record (one predict, one flush, one commit each).
            self.size *= 2
            self.wait_s = self.max_wait_s
        else:
            # Caught up: drift down towards twice what arrives, halving at most, and wait
            # only what the latency target leaves after processing such a batch.
            self.size = max(self.size // 2, 2 * received, self.min_size)
            expected_busy = (self.per_record_s or 0.0) * max(received, 1)
            self.wait_s = (self.target_latency_s - expected_busy) / 2
        self.size = max(self.min_size, min(self.max_size, self.size))
        self.wait_s = max(self.min_wait_s, min(self.max_wait_s, self.wait_s))
        return self.plan()
