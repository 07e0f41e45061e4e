"""``driftline outcomes``: a batch whose transaction fails is rewound, no outcome lost or
written twice.

The service's rewind (abort, restore every partition from the changelog, seek to the
group's committed offsets) runs only when a transaction fails without being fatal.  Here
a proxy between every client and a broker of the test's own makes that happen mid-stream,
once: the broker takes one of the service's produce requests, and the service is told
that the broker refused it (``INVALID_RECORD``).  librdkafka then fails the commit with an
abortable error; the records the broker did take are aborted with the transaction.  The
batch's outcomes must then come once, from the rewound batch.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Producer
from test_outcomes_kafka import spec_with_horizon, wait_until

from driftline.benchmarks.worker_process import killed_on_exit
from driftline.broker import free_port
from driftline.core.labels.records import PredictionOutcome
from driftline.core.predictions import Prediction
from driftline.core.spec import DAY_MS
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from support.kafka_proxy import INVALID_RECORD, PRODUCE, KafkaProxy
from support.outcomes_process import OutcomesProcess
from support.topic_reading import read_topic

pytestmark = pytest.mark.integration

decode_outcome = msgspec.json.Decoder(PredictionOutcome).decode
T0 = 20_000 * DAY_MS
CUSTOMERS = 400
CHUNK = 40
RESOLVED = "driftline_outcomes_resolved_total"
ABORTED = "driftline_outcomes_transactions_aborted_total"


def prediction(customer: str, t: int) -> bytes:
    return msgspec.json.encode(
        Prediction(event_id=f"tick-{customer}", customer_id=customer, score=0.7,
                   decision=True, threshold=0.5, model_name="churn", model_version="v0001",
                   event_time=t, processed_at=0, source_partition=0, source_offset=0,
                   trigger="tick")
    )  # fmt: skip


def feed(bootstrap: str, predictions: str, events: str, stop: threading.Event) -> None:
    """Each customer's prediction, and its purchase a day later (label 0, resolved on that
    event), CHUNK customers every 0.3 s; then events ten days on, which move every
    partition's watermark past every horizon (anything left would resolve as churn)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for start in range(0, CUSTOMERS, CHUNK):
        if stop.is_set():
            return
        for i in range(start, start + CHUNK):
            customer, t = f"c{i}", T0 + i * 1000
            producer.produce(predictions, prediction(customer, t), customer.encode())
            purchase = {"event_id": f"buy-{i}", "customer_id": customer,
                        "event_time": t + DAY_MS, "event_type": "purchase"}  # fmt: skip
            producer.produce(events, json.dumps(purchase).encode(), customer.encode())
        producer.flush(30)
        time.sleep(0.3)
    for i in range(40):
        later = {"event_id": f"z{i}", "customer_id": f"z{i}",
                 "event_time": T0 + 10 * DAY_MS + i, "event_type": "login"}  # fmt: skip
        producer.produce(events, json.dumps(later).encode(), f"z{i}".encode())
    producer.flush(30)


def test_an_outcomes_batch_whose_transaction_fails_is_rewound_and_resolved_once(
    tmp_path: Path, broker_source: str
) -> None:
    if broker_source == "tansu":
        pytest.skip("the proxy runs a broker of its own: Apache Kafka")
    from driftline.kafka_broker import KafkaBroker

    port = free_port()
    figures: dict[str, object] = {}
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
        events, predictions = "events-o", "predictions-o"
        output, group = "outcomes-o", "g-outcomes-o"
        ensure_topics(bootstrap, [TopicSpec(events, 2, {}), TopicSpec(predictions, 2, {})])
        service = OutcomesProcess(
            bootstrap, events_topic=events, predictions_topic=predictions,
            output_topic=output, dead_letter_topic="outcomes-dlq-o", group=group,
            extra_args=["--features", str(spec_with_horizon(tmp_path, "4d")),
                        "--batch-size", "10"],
            log_path=tmp_path / "outcomes.log",
        )  # fmt: skip
        stop = threading.Event()
        with killed_on_exit(service):
            service.start().wait_assigned(2)
            feeder = threading.Thread(
                target=feed, args=(bootstrap, predictions, events, stop), daemon=True
            )
            feeder.start()
            try:
                wait_until(lambda: service.metric(RESOLVED) >= 40, 60, "outcomes", service)
                figures["resolved_at_fault"] = service.metric(RESOLVED)
                # The service's next produce request: taken by the broker, refused to it.
                proxy.answer(
                    PRODUCE,
                    30,
                    INVALID_RECORD,
                    hold=False,
                    client_id=f"driftline-{service.worker_id}",
                    count=1,
                )
                assert proxy.answered.wait(30), "no produce request of the service"
                feeder.join(120)
            finally:
                stop.set()
            wait_until(lambda: service.metric(RESOLVED) >= CUSTOMERS, 90, "all", service)
            time.sleep(2)  # would any outcome come twice?
            figures["aborted"] = service.metric(ABORTED)
            figures["resolved"] = service.metric(RESOLVED)
            log_text = service.log_text()
            assert service.sigterm(timeout=60) == 0, service.log_tail()
        outcomes = [
            decode_outcome(m.value()) for m in read_topic(bootstrap, output, True, CUSTOMERS)
        ]
    counts = Counter(o.customer_id for o in outcomes)
    figures["outcomes"] = len(outcomes)
    figures["duplicated"] = sum(n - 1 for n in counts.values() if n > 1)
    figures["lost"] = CUSTOMERS - len(counts)
    figures["labels"] = dict(Counter((o.label, o.label_source) for o in outcomes))
    print(f"\noutcomes rewind: {figures}")
    assert "transaction failed" in log_text and figures["aborted"] >= 1, figures
    assert figures["resolved_at_fault"] < CUSTOMERS, "the fault came after the last outcome"
    assert set(counts) == {f"c{i}" for i in range(CUSTOMERS)}, figures
    assert figures["duplicated"] == 0, figures
    assert figures["labels"] == {(0, "events"): CUSTOMERS}, figures
