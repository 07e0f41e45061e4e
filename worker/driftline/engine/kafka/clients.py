"""The group consumer's and the producer's librdkafka settings, and why each is set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, TopicPartition

from driftline.engine.kafka.client_config import kafka_client_config
from driftline.engine.kafka.dead_letters import batch_size_for
from driftline.engine.kafka.settings import WorkerSettings, transactional_id


def fetch_wait_ms(s: WorkerSettings) -> int:
    """The consumers' ``fetch.wait.max.ms``: ``s.fetch_wait_max_ms`` if set, else a fifth
    of the latency target, at most 50 ms (10 ms by default).

    The broker holds a fetch up to this long when it has nothing new: every event can
    wait that long before the worker sees it (50 ms before cost ~15 ms of p50 on Tansu).
    Tansu answers a fetch with no records when reading the partition takes longer than
    this wait, and that read grows with the partition's record batches, so a worker on
    Tansu is given a longer one (``driftline demo`` passes ``--fetch-wait-max-ms``).
    """
    if s.fetch_wait_max_ms is not None:
        return max(1, s.fetch_wait_max_ms)
    return max(1, min(50, int(s.latency_target_s * 1000 / 5)))


def consumer_config(
    s: WorkerSettings,
    *,
    stats_cb: Callable[[str], object],
    error_cb: Callable[[KafkaError], None],
    on_commit: Callable[[KafkaError | None, list[TopicPartition]], None],
) -> dict[str, Any]:
    """The input topic's group consumer: manual commits, cooperative rebalances."""
    return kafka_client_config(
        {
            "bootstrap.servers": s.bootstrap_servers,
            "group.id": s.group_id,
            "client.id": f"driftline-{s.worker_id}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1500,
            "max.poll.interval.ms": 300000,
            "fetch.wait.max.ms": fetch_wait_ms(s),
            "statistics.interval.ms": 5000,
            "stats_cb": stats_cb,
            "error_cb": error_cb,
            "on_commit": on_commit,
            "isolation.level": "read_committed",
            "fetch.max.bytes": s.fetch_max_bytes,
            # librdkafka wants room for a whole fetch response plus its framing.
            "receive.message.max.bytes": s.fetch_max_bytes + 1024 * 1024,
            **({"group.instance.id": s.group_instance_id} if s.group_instance_id else {}),
            **s.consumer_config,
        }
    )


def producer_config(
    s: WorkerSettings,
    *,
    record_limit: int,
    error_cb: Callable[[KafkaError], None],
    on_delivery: Callable[[KafkaError | None, Message], None],
) -> dict[str, Any]:
    """The producer of predictions, dead letters and changelog (transactional when
    exactly-once); ``record_limit`` is the dead letters' limit its batches stay under."""
    return kafka_client_config(
        {
            "bootstrap.servers": s.bootstrap_servers,
            "client.id": f"driftline-{s.worker_id}",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.num.messages": 10000,
            "message.max.bytes": s.producer_max_message_bytes,
            # Under the dead-letter topic's limit: the broker refuses a whole record batch
            # over it, and librdkafka does not split one (see engine.kafka.dead_letters).
            "batch.size": batch_size_for(record_limit),
            "error_cb": error_cb,
            # Delivery reports only for failures: a Python callback per delivered record
            # cost more than the produce call itself.  ``flush()`` still waits for every
            # record, and a failed one still reaches ``on_delivery`` before it returns.
            "delivery.report.only.error": True,
            "on_delivery": on_delivery,
            **(
                {
                    # A restarted instance must fence its crashed predecessor's open
                    # transaction: with static membership the instance id is the stable
                    # identity (the pid in the default worker id is not), so it names the
                    # transactional id too.  Brokers that never time out an abandoned
                    # transaction (Tansu) otherwise keep it open for good.
                    "transactional.id": transactional_id(
                        s.group_id, s.group_instance_id or s.worker_id
                    ),
                    # An abandoned transaction (a killed worker that does not come back
                    # under the same id) blocks read_committed readers until it times out.
                    "transaction.timeout.ms": int(s.transaction_timeout_s * 1000),
                }
                if s.exactly_once
                else {}
            ),
            **s.producer_config,
        }
    )
