"""In-memory stand-ins for the producer and consumer calls in ``engine.kafka.ports``.

Only for the unit tests of the engine's delivery and transaction rules; the same code
runs against a real broker in tests/integration (test_worker.py, test_faults.py,
test_zombie.py, test_poison_delivery.py).  Each fake records what it was asked, and fails
when a test scripts it to.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition


def kafka_exception(code: int, *, fatal: bool = False, retriable: bool = False) -> KafkaException:
    return KafkaException(KafkaError(code, f"scripted {code}", fatal=fatal, retriable=retriable))


class FakeProducer:
    """Records produced records and transaction calls; ``fail`` scripts exceptions."""

    def __init__(self, name: str = "producer") -> None:
        self.name = name
        self.produced: list[tuple[str, Any, Any, int]] = []
        self.calls: list[str] = []
        self.offsets_sent: list[list[TopicPartition]] = []
        #: method name -> exception raised by its next call(s)
        self.fail: dict[str, list[BaseException]] = {}
        #: produce() raises BufferError this many times first (a full queue)
        self.buffer_full = 0
        #: what flush() returns (records still undelivered)
        self.undelivered = 0
        #: called in flush(), as librdkafka serves delivery reports there
        self.on_flush: Any = None

    def _maybe_fail(self, method: str) -> None:
        self.calls.append(method)
        scripted = self.fail.get(method)
        if scripted:
            raise scripted.pop(0)

    def produce(
        self,
        topic: str,
        value: str | bytes | None = None,
        key: str | bytes | None = None,
        partition: int = -1,
        callback: Any = None,
        on_delivery: Any = None,
        timestamp: int = 0,
        headers: Any = None,
    ) -> None:
        if self.buffer_full:
            self.buffer_full -= 1
            raise BufferError("queue full")
        self._maybe_fail("produce")
        self.produced.append((topic, value, key, partition))

    def poll(self, timeout: float = -1) -> int:
        self.calls.append("poll")
        return 0

    def flush(self, timeout: float = -1) -> int:
        self._maybe_fail("flush")
        if self.on_flush is not None:
            self.on_flush()
        return self.undelivered

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        self._maybe_fail("purge")

    def init_transactions(self, timeout: float = -1) -> None:
        self._maybe_fail("init_transactions")

    def begin_transaction(self) -> None:
        self._maybe_fail("begin_transaction")

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None:
        self._maybe_fail("send_offsets_to_transaction")
        self.offsets_sent.append(positions)

    def commit_transaction(self, timeout: float = -1) -> None:
        self._maybe_fail("commit_transaction")

    def abort_transaction(self, timeout: float = -1) -> None:
        self._maybe_fail("abort_transaction")


class FakeConsumer:
    """Records commits and seeks; ``fail_commit`` scripts a commit's exception."""

    def __init__(self) -> None:
        self.commits: list[tuple[list[TopicPartition], bool]] = []
        self.seeks: list[TopicPartition] = []
        self.fail_commit: BaseException | None = None

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> Any:
        if self.fail_commit is not None:
            raise self.fail_commit
        self.commits.append((offsets, asynchronous))
        return None if asynchronous else offsets

    def consumer_group_metadata(self) -> Any:
        return "group-metadata"

    def seek(self, partition: TopicPartition) -> None:
        self.seeks.append(partition)
