"""Topic administration: make the topics the worker needs exist, exactly as declared.

Topics are always created explicitly, never by auto-creation on first produce: the
partition count bounds the worker's parallelism and decides which partition owns a
customer's state, so it must be what we asked for, and configs must be explicit because
Tansu reports only the configs a topic was created with (an implicit default would read
back as "unset").  An existing topic is accepted only when its partition count matches;
a silent mismatch would re-partition customers under the worker's feet.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from driftline.config import DEFAULT_PARTITIONS, TopicNames
from driftline.engine.kafka.client_config import KAFKA_LOGGER, kafka_client_config

__all__ = [
    "DEFAULT_RETENTION_MS",
    "DEFAULT_TOPIC_CONFIG",
    "BrokerUnavailable",
    "TopicCreationFailed",
    "TopicMismatch",
    "TopicSpec",
    "default_topics",
    "ensure_topics",
    "wait_for_broker",
]

#: One week: long enough to replay a demo or a backlog, short enough for a laptop.
DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000
DEFAULT_TOPIC_CONFIG: Mapping[str, str] = {
    "retention.ms": str(DEFAULT_RETENTION_MS),
    "cleanup.policy": "delete",
}


class BrokerUnavailable(TimeoutError):
    """No Kafka metadata answer from the bootstrap servers within the timeout."""


class BrokerAuthenticationFailed(BrokerUnavailable):
    """The broker answered but refused our credentials (SASL) or our TLS handshake."""


class TopicCreationFailed(RuntimeError):
    """The broker refused to create a topic (other than "it already exists")."""


class TopicMismatch(RuntimeError):
    """A topic exists but not as declared (e.g. another partition count)."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic as the worker needs it.  ``config`` is merged over the defaults."""

    name: str
    partitions: int = DEFAULT_PARTITIONS
    config: Mapping[str, str] = field(default_factory=dict)
    replication_factor: int = 1

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("topic name must not be empty")
        if self.partitions < 1:
            raise ValueError(f"topic {self.name!r}: partitions must be >= 1")

    @property
    def effective_config(self) -> dict[str, str]:
        """Defaults overridden by ``config``, all as strings (the wire format)."""
        return {**DEFAULT_TOPIC_CONFIG, **{k: str(v) for k, v in self.config.items()}}


def default_topics(
    partitions: int = DEFAULT_PARTITIONS,
    names: TopicNames | None = None,
    retention_ms: int = DEFAULT_RETENTION_MS,
) -> list[TopicSpec]:
    """Input, output and dead-letter topics.

    All three get the same partition count: predictions and dead letters are keyed by
    customer too, so a downstream consumer can be scaled exactly like the worker.
    """
    names = names or TopicNames()
    config = {"retention.ms": str(retention_ms), "cleanup.policy": "delete"}
    return [
        TopicSpec(names.input, partitions, config),
        TopicSpec(names.output, partitions, config),
        TopicSpec(names.dead_letter, partitions, config),
    ]


def _admin(bootstrap: str, client_config: Mapping[str, object] | None) -> AdminClient:
    return AdminClient(
        kafka_client_config({"bootstrap.servers": bootstrap, **(client_config or {})})
    )


def wait_for_broker(
    bootstrap: str,
    timeout: float = 30.0,
    client_config: Mapping[str, object] | None = None,
) -> ClusterMetadata:
    """Block until the cluster answers a metadata request; return that metadata.

    A TCP accept is not enough (a starting broker may accept before it can serve), so
    readiness means an actual Kafka answer listing at least one broker.
    """
    refused: list[str] = []

    def on_error(error: KafkaError) -> None:
        # A refused login is final: say so at once, not after the whole timeout.
        if error.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL):
            refused.append(error.str())

    admin = _admin(bootstrap, {**(client_config or {}), "error_cb": on_error})
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        remaining = deadline - time.monotonic()
        try:
            metadata = admin.list_topics(timeout=max(0.1, min(1.0, remaining)))
            if metadata.brokers:
                return metadata
        except KafkaException as error:
            last = error
        admin.poll(0)  # serves error_cb; hands librdkafka's log lines to KAFKA_LOGGER
        if refused:
            raise BrokerAuthenticationFailed(
                f"the Kafka broker at {bootstrap} refused the connection: {refused[0]}"
            )
        if time.monotonic() >= deadline:
            if last is not None:
                KAFKA_LOGGER.debug("last metadata error from %s: %s", bootstrap, last)
            raise BrokerUnavailable(f"no Kafka broker answered at {bootstrap} within {timeout:g} s")
        time.sleep(0.2)


def ensure_topics(
    bootstrap: str,
    specs: Sequence[TopicSpec],
    timeout: float = 30.0,
    client_config: Mapping[str, object] | None = None,
) -> list[str]:
    """Create the missing topics; check the existing ones; wait until all are usable.

    Returns the names actually created (empty when everything existed).  Raises
    ``TopicMismatch`` when a topic exists with another partition count,
    ``TopicCreationFailed`` when the broker refuses one, and
    ``BrokerUnavailable``/``TimeoutError`` when the cluster does not answer in time.
    Idempotent, and safe when several processes race to create the same topics.
    """
    deadline = time.monotonic() + timeout
    metadata = wait_for_broker(bootstrap, timeout, client_config)
    admin = _admin(bootstrap, client_config)
    by_name = {spec.name: spec for spec in specs}
    if len(by_name) != len(specs):
        raise ValueError("duplicate topic names in specs")

    existing = _partition_counts(metadata, by_name)
    _check_partitions(by_name, existing)
    missing = [spec for name, spec in by_name.items() if name not in existing]
    created: list[str] = []
    if missing:
        new = [
            NewTopic(
                spec.name,
                num_partitions=spec.partitions,
                replication_factor=spec.replication_factor,
                config=spec.effective_config,
            )
            for spec in missing
        ]
        futures = admin.create_topics(
            new, operation_timeout=max(1.0, deadline - time.monotonic()), request_timeout=15.0
        )
        raced: list[str] = []
        for name, future in futures.items():
            try:
                future.result(timeout=max(1.0, deadline - time.monotonic()))
                created.append(name)
            except KafkaException as error:
                kafka_error: KafkaError = error.args[0]
                if kafka_error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise TopicCreationFailed(
                        f"creating topic {name!r} failed: {kafka_error.str()}"
                    ) from error
                raced.append(name)  # someone else created it meanwhile: check it below
        if raced:
            metadata = admin.list_topics(timeout=max(1.0, deadline - time.monotonic()))
            _check_partitions(by_name, _partition_counts(metadata, raced))
    _wait_until_usable(admin, by_name, deadline, timeout)
    return created


def _partition_counts(metadata: ClusterMetadata, names: Iterable[str]) -> dict[str, int]:
    wanted = set(names)
    return {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if name in wanted and topic.error is None
    }


def _check_partitions(specs: Mapping[str, TopicSpec], counts: Mapping[str, int]) -> None:
    for name, count in counts.items():
        want = specs[name].partitions
        if count != want:
            raise TopicMismatch(
                f"topic {name!r} exists with {count} partition(s) but {want} are declared; "
                "delete it (or declare the existing count): the partition count decides which "
                "worker owns a customer, so it is never changed silently"
            )


def _wait_until_usable(
    admin: AdminClient, specs: Mapping[str, TopicSpec], deadline: float, timeout: float
) -> None:
    """Until metadata shows every topic with all partitions led by a broker."""
    while True:
        metadata = admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
        pending = []
        for name, spec in specs.items():
            topic = metadata.topics.get(name)
            ready = (
                topic is not None
                and topic.error is None
                and len(topic.partitions) == spec.partitions
                and all(p.leader >= 0 and p.error is None for p in topic.partitions.values())
            )
            if not ready:
                pending.append(name)
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"topics not ready within {timeout:g}s: {', '.join(sorted(pending))}"
            )
        time.sleep(0.1)
