"""Exactly-once: a commit answered fenced after its transaction timed out, both ways.

On Apache Kafka, a transaction open for longer than its timeout is aborted by the broker,
which bumps the producer's epoch; a commit (EndTxn) still in flight then arrives with the
old epoch and is answered with a fence, which librdkafka makes fatal.  That happens when
the broker freezes (or the network stalls) while the commit is on its way; the broker-
freeze test meets it by chance.  A fence is not proof that the commit failed, though: a
fresh-clone CI of 2026-12-05 saw a batch scored twice when the worker rewound from a
fenced commit unconditionally (c31e6fd, reverted in 8b8adca), most likely because that
commit had landed.  So the worker asks the broker, and both outcomes are made here, every
time, by a proxy between every client and the broker:

* ``aborted``: the proxy holds the EndTxn back for longer than the transaction timeout;
  the broker aborts the transaction, then answers the late commit fenced.  The worker
  must rewind to the batch's start and score it again, once;
* ``landed``: the proxy lets the EndTxn through (the broker commits) and holds the answer
  back for longer than the timeout, then tells the client "fenced" instead.  The worker
  must keep what it has (no rewind) and carry on: a rewind would score the batch twice.

Either way every event has exactly one prediction and the worker never stops.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_faults import ABORTED, CONSUMED, EXACTLY_ONCE, BackgroundProducer, Topics
from test_worker import live_events

from driftline.benchmarks.worker_process import killed_on_exit
from driftline.broker import free_port
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from support.faults import PredictionCheck
from support.kafka_proxy import END_TXN, PRODUCER_FENCED, KafkaProxy
from support.topic_reading import read_predictions, topic_layout, wait_committed

pytestmark = pytest.mark.integration

TRANSACTION_TIMEOUT_S = 4.0
#: Longer than the timeout plus the broker's abort sweep (1 s in our Kafka's config).
HOLD_S = 8.0


@pytest.mark.parametrize("scoring", [(), ("--scoring-process",)], ids=["in-loop", "process"])
@pytest.mark.parametrize("outcome", ["aborted", "landed"])
def test_a_commit_fenced_after_its_timeout_is_resolved_by_the_broker_and_scored_once(
    trained_registry: Path,
    tmp_path: Path,
    broker_source: str,
    outcome: str,
    scoring: tuple[str, ...],
) -> None:
    if broker_source == "tansu":
        pytest.skip("Tansu never times a transaction out: no fence to recover from")
    from driftline.kafka_broker import KafkaBroker

    events = live_events(12_000, seed=17)
    port = free_port()
    figures: dict[str, object] = {"outcome": outcome, "scoring": scoring}
    with (
        KafkaProxy(("127.0.0.1", port)) as proxy,
        KafkaBroker(
            port=port,
            log_dir=tmp_path / "broker",
            # Every client (and the broker itself) connects through the proxy.
            properties={"advertised.listeners": f"PLAINTEXT://127.0.0.1:{proxy.port}"},
        ),
    ):
        bootstrap = f"127.0.0.1:{proxy.port}"
        names = Topics(
            bootstrap, "events-t", "predictions-t", "dlq-t", "g-t", trained_registry, tmp_path
        )
        ensure_topics(
            bootstrap,
            [
                TopicSpec(names.input, 4, {}),
                TopicSpec(names.output, 4, {}),
                TopicSpec(names.dead_letters, 1, {}),
            ],
        )
        worker = names.worker(
            "fenced",
            "--batch-size",
            "200",
            EXACTLY_ONCE,
            "--transaction-timeout",
            str(TRANSACTION_TIMEOUT_S),
            *scoring,
        )
        with worker, killed_on_exit(worker):
            worker.wait_ready(90)
            with BackgroundProducer(bootstrap, names.input, events, 1_000) as producer:
                deadline = time.monotonic() + 60
                while worker.metric(CONSUMED) < 2_000:
                    assert time.monotonic() < deadline, worker.log_tail()
                    time.sleep(0.1)
                if outcome == "aborted":
                    proxy.hold(END_TXN, HOLD_S)
                    assert proxy.held.wait(30), "no commit while held"
                    assert proxy.released.wait(30)
                else:
                    proxy.answer(END_TXN, HOLD_S, PRODUCER_FENCED)
                    assert proxy.held.wait(30), "no commit while held"
                    assert proxy.answered.wait(30)
                producer.join(180)
            assert worker.alive, f"the worker died ({worker.returncode}):\n{worker.log_tail()}"
            layout = topic_layout(bootstrap, names.input, len(events))
            wait_committed(
                bootstrap,
                names.group,
                names.input,
                layout.end_offsets,
                timeout=120,
                workers=[worker],
            )
            figures["transactions_aborted"] = worker.metric(ABORTED)
            figures["starts"] = worker.starts
            log_text = worker.log_text()
            assert worker.sigterm(timeout=60) == 0, worker.log_tail()
        predictions = read_predictions(
            bootstrap, names.output, read_committed=True, expected=len(events)
        )
    check = PredictionCheck.of(predictions, (e["event_id"] for e in events))
    print(f"\nfenced commit: {figures} {check.summary()}")
    assert "commit fenced after its timeout" in log_text, "the commit was not fenced"
    if outcome == "aborted":
        assert "the broker aborted the batch" in log_text
        assert figures["transactions_aborted"] >= 1
    else:
        assert "the broker committed the batch" in log_text
        assert "the broker aborted the batch" not in log_text
        assert figures["transactions_aborted"] == 0
    assert figures["starts"] == 1, "the worker was restarted"
    assert check.lost == 0 and check.unexpected == 0, check.summary()
    assert check.duplicated == 0, check.summary()
    assert check.mismatched == 0, check.summary()
