"""Future-dated events: which ones to refuse before they move a partition's clock.

The contract accepts event times up to the year 2100, so a single event dated months
ahead is valid JSON with a valid time.  Let through, it would advance its partition's
watermark: every later, correct event of that partition would then be dead-lettered
``late``, the idle sweep would evict every customer, and (the watermark being persisted)
a restart would not heal it.  So an event too far ahead is dead-lettered as ``future``
and never reaches the watermark.

The rule, for event *i* of a partition, in arrival order (``now`` is the worker's wall
clock when it processes the micro-batch, ``skew`` is ``--max-clock-skew``, ``jump`` is
``--max-replay-jump``):

1. **Wall clock, always.**  ``event_time > now + skew`` is future.  No event, live or
   replayed, can be later than the present; ``skew`` is for producers' clocks that run
   ahead of the worker's.  An accepted event may still be up to ``skew`` ahead and so
   move the watermark that far past real time: keep ``skew`` well under the allowed
   lateness (the defaults are 10 minutes and 1 hour), and nothing live is made late.
2. **The stream's own clock, when the partition is replaying.**  A partition is
   *replaying* when the median *lag* (processing time minus event time) of its last
   ``WINDOW`` events is more than ``jump``: it is a replay or backfill of old events,
   such as the CDNOW log of 1997-98, where rule 1 alone would let an event dated days
   ahead of the stream through (it is still in the past).  Then ``event_time > front +
   max(jump, skew)`` is future too, where ``front`` is the later of

   - the latest event time *accepted* so far on the partition (the watermark's own
     maximum, which future events never move), and
   - the ``QUORUM``-th latest event time among the partition's last ``WINDOW`` events,
     accepted or not: so that when a replay really jumps ahead by more than ``jump``
     (a gap in the log), the clock follows once ``QUORUM`` events agree, and at most
     ``QUORUM`` valid events after such a gap are refused.  A burst of at least
     ``QUORUM`` future events within ``WINDOW`` could, the same way, carry the clock
     with it; fewer cannot.

   A live partition (small lag) is judged by rule 1 only, so a partition that was
   quiet for a week takes its next event at once.  A backlog consumed after a long
   outage counts as a replay, where consecutive events are close in time anyway.

Day-resolution logs (CDNOW: every event at midnight, every partition with events every
day) step by exactly one day, which the default ``jump`` of one day allows.  The price:
in a replay, an event less than ``jump`` ahead of the stream is accepted and moves the
watermark that far, so set ``--max-replay-jump`` to the resolution of the log replayed
(an hour for a log of seconds).

The decisions do not depend on where micro-batch boundaries fall: each one depends only
on the events before it on the partition (carried across batches in a window of
``WINDOW`` times and lags) and on the wall clock.  Within a batch the rule is computed
with numpy: sliding windows over the carried and the new events, and, because rule 2
depends on which earlier events were accepted, a fixed-point iteration that starts from
rule 1's verdicts and only ever adds future events (each pass lowers the accepted
maximum, which can only add more), so it ends at the sequential answer, usually in two
passes.  After a restart the window restarts from the restored watermark, so rule 2's
``QUORUM`` term sees fewer events for the first few decisions than an uninterrupted run.

Known limit: a partition's very first event has no stream behind it, so it is judged by
rule 1 only; if a replay's first event is dated days ahead of the log, it is accepted
and its watermark starts there.  (Once a partition has history, including after a
restart, which restores the watermark, rule 2 applies.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from driftline.core.state import NO_TIME

#: Events of a partition whose times and lags make its stream clock.
WINDOW = 16
#: How many of the window's events must agree before the stream clock moves on its own.
QUORUM = 3
#: Producers' clocks run a little ahead at most; kept well under the default allowed
#: lateness (1 h), so an accepted event can never push the watermark past real time.
DEFAULT_MAX_CLOCK_SKEW_MS = 600_000
DEFAULT_MAX_REPLAY_JUMP_MS = 86_400_000
#: Passes of the vector fixed point before the exact per-event loop takes over.
_MAX_PASSES = 8


@dataclass(frozen=True, slots=True)
class ClockSkewPolicy:
    """How far ahead an event may be: of the wall clock, and of a replay's own clock."""

    max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS
    max_replay_jump_ms: int = DEFAULT_MAX_REPLAY_JUMP_MS

    def __post_init__(self) -> None:
        if self.max_clock_skew_ms < 0 or self.max_replay_jump_ms < 0:
            raise ValueError("clock skew and replay jump must be >= 0")


@dataclass(slots=True)
class FutureVerdict:
    """The future events of a batch (mask), and for each event the latest time allowed
    and whether that limit came from the stream's clock (a replay) or the wall clock."""

    future: np.ndarray  # bool
    limit_ms: np.ndarray  # int64
    by_stream: np.ndarray  # bool


class StreamClock:
    """One partition's recent event times and lags, and the future-event rule over them."""

    def __init__(self, policy: ClockSkewPolicy) -> None:
        self.policy = policy
        self._times = np.empty(0, dtype=np.int64)
        self._lags = np.empty(0, dtype=np.int64)

    def seed(self, max_event_time_ms: int, now_ms: int) -> None:
        """Start from a restored watermark's maximum (the window itself is not saved)."""
        if max_event_time_ms == NO_TIME:
            self._times = np.empty(0, dtype=np.int64)
            self._lags = np.empty(0, dtype=np.int64)
        else:
            self._times = np.array([max_event_time_ms], dtype=np.int64)
            self._lags = np.array([now_ms - max_event_time_ms], dtype=np.int64)

    def classify(
        self, event_time_ms: np.ndarray, accepted_max_ms: int, now_ms: int
    ) -> FutureVerdict:
        """Future mask for a partition's events in arrival order (see the module rule).

        ``accepted_max_ms`` is the partition's watermark maximum before the batch.  The
        window moves past every event, accepted or not.
        """
        times = np.asarray(event_time_ms, dtype=np.int64)
        n = times.size
        p = self.policy
        wall_limit = now_ms + p.max_clock_skew_ms
        if n == 0:
            return FutureVerdict(np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0, bool))
        lags = now_ms - times
        replaying, quorum_front = self._window_stats(times, lags)
        self._remember(times, lags)
        future = times > wall_limit
        stream_step = max(p.max_replay_jump_ms, p.max_clock_skew_ms)
        if not replaying.any():  # live: the wall clock alone
            return FutureVerdict(future, np.full(n, wall_limit, np.int64), np.zeros(n, bool))
        future = self._with_stream_rule(
            times, future, replaying, quorum_front, accepted_max_ms, stream_step
        )
        front = _accepted_front(times, future, accepted_max_ms, quorum_front)
        stream_limit = np.where(front == NO_TIME, np.iinfo(np.int64).max, front + stream_step)
        by_stream = replaying & (stream_limit < wall_limit)
        limit = np.where(by_stream, stream_limit, wall_limit)
        return FutureVerdict(future, limit.astype(np.int64), by_stream)

    # ------------------------------------------------------------ internals
    def _window_stats(self, times: np.ndarray, lags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each event: is its partition replaying, and the window's QUORUM-th latest
        time (NO_TIME when the window holds fewer), from the ``WINDOW`` events before it.

        "Median lag over the jump" is counted, not sorted: with ``c`` events in the
        window, the lower median exceeds ``jump`` when at least ``c - (c - 1) // 2`` of
        the lags do, a rolling sum.  Order statistics of times are needed only on a
        replaying partition, and then one ``np.partition`` per full window does.
        """
        n = times.size
        prev_t = np.concatenate([self._times, times[:-1]])
        prev_g = np.concatenate([self._lags, lags[:-1]])
        history = self._times.size
        end = history + np.arange(n)
        begin = np.maximum(end - WINDOW, 0)
        count = end - begin
        over = np.concatenate([[0], np.cumsum(prev_g > self.policy.max_replay_jump_ms)])
        n_over = over[end] - over[begin]
        replaying = (count > 0) & (n_over >= count - (count - 1) // 2)
        quorum_front = np.full(n, NO_TIME, dtype=np.int64)
        rows = np.flatnonzero(replaying & (count >= QUORUM))
        if rows.size:
            full = rows[count[rows] == WINDOW]
            if full.size:
                windows = sliding_window_view(prev_t, WINDOW)[begin[full]]
                quorum_front[full] = np.partition(windows, WINDOW - QUORUM, axis=1)[
                    :, WINDOW - QUORUM
                ]
            for row in rows[count[rows] < WINDOW].tolist():  # a young partition's first few
                window = np.sort(prev_t[begin[row] : end[row]])
                quorum_front[row] = window[-QUORUM]
        return replaying, quorum_front

    def _remember(self, times: np.ndarray, lags: np.ndarray) -> None:
        self._times = np.concatenate([self._times, times])[-WINDOW:]
        self._lags = np.concatenate([self._lags, lags])[-WINDOW:]

    @staticmethod
    def _with_stream_rule(
        times: np.ndarray,
        future: np.ndarray,
        replaying: np.ndarray,
        quorum_front: np.ndarray,
        accepted_max_ms: int,
        step: int,
    ) -> np.ndarray:
        """Rule 2 on top of rule 1's ``future``: a fixed point, exact, usually 2 passes."""
        for _ in range(_MAX_PASSES):
            front = _accepted_front(times, future, accepted_max_ms, quorum_front)
            more = future | (replaying & (front != NO_TIME) & (times > front + step))
            if np.array_equal(more, future):
                return future
            future = more
        # Pathological input (many future events each hiding the next): decide in order.
        out = future.copy()
        accepted = accepted_max_ms
        for i, when in enumerate(times.tolist()):
            front_i = max(accepted, int(quorum_front[i]))
            if not out[i] and replaying[i] and front_i != NO_TIME and when > front_i + step:
                out[i] = True
            if not out[i]:
                accepted = max(accepted, when)
        return out


def _accepted_front(
    times: np.ndarray, future: np.ndarray, accepted_max_ms: int, quorum_front: np.ndarray
) -> np.ndarray:
    """For each event, the later of the accepted maximum before it and the window's
    QUORUM-th latest time."""
    accepted = np.where(future, NO_TIME, times)
    running = np.maximum.accumulate(np.maximum(accepted, accepted_max_ms))
    before = np.empty_like(running)
    before[0] = accepted_max_ms
    before[1:] = running[:-1]
    result: np.ndarray = np.maximum(before, quorum_front)
    return result
