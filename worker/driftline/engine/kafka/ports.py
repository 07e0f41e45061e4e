"""The client calls the engine's delivery and transaction logic needs, as Protocols.

``confluent_kafka.Producer`` and ``Consumer`` satisfy them as they are; naming only the
calls used keeps that logic testable without a broker (tests/unit/test_kafka_delivery.py
and test_kafka_transactions.py drive it with in-memory fakes; the integration tests
drive the same code against a real broker).  Like Quix Streams' producer and consumer
wrappers, these draw the line between "what the engine decides" and "what librdkafka
does": the decisions live in ``delivery`` and ``transactions``, the I/O behind these.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, overload

from confluent_kafka import KafkaError, TopicPartition

#: librdkafka's per-record delivery report (error or None, and the record).
DeliveryCallback = Any


class ProducerPort(Protocol):
    """The producer calls used: produce with backpressure, flush, and transactions."""

    def produce(
        self,
        topic: str,
        value: str | bytes | None = None,
        key: str | bytes | None = None,
        partition: int = -1,
        callback: DeliveryCallback | None = None,
        on_delivery: DeliveryCallback | None = None,
        timestamp: int = 0,
        headers: Any | None = None,
    ) -> None: ...

    def poll(self, timeout: float = -1) -> int: ...

    def flush(self, timeout: float = -1) -> int: ...

    def purge(
        self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True
    ) -> None: ...

    def init_transactions(self, timeout: float = -1) -> None: ...

    def begin_transaction(self) -> None: ...

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None: ...

    def commit_transaction(self, timeout: float = -1) -> None: ...

    def abort_transaction(self, timeout: float = -1) -> None: ...


class ConsumerPort(Protocol):
    """The consumer calls used to commit, to join a transaction and to rewind."""

    @overload
    def commit(self, *, offsets: list[TopicPartition], asynchronous: Literal[True]) -> None: ...

    @overload
    def commit(
        self, *, offsets: list[TopicPartition], asynchronous: Literal[False]
    ) -> list[TopicPartition]: ...

    def consumer_group_metadata(self) -> Any: ...

    def seek(self, partition: TopicPartition) -> None: ...


def kafka_error_of(error: BaseException) -> KafkaError | None:
    """The ``KafkaError`` a ``KafkaException`` carries (None when it carries none)."""
    inner = error.args[0] if error.args else None
    return inner if isinstance(inner, KafkaError) else None
