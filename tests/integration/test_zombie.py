"""A zombie exactly-once worker commits nothing.

Worker a is frozen (SIGSTOP) inside a transaction, for longer than both its session and
its transaction timeout.  The group hands its partitions to worker b, which restores their
state from the changelog and carries on; the broker aborts a's open transaction.  Then a
is resumed, still believing it owns the partitions, most often with a batch in flight
(frozen between batches, it has no transaction for the broker to abort, and only finds
its partitions revoked at its next poll: the run prints which).  Nothing it does after
that may become visible: the batch it was scoring is b's now.  The check is
on what a ``read_committed`` reader sees: every event scored exactly once, each with the
offline score of its partition's events in order.

Apache Kafka only: fencing a zombie needs a broker that times out transactions and hides
aborted records (Tansu does neither).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from test_faults import EXACTLY_ONCE, Topics, live_events, topics, wait_for

from driftline.benchmarks.worker_process import killed_on_exit
from driftline.core.spec import FeatureSpec
from driftline.event_producer import produce
from driftline.model.registry import LoadedModel
from support.faults import PredictionCheck, reference_scores
from support.topic_reading import read_predictions, topic_layout, wait_committed

pytestmark = pytest.mark.integration
__all__ = ["topics"]  # the fixture, shared with test_faults

CONSUMED = "driftline_events_consumed_total"
ASSIGNED = "driftline_assigned_partitions"
ABORTED = "driftline_transactions_aborted_total"
#: The workers' transaction timeout, seconds; the session timeout is 6 s.
TRANSACTION_TIMEOUT_S = 5


def test_a_fenced_zombie_resumed_after_its_transaction_timed_out_commits_nothing(
    topics: Topics,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    broker_source: str,
) -> None:
    if broker_source == "tansu":
        pytest.skip("Tansu neither times out transactions nor hides aborted records")
    events = live_events(40_000, seed=41)
    produce(topics.bootstrap, topics.input, events)  # a backlog: a is always mid-batch
    layout = topic_layout(topics.bootstrap, topics.input, len(events))
    reference = reference_scores(events, layout.partition_of, spec, loaded_model)
    extra = (
        EXACTLY_ONCE,
        "--batch-size",
        "200",
        "--transaction-timeout",
        str(TRANSACTION_TIMEOUT_S),
        # The sklearn runtime keeps a busy with its backlog until b has taken over.
        "--model-runtime",
        "sklearn",
    )
    a, b = topics.worker("zombie", *extra), topics.worker("replacement", *extra)
    figures: dict[str, Any] = {}
    with killed_on_exit(a, b):
        a.start()
        a.wait_ready(90)
        wait_for(lambda: a.metric(CONSUMED) >= 2_000, 60, "a to make progress")
        figures["a_consumed_before_stop"] = a.metric(CONSUMED)
        assert a.pid is not None
        os.kill(a.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            b.start()
            b.wait_ready(90)
            wait_for(lambda: b.metric(ASSIGNED) == 4, 60, "b to take all partitions")
            figures["b_took_over_after_s"] = round(time.monotonic() - stopped, 1)
            consumed = b.metric(CONSUMED)
            wait_for(lambda: b.metric(CONSUMED) >= consumed + 1_000, 60, "b to go on")
            # Past a's transaction timeout, and the broker's 1 s abort sweep, with margin.
            time.sleep(max(0.0, TRANSACTION_TIMEOUT_S + 3 - (time.monotonic() - stopped)))
            figures["a_frozen_s"] = round(time.monotonic() - stopped, 1)
        finally:
            os.kill(a.pid, signal.SIGCONT)
        # a wakes up, most often mid-batch: its produce, offsets and commit must then all be
        # refused.  Frozen between batches (no transaction open: nothing for the broker to
        # abort), it finds its partitions gone at its next poll instead.
        wait_for(
            lambda: not a.alive or a.metric(ABORTED) >= 1 or a.metric(ASSIGNED, default=4.0) < 4,
            60,
            "a to find out it lost its partitions",
        )
        figures["a_alive_after_resume"] = a.alive
        figures["a_exit"] = a.returncode
        wait_committed(
            topics.bootstrap,
            topics.group,
            topics.input,
            layout.end_offsets,
            timeout=180,
            workers=[b],
        )
        figures["b_consumed"] = b.metric(CONSUMED)
        figures["a_aborted"] = a.metric(ABORTED) if a.alive else None
        if a.alive:
            figures["a_partitions_at_end"] = a.metric(ASSIGNED)
            assert a.sigterm(timeout=60) in (0, 3), a.log_tail()
        assert b.sigterm(timeout=60) == 0, b.log_tail()
    predictions = read_predictions(
        topics.bootstrap, topics.output, read_committed=True, expected=len(events), timeout=60
    )
    check = PredictionCheck.of(predictions, (e["event_id"] for e in events), reference)
    print(f"\nzombie: {figures}\n  {check.summary()}")
    assert check.lost == 0 and check.unexpected == 0, check.summary()
    assert check.duplicated == 0, f"the zombie's batch became visible: {check.summary()}"
    assert check.mismatched == 0, check.summary()
    log = a.log_text()
    if figures["a_alive_after_resume"] and figures["a_aborted"] == 0:
        # Frozen between batches: it had nothing to commit, and must have let go.
        assert "revoked [" in log, a.log_tail(80)
    else:
        assert "fenced" in log.lower() or "not committed" in log, a.log_tail(80)
