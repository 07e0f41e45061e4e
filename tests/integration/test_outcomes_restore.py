"""``driftline outcomes`` restores its pending state from its changelog to the end.

The restore reads each changelog partition to its EOF (``changelog_reader.read_to_end``,
the worker's restore loop), not to a high watermark: Tansu reports the high watermark as
the last batch's base offset + 1, so a restore that stopped there missed the rest of the
last batch (here: every customer but the first of the last transaction).  The last
transaction's records are written as one batch of many records, as a service's batch
writes them.
"""

from __future__ import annotations

import msgspec
import pytest
from confluent_kafka import Producer

from driftline.core.labels import label_definition
from driftline.core.labels.records import PARTITION_KEY, CustomerSnapshot, PartitionSnapshot
from driftline.core.predictions import TRIGGER_TICK, Prediction
from driftline.core.spec import DAY_MS, default_spec_path, load_spec
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.engine.kafka.outcomes import OutcomeService, OutcomeSettings

pytestmark = pytest.mark.integration

T0 = 20_000 * DAY_MS


def snapshot(customer: str, t: int) -> bytes:
    prediction = Prediction(event_id=f"tick-{t}", customer_id=customer, score=0.7,
                            decision=True, threshold=0.5, model_name="churn",
                            model_version="v0001", event_time=t, processed_at=0,
                            source_partition=0, source_offset=0, trigger=TRIGGER_TICK)  # fmt: skip
    return msgspec.json.encode(CustomerSnapshot([prediction], [], [], t // DAY_MS))


def write_in_transactions(
    bootstrap: str, topic: str, batches: list[list[tuple[bytes, bytes]]]
) -> None:
    """Each list of (key, value) in a transaction of its own, produced as one batch."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"{topic}-writer",
            "linger.ms": 200,  # the whole transaction in one record batch
            "batch.size": 1_000_000,
        }
    )
    producer.init_transactions(30)
    for records in batches:
        producer.begin_transaction()
        for key, value in records:
            producer.produce(topic, value, key, partition=0)
        producer.commit_transaction(30)


def test_the_outcomes_restore_reads_a_multi_record_last_batch_to_its_end(
    kafka_bootstrap: str, unique_group: str
) -> None:
    settings = OutcomeSettings(
        bootstrap_servers=kafka_bootstrap,
        label=label_definition(load_spec(default_spec_path())),
        allowed_lateness_ms=0,
        group_id=unique_group,
        restore_timeout_s=30.0,
    )
    topic = settings.changelog_topic  # named after the group: unique to this test
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1, {"cleanup.policy": "compact"})])
    first = [(f"c{i}".encode(), snapshot(f"c{i}", T0 + i)) for i in range(10)]
    last = [(f"c{i}".encode(), snapshot(f"c{i}", T0 + i)) for i in range(10, 60)]
    clocks = msgspec.json.encode(PartitionSnapshot(T0 + 5 * DAY_MS, T0 + 59))
    write_in_transactions(kafka_bootstrap, topic, [first, [*last, (PARTITION_KEY, clocks)]])

    service = OutcomeService(settings)
    service.restore([0])
    resolver = service.resolvers[0]
    assert resolver.pending_count == 60, f"restored {resolver.pending_count} of 60 customers"
    assert service.metrics.restored_customers._value.get() == 60
    assert resolver.max_prediction_ms == T0 + 59
    assert resolver.watermark.max_event_time_ms == T0 + 5 * DAY_MS
